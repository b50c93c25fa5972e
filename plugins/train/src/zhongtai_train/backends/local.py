"""The ``local`` backend: training as subprocesses of the worker that runs the job.

Each process of a run leads a new session and process group (``start_new_session``),
so that a cancel signals the groups and takes every process the code started with
them: SIGTERM, a grace
period (``options.grace_seconds``), then SIGKILL. Processes that leave the group on
purpose (``setsid``, a daemon) escape it, as they would escape ``torchrun``.

Limits, as far as the OS lets an unprivileged process set them:

* **CPU**: the processes are pinned to ``ceil(cpu)`` cores (``sched_setaffinity``),
  chosen round-robin so that two runs do not pile onto the same cores;
* **memory**: the resident memory of the whole group is read from ``/proc`` at every
  poll; over ``memory_mb`` the group is killed and the run fails with
  ``MemoryLimitExceeded`` (an address-space rlimit would break CUDA and most ML
  libraries, which reserve far more address space than they use);
* **GPUs**: ``CUDA_VISIBLE_DEVICES`` lists the GPUs given to the run; ``gpus: 0``
  hides them all;
* **time**: the job stops the run at its ``timeout`` (``DeadlineExceeded``).

More than one process per node starts ``procs_per_node`` processes with the
``torchrun`` variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR=127.0.0.1``, a free
``MASTER_PORT``); more than one node is refused. Each process writes its output to a
log file of its own in the run's folder (``output.log`` for rank 0, ``output.rank<N>.log``
for the others), so that two ranks printing at once never splice their lines together:
an unbuffered ``print`` is two writes, the text and the newline. :meth:`LocalBackend.read_logs`
reads the files incrementally and hands over whole lines only, each rank's in order.

The handle records the group's leader pid with its start time (from ``/proc``), so a
worker that did not start the run — after a crash — can still tell whether it runs
and stop it, without ever signalling a process that merely reused the pid. Each rank's
command runs under :mod:`~zhongtai_train.backends.exit_status`, which writes how it
ended to a file next to the log: such a worker learns the real exit code too, not
only that the run is over.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from itertools import count
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from zhongtai_train.backends import (
    Backend,
    BackendError,
    Launch,
    LogChunk,
    Outcome,
    SpecError,
    distributed_env,
    input_variable,
)

__all__ = ["LocalBackend", "LocalOptions"]

LOG_NAME = "output.log"
_EXIT_STATUS = str(Path(__file__).with_name("exit_status.py"))
MAX_READ = 4 * 1024 * 1024  # bytes of log read per call
_PAGE = os.sysconf("SC_PAGE_SIZE")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Runs this process started: handle -> their Popen objects (exit codes come from here).
_RUNS: dict[str, list[subprocess.Popen[bytes]]] = {}
_RUNS_LOCK = threading.Lock()
_NEXT_CORE = count()


class LocalOptions(BaseModel):
    """Options of the ``local`` backend."""

    model_config = ConfigDict(extra="forbid")

    grace_seconds: float = Field(
        default=10.0, ge=0, le=300, description="seconds between SIGTERM and SIGKILL"
    )


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None: no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def _group_members(pgid: int) -> list[int]:
    """Pids of the live processes in process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def _resident_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _cores(cpu: float) -> set[int] | None:
    """``ceil(cpu)`` of the cores this process may use, round-robin across runs; None
    when the run may use them all."""
    available = sorted(os.sched_getaffinity(0))
    wanted = max(1, math.ceil(cpu))
    if wanted >= len(available):
        return None
    start = next(_NEXT_CORE) * wanted
    return {available[(start + i) % len(available)] for i in range(wanted)}


