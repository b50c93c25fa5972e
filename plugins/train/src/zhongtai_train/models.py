"""The train plugin's tables (all prefixed ``train_``).

- ``train_gpu_nodes``: one row per machine that runs the plugin (the server, a
  ``zhongtai worker``): when its GPU sampler last ran, the NVIDIA driver version and
  the number of GPUs, or the reason it has none. The row is also the node's writer
  lease: of the processes on one machine, only the one named in ``sampler`` (until
  ``lease_until``) writes samples (see :mod:`zhongtai_train.gpus`).
- ``train_gpu_samples``: one reading of one GPU (utilization, memory, temperature,
  power), every few seconds; a bounded time series (older than ``gpu_history``
  seconds is deleted).
- ``train_jobs``: one row per ``train.run`` or ``train.evaluate`` job: the backend, the
  handle of the attempt it started (so a worker that takes the job over can stop it),
  the MLflow run it logs to, and the API key the code was given (revoked when the job
  ends).
- ``train_gpu_quotas``: a project's limit on GPUs its training jobs may hold at once
  (no row: the setting ``gpu_quota``).
- ``train_gpu_processes``: the compute processes running on a GPU at a sample, with
  the platform job each belongs to where it is known.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

import zhongtai.identity.models
import zhongtai.jobs.models  # noqa: F401 - ``jobs``, which train_jobs refers to
from zhongtai.hooks.events import utcnow
from zhongtai.metadata.base import Base

NODE_MAX = 255  # a host name


class GpuNode(Base):
    """A machine that samples its GPUs, and the lease of the process that writes for it."""

    __tablename__ = "train_gpu_nodes"

    node: Mapped[str] = mapped_column(String(NODE_MAX), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)  # the sampler's last round
    sampled_at: Mapped[datetime | None] = mapped_column(nullable=True)  # its last samples
    sample_interval: Mapped[float] = mapped_column(Float)  # seconds between two rounds
    driver_version: Mapped[str | None] = mapped_column(String(80), nullable=True)
    gpu_count: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # why no GPUs are read
    sampler: Mapped[str] = mapped_column(String(200))  # "<host>:<pid>:<random>"
    lease_until: Mapped[datetime] = mapped_column()


class GpuSample(Base):
    """One reading of one GPU. Units: percent, bytes, degrees Celsius, watts; a value
    the GPU does not report is null."""

    __tablename__ = "train_gpu_samples"

    node: Mapped[str] = mapped_column(String(NODE_MAX), primary_key=True)
    gpu: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(primary_key=True, index=True)
    uuid: Mapped[str] = mapped_column(String(96))
    name: Mapped[str] = mapped_column(String(200))
    util_gpu: Mapped[int | None] = mapped_column(Integer, nullable=True)
    util_memory: Mapped[int | None] = mapped_column(Integer, nullable=True)
    memory_used: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    memory_total: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    temperature: Mapped[int | None] = mapped_column(Integer, nullable=True)
    power_draw: Mapped[float | None] = mapped_column(Float, nullable=True)
    power_limit: Mapped[float | None] = mapped_column(Float, nullable=True)


class GpuProcess(Base):
    """A compute process on a GPU at one sample (``node``, ``gpu``, ``at`` as there).

    ``job_id`` is the ``ZHONGTAI_JOB_ID`` in the process's environment, when it could
    be read; it is not a foreign key (a process may name a job of another platform,
    or one deleted since), so readers check it against ``jobs``.
    """

    __tablename__ = "train_gpu_processes"
    __table_args__ = (Index("ix_train_gpu_processes_job_id_at", "job_id", "at"),)

    node: Mapped[str] = mapped_column(String(NODE_MAX), primary_key=True)
    gpu: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(primary_key=True, index=True)
    pid: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    used_memory: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class TrainJob(Base):
    """What a ``train.run`` job started where, and what it gave the code."""

    __tablename__ = "train_jobs"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(32), index=True)
    backend: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    handle: Mapped[str | None] = mapped_column(Text, nullable=True)  # the backend's
    run_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    experiment_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    api_key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="preparing")
    reason: Mapped[str] = mapped_column(Text, default="")
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


#: Job types whose GPUs count against a project's quota (the quota policy decides these).
GPU_COUNTED_TYPES = ("train.run", "train.evaluate")


class GpuQuota(Base):
    """How many GPUs a project's running training jobs may hold together."""

    __tablename__ = "train_gpu_quotas"

    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    gpus: Mapped[int] = mapped_column(Integer)
    updated_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
