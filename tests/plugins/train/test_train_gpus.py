"""GPU monitoring: sampling into the database, the API, pruning, the page and the card.

This machine has no NVIDIA GPU and no driver: the first tests use the real ``pynvml``
and check that the platform says "no GPUs detected", quietly. The others pass the
sampler a stand-in for the driver (:class:`StandInNvml`: pynvml's function names and
error type, fixed readings) to follow a sample from NVML to the database, the API,
the pages, and out again when it is older than the history kept.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest
from sqlalchemy import func, inspect, select

from zhongtai.hooks.events import utcnow
from zhongtai.jobs.models import Job
from zhongtai.testing import ZtIdentity
from zhongtai_train import gpus
from zhongtai_train.gpus import Sampler, job_of_process, start_sampler, stop_sampler
from zhongtai_train.models import GpuNode, GpuProcess, GpuSample

pytestmark = pytest.mark.zt_plugins("train")
PASSWORD = "correct horse battery"
GIB = 2**30
API = "/api/v1/train"


class StandInNvml:
    """Stands in for the NVIDIA driver (no GPU exists on the test machine).

    It has pynvml's names and raises pynvml's own error type, so the sampler treats
    it exactly as the real module. ``gpus`` are the readings it reports; ``rounds``
    counts the device counts it was asked for.
    """

    NVMLError = pynvml.NVMLError
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, gpus: list[dict[str, Any]]) -> None:
        self.gpus = gpus
        self.inits = 0
        self.shutdowns = 0
        self.rounds = 0

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlDeviceGetCount(self) -> int:
        self.rounds += 1
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return str(self.gpus[handle]["uuid"])

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return str(self.gpus[handle]["name"]).encode()  # old pynvml returned bytes

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        gpu = self.gpus[handle]
        return SimpleNamespace(gpu=gpu["util"], memory=gpu.get("util_memory", 10))

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        gpu = self.gpus[handle]
        return SimpleNamespace(
            used=gpu["used"], total=gpu["total"], free=gpu["total"] - gpu["used"]
        )

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return int(self.gpus[handle].get("temperature", 50))

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return int(self.gpus[handle].get("power_mw", 250_000))

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        limit = self.gpus[handle].get("limit_mw")
        if limit is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return int(limit)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        return [
            SimpleNamespace(pid=pid, usedGpuMemory=used)
            for pid, used in self.gpus[handle].get("processes", [])
        ]


def two_gpus(processes: list[tuple[int, int | None]] | None = None) -> list[dict[str, Any]]:
    return [
        {
            "uuid": "GPU-0000aaaa",
            "name": "NVIDIA H100 80GB HBM3",
            "util": 87,
            "used": 40 * GIB,
            "total": 80 * GIB,
            "temperature": 61,
            "power_mw": 512_345,
            "limit_mw": 700_000,
            "processes": processes or [],
        },
        {
            "uuid": "GPU-0000bbbb",
            "name": "NVIDIA H100 80GB HBM3",
            "util": 3,
            "used": 1 * GIB,
            "total": 80 * GIB,
            # no power limit: the GPU "does not support" it
        },
    ]


class Clock:
    """A clock the test moves: the sampler's idea of now."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def real_nvml_works() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def counts(platform: Any) -> tuple[int, int]:
    with platform.db.transaction() as session:
        samples = session.scalar(select(func.count()).select_from(GpuSample))
        processes = session.scalar(select(func.count()).select_from(GpuProcess))
    return int(samples or 0), int(processes or 0)


def make_job(platform: Any, project: Any, job_type: str = "train.run") -> str:
    with platform.db.transaction() as session:
        job = Job(
            type=job_type,
            project_id=project.id,
            params={},
            status="running",
            queue="default",
            timeout=600,
        )
        session.add(job)
        session.flush()
        return job.id


