"""The plugin manager: discovery (stevedore), hook calls (pluggy), isolation, reporting.

One :class:`PluginManager` per app instance. Plugins load each inside its own
``try``: one that fails to import, implements an unknown hook, or raises in a hook
while the app is assembled is reported (log, ``zhongtai plugins``,
``/api/v1/plugins``) and unloaded, and the platform starts without it. In strict
mode (``ZHONGTAI_STRICT_PLUGINS=1``, for CI) the first failure raises instead.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import pluggy

from zhongtai.hooks import hookspecs
from zhongtai.hooks.asyncutil import resolve_sync
from zhongtai.hooks.markers import PROJECT

if TYPE_CHECKING:
    from zhongtai.hooks.events import Event
    from zhongtai.platform import Platform

log = logging.getLogger("zhongtai.plugins")

ENTRY_POINT_GROUP = "zhongtai.plugins"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

# The core's own features, registered through the same hooks as any plugin
# (pytest's essential plugins). Each is (name, module).
BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("system", "zhongtai.web.system"),
    ("lineage", "zhongtai.metadata.lineage"),
    ("identity", "zhongtai.identity.plugin"),
    ("jobs", "zhongtai.jobs.plugin"),
    ("webhooks", "zhongtai.hooks.webhooks.plugin"),
    ("ui", "zhongtai.ui.plugin"),
)


class PluginLoadError(Exception):
    """A plugin could not load (raised only in strict mode)."""


class StartupError(Exception):
    """The platform must not start (schema out of date, table collision, bad driver)."""


@dataclass
class PluginRecord:
    """What ``zhongtai plugins`` and ``/api/v1/plugins`` show for one plugin."""

    name: str
    module: str | None = None
    distribution: str | None = None
    version: str | None = None
    builtin: bool = False
    hooks: list[str] = field(default_factory=list)
    error: str | None = None
    obj: Any = field(default=None, repr=False)

    @property
    def loaded(self) -> bool:
        return self.error is None and self.obj is not None

    @property
    def package(self) -> str | None:
        """The top-level package, used to tell which tables a plugin defines."""
        return self.module.split(".", 1)[0] if self.module else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "builtin": self.builtin,
            "loaded": self.loaded,
            "hooks": self.hooks,
            "error": self.error,
        }


class PluginManager:
    """Loads plugins and calls their hooks, each plugin isolated from the others."""

    def __init__(self, *, strict: bool = False) -> None:
        self.strict = strict
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        # entry-point name -> module of every installed plugin, loaded or not
        self._installed: dict[str, str] = {}
        # (plugin name, on_event function, its argument names), in load order: an event
        # is dispatched several times per job. Rebuilt when a plugin loads or unloads.
        self._event_handlers: list[tuple[str, Any, Sequence[str]]] | None = None

    # -- loading -----------------------------------------------------------

    def load(
        self,
        *,
        only: Sequence[str] | None = None,
        disable: Iterable[str] = (),
        extra: Iterable[tuple[str, object]] = (),
        discover: bool = True,
    ) -> None:
        """Register the built-in plugins, then installed ones, then ``extra`` objects.

        Args:
            only: entry-point names to load (None: every installed plugin).
            disable: names never to load.
            extra: ``(name, object)`` pairs registered directly (tests, embedding).
            discover: False skips entry points entirely.
        """
        disabled = set(disable)
        candidates: list[tuple[str, object, dict[str, Any]]] = []
        for name, module in BUILTIN_PLUGINS:
            candidates += self._import_builtin(name, module)
        if discover:
            candidates += self._discover(only, disabled)
        candidates += [(name, obj, {}) for name, obj in extra if name not in disabled]
        # Hooks that plugins declare for each other exist before any plugin registers,
        # so an implementation never depends on load order.
        for name, obj, meta in list(candidates):
            if not self._declare_hookspecs(name, obj, meta):
                candidates.remove((name, obj, meta))
        for name, obj, meta in candidates:
            self.register(name, obj, **meta)

    def _declare_hookspecs(self, name: str, obj: object, meta: dict[str, Any]) -> bool:
        if self._pm.parse_hookimpl_opts(obj, "register_hookspecs") is None:
            return True
        try:
            specs = resolve_sync(obj.register_hookspecs())  # type: ignore[attr-defined]
            for spec in specs or ():
                self._pm.add_hookspecs(spec)
        except Exception as exc:
            self._fail(name, f"register_hookspecs: {_describe_exc(exc)}", **meta, exc=exc)
            return False
        return True

    def _discover(
        self, only: Sequence[str] | None, disabled: set[str]
    ) -> list[tuple[str, object, dict[str, Any]]]:
        from stevedore import NamedExtensionManager

        available = {ep.name: ep for ep in _entry_points()}
        self._installed = {name: ep.value.split(":", 1)[0] for name, ep in available.items()}
        wanted = [n for n in (only if only is not None else sorted(available)) if n not in disabled]
        for name in wanted:
            if name not in available:
                self._fail(name, f"no installed plugin named {name!r}")
        names = [n for n in wanted if n in available]
        if not names:
            return []

        def on_failure(_manager: Any, entry_point: Any, exc: BaseException) -> None:
            # stevedore's cached entry points lack .dist; importlib's carry it.
            origin = available.get(entry_point.name, entry_point)
            self._fail(
                entry_point.name,
                _describe_exc(exc),
                module=entry_point.value,
                distribution=_dist_name(origin),
                version=_dist_version(origin),
                exc=exc,
            )

        manager = NamedExtensionManager(
            ENTRY_POINT_GROUP,
            names=names,
            name_order=True,
            on_load_failure_callback=on_failure,
            on_missing_entrypoints_callback=lambda names: None,  # reported above
        )
        found: list[tuple[str, object, dict[str, Any]]] = []
        for ext in manager.extensions:
            origin = available.get(ext.name, ext.entry_point)
            meta = {"distribution": _dist_name(origin), "version": _dist_version(origin)}
            found.append((ext.name, ext.plugin, meta))
        return found

    def _import_builtin(self, name: str, module: str) -> list[tuple[str, object, dict[str, Any]]]:
        from zhongtai import __version__

        meta: dict[str, Any] = {"builtin": True, "distribution": "zhongtai", "version": __version__}
        try:
            return [(name, importlib.import_module(module), meta)]
        except Exception as exc:
            self._fail(name, _describe_exc(exc), module=module, exc=exc, **meta)
            return []

    def register(
        self,
        name: str,
        obj: object,
        *,
        builtin: bool = False,
        distribution: str | None = None,
        version: str | None = None,
    ) -> bool:
        """Register one plugin object; return False (and record why) if it was refused."""
        module = getattr(obj, "__name__", None) or type(obj).__module__
        meta: dict[str, Any] = {
            "module": module,
            "distribution": distribution,
            "version": version,
        }
        if not NAME_PATTERN.match(name):
            self._fail(name, "plugin names are lower-case letters, digits and _", **meta)
            return False
        existing = self.records.get(name)
        if existing is not None and existing.loaded:
            self._fail(name, f"name already taken by {existing.module}", **meta, keep=True)
            return False
        unknown = self._unknown_hooks(obj)
        if unknown:
            self._fail(name, "; ".join(unknown), **meta)
            return False
        self._event_handlers = None
        try:
            self._pm.register(obj, name=name)
        except Exception as exc:
            self._fail(name, _describe_exc(exc), **meta, exc=exc)
            return False
        hooks = sorted(impl.name for impl in self._pm.get_hookcallers(obj) or [])
        self.records[name] = PluginRecord(
            name=name,
            module=module,
            distribution=distribution,
            version=version,
            builtin=builtin,
            hooks=hooks,
            obj=obj,
        )
        log.debug("loaded plugin %s (%s)", name, module)
        return True

    def _unknown_hooks(self, obj: object) -> list[str]:
        # check_pending() for one plugin: a misspelled hook must fail loudly, never be ignored.
        known = {name for name in dir(hookspecs) if not name.startswith("_")}
        # Only hooks with a specification: an optionalhook implementation elsewhere
        # creates a caller without one, and must not make a typo acceptable here.
        known |= {
            caller.name
            for caller in self._pm.hook.__dict__.values()
            if _is_caller(caller) and caller.has_spec()
        }
        problems = []
        for attr in dir(obj):
            value = getattr(obj, attr, None)
            opts = self._pm.parse_hookimpl_opts(obj, attr) if callable(value) else None
            if opts is None or attr in known or opts.get("optionalhook"):
                continue
            guess = difflib.get_close_matches(attr, known, n=1)
            hint = f" (did you mean {guess[0]}?)" if guess else ""
            problems.append(f"implements unknown hook {attr!r}{hint}")
        return problems

    def _fail(
        self,
        name: str,
        error: str,
        *,
        module: str | None = None,
        distribution: str | None = None,
        version: str | None = None,
        builtin: bool = False,
        exc: BaseException | None = None,
        keep: bool = False,
    ) -> None:
        from zhongtai.metadata.base import TableCollision

        if isinstance(exc, TableCollision):
            raise StartupError(self._collision_message(name, exc)) from None
        log.error("could not load plugin %s: %s", name, error)
        if self.strict:
            raise PluginLoadError(f"could not load plugin {name}: {error}") from exc
        if keep:  # a duplicate name must not replace the plugin that holds it
            return
        self.records[name] = PluginRecord(
            name=name,
            module=module,
            distribution=distribution,
            version=version,
            builtin=builtin,
            error=error,
        )

    def owner_of(self, module: str) -> str | None:
        """Name of the plugin whose code defines ``module``, or None.

        A plugin owns its entry module and that module's submodules; it owns the
        whole top-level package only when no other installed plugin lives in it.
        """
        candidates = dict(self._installed)
        candidates.update({r.name: r.module for r in self.records.values() if r.module})
        candidates = {n: m for n, m in candidates.items() if not m.startswith("zhongtai.")}
        for name, owner in candidates.items():
            if module == owner or module.startswith(owner + "."):
                return name
        package = module.split(".", 1)[0]
        same = [n for n, m in candidates.items() if m.split(".", 1)[0] == package]
        return same[0] if len(same) == 1 else None

    def _collision_message(self, name: str, exc: Exception) -> str:
        table, owner_module = getattr(exc, "table", "?"), getattr(exc, "owner", "?")
        if owner_module.split(".", 1)[0] == "zhongtai":
            owner = "the core"
        else:
            name_ = self.owner_of(owner_module)
            owner = f"plugin {name_!r}" if name_ else f"module {owner_module}"
        return f"plugin {name!r} defines table {table!r}, which {owner} already defines"

    def unload(self, name: str, error: str, exc: BaseException | None = None) -> None:
        """Unregister a loaded plugin whose hook failed, keeping the error for reports."""
        record = self.records.get(name)
        if record is None:
            return
        if record.obj is not None and self._pm.is_registered(record.obj):
            self._pm.unregister(record.obj)
        record.obj = None
        self._event_handlers = None
        record.error = error
        log.error("unloaded plugin %s: %s", name, error)
        if self.strict:
            raise PluginLoadError(f"plugin {name} failed: {error}") from exc

    # -- calling -------------------------------------------------------------

    def loaded(self) -> list[PluginRecord]:
        """The plugins that loaded, built-ins first, in load order."""
        return [r for r in self.records.values() if r.loaded]

    def get(self, name: str) -> PluginRecord | None:
        return self.records.get(name)

    def call_each(self, hook: str, **kwargs: Any) -> list[tuple[PluginRecord, Any]]:
        """Call ``hook`` on each loaded plugin on its own; unload any plugin that raises.

        Used while the app is assembled, where a broken plugin must be skipped rather
        than take the platform down. Results that are None are left out.
        """
        results = []
        for record in list(self.loaded()):
            impl = self._impl_of(hook, record)
            if impl is None:
                continue
            try:
                value = resolve_sync(impl.function(*[kwargs[a] for a in impl.argnames]))
            except Exception as exc:
                self.unload(record.name, f"{hook}: {_describe_exc(exc)}", exc)
                continue
            if value is not None:
                results.append((record, value))
        return results

    async def acall_each(self, hook: str, *, unload: bool, **kwargs: Any) -> None:
        """Async variant for lifecycle hooks; errors unload the plugin or are only logged."""
        from zhongtai.hooks.asyncutil import await_me_maybe

        for record in list(self.loaded()):
            impl = self._impl_of(hook, record)
            if impl is None:
                continue
            try:
                await await_me_maybe(impl.function(*[kwargs[a] for a in impl.argnames]))
            except Exception as exc:
                if unload:
                    self.unload(record.name, f"{hook}: {_describe_exc(exc)}", exc)
                else:
                    log.exception("plugin %s: %s failed", record.name, hook)

    def dispatch_event(self, event: Event, platform: Platform) -> None:
        """Deliver one event to every ``on_event`` implementation, each isolated."""
        handlers = self._event_handlers
        if handlers is None:
            handlers = self._event_handlers = [
                (record.name, impl.function, impl.argnames)
                for record in self.loaded()
                if (impl := self._impl_of("on_event", record)) is not None
            ]
        args = {"event": event, "platform": platform}
        for name, function, argnames in handlers:
            try:
                resolve_sync(function(*[args[a] for a in argnames]))
            except Exception:
                log.exception("plugin %s: on_event(%s) failed", name, event.name)

    def _impl_of(self, hook: str, record: PluginRecord) -> pluggy.HookImpl | None:
        caller = getattr(self._pm.hook, hook)
        for impl in caller.get_hookimpls():
            if impl.plugin is record.obj:
                return cast(pluggy.HookImpl, impl)
        return None

    @property
    def hook(self) -> Any:
        """The raw pluggy relay, for hooks that plugins declare for each other."""
        return self._pm.hook


def _is_caller(value: object) -> bool:
    return isinstance(value, pluggy.HookCaller)


def _entry_points() -> list[Any]:
    # Listing reads package metadata only; stevedore imports the ones chosen.
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


def _dist_name(entry_point: Any) -> str | None:
    dist = getattr(entry_point, "dist", None)
    return getattr(dist, "name", None) if dist else None


def _dist_version(entry_point: Any) -> str | None:
    dist = getattr(entry_point, "dist", None)
    return getattr(dist, "version", None) if dist else None


def _describe_exc(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
