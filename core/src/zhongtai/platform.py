"""The running platform: settings, plugins, database, object store — one per app.

:func:`bootstrap` builds it from settings in a fixed order (plugins, their settings,
the database and its schema, the object store). Route handlers receive it by
declaring a ``platform: Platform`` argument; hooks receive it as ``platform``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast

from zhongtai.hooks.manager import PluginManager, StartupError
from zhongtai.jobs.types import JobTypeRegistry
from zhongtai.settings import PluginSettings, Settings, SettingsError, load_plugin_settings

if TYPE_CHECKING:
    from zhongtai.identity.roles import PermissionRegistry
    from zhongtai.metadata.database import Database
    from zhongtai.metadata.migrations import Migrations
    from zhongtai.storage import ObjectStore

log = logging.getLogger("zhongtai")

T = TypeVar("T")
SchemaPolicy = Literal["auto", "upgrade", "check", "skip"]


class StashKey(Generic[T]):
    """A typed key for plugin state kept on the platform (pytest's ``StashKey``)."""

    __slots__ = ()


class Stash:
    """Typed storage for plugin state: ``platform.stash[KEY] = value``."""

    def __init__(self) -> None:
        self._data: dict[StashKey[Any], Any] = {}

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        self._data[key] = value

    def __getitem__(self, key: StashKey[T]) -> T:
        return cast(T, self._data[key])

    def get(self, key: StashKey[T], default: T) -> T:
        return cast(T, self._data.get(key, default))

    def __contains__(self, key: StashKey[Any]) -> bool:
        return key in self._data


class Platform:
    """Everything a route, hook or job needs, built once per app instance.

    A plain class on purpose: Litestar would try to validate a dataclass it injects.
    """

    def __init__(
        self,
        settings: Settings,
        plugins: PluginManager,
        db: Database,
        storage: ObjectStore,
        plugin_config: dict[str, PluginSettings] | None = None,
    ) -> None:
        self.settings = settings
        self.plugins = plugins
        self.db = db
        self.storage = storage
        self.plugin_config: dict[str, PluginSettings] = plugin_config or {}
        self.migration_branches: dict[str, Path] = {}
        self.stash = Stash()
        # Read once: the key file is generated on first start and never changes.
        self.secret_key = settings.resolved_secret_key()
        self.permissions: PermissionRegistry = _empty_registry()
        self.job_types: JobTypeRegistry = JobTypeRegistry()
        self._on_close: list[Callable[[], None]] = []

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the platform is closed (last registered, first called):
        for what a plugin started that must not outlive the platform's database."""
        self._on_close.append(callback)

    def plugin_settings(self, name: str) -> PluginSettings:
        """The validated settings of plugin ``name`` (from its ``register_settings``)."""
        return self.plugin_config[name]

    def migrations(self) -> Migrations:
        from zhongtai.metadata.migrations import Migrations

        return Migrations(self.db, self.migration_branches)

    def close(self) -> None:
        while self._on_close:
            callback = self._on_close.pop()
            try:
                callback()
            except Exception:
                log.exception("closing the platform: %r failed", callback)
        self.db.dispose()


def _empty_registry() -> PermissionRegistry:
    from zhongtai.identity.permissions import build_registry

    return build_registry()


def load_plugins(
    settings: Settings,
    *,
    plugins: Sequence[str] | None = None,
    extra_plugins: Iterable[tuple[str, object]] = (),
    discover: bool = True,
) -> tuple[PluginManager, dict[str, PluginSettings]]:
    """Load plugins, check their tables and read their settings.

    Raises:
        StartupError: a table collision or a plugin table without its prefix.
        SettingsError: a plugin setting is invalid.
    """
    manager = PluginManager(strict=settings.strict_plugins)
    manager.load(
        only=plugins if plugins is not None else settings.plugins,
        disable=settings.disable_plugins,
        extra=extra_plugins,
        discover=discover,
    )
    check_tables(manager)
    config: dict[str, PluginSettings] = {}
    problems: list[str] = []
    for record, model in manager.call_each("register_settings"):
        try:
            config[record.name] = load_plugin_settings(record.name, model)
        except SettingsError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SettingsError(problems)
    return manager, config


def check_tables(manager: PluginManager) -> None:
    """Refuse to start when a plugin's table lacks the ``<plugin>_`` prefix."""
    from zhongtai.metadata.base import table_owners

    for table, module in sorted(table_owners().items()):
        if module.split(".", 1)[0] == "zhongtai":
            continue
        owner = manager.owner_of(module)
        record = manager.get(owner) if owner else None
        if record is None or not record.loaded:
            continue
        if not table.startswith(f"{record.name}_"):
            raise StartupError(
                f"plugin {record.name}: table {table!r} must be named {record.name}_…"
            )


def bootstrap(
    settings: Settings,
    *,
    plugins: Sequence[str] | None = None,
    extra_plugins: Iterable[tuple[str, object]] = (),
    discover: bool = True,
    schema: SchemaPolicy = "auto",
) -> Platform:
    """Build the platform from settings.

    Args:
        settings: validated core settings.
        plugins: entry-point names to load (default: ``settings.plugins`` or all).
        extra_plugins: ``(name, object)`` plugins registered directly (tests).
        discover: False loads no installed plugin, only built-ins and extras.
        schema: ``"upgrade"`` applies pending migrations, ``"check"`` raises
            StartupError when any are pending, ``"skip"`` does neither (the ``db``
            commands). ``"auto"``: upgrade the embedded SQLite database, check
            PostgreSQL, where an operator runs ``zhongtai db upgrade``.

    Raises:
        SettingsError, StartupError, DatabaseUnavailable, DriverError.
    """
    from zhongtai.drivers import load_driver
    from zhongtai.metadata.database import Database

    settings.ensure_home()
    manager, config = load_plugins(
        settings, plugins=plugins, extra_plugins=extra_plugins, discover=discover
    )
    store_cls = load_driver("zhongtai.storage", settings.storage.driver)
    storage = store_cls.from_settings(settings.storage, settings.home)

    holder: list[Platform] = []
    db = Database(
        settings.effective_database_url,
        event_sink=lambda event: manager.dispatch_event(event, holder[0]),
    )
    platform = Platform(
        settings=settings, plugins=manager, db=db, storage=storage, plugin_config=config
    )
    holder.append(platform)
    try:
        from zhongtai.identity.permissions import collect_permissions

        platform.permissions = collect_permissions(manager)
        from zhongtai.jobs.types import collect_job_types

        platform.job_types = collect_job_types(manager, platform.permissions)
        db.ping()
        platform.migration_branches = collect_migrations(manager)
        prepare_schema(platform, schema)
    except BaseException:
        db.dispose()
        raise
    return platform


def collect_migrations(manager: PluginManager) -> dict[str, Path]:
    branches: dict[str, Path] = {}
    for record, location in manager.call_each("register_migrations"):
        path = Path(location)
        if not path.is_dir():
            manager.unload(record.name, f"register_migrations: no such folder {path}")
            continue
        branches[record.name] = path
    return branches


def prepare_schema(platform: Platform, schema: SchemaPolicy) -> None:
    if schema == "skip":
        return
    migrations = platform.migrations()
    if migrations.is_current():
        # The last command left the schema at every head of these very version
        # folders (see zhongtai.metadata.migrations): nothing to apply or park, and no
        # need to import Alembic and build its revision map (~0.3 s) to learn it.
        return
    if schema == "upgrade" or (schema == "auto" and platform.db.is_embedded):
        migrations.upgrade()
        return
    pending = migrations.pending()
    if pending:
        raise StartupError(
            f"the database schema is out of date ({len(pending)} pending migration"
            f"{'s' if len(pending) != 1 else ''}); run `zhongtai db upgrade` first"
        )
