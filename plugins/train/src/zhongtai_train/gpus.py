"""GPU monitoring: each node's NVIDIA GPUs, sampled with NVML into a bounded time series.

**Sampling.** Every process that runs the plugin's ``startup`` hook (the server and
each ``zhongtai worker``) starts one :class:`Sampler` thread. Every
``gpu_sample_interval`` seconds it reads, per GPU, utilization, memory, temperature,
power and the running compute processes, and maps each process to the platform job
it belongs to by the ``ZHONGTAI_JOB_ID`` in its ``/proc/<pid>/environ``.

**One writer per node.** Several processes on one machine see the same GPUs. The
node's row in ``train_gpu_nodes`` is a lease: a sampler writes only while the row
names it and the lease has not run out (three intervals, at least 15 s); every
round renews it, and a sampler that stops hands it back at once. The others keep
checking, so one of them takes over within a lease when the writer dies. A lease
rather than tolerating duplicates: each process would otherwise read its own
instant, so duplicates would not even share a key, and the series would hold every
reading once per process.

**No GPU.** A machine without an NVIDIA GPU, without the driver, or without
``pynvml`` records its node row with ``gpu_count = 0`` and the reason, logs it once
at INFO, and tries NVML again every minute. It never raises and never logs a
traceback per round.

**Bounded.** Each round deletes samples, processes and nodes older than
``gpu_history`` seconds (every node's, so a machine that went away is forgotten too).

**Routes** (under ``/api/v1/train``): ``GET /gpus`` (now), ``GET /gpus/history``
(series per GPU, averaged in time buckets), ``GET /gpus/jobs/{job_id}`` (one job's
GPU use). Node data is for any signed-in caller; which job a process belongs to
only for callers who can read that job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import sqlalchemy as sa
from litestar import get
from litestar.params import PathParameter, QueryParameter
from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Float,
    Integer,
    Subquery,
    and_,
    delete,
    false,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from zhongtai.hooks.events import utcnow
from zhongtai.identity.guard import Access, AccessDep, authenticated, requires
from zhongtai.identity.permissions import JOBS_READ
from zhongtai.jobs.models import Job
from zhongtai.platform import StashKey
from zhongtai.ui import Panel, View
from zhongtai.web.errors import field_error
from zhongtai.web.params import PlatformDep
from zhongtai_train.models import NODE_MAX, GpuNode, GpuProcess, GpuSample
from zhongtai_train.settings import TrainSettings

if TYPE_CHECKING:
    from zhongtai.platform import Platform

__all__ = [
    "GPU_PANELS",
    "GPU_ROUTES",
    "GpuReading",
    "ProcessReading",
    "Sampler",
    "job_of_process",
    "start_sampler",
    "stop_sampler",
]

log = logging.getLogger("zhongtai.train.gpus")

JOB_ENV = b"ZHONGTAI_JOB_ID="
JOB_ID = re.compile(r"^[0-9A-Za-z]{1,32}$")
RETRY_NVML = 60.0  # seconds between two tries to open NVML on a node without GPUs
MIN_LEASE = 15.0  # seconds: a writer's lease, at least (3 intervals otherwise)
STALE_AFTER = 30.0  # seconds of silence (at least 3 intervals) before a node is stale
MAX_POINTS = 10_000
DEFAULT_POINTS = 500
MAX_GPU_INDEX = 4095

# NVML's return codes (nvml.h), the same for pynvml and for a stand-in.
_LIBRARY_NOT_FOUND = 12
_DRIVER_NOT_LOADED = 9
_NO_PERMISSION = 4


def _settings(platform: Platform) -> TrainSettings:
    settings = platform.plugin_settings("train")
    assert isinstance(settings, TrainSettings)
    return settings


# --------------------------------------------------------------------------- reading


@dataclasses.dataclass(frozen=True)
class ProcessReading:
    """A compute process on a GPU: its memory on that GPU, and its platform job if known."""

    pid: int
    used_memory: int | None
    job_id: str | None


@dataclasses.dataclass(frozen=True)
class GpuReading:
    """One GPU at one instant (percent, bytes, °C, watts; None: not reported)."""

    index: int
    uuid: str
    name: str
    util_gpu: int | None
    util_memory: int | None
    memory_used: int | None
    memory_total: int | None
    temperature: int | None
    power_draw: float | None
    power_limit: float | None
    processes: tuple[ProcessReading, ...] = ()


def job_of_process(pid: int, proc: Path = Path("/proc")) -> str | None:
    """The ``ZHONGTAI_JOB_ID`` a process was started with, or None.

    None when the variable is absent, malformed, or the environment cannot be read:
    the process has ended, belongs to another user (``/proc/<pid>/environ`` is
    readable by its owner and root only), or lives in another PID namespace (a
    container: NVML reports the host's pids).
    """
    try:
        environ = (proc / str(int(pid)) / "environ").read_bytes()
    except (OSError, ValueError):
        return None
    for item in environ.split(b"\0"):
        if item.startswith(JOB_ENV):
            value = item[len(JOB_ENV) :].decode("ascii", "replace")
            return value if JOB_ID.match(value) else None
    return None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def no_gpu_reason(exc: BaseException) -> str:
    """Why NVML cannot be used here, in words for an operator."""
    code = getattr(exc, "value", None)
    if code == _LIBRARY_NOT_FOUND:
        return "the NVIDIA driver's library (libnvidia-ml.so.1) is not installed"
    if code == _DRIVER_NOT_LOADED:
        return "the NVIDIA driver is not loaded"
    if code == _NO_PERMISSION:
        return "no permission to use the NVIDIA driver"
    return f"NVML: {exc}"


class NvmlReader:
    """Reads this node's GPUs through ``nvml``: the ``pynvml`` module or a stand-in
    with the same names (``nvmlInit``, ``nvmlDeviceGetCount``, …, ``NVMLError``)."""

    def __init__(self, nvml: Any, proc: Path = Path("/proc")) -> None:
        self.nvml = nvml
        self.proc = proc
        self.error: type[BaseException] = getattr(nvml, "NVMLError", Exception)
        self.open = False
        self.driver_version: str | None = None

    def start(self) -> None:
        """``nvmlInit``; raises ``nvml.NVMLError`` where there is no driver."""
        self.nvml.nvmlInit()
        self.open = True
        version = self._maybe(self.nvml.nvmlSystemGetDriverVersion)
        self.driver_version = _text(version) if version is not None else None

    def close(self) -> None:
        if self.open:
            self.open = False
            with contextlib.suppress(Exception):
                self.nvml.nvmlShutdown()

    def _maybe(self, read: Callable[..., Any], *args: Any) -> Any:
        """``read(*args)``, or None where the GPU does not report it (NotSupported, …)."""
        try:
            return read(*args)
        except self.error:
            return None

    def read(self) -> list[GpuReading]:
        """Every GPU's reading; a GPU that cannot be named (lost) is left out."""
        nvml = self.nvml
        readings = []
        for index in range(int(nvml.nvmlDeviceGetCount())):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
                name = _text(nvml.nvmlDeviceGetName(handle))
            except self.error as exc:
                log.debug("GPU %d cannot be read: %s", index, exc)
                continue
            rates = self._maybe(nvml.nvmlDeviceGetUtilizationRates, handle)
            memory = self._maybe(nvml.nvmlDeviceGetMemoryInfo, handle)
            power = self._maybe(nvml.nvmlDeviceGetPowerUsage, handle)
            limit = self._maybe(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
            readings.append(
                GpuReading(
                    index=index,
                    uuid=uuid[:96],
                    name=name[:200],
                    util_gpu=_int(getattr(rates, "gpu", None)),
                    util_memory=_int(getattr(rates, "memory", None)),
                    memory_used=_int(getattr(memory, "used", None)),
                    memory_total=_int(getattr(memory, "total", None)),
                    temperature=_int(self._temperature(handle)),
                    power_draw=power / 1000.0 if power is not None else None,  # mW → W
                    power_limit=limit / 1000.0 if limit is not None else None,
                    processes=self._processes(handle),
                )
            )
        return readings

    def _temperature(self, handle: Any) -> Any:
        nvml = self.nvml
        sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
        if hasattr(nvml, "nvmlDeviceGetTemperatureV"):  # drivers ≥ 565; the old call is deprecated
            value = self._maybe(nvml.nvmlDeviceGetTemperatureV, handle, sensor)
            if value is not None:
                return value
        return self._maybe(nvml.nvmlDeviceGetTemperature, handle, sensor)

    def _processes(self, handle: Any) -> tuple[ProcessReading, ...]:
        nvml = self.nvml
        found: list[Any] | None = None
        for call in (
            "nvmlDeviceGetComputeRunningProcesses",
            "nvmlDeviceGetComputeRunningProcesses_v2",
        ):
            if not hasattr(nvml, call):
                continue
            try:
                found = list(getattr(nvml, call)(handle))
                break
            except Exception as exc:  # NVMLError, or NVMLLibraryMismatchError (old driver)
                log.debug("%s: %s", call, exc)
        memory: dict[int, int | None] = {}
        for item in found or []:
            pid = _int(getattr(item, "pid", None))
            if pid is None:
                continue
            used = _int(getattr(item, "usedGpuMemory", None))
            # One pid may be listed more than once (MIG instances): add its memory up.
            before = memory.get(pid)
            memory[pid] = used if before is None else before + (used or 0)
        return tuple(
            ProcessReading(pid=pid, used_memory=used, job_id=job_of_process(pid, self.proc))
            for pid, used in sorted(memory.items())
        )


def _int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- sampler


class Sampler:
    """Samples one node's GPUs into the platform database (see the module's doc).

    Args:
        platform: The platform whose database receives the samples.
        nvml: The NVML module; default ``pynvml``, imported on first use. Tests pass
            a stand-in for the driver.
        node: The node's name; default the host name.
        interval, history: Default the ``gpu_sample_interval`` and ``gpu_history``
            settings.
        clock: The time of a round (tests move it).
        proc: Where ``/proc`` is.
    """

    def __init__(
        self,
        platform: Platform,
        *,
        nvml: Any = None,
        node: str | None = None,
        interval: float | None = None,
        history: float | None = None,
        clock: Callable[[], datetime] = utcnow,
        proc: Path = Path("/proc"),
    ) -> None:
        settings = _settings(platform)
        self.platform = platform
        self.node = (node or socket.gethostname() or "localhost")[:NODE_MAX]
        self.interval = float(interval if interval is not None else settings.gpu_sample_interval)
        self.history = float(history if history is not None else settings.gpu_history)
        self.lease = max(3 * self.interval, MIN_LEASE)
        self.clock = clock
        self.proc = proc
        self.id = f"{self.node[:150]}:{os.getpid()}:{secrets.token_hex(4)}"
        self._nvml = nvml
        self._reader: NvmlReader | None = None
        self._next_try = 0.0  # monotonic time of the next try to open NVML
        self._reason: str | None = None
        self._announced = False  # the current reason (or GPU count) has been logged
        self._problem: str | None = None  # the last round's failure, logged once
        self.holding = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the thread ----------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, name=f"zhongtai-gpu-sampler-{self.node}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread, hand the node's lease back, close NVML."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        try:
            self.release()
        except Exception as exc:  # the database may be gone already at shutdown
            log.debug("could not hand back the GPU lease of %s: %s", self.node, exc)
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            self.round()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - began)))

    def round(self) -> bool:
        """:meth:`tick`, never raising: a failure is logged once until it changes."""
        try:
            wrote = self.tick()
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
            if problem != self._problem:
                log.warning("GPU sampling on %s failed: %s", self.node, problem, exc_info=True)
                self._problem = problem
            return False
        if self._problem is not None:
            log.info("GPU sampling on %s works again", self.node)
            self._problem = None
        return wrote

    # -- one round -----------------------------------------------------------------

    def tick(self) -> bool:
        """Take or renew the node's lease; if held, read the GPUs, store, prune.

        Returns whether this sampler wrote (False: another process holds the lease).
        """
        now = self.clock()
        if not self.acquire(now):
            if self.holding:
                log.info("another process samples the GPUs of %s now", self.node)
                self.holding = False
                if self._reader is not None:
                    self._reader.close()
                    self._reader = None
            return False
        self.holding = True
        readings, driver, reason = self.read()
        self._store(now, readings, driver, reason)
        self._prune(now)
        return True

    def acquire(self, now: datetime) -> bool:
        """Whether this sampler holds the node's lease (now renewed until ``now + lease``)."""
        until = now + timedelta(seconds=self.lease)
        with self.platform.db.transaction() as session:
            renewed = cast(
                "CursorResult[Any]",
                session.execute(
                    update(GpuNode)
                    .where(
                        GpuNode.node == self.node,
                        or_(GpuNode.sampler == self.id, GpuNode.lease_until < now),
                    )
                    .values(
                        sampler=self.id,
                        lease_until=until,
                        seen_at=now,
                        sample_interval=self.interval,
                    )
                    .execution_options(synchronize_session=False)
                ),
            )
            if renewed.rowcount:
                return True
            if session.get(GpuNode, self.node) is not None:
                return False  # another process of this node holds it
        try:
            with self.platform.db.transaction() as session:
                session.add(
                    GpuNode(
                        node=self.node,
                        seen_at=now,
                        sample_interval=self.interval,
                        gpu_count=0,
                        sampler=self.id,
                        lease_until=until,
                    )
                )
        except IntegrityError:  # another process made the row first: it holds it
            return False
        return True

    def release(self) -> None:
        """Let another process of this node take the lease at its next round."""
        if not self.holding:
            return
        with self.platform.db.transaction() as session:
            session.execute(
                update(GpuNode)
                .where(GpuNode.node == self.node, GpuNode.sampler == self.id)
                .values(lease_until=self.clock() - timedelta(seconds=1))
                .execution_options(synchronize_session=False)
            )
        self.holding = False

    def read(self) -> tuple[list[GpuReading], str | None, str | None]:
        """(readings, driver version, reason there are none); never raises for a
        missing driver or library."""
        reader = self._reader
        if reader is None or not reader.open:
            if time.monotonic() < self._next_try:
                return [], None, self._reason
            self._next_try = time.monotonic() + RETRY_NVML
            try:
                nvml = self._nvml if self._nvml is not None else importlib.import_module("pynvml")
            except ImportError:
                return [], None, self._note("the nvidia-ml-py package (pynvml) is not installed")
            reader = NvmlReader(nvml, self.proc)
            try:
                reader.start()
            except reader.error as exc:
                return [], None, self._note(no_gpu_reason(exc))
            except OSError as exc:
                return [], None, self._note(f"NVML could not be loaded: {exc}")
            self._reader = reader
        try:
            readings = reader.read()
        except reader.error as exc:  # the driver went away under us: start over later
            reader.close()
            self._reader = None
            return [], reader.driver_version, self._note(no_gpu_reason(exc))
        if not readings:
            return [], reader.driver_version, self._note("the NVIDIA driver reports no GPUs")
        self._note(None, len(readings), reader.driver_version)
        return readings, reader.driver_version, None

    def _note(self, reason: str | None, count: int = 0, driver: str | None = None) -> str | None:
        """Log a change of state once (INFO), never once per round."""
        if reason != self._reason or not self._announced:
            if reason is not None:
                log.info("no GPUs detected on %s: %s", self.node, reason)
            else:
                log.info("sampling %d GPUs on %s (driver %s)", count, self.node, driver)
            self._reason = reason
            self._announced = True
        return reason

    def _store(
        self, now: datetime, readings: list[GpuReading], driver: str | None, reason: str | None
    ) -> None:
        with self.platform.db.transaction() as session:
            node = session.get(GpuNode, self.node)
            if node is None or node.sampler != self.id:
                return  # lost the lease since the round began
            node.seen_at = now
            node.driver_version = driver[:80] if driver else None
            node.gpu_count = len(readings)
            node.reason = reason
            if not readings:
                return
            node.sampled_at = now
            session.execute(
                insert(GpuSample),
                [
                    {
                        "node": self.node,
                        "gpu": r.index,
                        "at": now,
                        "uuid": r.uuid,
                        "name": r.name,
                        "util_gpu": r.util_gpu,
                        "util_memory": r.util_memory,
                        "memory_used": r.memory_used,
                        "memory_total": r.memory_total,
                        "temperature": r.temperature,
                        "power_draw": r.power_draw,
                        "power_limit": r.power_limit,
                    }
                    for r in readings
                ],
            )
            processes = [
                {
                    "node": self.node,
                    "gpu": r.index,
                    "at": now,
                    "pid": p.pid,
                    "used_memory": p.used_memory,
                    "job_id": p.job_id,
                }
                for r in readings
                for p in r.processes
            ]
            if processes:
                session.execute(insert(GpuProcess), processes)

    def _prune(self, now: datetime) -> None:
        cutoff = now - timedelta(seconds=self.history)
        with self.platform.db.transaction() as session:
            session.execute(delete(GpuProcess).where(GpuProcess.at < cutoff))
            session.execute(delete(GpuSample).where(GpuSample.at < cutoff))
            session.execute(delete(GpuNode).where(GpuNode.seen_at < cutoff))


