"""hello: create greetings

Generated with ``zhongtai db revision --branch hello -m "create greetings" --autogenerate``
and then tidied (the ``UTCDateTime`` import added by hand).

Revision ID: 50c4ef9e0b66
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from zhongtai.metadata.base import UTCDateTime

revision: str = "50c4ef9e0b66"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("hello",)
# The core revision this branch needs: the one that creates ``projects``, which
# greetings belong to.
depends_on: str | Sequence[str] | None = "c0e1a0000002"


def upgrade() -> None:
    op.create_table(
        "hello_greetings",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("project_id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("message", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name="fk_hello_greetings_project_id_projects",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_hello_greetings"),
    )
    op.create_index("ix_hello_greetings_project_id", "hello_greetings", ["project_id"])


def downgrade() -> None:
    op.drop_index("ix_hello_greetings_project_id", table_name="hello_greetings")
    op.drop_table("hello_greetings")
