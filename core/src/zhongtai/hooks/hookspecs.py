"""Every hook a zhongtai plugin can implement, in one place.

A plugin is a module (or object) listed under the entry-point group
``zhongtai.plugins``; it implements any of these with ``@zhongtai.hookimpl``.
All loaded plugins are called and their results collected, unless a hook says it
stops at the first non-None result. Implementations may take fewer arguments than
the specification (pluggy passes only the ones they name), and may be ``async``:
the core awaits whatever they return.

Evolving this module: add arguments, never rename or remove them; deprecations go
through :mod:`zhongtai.hooks.deprecated`. Each hook below has a test that
exercises it and an entry with its exact signature in ``docs/plugins.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from zhongtai.hooks.markers import hookspec

if TYPE_CHECKING:
    import click
    from litestar.types import ControllerRouterHandler

    from zhongtai.hooks.events import Event
    from zhongtai.identity.roles import Permission
    from zhongtai.jobs.admission import Admission, AdmissionRequest
    from zhongtai.jobs.types import JobType
    from zhongtai.platform import Platform
    from zhongtai.settings import PluginSettings
    from zhongtai.ui.panels import Panel


# ---------------------------------------------------------------------------
# Lifecycle
# ---------------------------------------------------------------------------


@hookspec
def register_settings() -> type[PluginSettings] | None:
    """Called once when the plugin loads; return the plugin's settings model or None.

    The model subclasses :class:`zhongtai.settings.PluginSettings`. Its fields are
    read from ``ZHONGTAI_<PLUGIN>__<FIELD>`` environment variables and the TOML
    table ``[<plugin>]``, validated at start-up (a bad value stops start-up with a
    message naming the variable), and listed by ``zhongtai settings`` with secrets
    masked. Read the values at run time with ``platform.plugin_settings(name)``.

    Added in 0.1.
    """


@hookspec
def register_hookspecs() -> list[object] | None:
    """Called when plugins load, before any registers; return modules or classes of hookspecs.

    Lets a plugin declare hooks for other plugins, as pytest plugins do with
    ``pytest_addhooks``: the train plugin can offer ``register_evaluators`` and an
    evaluation plugin implement it. Mark the specifications with
    ``zhongtai.hookspec``. Implementations of declared hooks are checked like the
    core's: a misspelled one is refused. Called without a platform, so it must
    not do work beyond returning the specifications.

    Added in 0.1.
    """


@hookspec
def startup(platform: Platform) -> Any:
    """Called once when the web app (or a worker) starts, after migrations.

    Args:
        platform: the running platform (settings, database, object store, stash).

    Return value is ignored; may be a coroutine. A plugin whose ``startup`` raises
    is reported and unloaded; the platform still starts.

    Added in 0.1.
    """


@hookspec
def shutdown(platform: Platform) -> Any:
    """Called once when the web app (or a worker) stops. Errors are logged, not raised.

    Added in 0.1.
    """


# ---------------------------------------------------------------------------
# Web
# ---------------------------------------------------------------------------


@hookspec
def register_routes(platform: Platform) -> list[ControllerRouterHandler] | None:
    """Called while the app is assembled; return Litestar routers, controllers or handlers.

    A plugin's routes are mounted under ``/api/v1/<plugin>/``: a controller with
    ``path = "/items"`` in plugin ``hello`` answers at ``/api/v1/hello/items``. A
    plugin cannot shadow a core URL: a plugin named like a core route prefix is
    refused. Handlers get the platform by declaring a ``platform: PlatformDep`` argument
    (``from zhongtai.web.params import PlatformDep``).

    Added in 0.1.
    """


@hookspec
def register_root_routes(platform: Platform) -> dict[str, list[ControllerRouterHandler]] | None:
    """Called while the app is assembled; return routes that live outside ``/api/v1``.

    For a plugin that serves a protocol whose paths are fixed by others' clients
    (MLflow's REST API under ``/mlflow``, an OpenAI-compatible endpoint): a mapping
    of one top-level path segment to the routes mounted under it, e.g.
    ``{"mlflow": [proxy]}`` answers at ``/mlflow/…``. The segment must be free: the
    core's own (``api``, ``ui``, ``healthz``, …) and another plugin's are refused, and
    the plugin is unloaded with the reason. The routes declare their access like any
    other (``opt=requires(...)``, ``authenticated()``, ``public()``).

    Added in 0.1.
    """


@hookspec
def register_panels() -> list[Panel] | None:
    """Called while the app is assembled; return the web UI's pages and dashboard cards.

    Each :class:`zhongtai.ui.Panel` has a title in English and Chinese, an icon, a
    route, a template from the plugin's own ``templates/`` folder, the permission it
    takes to see it and, optionally, a function that gathers the template's data (and
    one that handles its form). A plugin's pages answer under ``/ui/<plugin>/``; its
    templates are named ``<plugin>/<file>`` and its static files are served from
    ``/ui/static/<plugin>/``, so no plugin can replace another's. Pages appear in the
    navigation of users who hold the permission; cards on the dashboard.

    Added in 0.1.
    """


# ---------------------------------------------------------------------------
# Identity
# ---------------------------------------------------------------------------


@hookspec
def register_permissions() -> list[Permission] | None:
    """Called once when plugins load; return the named actions the plugin's routes guard.

    Each is a :class:`zhongtai.identity.roles.Permission` whose name starts with the
    plugin's name (``data.dataset.write``), with a description and the lowest role
    that holds it by default (``Role.viewer`` … ``Role.owner``). A permission outside
    the plugin's prefix, or one another plugin already declares, unloads the plugin.

    Added in 0.1.
    """


# ---------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------


@hookspec
def register_migrations() -> str | Path | None:
    """Called when migrations are collected; return the plugin's Alembic versions folder.

    The plugin's revisions form one branch whose label is the plugin's name; its
    first revision sets ``branch_labels = ("<plugin>",)`` and ``depends_on`` the
    core revision it needs. The plugin's tables are named ``<plugin>_*``; a table
    another plugin already defines stops start-up with a message naming both.

    Added in 0.1.
    """


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


@hookspec
def register_commands() -> list[click.Command] | None:
    """Called when the ``zhongtai`` command starts; return click commands or groups to add.

    A command whose name is already taken (by the core or an earlier plugin) is
    skipped with a warning.

    Added in 0.1.
    """


# ---------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------


@hookspec
def register_job_types() -> list[JobType] | None:
    """Called once when plugins load; return the kinds of job the plugin runs.

    Each is a :class:`zhongtai.jobs.JobType`: a name starting with the plugin's name
    (``data.import``), a pydantic model for its parameters, a handler
    ``handler(ctx, params)`` (sync or async), and its default queue, priority,
    timeout, retries with backoff, resources and extra permission. A name outside
    the plugin's prefix, a duplicate, or a permission nobody declared unloads the
    plugin. Workers run only registered types.

    Added in 0.1.
    """


@hookspec(firstresult=True)
def admit_job(request: AdmissionRequest, platform: Platform) -> Admission | None:
    """Called when a job is submitted, before a held job is released, and before a
    queued job starts; return an :class:`zhongtai.jobs.Admission` to decide.

    ``request.phase`` says which: ``"submit"`` (``refuse`` answers the submitter 429,
    ``hold`` keeps the job ``held``), ``"release"`` (a held job: ``admit`` queues it)
    or ``"start"`` (a worker is about to run it: ``hold`` sends it back to ``held``).
    Stops at the first non-None result; the core's own policy (running jobs per
    project, pending jobs per project, from ``[jobs]`` settings) runs last. Keep it
    fast: it runs inside the transaction that changes the job. An implementation that
    decides only some job types declares them with ``zhongtai.jobs.admits_only``: jobs
    of other types then start without asking it (on PostgreSQL, in one statement).

    Added in 0.1.
    """


# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------


@hookspec
def on_event(event: Event, platform: Platform) -> Any:
    """Called after a transaction commits, once for each domain event it recorded.

    Args:
        event: a dataclass with a ``name`` such as ``lineage.edge.created``.
        platform: the running platform.

    Each implementation is called on its own: one that raises is logged and the
    others still run. May be a coroutine.

    Added in 0.1.
    """