SAMPLER: StashKey[Sampler] = StashKey()


def start_sampler(
    platform: Platform, *, nvml: Any = None, node: str | None = None
) -> Sampler | None:
    """Start this process's sampler thread (once); None when ``gpu_monitoring`` is off."""
    if not _settings(platform).gpu_monitoring:
        log.info("GPU monitoring is off ([train] gpu_monitoring = false)")
        return None
    if SAMPLER in platform.stash and platform.stash[SAMPLER].running:
        return platform.stash[SAMPLER]
    sampler = Sampler(platform, nvml=nvml, node=node)
    platform.stash[SAMPLER] = sampler
    sampler.start()
    return sampler


def stop_sampler(platform: Platform) -> None:
    """Stop and join this process's sampler, if one runs."""
    if SAMPLER in platform.stash:
        platform.stash[SAMPLER].stop()


# --------------------------------------------------------------------------- queries


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _stale(node: GpuNode, now: datetime) -> bool:
    silence = max(3 * (node.sample_interval or 0), STALE_AFTER)
    return node.seen_at < now - timedelta(seconds=silence)


def _readable_jobs(session: Session, access: Access, ids: set[str]) -> dict[str, dict[str, Any]]:
    """The jobs among ``ids`` the caller may read (one query)."""
    if not ids:
        return {}
    rows = session.execute(
        select(Job.id, Job.type, Job.project_id, Job.status).where(
            Job.id.in_(sorted(ids)), Job.project_id.in_(access.visible_projects(JOBS_READ))
        )
    ).all()
    return {
        job_id: {"id": job_id, "type": kind, "project": project, "status": status}
        for job_id, kind, project, status in rows
    }


