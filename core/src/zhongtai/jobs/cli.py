"""``zhongtai worker``: run jobs from Redis (queue driver ``rq``)."""

from __future__ import annotations

import asyncio
import sys

import click


@click.command()
@click.option(
    "--queue",
    "queues",
    multiple=True,
    help="A job queue to take from (repeatable; default: every queue of the installed job types).",
)
@click.option("--burst", is_flag=True, help="Exit once the queues are empty.")
@click.option("--name", default=None, help="The worker's name (default: RQ's, unique).")
def worker(queues: tuple[str, ...], burst: bool, name: str | None) -> None:
    """Run jobs from Redis. Start any number, on any machine that reaches the database
    and Redis; each runs one job at a time, in its own process.

    Needs ZHONGTAI_JOBS__QUEUE=rq (the embedded queue runs jobs inside `zhongtai
    serve`). Refuses to start when a plugin whose job types the servers run is not
    installed here.
    """
    from zhongtai.cli.main import load_settings_or_exit, operator_errors
    from zhongtai.jobs.engine import jobs_engine
    from zhongtai.jobs.queue.rq import PlatformWorker, RQQueue, set_engine
    from zhongtai.logs import configure_logging
    from zhongtai.platform import bootstrap

    settings = load_settings_or_exit()
    configure_logging(settings.log_level, settings.log_format)
    if settings.jobs.queue != "rq":
        click.echo(
            f"zhongtai worker: ZHONGTAI_JOBS__QUEUE is {settings.jobs.queue!r}: jobs run inside "
            "`zhongtai serve`. Set ZHONGTAI_JOBS__QUEUE=rq (and ZHONGTAI_JOBS__REDIS_URL) "
            "on the servers and workers to run them here.",
            err=True,
        )
        sys.exit(2)
    with operator_errors():
        platform = bootstrap(settings, schema="check")
    manager = platform.plugins
    try:
        asyncio.run(manager.acall_each("startup", unload=True, platform=platform))
        engine = jobs_engine(platform)
        driver = engine.driver
        assert isinstance(driver, RQQueue)
        missing = driver.missing_plugins()
        if missing:
            for job_type, plugin in sorted(missing.items()):
                click.echo(
                    f"zhongtai worker: job type {job_type} needs plugin {plugin!r}, "
                    "which is not installed (or failed to load) here",
                    err=True,
                )
            sys.exit(1)
        wanted = list(queues) or sorted({t.queue for t in engine.types})
        set_engine(engine)
        names = driver.queue_names(wanted)
        click.echo(f"zhongtai worker: taking jobs from {', '.join(names)}")
        # Jobs run in this thread: it keeps its database connections between them.
        with platform.db.keeping():
            worker = PlatformWorker(names, connection=driver.worker_redis(), name=name)
            worker.work(burst=burst)
    finally:
        set_engine(None)
        asyncio.run(manager.acall_each("shutdown", unload=False, platform=platform))
        platform.close()
