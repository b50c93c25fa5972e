"""The data plugin's settings: ``ZHONGTAI_DATA__<FIELD>`` or the ``[data]`` TOML table."""

from __future__ import annotations

from pydantic import Field

from zhongtai.settings import PluginSettings


class DataSettings(PluginSettings):
    """Limits of uploads and previews."""

    max_file_size: int = Field(
        default=5 * 2**30,
        ge=1,
        description="Largest file accepted in one request (POST …/files); larger files "
        "go through resumable uploads.",
    )
    part_size: int = Field(
        default=8 * 2**20,
        ge=5 * 2**20,
        le=5 * 2**30,
        description="Part size of resumable uploads (at least 5 MiB, S3's minimum).",
    )
    upload_ttl: int = Field(
        default=7 * 86400,
        ge=60,
        description="Seconds an unfinished resumable upload is kept before it is aborted.",
    )
    sweep_interval: int = Field(
        default=3600, ge=10, description="Seconds between runs of the data.sweep job."
    )
    preview_rows: int = Field(
        default=50, ge=1, le=1000, description="Rows of a tabular file's preview page."
    )
