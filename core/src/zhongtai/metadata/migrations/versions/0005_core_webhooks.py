"""webhooks and their deliveries

Which projects have active webhooks is kept in memory (every event asks), so writes
to ``webhooks`` bump the identity generation like writes to the identity tables
(see c0e1a0000003).

Revision ID: c0e1a0000005
Revises: c0e1a0000004
Create Date: 2026-11-29 02:49:16.328351
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from zhongtai.metadata.base import UTCDateTime

revision: str = "c0e1a0000005"
down_revision: str | Sequence[str] | None = "c0e1a0000004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BUMP = "UPDATE identity_generation SET value = value + 1 WHERE id = 1"


def upgrade() -> None:
    op.create_table(
        "webhooks",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("secret", sa.String(length=200), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("created_by", sa.String(length=32), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_webhooks_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_webhooks_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhooks")),
    )
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_webhooks_project_id"), ["project_id"], unique=False)

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("webhook_id", sa.String(length=32), nullable=False),
        sa.Column("event", sa.String(length=128), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["webhook_id"],
            ["webhooks.id"],
            name=op.f("fk_webhook_deliveries_webhook_id_webhooks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_webhook_deliveries_hook_time", ["webhook_id", "created_at"], unique=False
        )


    if op.get_context().dialect.name == "postgresql":
        op.execute(
            "CREATE TRIGGER zt_identity_webhooks AFTER INSERT OR UPDATE OF project_id, active "
            "OR DELETE ON webhooks FOR EACH STATEMENT EXECUTE FUNCTION zt_identity_bump()"
        )
    else:
        for event in ("INSERT", "UPDATE OF project_id, active", "DELETE"):
            op.execute(
                f"CREATE TRIGGER zt_identity_webhooks_{event.split()[0].lower()} AFTER {event} "
                f"ON webhooks BEGIN {BUMP}; END"
            )


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TRIGGER zt_identity_webhooks ON webhooks")
    else:
        for event in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER zt_identity_webhooks_{event}")
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_deliveries_hook_time")

    op.drop_table("webhook_deliveries")
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhooks_project_id"))

    op.drop_table("webhooks")
