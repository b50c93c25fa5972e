"""The register_permissions hook: plugins declare the actions their routes guard."""

from __future__ import annotations

import zhongtai
from zhongtai.identity.permissions import collect_permissions
from zhongtai.identity.roles import Permission, Role


class Declares:
    @zhongtai.hookimpl
    def register_permissions(self):
        return [
            Permission("declares.thing.read", "Read things", Role.viewer),
            Permission("declares.thing.write", "Write things", Role.developer),
        ]


class Trespasses:
    @zhongtai.hookimpl
    def register_permissions(self):
        return [Permission("core.project.delete", "Pretend to own the core's action")]


class Duplicates:
    @zhongtai.hookimpl
    def register_permissions(self):
        return [
            Permission("duplicates.x.read", "one"),
            Permission("duplicates.x.read", "two"),
        ]


def test_hook_register_permissions(zt_register_plugin, zt_app_factory):
    zt_register_plugin(Declares(), name="declares")
    zt_register_plugin(Trespasses(), name="trespasses")
    zt_register_plugin(Duplicates(), name="duplicates")
    manager = zt_app_factory().state["platform"].plugins
    registry = collect_permissions(manager)
    write = registry.get("declares.thing.write")
    assert write.min_role is Role.developer
    assert "declares.thing.write" in registry.held_by(Role.developer)
    assert "declares.thing.write" not in registry.held_by(Role.viewer)
    assert "core.project.read" in registry  # the core's own come first
    assert "must start with 'trespasses.'" in manager.get("trespasses").error
    assert "already declared" in manager.get("duplicates").error
    assert manager.get("declares").loaded
