"""Identity as a built-in plugin: its routes go in through the same hook as any plugin's.

The core's permissions are declared in :mod:`zhongtai.identity.permissions` and added
to every registry first, so this plugin does not return them again.
"""

from __future__ import annotations

from typing import Any

import zhongtai
from zhongtai.identity.api import audit, auth, keys, orgs, projects, users


@zhongtai.hookimpl
def register_routes() -> list[Any]:
    return [
        *auth.ROUTES,
        *orgs.ROUTES,
        *projects.ROUTES,
        *keys.ROUTES,
        *users.ROUTES,
        *audit.ROUTES,
    ]
