"""Roles and permissions.

Five roles, ordered: ``viewer < developer < maintainer < admin < owner``. A
permission is a named action (``data.dataset.write``) with the lowest role that
holds it by default; a role holds every permission whose lowest role it reaches.
Plugins register their permissions with the ``register_permissions`` hook.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from enum import IntEnum

PERMISSION_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


class Role(IntEnum):
    """A member's role; compare with ``>=`` (an owner holds everything a viewer does)."""

    viewer = 10
    developer = 20
    maintainer = 30
    admin = 40
    owner = 50

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name]
        except KeyError:
            roles = ", ".join(cls.__members__)
            raise ValueError(f"unknown role {name!r}; roles: {roles}") from None


@dataclasses.dataclass(frozen=True)
class Permission:
    """A named action a route guards, and the lowest role that holds it."""

    name: str
    description: str
    min_role: Role = Role.viewer
    # "project": checked against a project; "org": against an organization;
    # "site": superusers only.
    scope: str = "project"

    def __post_init__(self) -> None:
        if not PERMISSION_PATTERN.match(self.name):
            raise ValueError(f"invalid permission name {self.name!r} (use plugin.object.action)")
        if self.scope not in ("project", "org", "site"):
            raise ValueError(f"invalid permission scope {self.scope!r}")


class PermissionRegistry:
    """Every permission the core and the loaded plugins declare."""

    def __init__(self) -> None:
        self._items: dict[str, Permission] = {}

    def add(self, permissions: Iterable[Permission], *, owner: str) -> None:
        for permission in permissions:
            existing = self._items.get(permission.name)
            if existing is not None and existing != permission:
                raise ValueError(f"{owner}: permission {permission.name!r} is already declared")
            self._items[permission.name] = permission

    def get(self, name: str) -> Permission:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"undeclared permission {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def all(self) -> list[Permission]:
        return sorted(self._items.values(), key=lambda p: p.name)

    def held_by(self, role: Role, scope: str = "project") -> set[str]:
        return {p.name for p in self._items.values() if p.scope == scope and role >= p.min_role}
