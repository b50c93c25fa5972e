"""The train plugin's settings: ``ZHONGTAI_TRAIN__<FIELD>`` or the ``[train]`` TOML table."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from zhongtai.settings import PluginSettings


class TrainSettings(PluginSettings):
    """Where MLflow keeps its records, and how GPUs are watched."""

    tracking_store_uri: str | None = Field(
        default=None,
        description="SQLAlchemy URL of MLflow's tracking and registry store. Default: "
        "the SQLite file train/mlflow.db under the data directory on the embedded "
        "database, or the schema `mlflow` of the platform's own PostgreSQL database.",
    )
    tracking_workers: int = Field(
        default=2, ge=1, le=64, description="Worker processes of the MLflow tracking server."
    )
    tracking_start_timeout: float = Field(
        default=120.0,
        gt=0,
        description="Seconds the MLflow tracking server may take to start (the first "
        "start on a new store runs MLflow's migrations).",
    )
    max_artifact_size: int = Field(
        default=5 * 2**30,
        ge=1,
        description="Largest request body accepted through /mlflow (an artifact upload).",
    )
    gpu_sample_interval: float = Field(
        default=5.0,
        ge=0.5,
        le=3600,
        description="Seconds between two samples of a node's GPUs (0.5 to 3600).",
    )
    gpu_history: int = Field(
        default=6 * 3600,
        ge=60,
        description="Seconds of GPU samples kept per node; older samples are deleted.",
    )
    default_backend: str = Field(
        default="local",
        max_length=64,
        description="Backend of a training job that names none: local, ray, kubernetes, or "
        "any installed under the entry-point group zhongtai_train.backends.",
    )
    backend_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Default options per backend (e.g. {ray = {address = "
        '"http://ray-head:8265"}}); a job\'s backend_options override them key by key.',
    )
    job_tracking_uri: str | None = Field(
        default=None,
        description="The MLFLOW_TRACKING_URI training code is given. Default: the "
        "platform's public_url (or http://HOST:PORT) followed by /mlflow. Set it when "
        "training runs where that address does not reach the platform.",
    )
    allow_file_git: bool = Field(
        default=False,
        description="Let training jobs clone file:// repositories from the worker's own "
        "disk (for a single-user machine and tests; off: only https and ssh).",
    )
    jobs_dir: str | None = Field(
        default=None,
        description="Where a worker checks out the code of training jobs (one folder per "
        "attempt, removed when it ends). Default: train/jobs under the data directory.",
    )
    gpu_quota: int | None = Field(
        default=None,
        ge=0,
        le=100_000,
        description="GPUs the running training jobs of a project may hold together, for "
        "projects without a quota of their own (none: no limit). A job over it waits as "
        "held; a job asking for more than its project's quota is refused.",
    )
    evaluate_after_training: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Experiment name -> an evaluation (train.evaluate params without "
        "run_id) to run after every successful training job of that experiment.",
    )
    gpu_monitoring: bool = Field(
        default=True,
        description="Sample this node's NVIDIA GPUs in the server and in each worker.",
    )