class LocalBackend(Backend):
    """Runs the code as a process group on the worker's machine."""

    name: ClassVar[str] = "local"
    options_model: ClassVar[type[BaseModel]] = LocalOptions
    needs_workdir: ClassVar[bool] = True
    runs_images: ClassVar[bool] = False

    def check(self, launch: Launch) -> None:
        if launch.image is not None:
            raise SpecError("code", "the local backend runs code from git, not a container image")
        if launch.distributed.nodes > 1:
            raise SpecError(
                "distributed.nodes", "the local backend runs on one node; use ray or kubernetes"
            )
        if launch.workdir is None:
            raise SpecError("code", "the local backend needs the code in a folder")

    # -- starting --------------------------------------------------------------------

    def submit(self, launch: Launch) -> str:
        self.check(launch)
        assert launch.workdir is not None
        log_paths = [
            launch.workdir.parent / _log_name(rank)
            for rank in range(launch.distributed.procs_per_node)
        ]
        base = {
            key: value
            for key, value in os.environ.items()
            if key in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "LOGNAME", "TZ")
        }
        base.setdefault("PATH", os.defpath)
        base["PYTHONUNBUFFERED"] = "1"  # lines reach the log as they are printed
        if launch.requirements.gpus == 0:
            base["CUDA_VISIBLE_DEVICES"] = ""
        elif "CUDA_VISIBLE_DEVICES" not in launch.env:
            base["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(launch.requirements.gpus))
        for mount in launch.inputs:
            where = str(mount.path) if mount.path is not None else mount.uri
            if where is not None:
                base.setdefault(input_variable(mount.name), where)
        _check_command(launch.argv[0], launch.workdir, {**base, **launch.env})
        port = _free_port()
        cores = _cores(launch.requirements.cpu)
        cpus = ",".join(str(core) for core in sorted(cores)) if cores is not None else ""
        statuses = [
            str(log_paths[0].parent / f"exit-{rank}.json")
            for rank in range(launch.distributed.procs_per_node)
        ]
        processes: list[subprocess.Popen[bytes]] = []
        try:
            for rank, log_path in enumerate(log_paths):
                with log_path.open("ab") as log:
                    env = {
                        **base,
                        **launch.env,
                        **distributed_env(
                            launch.distributed,
                            node_rank=0,
                            local_rank=rank,
                            master_addr="127.0.0.1",
                            master_port=port,
                        ),
                    }
                    process = subprocess.Popen(  # noqa: S603 - an argument list, no shell
                        [*_recorder(statuses[rank], cpus), *launch.argv],
                        cwd=launch.workdir,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        close_fds=True,
                    )
                    processes.append(process)
        except OSError as exc:
            for process in processes:
                _kill_group(process.pid, signal.SIGKILL)
            raise BackendError(
                f"could not start {launch.argv[0]!r}: {exc.strerror or exc}"
            ) from exc
        leader_pid = processes[0].pid
        handle = json.dumps(
            {
                "pid": leader_pid,
                "pids": [p.pid for p in processes],  # each leads its own process group
                "started": _start_time(leader_pid),
                "log": str(log_paths[0]),  # rank 0's, for workers that predate "logs"
                "logs": [str(path) for path in log_paths],  # one per rank
                "status": statuses,
                "memory": launch.requirements.memory_mb * 2**20,
                "grace": float(getattr(launch.options, "grace_seconds", 10.0)),
            },
            sort_keys=True,
        )
        with _RUNS_LOCK:
            _RUNS[handle] = processes
        return handle

    # -- watching --------------------------------------------------------------------

    def poll(self, handle: str) -> Outcome:
        info = _parse(handle)
        with _RUNS_LOCK:
            processes = _RUNS.get(handle)
        if processes is not None:
            codes = [p.poll() for p in processes]
            if any(code is None for code in codes):
                died = [code for code in codes if code is not None and code != 0]
                if died:
                    # One rank died: the others would wait on it forever.
                    self._stop(info)
                    return _failed(died[0])
                return self._within_memory(info)
            self._stop(info)  # whatever the ranks left behind in their group
            bad = [code for code in codes if code is not None and code != 0]
            if bad:
                return _failed(bad[0])
            return Outcome("succeeded", exit_code=0)
        # A run another process started (one that died): its ranks' records tell.
        if _alive(info):
            return self._within_memory(info)
        codes = [_recorded_exit(path) for path in info.get("status", [])]
        if codes and all(code is not None for code in codes):
            self._stop(info)  # whatever the ranks left behind in their groups
            bad = [code for code in codes if code]
            return _failed(bad[0]) if bad else Outcome("succeeded", exit_code=0)
        return Outcome(
            "failed",
            reason="WorkerLost",
            message="the run ended while no worker was watching it; its exit code is unknown",
        )

    def _within_memory(self, info: dict[str, Any]) -> Outcome:
        used = _resident_bytes(_members(info))
        if used > info["memory"]:
            self._stop(info, grace=0)
            return Outcome(
                "failed",
                reason="MemoryLimitExceeded",
                message=f"the run used {used // 2**20} MiB of {info['memory'] // 2**20} MiB",
            )
        return Outcome("running")

    def wait(self, handle: str, seconds: float) -> None:
        """Until the run's first process exits, or ``seconds`` pass."""
        with _RUNS_LOCK:
            processes = _RUNS.get(handle)
        if not processes:
            time.sleep(seconds)
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            processes[0].wait(timeout=seconds)

    def read_logs(self, handle: str, cursor: str | None) -> LogChunk:
        """Whole lines written since ``cursor``: each rank's in order, rank by rank.

        The cursor holds one byte offset per rank's log, joined with commas."""
        return self._read(handle, cursor, rest=False)

    def read_rest(self, handle: str, cursor: str | None) -> LogChunk:
        """The last, unterminated line of each rank too (once the run has ended)."""
        return self._read(handle, cursor, rest=True)

    def _read(self, handle: str, cursor: str | None, *, rest: bool) -> LogChunk:
        paths = _logs(_parse(handle))
        offsets = [int(part) for part in (cursor or "").split(",") if part]
        offsets += [0] * (len(paths) - len(offsets))
        budget = MAX_READ // len(paths)
        lines: list[str] = []
        for rank, path in enumerate(paths):
            try:
                with open(path, "rb") as log:
                    log.seek(offsets[rank])
                    data = log.read(budget)
            except FileNotFoundError:
                continue
            end = len(data) - 1 if rest else data.rfind(b"\n")
            if end < 0 and len(data) >= budget:
                end = len(data) - 1  # one enormous line: hand it over in pieces
            complete = data[: end + 1]
            lines.extend(complete.decode("utf-8", errors="replace").splitlines())
            offsets[rank] += len(complete)
        return LogChunk(lines, ",".join(str(offset) for offset in offsets))

    # -- stopping --------------------------------------------------------------------

    def cancel(self, handle: str) -> None:
        self._stop(_parse(handle))

    def _stop(self, info: dict[str, Any], grace: float | None = None) -> None:
        if not _alive(info) and not _members(info):
            self._reap(info)
            return
        for pgid in _groups(info):
            _kill_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + (info["grace"] if grace is None else grace)
        while time.monotonic() < deadline and _members(info):
            self._reap(info)
            time.sleep(0.1)
        for pgid in _groups(info):
            _kill_group(pgid, signal.SIGKILL)
        self._reap(info, wait=True)

    def _reap(self, info: dict[str, Any], wait: bool = False) -> None:
        with _RUNS_LOCK:
            processes = next(
                (procs for key, procs in _RUNS.items() if _parse(key)["pid"] == info["pid"]), []
            )
        for process in processes:
            if wait:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)
            else:
                process.poll()

    def cleanup(self, handle: str) -> None:
        info = _parse(handle)
        if _alive(info):
            self._stop(info)
        with _RUNS_LOCK:
            _RUNS.pop(handle, None)


