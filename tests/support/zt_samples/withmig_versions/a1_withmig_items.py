"""withmig: items"""

import sqlalchemy as sa
from alembic import op

revision = "a1withmig0001"
down_revision = None
branch_labels = ("withmig",)
depends_on = "c0e1a0000001"


def upgrade():
    op.create_table("withmig_items", sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table("withmig_items")
