"""Alembic environment for zhongtai: run by :mod:`zhongtai.metadata.migrations`, not by hand.

The runner passes an open connection (inside one transaction) and the branch whose
tables autogenerate may look at; ``zhongtai db …`` is the command line.
"""

from alembic import context

from zhongtai.metadata.base import Base, UTCDateTime

config = context.config
connection = config.attributes["connection"]
branch_prefix = config.attributes.get("table_prefix")


def include_object(obj, name, type_, reflected, compare_to):  # type: ignore[no-untyped-def]
    # Autogenerate looks only at the tables of the branch it writes for.
    if type_ == "table" and branch_prefix is not None:
        return bool(name) and branch_prefix(name)
    table = getattr(obj, "table", None)
    if table is not None and branch_prefix is not None:
        return branch_prefix(table.name)
    return True


def render_item(type_, obj, autogen_context):  # type: ignore[no-untyped-def]
    # Our column types live in zhongtai; write them with an import the file can run.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        autogen_context.imports.add("from zhongtai.metadata.base import UTCDateTime")
        return "UTCDateTime()"
    return False


context.configure(
    connection=connection,
    render_item=render_item,
    target_metadata=Base.metadata,
    include_object=include_object,
    render_as_batch=connection.dialect.name == "sqlite",
    transaction_per_migration=False,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
