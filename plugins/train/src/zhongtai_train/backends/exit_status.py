"""Run a command and record how it ended: the first process of each ``local`` run.

``python -I -S exit_status.py STATUS_FILE CPUS -- ARGV...`` pins itself to the cores
``CPUS`` lists (comma-separated; empty: all it may use), runs ``ARGV`` (an argument
list, never a shell) with its own environment, folder and output, waits for it, writes
``{"exit_code": N}`` to ``STATUS_FILE`` (atomically) and ends the same way: with ``N``,
or killed by the same signal.

The worker that started a run is its parent and learns the exit code from it; a worker
that takes the run over after that worker died cannot, and reads the file instead (see
``local.py``). A cancel signals the whole process group, this process included: it
lets SIGTERM and SIGINT pass to the command and records what they did to it.

Standard library only, and run without site-packages, so that it starts in a few
milliseconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys


def _record(path: str, status: dict[str, object]) -> None:
    partial = f"{path}.partial"
    with open(partial, "w") as out:
        json.dump(status, out)
    os.replace(partial, path)


def main(args: list[str]) -> int:
    if len(args) < 4 or args[2] != "--":
        print("usage: exit_status.py STATUS_FILE CPUS -- ARGV...", file=sys.stderr)
        return 2
    path, cpus, argv = args[0], args[1], args[3:]
    if cpus:
        os.sched_setaffinity(0, {int(core) for core in cpus.split(",")})
    # A handler, not SIG_IGN: handlers are reset in the command, an ignored signal is not.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    try:
        child = subprocess.Popen(argv)  # noqa: S603 - an argument list, no shell
    except OSError as exc:
        print(f"zhongtai: could not start {argv[0]!r}: {exc.strerror or exc}", file=sys.stderr)
        _record(path, {"exit_code": 127, "error": str(exc)})
        return 127
    code = child.wait()
    sys.stdout.flush()
    _record(path, {"exit_code": code})
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