def _gpu_dict(sample: GpuSample, processes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "index": sample.gpu,
        "uuid": sample.uuid,
        "name": sample.name,
        "util_gpu": sample.util_gpu,
        "util_memory": sample.util_memory,
        "memory_used": sample.memory_used,
        "memory_total": sample.memory_total,
        "temperature": sample.temperature,
        "power_draw": sample.power_draw,
        "power_limit": sample.power_limit,
        "processes": processes,
    }


def gpus_now(session: Session, access: Access, now: datetime) -> dict[str, Any]:
    """Every node with its latest sample per GPU (see :func:`current_gpus`)."""
    nodes = list(session.scalars(select(GpuNode).order_by(GpuNode.node)))
    latest = [(n.node, n.sampled_at) for n in nodes if n.gpu_count and n.sampled_at]
    samples: dict[str, list[GpuSample]] = {}
    processes: dict[tuple[str, int], list[GpuProcess]] = {}
    if latest:
        at_latest = or_(
            false(), *[and_(GpuSample.node == n, GpuSample.at == at) for n, at in latest]
        )
        for sample in session.scalars(
            select(GpuSample).where(at_latest).order_by(GpuSample.node, GpuSample.gpu)
        ):
            samples.setdefault(sample.node, []).append(sample)
        running = or_(
            false(), *[and_(GpuProcess.node == n, GpuProcess.at == at) for n, at in latest]
        )
        for process in session.scalars(
            select(GpuProcess).where(running).order_by(GpuProcess.gpu, GpuProcess.pid)
        ):
            processes.setdefault((process.node, process.gpu), []).append(process)
    jobs = _readable_jobs(
        session, access, {p.job_id for ps in processes.values() for p in ps if p.job_id}
    )
    out = []
    total = 0
    for node in nodes:
        stale = _stale(node, now)
        gpus = [
            _gpu_dict(
                s,
                [
                    {"pid": p.pid, "used_memory": p.used_memory, "job": jobs.get(p.job_id or "")}
                    for p in processes.get((s.node, s.gpu), [])
                ],
            )
            for s in samples.get(node.node, [])
        ]
        if not stale:
            total += len(gpus)
        reason = node.reason
        if stale:
            reason = "the node's sampler has not reported since " + node.seen_at.isoformat()
        out.append(
            {
                "node": node.node,
                "seen_at": _iso(node.seen_at),
                "sampled_at": _iso(node.sampled_at),
                "interval": node.sample_interval,
                "stale": stale,
                "driver_version": node.driver_version,
                "gpu_count": node.gpu_count,
                "reason": reason if not gpus or stale else None,
                "gpus": gpus,
            }
        )
    return {
        "detected": total > 0,
        "gpu_count": total,
        "message": None if total else "no GPUs detected",
        "nodes": out,
    }


