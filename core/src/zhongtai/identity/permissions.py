"""The core's own permissions, and the registry that joins them with the plugins'.

The core declares its permissions the way a plugin does (DESIGN.md §2): a list of
:class:`~zhongtai.identity.roles.Permission` that :func:`build_registry` adds first.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from zhongtai.identity.roles import Permission, PermissionRegistry, Role

if TYPE_CHECKING:
    from zhongtai.hooks.manager import PluginManager

CORE_OWNER = "core"

PROJECT_READ = Permission("core.project.read", "See a project and its settings", Role.viewer)
PROJECT_WRITE = Permission(
    "core.project.write", "Change a project's name, description and settings", Role.maintainer
)
PROJECT_DELETE = Permission("core.project.delete", "Delete a project", Role.owner)
PROJECT_MEMBERS_READ = Permission(
    "core.project.members.read", "List a project's members and their roles", Role.viewer
)
PROJECT_MEMBERS_MANAGE = Permission(
    "core.project.members.manage", "Add, remove and change roles of project members", Role.admin
)
ORG_READ = Permission("core.org.read", "See an organization", Role.viewer, "org")
ORG_WRITE = Permission(
    "core.org.write", "Change an organization and create projects in it", Role.admin, "org"
)
ORG_MEMBERS_MANAGE = Permission(
    "core.org.members.manage",
    "Invite, remove and change roles of organization members",
    Role.admin,
    "org",
)
# Developer, not viewer: a key can do what its owner does, so letting read-only
# members mint keys would hand them long-lived credentials (issue 3: viewer → 403).
APIKEY_CREATE = Permission(
    "core.apikey.create", "Create an API key that acts in a project", Role.developer
)
AUDIT_READ = Permission(
    "core.audit.read", "Read and export an organization's audit log", Role.owner, "org"
)
USERS_MANAGE = Permission(
    "core.users.manage", "Create, deactivate and edit any user account", Role.owner, "site"
)  # site scope: superusers only, whatever the role
JOBS_READ = Permission("jobs.read", "See a project's jobs, their progress and logs")
JOBS_SUBMIT = Permission(
    "jobs.submit", "Submit, cancel and retry jobs in a project", Role.developer
)
WEBHOOKS_MANAGE = Permission(
    "webhooks.manage",
    "Add, change and remove a project's webhooks and read their deliveries",
    Role.maintainer,
)
LINEAGE_READ = Permission("lineage.read", "See lineage edges between a project's objects")
LINEAGE_WRITE = Permission(
    "lineage.write", "Record lineage edges between a project's objects", Role.developer
)

CORE_PERMISSIONS: list[Permission] = [
    PROJECT_READ,
    PROJECT_WRITE,
    PROJECT_DELETE,
    PROJECT_MEMBERS_READ,
    PROJECT_MEMBERS_MANAGE,
    ORG_READ,
    ORG_WRITE,
    ORG_MEMBERS_MANAGE,
    APIKEY_CREATE,
    AUDIT_READ,
    USERS_MANAGE,
    JOBS_READ,
    JOBS_SUBMIT,
    WEBHOOKS_MANAGE,
    LINEAGE_READ,
    LINEAGE_WRITE,
]


def build_registry(extra: Iterable[tuple[str, Iterable[Permission]]] = ()) -> PermissionRegistry:
    """The registry of the core's permissions and then each plugin's.

    Args:
        extra: ``(plugin name, its permissions)`` pairs, as the ``register_permissions``
            hook returns them; the name is used in error messages and as the prefix
            every one of the plugin's permissions must carry.

    Returns:
        A registry holding every declared permission.

    Raises:
        ValueError: a plugin's permission lies outside ``<plugin>.`` (so no plugin can
            declare or shadow ``core.*``), or a name is declared twice, even
            identically (two owners of one name would make its meaning ambiguous).
    """
    registry = PermissionRegistry()
    owners: dict[str, str] = {}

    def add(owner: str, permissions: Iterable[Permission]) -> None:
        batch = list(permissions)
        for permission in batch:
            if permission.name in owners:
                raise ValueError(
                    f"{owner}: permission {permission.name!r} is already declared"
                    f" by {owners[permission.name]}"
                )
            owners[permission.name] = owner
        registry.add(batch, owner=owner)

    add(CORE_OWNER, CORE_PERMISSIONS)
    for plugin, permissions in extra:
        prefix = f"{plugin}."
        batch = list(permissions)
        for permission in batch:
            # A plugin named "core" would otherwise pass the prefix test.
            if plugin == CORE_OWNER or not permission.name.startswith(prefix):
                raise ValueError(
                    f"plugin {plugin!r}: permission {permission.name!r} must start with {prefix!r}"
                )
        add(f"plugin {plugin!r}", batch)
    return registry


def collect_permissions(manager: PluginManager) -> PermissionRegistry:
    """Build the registry from every loaded plugin's ``register_permissions``.

    A plugin whose permissions are refused (outside its prefix, or declared twice)
    is unloaded and reported like any plugin whose hook fails; the rest load.
    """
    accepted: list[tuple[str, list[Permission]]] = []
    for record, permissions in manager.call_each("register_permissions"):
        batch = list(permissions)
        try:
            build_registry([*accepted, (record.name, batch)])
        except (ValueError, TypeError) as exc:
            manager.unload(record.name, f"register_permissions: {exc}", exc)
            continue
        accepted.append((record.name, batch))
    return build_registry(accepted)
