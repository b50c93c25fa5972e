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
    preview_rows: int = Field(
        default=50, ge=1, le=1000, description="Rows of a tabular file's preview page."
    )