def _epoch(platform: Platform, column: Any) -> ColumnElement[float]:
    """Seconds since 1970 of a stored UTC datetime, in SQL."""
    if platform.db.dialect == "sqlite":
        return (func.julianday(column) - 2440587.5) * 86400.0
    return sa.cast(func.extract("epoch", column), Float)


def _bucket(platform: Platform, offset: ColumnElement[float]) -> ColumnElement[int]:
    """floor(offset) for offset ≥ 0 (SQLite's CAST truncates, PostgreSQL's rounds)."""
    if platform.db.dialect == "sqlite":
        return sa.cast(offset, Integer)
    return sa.cast(func.floor(offset), Integer)


def _downsample(
    platform: Platform,
    session: Session,
    source: Subquery,
    since: datetime,
    width: float,
    metrics: Sequence[tuple[str, str, str]],
) -> dict[tuple[str, int], dict[str, list[Any]]]:
    """Average (or max) of ``source``'s columns in buckets of ``width`` seconds from
    ``since``, per (node, gpu): ``{(node, gpu): {"t": [...], name: [...]}}``.

    ``source`` has the columns ``node``, ``gpu``, ``at`` and those ``metrics`` name as
    ``(output name, "avg" | "max", column)``. ``t`` is the mean time of each bucket's
    samples, so a series with fewer samples than buckets comes back as it was stored.
    """
    epoch = _epoch(platform, source.c.at)
    start = since.timestamp()
    inner = select(
        source.c.node,
        source.c.gpu,
        epoch.label("t"),
        _bucket(platform, (epoch - start) / width).label("b"),
        *[source.c[column] for column in sorted({m[2] for m in metrics})],
    ).subquery()
    aggregate: dict[str, Callable[..., Any]] = {"avg": func.avg, "max": func.max}
    query = (
        select(
            inner.c.node,
            inner.c.gpu,
            func.avg(inner.c.t),
            *[aggregate[how](inner.c[column]) for _, how, column in metrics],
        )
        .group_by(inner.c.node, inner.c.gpu, inner.c.b)
        .order_by(inner.c.node, inner.c.gpu, inner.c.b)
    )
    series: dict[tuple[str, int], dict[str, list[Any]]] = {}
    for row in session.execute(query):
        node, gpu, t, *values = row
        entry = series.setdefault((node, gpu), {"t": [], **{m[0]: [] for m in metrics}})
        entry["t"].append(round(float(t), 3))
        for (name, _, _), value in zip(metrics, values, strict=True):
            entry[name].append(round(float(value), 2) if value is not None else None)
    return series


