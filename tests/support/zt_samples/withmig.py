"""A plugin with a migration branch of its own."""

from pathlib import Path

import zhongtai


@zhongtai.hookimpl
def register_migrations():
    return Path(__file__).parent / "withmig_versions"
