"""badmig: creates a table, alters the core's, then fails"""

import sqlalchemy as sa
from alembic import op

revision = "b1badmig0001"
down_revision = None
branch_labels = ("badmig",)
depends_on = "c0e1a0000001"


def upgrade():
    op.create_table("badmig_things", sa.Column("id", sa.Integer, primary_key=True))
    op.add_column("lineage_edges", sa.Column("badmig_note", sa.String(10)))
    raise RuntimeError("this migration fails halfway")


def downgrade():
    op.drop_table("badmig_things")
