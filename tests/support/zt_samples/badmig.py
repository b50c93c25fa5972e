"""A plugin whose migration creates a table and then fails."""

from pathlib import Path

import zhongtai


@zhongtai.hookimpl
def register_migrations():
    return Path(__file__).parent / "badmig_versions"