def _parse_since(value: str | None, default: datetime, field: str = "since") -> datetime:
    if value is None or value == "":
        return default
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise field_error(field, "give an ISO 8601 time, e.g. 2025-01-31T08:00:00Z", 422) from None
    if parsed.tzinfo is None:
        raise field_error(field, "give the time zone, e.g. 2025-01-31T08:00:00Z", 422)
    return parsed


def _parse_int(
    value: str | None, field: str, low: int, high: int, default: int | None
) -> int | None:
    if value is None or value == "":
        return default
    text = value.strip()
    if not re.fullmatch(r"[+-]?\d{1,9}", text):
        raise field_error(field, f"give a whole number from {low} to {high}", 422)
    number = int(text)
    if not low <= number <= high:
        raise field_error(field, f"give a whole number from {low} to {high}", 422)
    return number


# --------------------------------------------------------------------------- routes

JobRef = Annotated[str, PathParameter(min_length=1, max_length=32)]
SinceParam = Annotated[
    str | None,
    QueryParameter(description="ISO 8601 time with a zone; default: one hour ago."),
]
PointsParam = Annotated[
    str | None,
    QueryParameter(
        description=f"Most points per series, 2 to {MAX_POINTS} (default {DEFAULT_POINTS}); "
        "longer series are averaged in equal time buckets."
    ),
]
HISTORY_METRICS = (
    ("util_gpu", "avg", "util_gpu"),
    ("util_gpu_max", "max", "util_gpu"),
    ("util_memory", "avg", "util_memory"),
    ("memory_used", "avg", "memory_used"),
    ("memory_used_max", "max", "memory_used"),
    ("temperature", "avg", "temperature"),
    ("power_draw", "avg", "power_draw"),
)


