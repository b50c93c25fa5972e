"""The plain-RQ baseline's job function for bench/jobs.py (``hello.noop`` without zhongtai).

Imported by ``rq worker -P bench`` as ``_noop.noop``; it does nothing, so what a
worker spends per job is RQ's own bookkeeping, as for the platform's no-op job.
"""

from __future__ import annotations


def noop(job_id: str) -> None:
    """Do nothing. The one argument mirrors what a platform RQ job carries: its id."""
