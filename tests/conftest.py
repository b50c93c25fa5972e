"""Shared test configuration: the zhongtai fixtures come from ``zhongtai.testing``."""

import pytest

from zhongtai.testing import database_server_for_tests


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if database_server_for_tests() is not None:
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL (set ZHONGTAI_TEST_DATABASE_URL)")
    for item in items:
        if item.get_closest_marker("postgres_only"):
            item.add_marker(skip)
