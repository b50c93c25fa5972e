"""``hello.echo``: the example job type (``register_job_types``).

It logs its text ``repeat`` times, reporting progress, and can be asked to sleep
between lines (to watch it live, or cancel it) or to fail (to see a failure).
Submit it with ``POST /api/v1/jobs``::

    {"type": "hello.echo", "project": "<project id>", "params": {"text": "hi", "repeat": 3}}
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from zhongtai.jobs import JobContext, JobType
from zhongtai_hello.permissions import GREETING_WRITE


class EchoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=1000)
    repeat: int = Field(default=1, ge=1, le=100_000)
    delay: float = Field(default=0.0, ge=0.0, le=60.0, description="Seconds between lines.")
    fail: bool = Field(default=False, description="Raise after the lines (a failure demo).")


def echo(ctx: JobContext, params: EchoParams) -> dict[str, Any]:
    """Log ``text`` ``repeat`` times; stop early when cancelled."""
    for i in range(params.repeat):
        if params.delay and ctx.wait(params.delay):
            ctx.check_cancelled()
        ctx.check_cancelled()
        ctx.log(f"{i + 1}: {params.text}")
        ctx.progress((i + 1) / params.repeat, f"line {i + 1} of {params.repeat}")
    if params.fail:
        raise RuntimeError(f"asked to fail after {params.repeat} lines")
    return {"lines": params.repeat}


ECHO = JobType(
    "hello.echo",
    echo,
    EchoParams,
    description="Log a line of text, some number of times",
    timeout=600,
    retries=2,
    backoff=1.0,
    permission=GREETING_WRITE.name,
)


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def noop(ctx: JobContext, params: NoParams) -> None:
    """Do nothing: what the engine itself costs (bench/jobs.py)."""


NOOP = JobType("hello.noop", noop, NoParams, description="Do nothing (benchmarks)", timeout=60)
