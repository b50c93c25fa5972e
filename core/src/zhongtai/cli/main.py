"""The ``zhongtai`` command: serve, db, plugins, settings, and plugins' commands.

Configuration errors print one line per problem and exit with status 2; a database
that cannot be reached or a refused start-up exits with status 1. No tracebacks
for operator errors.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

if TYPE_CHECKING:
    from zhongtai.platform import Platform, SchemaPolicy
    from zhongtai.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def _die(lines: list[str], code: int) -> NoReturn:
    for line in lines:
        click.echo(f"zhongtai: {line}", err=True)
    sys.exit(code)


@contextmanager
def operator_errors() -> Iterator[None]:
    """Turn configuration and start-up failures into one clear line and an exit code."""
    from zhongtai.drivers import DriverError
    from zhongtai.hooks.manager import PluginLoadError, StartupError
    from zhongtai.metadata.database import DatabaseUnavailable
    from zhongtai.metadata.migrations import MigrationError
    from zhongtai.settings import SettingsError

    try:
        yield
    except SettingsError as exc:
        _die(exc.problems, 2)
    except (DatabaseUnavailable, StartupError, DriverError, PluginLoadError, MigrationError) as exc:
        _die([str(exc)], 1)


def load_settings_or_exit() -> Settings:
    from zhongtai.settings import load_settings

    with operator_errors():
        return load_settings()


def platform_or_exit(schema: SchemaPolicy = "skip") -> Platform:
    """Bootstrap the platform for a command, or print why not and exit.

    Public for plugins' commands (``from zhongtai.cli import platform_or_exit``).
    ``schema`` as for :func:`zhongtai.platform.bootstrap`; the default leaves the
    schema alone, which is what the ``db`` commands need. The caller closes it.
    """
    from zhongtai.logs import configure_logging
    from zhongtai.platform import bootstrap

    settings = load_settings_or_exit()
    configure_logging("WARNING", "text")
    with operator_errors():
        return bootstrap(settings, schema=schema)


class PluginCommands(click.Group):
    """A group that adds the commands plugins contribute through ``register_commands``."""

    _loaded: dict[str, click.Command] | None = None

    def _plugin_commands(self) -> dict[str, click.Command]:
        if self._loaded is None:
            self._loaded = {}
            try:
                from zhongtai.platform import load_plugins
                from zhongtai.settings import load_settings

                manager, _ = load_plugins(load_settings())
            except Exception as exc:  # a broken setup must not hide the core's commands
                click.echo(f"zhongtai: plugin commands unavailable: {exc}", err=True)
                return self._loaded
            for record, commands in manager.call_each("register_commands"):
                for command in commands:
                    name = command.name or ""
                    if name in self.commands or name in self._loaded:
                        click.echo(
                            f"zhongtai: plugin {record.name}: command {name!r} already exists",
                            err=True,
                        )
                        continue
                    self._loaded[name] = command
        return self._loaded

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._plugin_commands()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        return self._plugin_commands().get(cmd_name)


@click.group(cls=PluginCommands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="zhongtai")
def cli() -> None:
    """zhongtai: one place to take data in, train, serve and release models.

    Configure with ZHONGTAI_* environment variables or a TOML file
    (ZHONGTAI_CONFIG, else $ZHONGTAI_HOME/zhongtai.toml); see `zhongtai settings`.
    """


@cli.command()
@click.option("--host", default=None, help="Address to bind (default: ZHONGTAI_HOST, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default: ZHONGTAI_PORT, 8000).")
@click.option("--workers", type=int, default=None, help="Worker processes (default: 1).")
@click.option("--reload", is_flag=True, help="Restart on code changes (development).")
def serve(host: str | None, port: int | None, workers: int | None, reload: bool) -> None:
    """Start the web server (API, UI, docs at /api/docs).

    On the embedded SQLite database the schema is migrated on start; on
    PostgreSQL an out-of-date schema stops start-up: run `zhongtai db upgrade`.
    """
    import uvicorn

    from zhongtai.logs import configure_logging
    from zhongtai.platform import bootstrap
    from zhongtai.web.app import build_app

    settings = load_settings_or_exit()
    configure_logging(settings.log_level, settings.log_format)
    host = host or settings.host
    port = port or settings.port
    workers = workers or settings.workers
    # Links the server prints (the setup link) name the address it really listens on.
    settings = settings.model_copy(update={"host": host, "port": port})
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": "uvloop",
        "http": "httptools",  # keeps TCP_NODELAY on keep-alive connections
        "log_config": None,
        "access_log": False,
        # Client addresses (audit log, login throttling) come from the socket unless
        # the operator names the proxies whose X-Forwarded-For may be believed.
        "proxy_headers": bool(settings.forwarded_allow_ips),
    }
    if settings.forwarded_allow_ips:
        options["forwarded_allow_ips"] = settings.forwarded_allow_ips
    with operator_errors():
        platform = bootstrap(settings)  # validates everything and migrates, once
    click.echo(f"zhongtai: serving on http://{host}:{port} (database: {platform.db.display_url})")
    if workers > 1 or reload:
        platform.close()
        uvicorn.run(
            "zhongtai.web.app:create_app_from_env",
            factory=True,
            workers=workers,
            reload=reload,
            **options,
        )
    else:
        uvicorn.run(build_app(platform), **options)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins(as_json: bool) -> None:
    """List plugins: name, distribution, version, hooks, load error."""
    from zhongtai.platform import load_plugins

    settings = load_settings_or_exit()
    with operator_errors():
        manager, _ = load_plugins(settings)
    records = [r.to_dict() for r in manager.records.values()]
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    for r in records:
        origin = "built-in" if r["builtin"] else f"{r['distribution'] or '?'} {r['version'] or ''}"
        state = "ok" if r["loaded"] else f"FAILED: {r['error']}"
        click.echo(f"{r['name']:<12} {origin.strip():<28} {state}")
        if r["hooks"]:
            click.echo(f"{'':<12} hooks: {', '.join(r['hooks'])}")


@cli.command("settings")
def show_settings() -> None:
    """Show every setting (core and plugins) as environment variables, secrets masked."""
    from zhongtai.platform import load_plugins
    from zhongtai.settings import ENV_PREFIX, env_prefix_for, masked

    settings = load_settings_or_exit()
    with operator_errors():
        _, plugin_config = load_plugins(settings)
    for key, value in masked(settings, ENV_PREFIX).items():
        click.echo(f"{key}={value}")
    for name, model in plugin_config.items():
        for key, value in masked(model, env_prefix_for(name)).items():
            click.echo(f"{key}={value}")


@cli.group()
def db() -> None:
    """Database schema: upgrade, downgrade, current, history, revision."""


@db.command()
@click.argument("target", default="heads")
def upgrade(target: str) -> None:
    """Apply pending migrations of the core and every plugin (default: all heads)."""
    platform = platform_or_exit()
    with operator_errors():
        platform.migrations().upgrade(target)
    click.echo("zhongtai: database is up to date" if target == "heads" else f"upgraded to {target}")


@db.command()
@click.argument("target")
def downgrade(target: str) -> None:
    """Revert to TARGET: a revision id, `-1`, or `<branch>@base` to remove a plugin's tables."""
    platform = platform_or_exit()
    with operator_errors():
        platform.migrations().downgrade(target)
    click.echo(f"zhongtai: downgraded to {target}")


@db.command()
def current() -> None:
    """Show the revisions applied to the database and whether any are pending."""
    platform = platform_or_exit()
    with operator_errors():
        migrations = platform.migrations()
        applied = sorted(migrations.current())
        pending = migrations.pending()
    for rev in applied:
        click.echo(rev)
    click.echo(f"{len(pending)} pending" if pending else "up to date")


@db.command()
def history() -> None:
    """List every revision of every branch, newest first."""
    platform = platform_or_exit()
    with operator_errors():
        for line in platform.migrations().history():
            click.echo(line)


@db.command()
@click.option("--branch", required=True, help="`core` or a plugin's name.")
@click.option("-m", "--message", required=True, help="What the revision changes.")
@click.option("--autogenerate", is_flag=True, help="Compare the branch's tables to the models.")
def revision(branch: str, message: str, autogenerate: bool) -> None:
    """Write a new migration file on BRANCH (for plugin authors)."""
    platform = platform_or_exit()
    with operator_errors():
        path = platform.migrations().revision(branch, message, autogenerate=autogenerate)
    click.echo(path)


def main() -> None:
    cli(prog_name="zhongtai")
