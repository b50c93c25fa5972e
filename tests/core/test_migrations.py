"""Migrations: branches per plugin, upgrade/downgrade, refusal and rollback."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from zhongtai.hooks.manager import StartupError
from zhongtai.metadata.migrations import MigrationError
from zhongtai.platform import bootstrap


def tables(platform) -> set[str]:
    return set(inspect(platform.db.engine).get_table_names())


def test_core_branch_creates_lineage_table(zt_platform):
    assert "lineage_edges" in tables(zt_platform)
    assert zt_platform.migrations().pending() == []


def test_plugin_branch_upgrade_and_downgrade(zt_app_factory):
    platform = zt_app_factory(plugins=["withmig"]).state["platform"]
    assert "withmig_items" in tables(platform)
    migrations = platform.migrations()
    assert "a1withmig0001" in migrations.current()
    migrations.downgrade("withmig@base")
    assert "withmig_items" not in tables(platform)
    assert "lineage_edges" in tables(platform)
    assert migrations.pending() == ["a1withmig0001"]
    migrations.upgrade()
    assert "withmig_items" in tables(platform)


def claim_function_exists(platform) -> bool:
    with platform.db.engine.connect() as conn:
        return bool(
            conn.scalar(text("SELECT count(*) FROM pg_proc WHERE proname = 'zt_claim_job'"))
        )


def test_core_downgrade_to_base_and_back(zt_platform):
    """Down to nothing and up again; on PostgreSQL that includes the claim function
    (migrations c0e1a0000008 and c0e1a0000009), which must go before the table its
    rows are typed by."""
    postgres = not zt_platform.db.is_embedded
    assert not postgres or claim_function_exists(zt_platform)
    migrations = zt_platform.migrations()
    migrations.downgrade("core@base")
    assert "lineage_edges" not in tables(zt_platform)
    assert not postgres or not claim_function_exists(zt_platform)
    migrations.upgrade()
    assert "lineage_edges" in tables(zt_platform)
    assert not postgres or claim_function_exists(zt_platform)


def test_history_lists_every_branch(zt_app_factory):
    platform = zt_app_factory(plugins=["withmig"]).state["platform"]
    history = "\n".join(platform.migrations().history())
    assert "c0e1a0000001 (core) [applied]" in history
    assert "a1withmig0001 (withmig) [applied]" in history


def test_out_of_date_schema_refuses_to_start_naming_the_command(zt_settings):
    with pytest.raises(StartupError, match="zhongtai db upgrade"):
        bootstrap(zt_settings, plugins=[], schema="check")


def test_removed_plugin_is_parked_and_restored(zt_app_factory):
    zt_app_factory(plugins=["withmig"])
    without = zt_app_factory(plugins=[], schema="check").state["platform"]
    assert "withmig_items" in tables(without)  # its data is left alone
    assert without.migrations().pending() == []
    back = zt_app_factory(plugins=["withmig"], schema="check").state["platform"]
    assert "a1withmig0001" in back.migrations().current()


@pytest.mark.postgres_only
def test_failed_migration_leaves_schema_as_it_was(zt_app_factory, zt_platform):
    before_tables = tables(zt_platform)
    before_columns = {
        c["name"] for c in inspect(zt_platform.db.engine).get_columns("lineage_edges")
    }
    with pytest.raises(MigrationError, match="fails halfway"):
        zt_app_factory(plugins=["badmig"])
    assert tables(zt_platform) == before_tables
    after_columns = {c["name"] for c in inspect(zt_platform.db.engine).get_columns("lineage_edges")}
    assert after_columns == before_columns
    assert zt_platform.migrations().current() == {"c0e1a0000009"}