def _parse(handle: str) -> dict[str, Any]:
    try:
        info = json.loads(handle)
        int(info["pid"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BackendError(f"not a local backend handle: {handle[:80]!r}") from exc
    return dict(info)


def _log_name(rank: int) -> str:
    return LOG_NAME if rank == 0 else f"output.rank{rank}.log"


def _logs(info: dict[str, Any]) -> list[str]:
    """The run's log files, rank by rank."""
    return list(info.get("logs", [info["log"]]))


def _groups(info: dict[str, Any]) -> list[int]:
    return [int(pid) for pid in info.get("pids", [info["pid"]])]


def _members(info: dict[str, Any]) -> list[int]:
    """The live processes of every group of the run (only if the leader is the one the
    handle started, or already gone: a reused pid's group is never touched)."""
    started = _start_time(info["pid"])
    if started is not None and started != info.get("started"):
        return []
    return [pid for pgid in _groups(info) for pid in _group_members(pgid)]


def _alive(info: dict[str, Any]) -> bool:
    """Whether the run's leader still runs (and is the process the handle started)."""
    started = _start_time(info["pid"])
    if started is None or started != info.get("started"):
        return False
    try:
        state = Path(f"/proc/{info['pid']}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def _recorder(status: str, cpus: str) -> list[str]:
    """The command line of :mod:`exit_status` before a rank's own argument list."""
    return [sys.executable, "-I", "-S", _EXIT_STATUS, status, cpus, "--"]


def _check_command(command: str, workdir: Path, env: dict[str, str]) -> None:
    """Refuse a command that cannot start, as starting it directly would."""
    if "/" in command:
        path = (workdir / command).resolve()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise BackendError(f"could not start {command!r}: not an executable file")
    elif shutil.which(command, path=env.get("PATH", os.defpath)) is None:
        raise BackendError(f"could not start {command!r}: not found on PATH")


def _recorded_exit(path: str) -> int | None:
    """The exit code :mod:`exit_status` recorded at ``path`` (None: none recorded)."""
    try:
        with open(path) as record:
            return int(json.load(record)["exit_code"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _failed(code: int) -> Outcome:
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return Outcome(
            "failed", reason=f"killed by {name}", message=f"killed by {name}", exit_code=code
        )
    return Outcome(
        "failed", reason=f"exit code {code}", message=f"exit code {code}", exit_code=code
    )
