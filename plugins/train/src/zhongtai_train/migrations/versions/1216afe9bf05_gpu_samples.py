"""train: GPU nodes, samples and processes

Generated with ``zhongtai db revision --branch train --autogenerate``.

Revision ID: 1216afe9bf05
Revises:
Create Date: 2026-11-29 07:55:29.282369
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from zhongtai.metadata.base import UTCDateTime

revision: str = "1216afe9bf05"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("train",)
# The core revision that creates ``jobs``: processes name the job they belong to
# (checked against it when read, not a foreign key).
depends_on: str | Sequence[str] | None = "c0e1a0000004"


def upgrade() -> None:
    op.create_table(
        "train_gpu_nodes",
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("seen_at", UTCDateTime(), nullable=False),
        sa.Column("sampled_at", UTCDateTime(), nullable=True),
        sa.Column("sample_interval", sa.Float(), nullable=False),
        sa.Column("driver_version", sa.String(length=80), nullable=True),
        sa.Column("gpu_count", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("sampler", sa.String(length=200), nullable=False),
        sa.Column("lease_until", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("node", name=op.f("pk_train_gpu_nodes")),
    )
    op.create_table(
        "train_gpu_processes",
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("gpu", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("pid", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("used_memory", sa.BigInteger(), nullable=True),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("node", "gpu", "at", "pid", name=op.f("pk_train_gpu_processes")),
    )
    with op.batch_alter_table("train_gpu_processes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_train_gpu_processes_at"), ["at"], unique=False)
        batch_op.create_index("ix_train_gpu_processes_job_id_at", ["job_id", "at"], unique=False)

    op.create_table(
        "train_gpu_samples",
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("gpu", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("uuid", sa.String(length=96), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("util_gpu", sa.Integer(), nullable=True),
        sa.Column("util_memory", sa.Integer(), nullable=True),
        sa.Column("memory_used", sa.BigInteger(), nullable=True),
        sa.Column("memory_total", sa.BigInteger(), nullable=True),
        sa.Column("temperature", sa.Integer(), nullable=True),
        sa.Column("power_draw", sa.Float(), nullable=True),
        sa.Column("power_limit", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("node", "gpu", "at", name=op.f("pk_train_gpu_samples")),
    )
    with op.batch_alter_table("train_gpu_samples", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_train_gpu_samples_at"), ["at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("train_gpu_samples", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_train_gpu_samples_at"))

    op.drop_table("train_gpu_samples")
    with op.batch_alter_table("train_gpu_processes", schema=None) as batch_op:
        batch_op.drop_index("ix_train_gpu_processes_job_id_at")
        batch_op.drop_index(batch_op.f("ix_train_gpu_processes_at"))

    op.drop_table("train_gpu_processes")
    op.drop_table("train_gpu_nodes")
