"""``train_evaluations``: one row per ``train.evaluate`` job.

Which run's model was scored (``run_id``), on which file of which dataset version,
with which evaluator; the MLflow run the evaluation logged to (``eval_run_id``, in
the evaluated run's experiment); the metrics (name → number, null where MLflow gave
NaN) and the report's chart artifacts (paths in the evaluation run). The row is
written when the evaluation starts (``running``) and completed when it ends, so a
failed evaluation is listed too, with its error.

``job_id`` is not a foreign key: an evaluation outlives its job's retention.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

import zhongtai.identity.models  # noqa: F401 - ``projects``, which evaluations refer to
from zhongtai.hooks.events import utcnow
from zhongtai.metadata.base import Base
from zhongtai.metadata.ids import new_id

__all__ = ["Evaluation"]

#: Values of ``Evaluation.status``.
STATUSES = ("running", "succeeded", "failed", "cancelled")


class Evaluation(Base):
    """A run's model scored on a dataset version (see the module's documentation)."""

    __tablename__ = "train_evaluations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    job_id: Mapped[str] = mapped_column(String(32), unique=True)
    run_id: Mapped[str] = mapped_column(String(32), index=True)  # the evaluated run
    experiment_id: Mapped[str] = mapped_column(String(32))
    eval_run_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    model_path: Mapped[str] = mapped_column(String(1024))
    dataset_version: Mapped[str] = mapped_column(String(32), index=True)
    file: Mapped[str] = mapped_column(String(1024))
    target: Mapped[str] = mapped_column(String(250))
    evaluator: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    artifacts: Mapped[list[str]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), default="running")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