@get("/gpus", sync_to_thread=True, opt=authenticated())
def current_gpus(platform: PlatformDep, access: AccessDep) -> dict[str, Any]:
    """Every node that samples its GPUs, with each GPU's latest sample.

    A node without GPUs has ``gpus: []`` and the ``reason`` (no driver, no GPU, …);
    a node whose sampler stopped reporting is ``stale``. ``detected`` is false and
    ``message`` says "no GPUs detected" when no live node has a GPU. A process shows
    its ``job`` only if the caller can read that job; otherwise ``job`` is null.
    """
    with platform.db.transaction() as session:
        return gpus_now(session, access, utcnow())


@get("/gpus/history", sync_to_thread=True, opt=authenticated())
def gpu_history(
    platform: PlatformDep,
    access: AccessDep,
    node: Annotated[str | None, QueryParameter(description="Only this node.")] = None,
    gpu: Annotated[str | None, QueryParameter(description="Only this GPU index.")] = None,
    since: SinceParam = None,
    max_points: PointsParam = None,
) -> dict[str, Any]:
    """Series per GPU from ``since`` to now: utilization (mean and peak), memory used
    (mean and peak), temperature and power, as columns (``t`` in Unix seconds)."""
    now = utcnow()
    history = _settings(platform).gpu_history
    if node is not None and not 1 <= len(node) <= NODE_MAX:
        raise field_error("node", f"give a node name of 1 to {NODE_MAX} characters", 422)
    index = _parse_int(gpu, "gpu", 0, MAX_GPU_INDEX, None)
    start = _parse_since(since, now - timedelta(seconds=min(3600, history)))
    points = _parse_int(max_points, "max_points", 2, MAX_POINTS, DEFAULT_POINTS)
    assert points is not None
    start = max(start, now - timedelta(seconds=history))  # nothing older is kept
    width = max((now - start).total_seconds() / points, 0.001)
    where = [GpuSample.at >= start, GpuSample.at <= now]
    if node is not None:
        where.append(GpuSample.node == node)
    if index is not None:
        where.append(GpuSample.gpu == index)
    source = select(GpuSample).where(*where).subquery()
    with platform.db.transaction() as session:
        series = _downsample(platform, session, source, start, width, HISTORY_METRICS)
        about = {
            (n, g): (uuid, name, total)
            for n, g, uuid, name, total in session.execute(
                select(
                    GpuSample.node,
                    GpuSample.gpu,
                    func.max(GpuSample.uuid),
                    func.max(GpuSample.name),
                    func.max(GpuSample.memory_total),
                )
                .where(*where)
                .group_by(GpuSample.node, GpuSample.gpu)
            )
        }
    items = []
    for (n, g), columns in series.items():
        uuid, name, total = about.get((n, g), ("", "", None))
        items.append(
            {"node": n, "gpu": g, "uuid": uuid, "name": name, "memory_total": total, **columns}
        )
    return {
        "since": start.isoformat(),
        "until": now.isoformat(),
        "max_points": points,
        "bucket_seconds": round(width, 3),
        "series": items,
    }


