"""identity generation: a counter every write to who-may-see-what bumps

Revision ID: c0e1a0000003
Revises: c0e1a0000002
Create Date: 2026-11-29 02:30:00

The server keeps reads that depend only on identity tables (who a credential is, the
projects a caller sees) in memory and throws them away when this counter moves.
Database triggers bump it in the writing transaction, so every writer counts — any
server process, the ``zhongtai users`` command, an operator's SQL — and a rolled-back
write bumps nothing. Columns that do not change what anyone may see (a key's
``last_used_at``, a user's display name or password hash) are left out, so routine
writes do not empty the caches.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c0e1a0000003"
down_revision: str | Sequence[str] | None = "c0e1a0000002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table -> the columns whose update matters (None: any update)
WATCHED: dict[str, tuple[str, ...] | None] = {
    "users": ("id", "is_active", "is_superuser"),
    "orgs": None,
    "projects": None,
    "org_members": None,
    "project_members": None,
    "api_keys": (
        "id",
        "user_id",
        "prefix",
        "key_hash",
        "project_id",
        "permissions",
        "expires_at",
        "revoked_at",
    ),
}
BUMP = "UPDATE identity_generation SET value = value + 1 WHERE id = 1"


def upgrade() -> None:
    op.create_table(
        "identity_generation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_generation")),
    )
    op.execute("INSERT INTO identity_generation (id, value) VALUES (1, 0)")
    if op.get_context().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION zt_identity_bump() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN {BUMP}; RETURN NULL; END $$"
        )
        for table, columns in WATCHED.items():
            update = "UPDATE" + (f" OF {', '.join(columns)}" if columns else "")
            # Once per statement: a bulk insert bumps once, not once per row.
            op.execute(
                f"CREATE TRIGGER zt_identity_{table} AFTER INSERT OR {update} OR DELETE "
                f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION zt_identity_bump()"
            )
        return
    for table, columns in WATCHED.items():
        update = "UPDATE" + (f" OF {', '.join(columns)}" if columns else "")
        for event in ("INSERT", update, "DELETE"):
            name = f"zt_identity_{table}_{event.split()[0].lower()}"
            op.execute(f"CREATE TRIGGER {name} AFTER {event} ON {table} BEGIN {BUMP}; END")


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        for table in WATCHED:
            op.execute(f"DROP TRIGGER zt_identity_{table} ON {table}")
        op.execute("DROP FUNCTION zt_identity_bump()")
    else:
        for table in WATCHED:
            for event in ("insert", "update", "delete"):
                op.execute(f"DROP TRIGGER zt_identity_{table}_{event}")
    op.drop_table("identity_generation")