@pytest.fixture
def sleeper() -> Iterator[Any]:
    """A real process started with ZHONGTAI_JOB_ID in its environment (set per test)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(job_id: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "ZHONGTAI_JOB_ID": job_id}
        process = subprocess.Popen(["sleep", "60"], env=env)
        started.append(process)
        # Until the new program is in place, its environment reads as empty.
        deadline = time.monotonic() + 10
        while b"ZHONGTAI_JOB_ID" not in Path(f"/proc/{process.pid}/environ").read_bytes():
            assert time.monotonic() < deadline, "the process never showed its environment"
            time.sleep(0.01)
        return process

    yield start
    for process in started:
        process.kill()
        process.wait(10)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html[:1500]
    return found.group(1)


def sign_in(client: Any, platform: Any, identity: ZtIdentity, role: str = "viewer") -> Any:
    from zhongtai.identity.models import User
    from zhongtai.identity.passwords import hash_password

    user, project = identity.project_with(role)
    with platform.db.transaction() as session:
        session.get(User, user.id).password_hash = hash_password(PASSWORD)
    form = client.get("/ui/login")
    client.post(
        "/ui/login",
        data={"email": user.email, "password": PASSWORD, "csrf_token": csrf_of(form.text)},
    )
    return user, project


# --------------------------------------------------------------------------- no GPU here


def test_this_machine_has_no_gpu_and_says_so(zt_client, zt_platform):
    """The real pynvml, no driver: the API says "no GPUs detected", with the reason."""
    if real_nvml_works():
        pytest.skip("this machine has an NVIDIA driver; the no-GPU path is tested without one")
    identity = ZtIdentity(zt_platform)
    headers = identity.headers(identity.user())
    node = None
    for _ in range(100):  # the server's sampler makes its first round at start-up
        answer = zt_client.get(f"{API}/gpus", headers=headers)
        assert answer.status_code == 200, answer.text
        node = next(
            (n for n in answer.json()["nodes"] if n["node"] == gpus.socket.gethostname()), None
        )
        # The node's row is made when the sampler takes its lease, a moment before its
        # first reading is stored with the reason.
        if node is not None and node["reason"] is not None:
            break
        time.sleep(0.05)
    body = answer.json()
    assert body["detected"] is False and body["gpu_count"] == 0
    assert body["message"] == "no GPUs detected"
    assert node is not None, body
    assert node["gpus"] == [] and node["gpu_count"] == 0 and not node["stale"]
    assert "NVIDIA driver" in node["reason"]
    history = zt_client.get(f"{API}/gpus/history", headers=headers)
    assert history.status_code == 200 and history.json()["series"] == []


def test_no_driver_is_logged_once_never_as_an_error(zt_platform, caplog):
    if real_nvml_works():
        pytest.skip("this machine has an NVIDIA driver")
    stop_sampler(zt_platform)
    caplog.set_level(logging.DEBUG, logger="zhongtai.train.gpus")
    clock = Clock(utcnow())
    sampler = Sampler(zt_platform, node="no-gpu-node", interval=0.5, clock=clock)
    for _ in range(5):
        clock.now += timedelta(seconds=1)
        assert sampler.round() is True  # it holds the lease and records the node
        sampler._next_try = 0.0  # try NVML again each round, as after a minute
    records = [r for r in caplog.records if r.name == "zhongtai.train.gpus"]
    assert [r.levelname for r in records] == ["INFO"], [r.getMessage() for r in records]
    assert "no GPUs detected on no-gpu-node" in records[0].getMessage()
    assert all(r.exc_info is None for r in records)
    with zt_platform.db.transaction() as session:
        row = session.get(GpuNode, "no-gpu-node")
        assert row.gpu_count == 0 and "libnvidia-ml" in row.reason
        assert row.sampled_at is None


def test_the_page_and_the_card_without_gpus(zt_client, zt_platform):
    if real_nvml_works():
        pytest.skip("this machine has an NVIDIA driver")
    identity = ZtIdentity(zt_platform)
    sign_in(zt_client, zt_platform, identity)
    for _ in range(100):
        with zt_platform.db.transaction() as session:
            if session.scalar(select(func.count()).select_from(GpuNode)):
                break
        time.sleep(0.05)
    page = zt_client.get("/ui/train/gpus")
    assert page.status_code == 200, page.text
    assert 'data-panel="train.gpus"' in page.text  # in the navigation
    assert "data-no-gpus" in page.text and "No GPUs detected." in page.text
    assert "libnvidia-ml.so.1" in page.text  # the node's reason
    assert "panel-error" not in page.text and "Traceback" not in page.text
    dashboard = zt_client.get("/ui")
    assert dashboard.status_code == 200
    card = dashboard.text.split('data-card="train-gpus"', 1)[1].split("</section>", 1)[0]
    assert "No GPUs detected." in card and "form-error" not in card


# --------------------------------------------------------------------------- a stand-in driver


def test_samples_are_stored_served_and_pruned(zt_client, zt_platform):
    """Stand-in NVML → the sampler → the tables → GET /gpus and /gpus/history → pruned."""
    identity = ZtIdentity(zt_platform)
    headers = identity.headers(identity.user())
    nvml = StandInNvml(two_gpus(processes=[(4242, 3 * GIB)]))
    now = utcnow()
    clock = Clock(now - timedelta(seconds=150))
    sampler = Sampler(
        zt_platform, nvml=nvml, node="gpu-node-a", interval=5, history=60, clock=clock
    )

    assert sampler.tick() is True
    assert nvml.inits == 1
    assert counts(zt_platform) == (2, 1)
    clock.now = now - timedelta(seconds=2)
    assert sampler.tick() is True
    assert nvml.inits == 1  # NVML stays open between rounds
    # The first round is older than the 60 s kept: gone, with its process.
    assert counts(zt_platform) == (2, 1)
    with zt_platform.db.transaction() as session:
        kept = set(session.scalars(select(GpuSample.at)))
    assert kept == {clock.now}

    answer = zt_client.get(f"{API}/gpus", headers=headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["detected"] is True and body["gpu_count"] == 2 and body["message"] is None
    node = next(n for n in body["nodes"] if n["node"] == "gpu-node-a")
    assert node["driver_version"] == "550.54.15" and node["gpu_count"] == 2
    assert node["reason"] is None and node["stale"] is False and node["interval"] == 5
    first, second = node["gpus"]
    assert first == {
        "index": 0,
        "uuid": "GPU-0000aaaa",
        "name": "NVIDIA H100 80GB HBM3",
        "util_gpu": 87,
        "util_memory": 10,
        "memory_used": 40 * GIB,
        "memory_total": 80 * GIB,
        "temperature": 61,
        "power_draw": pytest.approx(512.345),
        "power_limit": pytest.approx(700.0),
        "processes": [{"pid": 4242, "used_memory": 3 * GIB, "job": None}],
    }
    assert second["index"] == 1 and second["power_limit"] is None and second["processes"] == []

    history = zt_client.get(f"{API}/gpus/history", params={"node": "gpu-node-a"}, headers=headers)
    assert history.status_code == 200, history.text
    series = {s["gpu"]: s for s in history.json()["series"]}
    assert set(series) == {0, 1}
    assert series[0]["util_gpu"] == [87.0] and series[0]["memory_used"] == [40 * GIB]
    assert series[0]["t"] == [pytest.approx(clock.now.timestamp(), abs=0.01)]
    assert series[0]["uuid"] == "GPU-0000aaaa" and series[0]["memory_total"] == 80 * GIB
    only = zt_client.get(
        f"{API}/gpus/history", params={"node": "gpu-node-a", "gpu": "1"}, headers=headers
    ).json()["series"]
    assert [s["gpu"] for s in only] == [1]

    # The node row goes too once it has been silent longer than the history.
    clock.now = now + timedelta(seconds=200)
    other = Sampler(zt_platform, nvml=StandInNvml([]), node="gpu-node-b", history=60, clock=clock)
    assert other.tick() is True
    with zt_platform.db.transaction() as session:
        assert session.get(GpuNode, "gpu-node-a") is None
    assert counts(zt_platform) == (0, 0)


def test_history_is_averaged_into_at_most_max_points(zt_client, zt_platform):
    identity = ZtIdentity(zt_platform)
    headers = identity.headers(identity.user())
    readings = two_gpus()
    nvml = StandInNvml(readings[:1])
    now = utcnow()
    clock = Clock(now - timedelta(seconds=120))
    sampler = Sampler(
        zt_platform, nvml=nvml, node="busy-node", interval=1, history=3600, clock=clock
    )
    for i in range(120):
        readings[0]["util"] = 100 if i % 2 else 0
        assert sampler.tick() is True
        clock.now += timedelta(seconds=1)
    since = (now - timedelta(seconds=121)).isoformat()
    raw = zt_client.get(
        f"{API}/gpus/history",
        params={"node": "busy-node", "since": since, "max_points": "1000"},
        headers=headers,
    ).json()["series"][0]
    assert len(raw["t"]) == 120  # fewer samples than buckets: as stored
    assert raw["util_gpu"][:4] == [0.0, 100.0, 0.0, 100.0]
    small = zt_client.get(
        f"{API}/gpus/history",
        params={"node": "busy-node", "since": since, "max_points": "10"},
        headers=headers,
    )
    assert small.status_code == 200, small.text
    body = small.json()
    span = datetime.fromisoformat(body["until"]) - datetime.fromisoformat(body["since"])
    assert body["max_points"] == 10
    assert body["bucket_seconds"] == pytest.approx(span.total_seconds() / 10, abs=0.01)
    series = body["series"][0]
    # The window ends when the request is served, a little after the last sample.
    assert 8 <= len(series["t"]) <= 10
    assert series["t"] == sorted(series["t"])
    assert all(35 <= v <= 65 for v in series["util_gpu"][:-1])  # the mean of 0s and 100s
    assert set(series["util_gpu_max"]) == {100.0}  # and the peak kept
    assert len(series["memory_used"]) == len(series["t"])


def test_one_writer_per_node(zt_platform):
    """Two processes on one node: one holds the lease and writes; the other takes over
    when it hands the lease back, or when the lease runs out."""
    clock = Clock(utcnow())
    first = Sampler(
        zt_platform, nvml=StandInNvml(two_gpus()), node="shared", interval=5, clock=clock
    )
    second = Sampler(
        zt_platform, nvml=StandInNvml(two_gpus()), node="shared", interval=5, clock=clock
    )
    assert first.tick() is True
    assert second.tick() is False
    assert counts(zt_platform) == (2, 0)
    clock.now += timedelta(seconds=5)
    first.release()
    assert second.tick() is True and first.tick() is False
    assert counts(zt_platform) == (4, 0)
    clock.now += timedelta(seconds=first.lease + 1)  # the writer died without a word
    assert first.tick() is True and second.tick() is False


def test_the_thread_starts_samples_and_stops(zt_platform):
    stop_sampler(zt_platform)  # the one the server started
    nvml = StandInNvml(two_gpus())
    sampler = start_sampler(zt_platform, nvml=nvml, node="threaded")
    assert sampler is not None and sampler.running
    assert start_sampler(zt_platform) is sampler  # one per process
    deadline = time.monotonic() + 10
    while nvml.rounds == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop_sampler(zt_platform)
    assert not sampler.running and nvml.shutdowns == 1
    with zt_platform.db.transaction() as session:
        row = session.get(GpuNode, "threaded")
        assert row.gpu_count == 2 and row.lease_until < utcnow()  # handed back
    off = zt_platform.plugin_config["train"].model_copy(update={"gpu_monitoring": False})
    zt_platform.plugin_config["train"] = off
    assert start_sampler(zt_platform, nvml=nvml, node="off") is None


def test_processes_are_mapped_to_their_jobs(zt_client, zt_platform, sleeper):
    """A real process with ZHONGTAI_JOB_ID in its environment, reported by the stand-in."""
    identity = ZtIdentity(zt_platform)
    owner, project = identity.project_with("viewer")
    stranger, _other = identity.project_with("owner")
    job_id = make_job(zt_platform, project)
    process = sleeper(job_id)
    assert job_of_process(process.pid) == job_id
    assert job_of_process(2**22 + 12345) is None  # no such process

    nvml = StandInNvml(two_gpus(processes=[(process.pid, 5 * GIB), (2**22 + 12345, None)]))
    clock = Clock(utcnow() - timedelta(seconds=20))
    sampler = Sampler(
        zt_platform, nvml=nvml, node="job-node", interval=5, history=3600, clock=clock
    )
    for _ in range(3):
        assert sampler.tick() is True
        clock.now += timedelta(seconds=5)

    def processes_seen_by(user: Any) -> list[dict[str, Any]]:
        body = zt_client.get(f"{API}/gpus", headers=identity.headers(user)).json()
        node = next(n for n in body["nodes"] if n["node"] == "job-node")
        return node["gpus"][0]["processes"]

    mine = processes_seen_by(owner)
    assert mine[0]["pid"] == process.pid and mine[0]["used_memory"] == 5 * GIB
    assert mine[0]["job"] == {
        "id": job_id,
        "type": "train.run",
        "project": project.id,
        "status": "running",
    }
    assert mine[1] == {"pid": 2**22 + 12345, "used_memory": None, "job": None}
    # Someone who cannot read the job sees the process, not whose it is.
    theirs = processes_seen_by(stranger)
    assert [p["pid"] for p in theirs] == [process.pid, 2**22 + 12345]
    assert all(p["job"] is None for p in theirs)

    usage = zt_client.get(f"{API}/gpus/jobs/{job_id}", headers=identity.headers(owner))
    assert usage.status_code == 200, usage.text
    body = usage.json()
    assert body["job"]["id"] == job_id and body["job"]["project"] == project.id
    assert [(g["node"], g["gpu"], g["pids"]) for g in body["gpus"]] == [
        ("job-node", 0, [process.pid])
    ]
    assert body["gpus"][0]["peak_memory"] == 5 * GIB
    assert body["gpus"][0]["mean_util_gpu"] == 87.0
    assert body["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"
    (series,) = body["series"]
    assert series["used_memory"] == [5 * GIB] * 3 and series["util_gpu"] == [87.0] * 3
    assert series["processes"] == [1.0] * 3

    for who in (stranger, identity.user()):
        refused = zt_client.get(f"{API}/gpus/jobs/{job_id}", headers=identity.headers(who))
        assert refused.status_code == 404, refused.text
    missing = zt_client.get(f"{API}/gpus/jobs/nosuchjob", headers=identity.headers(owner))
    assert missing.status_code == 404
    # A job with no GPU use recorded: an empty answer, not an error.
    idle = make_job(zt_platform, project)
    empty = zt_client.get(f"{API}/gpus/jobs/{idle}", headers=identity.headers(owner)).json()
    assert empty["gpus"] == [] and empty["series"] == []


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/gpus/history", {"max_points": "0"}, "max_points"),
        ("/gpus/history", {"max_points": "many"}, "max_points"),
        ("/gpus/history", {"max_points": "1000000"}, "max_points"),
        ("/gpus/history", {"gpu": "-1"}, "gpu"),
        ("/gpus/history", {"gpu": "first"}, "gpu"),
        ("/gpus/history", {"since": "yesterday"}, "since"),
        ("/gpus/history", {"since": "2025-01-31T08:00:00"}, "since"),  # no zone
        ("/gpus/history", {"node": "n" * 256}, "node"),
        ("/gpus/jobs/JOB", {"max_points": "1"}, "max_points"),
        ("/gpus/jobs/JOB", {"since": "2025-13-01T00:00:00Z"}, "since"),
    ],
)
def test_bad_parameters_are_422_naming_the_field(zt_client, zt_platform, path, params, field):
    identity = ZtIdentity(zt_platform)
    user, project = identity.project_with("viewer")
    path = path.replace("JOB", make_job(zt_platform, project))
    answer = zt_client.get(f"{API}{path}", params=params, headers=identity.headers(user))
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert problem["errors"][0]["field"] == field
    assert field in problem["detail"]


def test_signed_out_callers_get_401(zt_client):
    for path in ("/gpus", "/gpus/history", "/gpus/jobs/x"):
        assert zt_client.get(f"{API}{path}").status_code == 401


def test_the_page_and_the_card_with_gpus(zt_client, zt_platform, sleeper):
    identity = ZtIdentity(zt_platform)
    _user, project = sign_in(zt_client, zt_platform, identity)
    job_id = make_job(zt_platform, project)
    process = sleeper(job_id)
    clock = Clock(utcnow() - timedelta(seconds=30))
    nvml = StandInNvml(two_gpus(processes=[(process.pid, 2 * GIB)]))
    nvml.gpus[0]["name"] = "<img src=x onerror=alert(1)>"
    sampler = Sampler(
        zt_platform, nvml=nvml, node="page-node", interval=5, history=3600, clock=clock
    )
    for _ in range(4):
        sampler.tick()
        clock.now += timedelta(seconds=5)

    page = zt_client.get(f"/ui/train/gpus?project={project.id}&window=900")
    assert page.status_code == 200, page.text
    html = page.text
    assert 'data-node="page-node"' in html and 'data-gpu="0"' in html and 'data-gpu="1"' in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "<img src=x" not in html
    assert f'data-job="{job_id}"' in html  # the viewer can read the job: linked
    assert html.count('class="chart"') == 1 + 2 * 2  # per node, then per GPU (2 each)
    assert 'hx-trigger="every 10s"' in html and 'hx-select="#gpu-nodes"' in html
    assert "<script>" not in html  # the CSP forbids inline script: data in attributes
    assert "uPlot.iife.min.js" in html
    chart = re.search(r'data-gpu-charts="0">.*?data-chart="([^"]+)"', html, re.S)
    assert chart is not None
    import html as html_lib
    import json

    spec = json.loads(html_lib.unescape(chart.group(1)))
    assert [s["label"] for s in spec["series"]] == ["GPU %", "memory %"]
    assert spec["series"][0]["values"] == [87.0] * 4 and len(spec["x"]) == 4
    bad_window = zt_client.get(f"/ui/train/gpus?project={project.id}&window=7")
    assert bad_window.status_code == 200  # an unknown range falls back to one hour

    dashboard = zt_client.get(f"/ui?project={project.id}")
    card = dashboard.text.split('data-card="train-gpus"', 1)[1].split("</section>", 1)[0]
    assert 'data-gpu-count="2"' in card
    assert "45 %" in card  # (87 + 3) / 2
    assert "No GPUs detected" not in card


def test_migration_matches_the_models_and_downgrades(zt_platform):
    """Autogenerate finds nothing to change for the train_gpu tables; the branch goes
    down and up again."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from zhongtai.metadata.base import Base

    stop_sampler(zt_platform)  # it writes to the tables the downgrade drops

    def train_only(obj: Any, name: str | None, type_: str, *_: Any) -> bool:
        table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", "")
        return bool(table) and str(table).startswith("train_gpu")

    with zt_platform.db.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"include_object": train_only, "compare_type": True}
        )
        assert compare_metadata(context, Base.metadata) == []
    tables = {"train_gpu_nodes", "train_gpu_samples", "train_gpu_processes"}
    assert tables <= set(inspect(zt_platform.db.engine).get_table_names())
    migrations = zt_platform.migrations()
    migrations.downgrade("train@base")
    assert not tables & set(inspect(zt_platform.db.engine).get_table_names())
    assert "jobs" in inspect(zt_platform.db.engine).get_table_names()
    migrations.upgrade()
    assert tables <= set(inspect(zt_platform.db.engine).get_table_names())