@get("/gpus/jobs/{job_id:str}", sync_to_thread=True, opt=requires(JOBS_READ))
def job_gpus(
    platform: PlatformDep,
    access: AccessDep,
    job_id: JobRef,
    since: SinceParam = None,
    max_points: PointsParam = None,
) -> dict[str, Any]:
    """A job's GPU use: the GPUs its processes ran on (pids, peak memory, mean
    utilization) and, per GPU, the memory its processes held and the GPU's
    utilization over time. 404 unless the caller can read the job."""
    now = utcnow()
    points = _parse_int(max_points, "max_points", 2, MAX_POINTS, DEFAULT_POINTS)
    assert points is not None
    with platform.db.transaction() as session:
        job = session.get(Job, job_id)
        access.require(session, project_id=job.project_id if job else None)
        assert job is not None
        mine = GpuProcess.job_id == job.id
        first, last = session.execute(
            select(func.min(GpuProcess.at), func.max(GpuProcess.at)).where(mine)
        ).one()
        start = _parse_since(since, first or now)
        if first is not None:
            start = max(start, first)
        end = last or now
        width = max((end - start).total_seconds() / points, 0.001)
        per_instant = (
            select(
                GpuProcess.node,
                GpuProcess.gpu,
                GpuProcess.at,
                func.sum(GpuProcess.used_memory).label("used_memory"),
                func.count().label("processes"),
            )
            .where(mine, GpuProcess.at >= start)
            .group_by(GpuProcess.node, GpuProcess.gpu, GpuProcess.at)
            .subquery()
        )
        source = (
            select(per_instant, GpuSample.util_gpu)
            .join(
                GpuSample,
                and_(
                    GpuSample.node == per_instant.c.node,
                    GpuSample.gpu == per_instant.c.gpu,
                    GpuSample.at == per_instant.c.at,
                ),
                isouter=True,
            )
            .subquery()
        )
        series = _downsample(
            platform,
            session,
            source,
            start,
            width,
            (
                ("used_memory", "avg", "used_memory"),
                ("used_memory_max", "max", "used_memory"),
                ("util_gpu", "avg", "util_gpu"),
                ("processes", "max", "processes"),
            ),
        )
        summary = session.execute(
            select(
                source.c.node,
                source.c.gpu,
                func.min(source.c.at),
                func.max(source.c.at),
                func.max(source.c.used_memory),
                func.avg(source.c.util_gpu),
            )
            .group_by(source.c.node, source.c.gpu)
            .order_by(source.c.node, source.c.gpu)
        ).all()
        pids: dict[tuple[str, int], list[int]] = {}
        for n, g, pid in session.execute(
            select(GpuProcess.node, GpuProcess.gpu, GpuProcess.pid)
            .where(mine, GpuProcess.at >= start)
            .distinct()
            .order_by(GpuProcess.node, GpuProcess.gpu, GpuProcess.pid)
        ):
            pids.setdefault((n, g), []).append(pid)
        names = {
            (n, g): (uuid, name, total)
            for n, g, uuid, name, total in session.execute(
                select(
                    GpuSample.node,
                    GpuSample.gpu,
                    func.max(GpuSample.uuid),
                    func.max(GpuSample.name),
                    func.max(GpuSample.memory_total),
                )
                .where(
                    GpuSample.at >= start,
                    or_(
                        false(),
                        *[and_(GpuSample.node == n, GpuSample.gpu == g) for n, g, *_ in summary],
                    ),
                )
                .group_by(GpuSample.node, GpuSample.gpu)
            )
        }
        job_info = {"id": job.id, "type": job.type, "project": job.project_id, "status": job.status}
    gpus = []
    for n, g, seen_first, seen_last, peak, util in summary:
        uuid, name, total = names.get((n, g), ("", "", None))
        gpus.append(
            {
                "node": n,
                "gpu": g,
                "uuid": uuid,
                "name": name,
                "memory_total": total,
                "pids": pids.get((n, g), []),
                "first_seen": _iso(seen_first),
                "last_seen": _iso(seen_last),
                "peak_memory": int(peak) if peak is not None else None,
                "mean_util_gpu": round(float(util), 1) if util is not None else None,
            }
        )
    return {
        "job": job_info,
        "since": start.isoformat(),
        "until": end.isoformat(),
        "max_points": points,
        "bucket_seconds": round(width, 3),
        "gpus": gpus,
        "series": [{"node": n, "gpu": g, **columns} for (n, g), columns in series.items()],
    }


