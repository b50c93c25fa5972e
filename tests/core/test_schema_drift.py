"""The core's models and its migrations describe the same schema, on each backend."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import zhongtai.identity.models  # the tables are part of the metadata
import zhongtai.metadata.lineage  # noqa: F401
from zhongtai.metadata.base import Base, table_owners


def test_core_migrations_match_the_models(zt_platform):
    core = {name for name, module in table_owners().items() if module.startswith("zhongtai.")}
    with zt_platform.db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)

    def table_of(item):
        op = item[0] if isinstance(item, list) else item
        for part in op[1:]:
            name = getattr(part, "name", None) if not isinstance(part, str) else part
            table = getattr(part, "table", None)
            if table is not None:
                return table.name
            if isinstance(name, str):
                return name
        return None

    relevant = [d for d in diff if table_of(d) in core]
    assert relevant == []
