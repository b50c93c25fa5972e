"""``zhongtai hello NAME``: the command this plugin adds to the ``zhongtai`` CLI."""

from __future__ import annotations

import click

from zhongtai_hello import PLUGIN_NAME
from zhongtai_hello.models import NAME_MAX, create_greeting
from zhongtai_hello.settings import HelloSettings


@click.command(PLUGIN_NAME)
@click.argument("name")
@click.option("--save", is_flag=True, help="Also store the greeting in the database.")
@click.option("--project", metavar="ID", help="The project to store it in (with --save).")
def hello(name: str, save: bool, project: str | None) -> None:
    """Print a greeting for NAME (the word comes from ZHONGTAI_HELLO__GREETING).

    With --save --project ID the greeting is stored as if it had been POSTed to
    /api/v1/hello/greetings, and the hello.greeting.created event is delivered. The
    shell is the operator's: no user permission is checked, but the project must exist.
    """
    # The core's CLI helpers turn bad settings, an unreachable database or an
    # out-of-date schema into one line on stderr and an exit status, no traceback.
    from zhongtai.cli import operator_errors, platform_or_exit
    from zhongtai.settings import load_plugin_settings

    name = name.strip()
    if not 1 <= len(name) <= NAME_MAX:
        raise click.BadParameter(f"must be 1-{NAME_MAX} characters", param_hint="NAME")
    if save and not project:
        raise click.UsageError("--save needs --project ID")
    if project and not save:
        # Refused rather than ignored: the caller may think the greeting was stored.
        raise click.UsageError("--project is only used with --save")
    if not save:
        # Printing needs only the settings, not the database.
        with operator_errors():
            settings = load_plugin_settings(PLUGIN_NAME, HelloSettings)
        assert isinstance(settings, HelloSettings)
        click.echo(settings.render(name))
        return

    # "auto": migrate the embedded SQLite database, refuse an out-of-date PostgreSQL one.
    platform = platform_or_exit(schema="auto")
    try:
        settings = platform.plugin_settings(PLUGIN_NAME)
        assert isinstance(settings, HelloSettings)
        from zhongtai.identity.models import Project

        with operator_errors(), platform.db.transaction() as session:
            if session.get(Project, project) is None:
                raise click.BadParameter(f"no project with id {project!r}", param_hint="--project")
            row = create_greeting(session, str(project), name, settings.render(name))
        click.echo(row.message)
        click.echo(f"saved greeting {row.id}", err=True)
    finally:
        platform.close()