GPU_ROUTES = [current_gpus, gpu_history, job_gpus]


# --------------------------------------------------------------------------- panels

WINDOWS = (900, 3600, 6 * 3600)  # the page's choices of time range, in seconds
CHART_POINTS = 240
GIB = 2**30


def _now_for(view: View) -> tuple[dict[str, Any], dict[str, str]]:
    from zhongtai.ui.core_pages import call_api

    found, errors = call_api(current_gpus, view)
    return found or {"detected": False, "gpu_count": 0, "nodes": []}, errors


def _card(view: View) -> Mapping[str, Any]:
    """GPUs of the live nodes and their mean utilization, or why there are none."""
    found, errors = _now_for(view)
    live = [n for n in found["nodes"] if not n["stale"]]
    rates = [g["util_gpu"] for n in live for g in n["gpus"] if g["util_gpu"] is not None]
    return {
        "count": found["gpu_count"],
        "nodes": len([n for n in live if n["gpus"]]),
        "mean_util": sum(rates) / len(rates) if rates else None,
        "reasons": sorted({n["reason"] for n in found["nodes"] if n["reason"]}),
        "errors": errors,
    }


def _chart(x: list[float], series: list[tuple[str, list[Any]]]) -> str:
    """The ``data-chart`` attribute the core's script draws with uPlot."""
    return json.dumps(
        {"x": x, "series": [{"label": label, "values": values} for label, values in series]}
    )


def _aligned(columns: list[dict[str, Any]], metric: str) -> tuple[list[float], list[list[Any]]]:
    """Several GPUs' series on one time axis (missing points are gaps)."""
    times = sorted({t for c in columns for t in c["t"]})
    out = []
    for c in columns:
        values = dict(zip(c["t"], c[metric], strict=True))
        out.append([values.get(t) for t in times])
    return times, out


def _page(view: View) -> Mapping[str, Any]:
    """Every node: its GPUs now, and charts of utilization and memory over the window."""
    from zhongtai.ui.core_pages import call_api

    found, errors = _now_for(view)
    chosen = view.query.get("window") or ""
    window = int(chosen) if chosen.isdigit() and int(chosen) in WINDOWS else 3600
    since = (utcnow() - timedelta(seconds=window)).isoformat()
    history, history_errors = call_api(
        gpu_history,
        view,
        node=None,
        gpu=None,
        since=since,
        max_points=str(CHART_POINTS),
    )
    errors.update(history_errors)
    by_node: dict[str, list[dict[str, Any]]] = {}
    for s in (history or {}).get("series", []):
        by_node.setdefault(s["node"], []).append(s)
    gettext = view.gettext
    charts: dict[str, dict[str, Any]] = {}
    for node, columns in by_node.items():
        times, util = _aligned(columns, "util_gpu")
        per_gpu = {}
        for c in columns:
            memory = [round(v / GIB, 2) if v is not None else None for v in c["memory_used"]]
            per_gpu[c["gpu"]] = {
                "util": _chart(
                    c["t"],
                    [(gettext("GPU %"), c["util_gpu"]), (gettext("memory %"), c["util_memory"])],
                ),
                "memory": _chart(c["t"], [(gettext("memory used, GiB"), memory)]),
                "points": len(c["t"]),
            }
        charts[node] = {
            "util": _chart(
                times,
                [
                    (gettext("GPU %(index)s") % {"index": c["gpu"]}, values)
                    for c, values in zip(columns, util, strict=True)
                ],
            ),
            "gpus": per_gpu,
        }
    return {
        "now": found,
        "charts": charts,
        "window": window,
        "windows": WINDOWS,
        "errors": errors,
        "gib": GIB,
    }


GPU_PANELS = [
    Panel(
        name="gpus",
        title={"en": "GPUs", "zh": "GPU"},
        path="/gpus",
        template="gpus.html",
        icon="square",
        order=40,
        permission=None,  # node-level data: any signed-in user
        context=_page,
    ),
    Panel(
        name="gpus-card",
        title={"en": "GPUs", "zh": "GPU"},
        kind="card",
        template="gpu_card.html",
        icon="square",
        order=30,
        permission=None,
        context=_card,
    ),
]
