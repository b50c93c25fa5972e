"""The fast paths: schema fingerprint on start-up, direct access log, ids, cached metrics.

Each fast path must behave exactly as the slow one it replaces; these tests pin the
behaviour (and the cases that must fall back to the slow path).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

import zhongtai
import zhongtai.logs as logs
from zhongtai.hooks.manager import StartupError
from zhongtai.metadata import ids
from zhongtai.metadata.migrations import FINGERPRINT_TABLE, Migrations
from zhongtai.platform import bootstrap
from zhongtai.web.middleware import Metrics, handle_http

# --------------------------------------------------------------------------- fingerprint

REV1 = '''"""fpmig: items"""
import sqlalchemy as sa
from alembic import op

revision = "f1fpmig0001"
down_revision = None
branch_labels = ("fpmig",)
depends_on = "c0e1a0000001"


def upgrade():
    op.create_table("fpmig_items", sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table("fpmig_items")
'''

REV2 = '''"""fpmig: more"""
import sqlalchemy as sa
from alembic import op

revision = "f1fpmig0002"
down_revision = "f1fpmig0001"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("fpmig_more", sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table("fpmig_more")
'''


class FolderPlugin:
    """A plugin whose migration folder is a test's temporary folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @zhongtai.hookimpl
    def register_migrations(self):
        return self.folder


@pytest.fixture
def alembic_calls(monkeypatch):
    """Count the calls into Alembic that prepare_schema can make."""
    calls = {"upgrade": 0, "pending": 0}
    for name in calls:
        original = getattr(Migrations, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Migrations, name, counted)
    return calls


@pytest.fixture
def fp_folder(tmp_path):
    folder = tmp_path / "fpmig_versions"
    folder.mkdir()
    (folder / "f1_fpmig_items.py").write_text(REV1)
    return folder


def start(settings, *, schema="upgrade", folder=None):
    """Bootstrap (built-in plugins, plus ``fpmig`` on ``folder``), then close."""
    extra = [("fpmig", FolderPlugin(folder))] if folder is not None else []
    platform = bootstrap(settings, plugins=[], extra_plugins=extra, schema=schema)
    tables = set(inspect(platform.db.engine).get_table_names())
    platform.close()
    return tables


def stored_fingerprint(settings):
    platform = bootstrap(settings, plugins=[], schema="skip")
    try:
        with platform.db.engine.connect() as conn:
            if not inspect(conn).has_table(FINGERPRINT_TABLE):
                return None
            rows = conn.execute(text(f"SELECT fingerprint FROM {FINGERPRINT_TABLE}")).all()
        return [r for (r,) in rows]
    finally:
        platform.close()


def test_second_start_skips_alembic_when_nothing_changed(zt_settings, alembic_calls):
    start(zt_settings, schema="upgrade")
    assert alembic_calls == {"upgrade": 1, "pending": 0}
    assert len(stored_fingerprint(zt_settings)) == 1
    start(zt_settings, schema="upgrade")
    start(zt_settings, schema="check")
    start(zt_settings, schema="auto")
    assert alembic_calls == {"upgrade": 1, "pending": 0}


def test_warm_start_does_not_import_alembic(zt_settings):
    start(zt_settings, schema="upgrade")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZHONGTAI_")}
    env["ZHONGTAI_HOME"] = str(zt_settings.home)
    env["ZHONGTAI_DATABASE_URL"] = str(zt_settings.database_url)
    code = (
        "import sys\n"
        "from zhongtai.settings import load_settings\n"
        "from zhongtai.platform import bootstrap\n"
        "bootstrap(load_settings(), plugins=[]).close()\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'alembic', 'mako', 'pygments'}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_new_revision_file_is_applied(zt_settings, fp_folder, alembic_calls):
    assert "fpmig_items" in start(zt_settings, folder=fp_folder)
    (fp_folder / "f2_fpmig_more.py").write_text(REV2)
    with pytest.raises(StartupError, match="1 pending migration"):
        start(zt_settings, schema="check", folder=fp_folder)
    assert alembic_calls["pending"] == 1
    assert "fpmig_more" in start(zt_settings, schema="upgrade", folder=fp_folder)
    assert alembic_calls["upgrade"] == 2
    start(zt_settings, schema="check", folder=fp_folder)  # recorded again: fast path
    assert alembic_calls == {"upgrade": 2, "pending": 1}


def test_edited_revision_file_takes_the_full_path(zt_settings, fp_folder, alembic_calls):
    start(zt_settings, folder=fp_folder)
    before = stored_fingerprint(zt_settings)
    path = fp_folder / "f1_fpmig_items.py"
    path.write_text(path.read_text() + "\n# edited\n")
    start(zt_settings, folder=fp_folder)
    assert alembic_calls["upgrade"] == 2
    assert stored_fingerprint(zt_settings) != before


def test_bytecode_caches_do_not_count(zt_settings, fp_folder, alembic_calls):
    start(zt_settings, folder=fp_folder)
    cache = fp_folder / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "f1_fpmig_items.cpython-311.pyc").write_bytes(b"not really bytecode")
    start(zt_settings, folder=fp_folder)
    assert alembic_calls["upgrade"] == 1


def test_plugin_added_or_removed_takes_the_full_path(zt_settings, fp_folder, alembic_calls):
    start(zt_settings)
    assert "fpmig_items" in start(zt_settings, folder=fp_folder)  # added: migrated
    assert alembic_calls["upgrade"] == 2
    start(zt_settings, schema="upgrade")  # removed: its revision is parked
    assert alembic_calls["upgrade"] == 3
    start(zt_settings, schema="check")  # and that state is recorded in turn
    assert alembic_calls == {"upgrade": 3, "pending": 0}
    assert "fpmig_items" in start(zt_settings, schema="check", folder=fp_folder)  # back
    assert alembic_calls["pending"] == 1


def test_downgrade_and_partial_upgrade_forget_the_fingerprint(
    zt_settings, fp_folder, alembic_calls
):
    start(zt_settings, folder=fp_folder)
    platform = bootstrap(
        zt_settings, plugins=[], extra_plugins=[("fpmig", FolderPlugin(fp_folder))], schema="skip"
    )
    try:
        migrations = platform.migrations()
        migrations.downgrade("fpmig@base")
        assert not migrations.is_current()
        assert stored_fingerprint(zt_settings) == []
        migrations.upgrade("core@head")  # fpmig still pending
        assert not migrations.is_current()
        assert stored_fingerprint(zt_settings) == []
        migrations.upgrade()
        assert migrations.is_current()
    finally:
        platform.close()
    assert "fpmig_items" in start(zt_settings, schema="check", folder=fp_folder)


def test_version_rows_changed_behind_its_back_take_the_full_path(zt_settings, alembic_calls):
    start(zt_settings)
    platform = bootstrap(zt_settings, plugins=[], schema="skip")
    try:
        with platform.db.engine.begin() as conn:  # as a removed plugin's revision would
            conn.execute(text("INSERT INTO alembic_version VALUES ('e1gone000001')"))
    finally:
        platform.close()
    start(zt_settings, schema="upgrade")  # full path: parks the unknown row
    assert alembic_calls["upgrade"] == 2
    start(zt_settings, schema="upgrade")
    assert alembic_calls["upgrade"] == 2


def test_fingerprint_covers_branch_names_file_names_and_bytes(zt_settings, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x.py").write_text("1")

    class DB:  # Migrations only keeps it
        pass

    def fp(branches, rows=("r1",)):
        return Migrations(DB(), branches).fingerprint(rows)  # type: ignore[arg-type]

    base = fp({"p": a})
    assert fp({"p": a}) == base
    assert fp({"q": a}) != base
    assert fp({"p": a}, rows=("r2",)) != base
    assert fp({"p": a, "q": b}) != base  # an empty branch still counts
    (a / "y.py").write_text("")
    assert fp({"p": a}) != base
    (a / "y.py").unlink()
    (a / "x.py").write_text("2")
    assert fp({"p": a}) != base


# --------------------------------------------------------------------------- access log


@pytest.fixture
def restore_logging():
    """Undo configure_logging: remove the handler it adds, put back what was there."""
    root = logging.getLogger()
    ours_before = [h for h in root.handlers if getattr(h, "_zhongtai", False)]
    level, writer = root.level, logs._access_log
    yield
    for handler in [h for h in root.handlers if getattr(h, "_zhongtai", False)]:
        root.removeHandler(handler)
    for handler in ours_before:
        root.addHandler(handler)
    root.setLevel(level)
    logs._access_log = writer


def configure(monkeypatch, fmt="json", level="INFO", stream=None):
    """configure_logging with stderr being ``stream`` (a StringIO by default)."""
    stream = io.StringIO() if stream is None else stream
    monkeypatch.setattr(sys, "stderr", stream)
    logs.configure_logging(level, fmt)
    return stream


@contextmanager
def as_in_a_server():
    """Only zhongtai's handler on the root logger, as in ``zhongtai serve``.

    pytest's own capture handlers step aside meanwhile (they are per test phase, so
    the very list object is put back).
    """
    root = logging.getLogger()
    saved = root.handlers
    root.handlers = [h for h in saved if getattr(h, "_zhongtai", False)]
    try:
        assert logs._access_log is not None and logs._access_log.applies()
        yield
    finally:
        root.handlers = saved


NASTY_PATHS = [
    '/a"b\\c',
    "/line\nforged {}",
    "/cr\r\x1b[31mred\x00",
    "/sep\u2028\u2029\x85\x1c",
    "/surrogate\ud800",
    "/é/日本",
]


def test_access_line_is_one_json_object(monkeypatch, restore_logging):
    stream = configure(monkeypatch)
    with as_in_a_server():
        logs.log_access("GET", "/healthz", 200, 0.42, "/healthz", "01abc")
    line = stream.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    data = json.loads(line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", data.pop("time"))
    assert data == {
        "level": "info",
        "logger": "zhongtai.access",
        "message": "GET /healthz 200",
        "method": "GET",
        "path": "/healthz",
        "status": 200,
        "duration_ms": 0.42,
        "route": "/healthz",
        "request_id": "01abc",
    }


@pytest.mark.parametrize("path", NASTY_PATHS)
def test_access_json_line_cannot_be_forged(monkeypatch, restore_logging, path):
    stream = configure(monkeypatch)
    with as_in_a_server():
        logs.log_access("GET", path, 404, 1.0, "<unmatched>", "rid")
    line = stream.getvalue()
    assert len(line.splitlines()) == 1 and line.endswith("\n")
    assert line.isascii()
    data = json.loads(line)
    assert data["path"] == path
    assert data["message"] == f"GET {path} 404"


@pytest.mark.parametrize("path", NASTY_PATHS)
def test_access_text_line_cannot_be_forged(monkeypatch, restore_logging, path):
    stream = configure(monkeypatch, fmt="text")
    with as_in_a_server():
        logs.log_access("GET", path, 404, 1.0, "<unmatched>", "rid")
    line = stream.getvalue()
    assert len(line.splitlines()) == 1 and line.endswith("\n")
    assert line.rstrip("\n").isprintable()


def test_access_text_line_looks_like_every_other_text_line(monkeypatch, restore_logging):
    stream = configure(monkeypatch, fmt="text")
    token = logs.request_id_var.set("01abc")
    with as_in_a_server():
        logs.log_access("GET", "/healthz", 200, 0.42, "/healthz", "01abc")
        logging.getLogger("zhongtai.access").info("GET /healthz 200")
    logs.request_id_var.reset(token)
    direct, through_logging = stream.getvalue().splitlines()
    shape = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (.*)"
    assert re.fullmatch(shape, direct) and re.fullmatch(shape, through_logging)
    assert (
        direct[24:] == through_logging[24:] == "INFO    zhongtai.access: GET /healthz 200 [01abc]"
    )


def test_access_log_honours_the_level(monkeypatch, restore_logging):
    stream = configure(monkeypatch, level="WARNING")
    with as_in_a_server():
        logs.log_access("GET", "/healthz", 200, 0.42, "/healthz", "01abc")
    logs.log_access("GET", "/healthz", 200, 0.42, "/healthz", "01abc")
    assert stream.getvalue() == ""


def test_access_log_goes_through_logging_when_the_setup_changed(
    monkeypatch, restore_logging, caplog
):
    stream = configure(monkeypatch)
    assert not logs._access_log.applies()  # pytest's capture handlers are on the root
    with caplog.at_level(logging.INFO, logger="zhongtai.access"):
        logs.log_access("POST", "/x\ny", 201, 3.5, "/x", "01abc")
    (record,) = [r for r in caplog.records if r.name == "zhongtai.access"]
    assert record.getMessage() == "POST /x\\ny 201"  # escaped for text formatters
    assert (record.method, record.path, record.status) == ("POST", "/x\ny", 201)
    assert (record.duration_ms, record.route) == (3.5, "/x")
    line = stream.getvalue()  # zhongtai's handler still wrote it, through JsonFormatter
    assert len(line.splitlines()) == 1
    assert json.loads(line)["path"] == "/x\ny"


def test_access_lines_from_threads_never_interleave(monkeypatch, restore_logging, tmp_path):
    with open(tmp_path / "log", "w") as fh:
        configure(monkeypatch, stream=fh)

        def burst(n: int) -> None:
            for i in range(300):
                logs.log_access("GET", f"/t{n}/{i}" + "x" * 500, 200, 0.1, "/t", f"r{n}")

        with as_in_a_server():
            threads = [threading.Thread(target=burst, args=(n,)) for n in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    lines = (tmp_path / "log").read_text().splitlines()
    assert len(lines) == 8 * 300
    assert {json.loads(line)["request_id"] for line in lines} == {f"r{n}" for n in range(8)}


def run_http(scope_headers, *, access_log=True, path="/p"):
    """One exchange through handle_http around a trivial app; (status, headers, app calls)."""
    sent: list[dict] = []
    calls: list[dict] = []

    async def app(scope, receive, send):
        calls.append(scope)
        scope["path_template"] = "/p"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": scope_headers}
    metrics = Metrics()
    asyncio.run(handle_http(app, scope, None, send, metrics=metrics, access_log=access_log))
    return sent[0]["status"], dict(sent[0]["headers"]), calls, metrics


def test_handle_http_writes_one_access_line(monkeypatch, restore_logging):
    stream = configure(monkeypatch)
    with as_in_a_server():
        status, headers, _, _ = run_http([(b"x-request-id", b"abc-1")], path="/p\n")
    data = json.loads(stream.getvalue())
    assert (status, data["status"], data["route"], data["method"]) == (200, 200, "/p", "POST")
    assert data["request_id"] == headers[b"x-request-id"].decode() == "abc-1"
    assert data["path"] == "/p\n"
    assert isinstance(data["duration_ms"], float)
    stream.seek(0)
    stream.truncate()
    with as_in_a_server():
        run_http([], access_log=False)
    assert stream.getvalue() == ""


def test_handle_http_request_id_and_refused_media(monkeypatch, restore_logging):
    configure(monkeypatch)
    _, headers, _, _ = run_http([(b"x-request-id", b"first"), (b"x-request-id", b"second")])
    assert headers[b"x-request-id"] == b"first"
    _, headers, _, _ = run_http([(b"x-request-id", b"bad id!")])
    assert re.fullmatch(rb"[0-9a-z]{26}", headers[b"x-request-id"])
    status, _, calls, metrics = run_http(
        [(b"content-type", b"application/json"), (b"content-type", b"application/x-Pickle")]
    )
    assert status == 415 and calls == []
    sample = metrics.registry.get_sample_value(
        "zhongtai_http_requests_total", {"route": "<unmatched>", "method": "POST", "status": "415"}
    )
    assert sample == 1


# --------------------------------------------------------------------------- ids


def reference_id(ms: int, random80: int) -> str:
    """The original implementation: 26 divmod steps over the 128-bit value."""
    value = (ms << 80) | random80
    chars = []
    for _ in range(26):
        value, rem = divmod(value, 32)
        chars.append(ids._ALPHABET[rem])
    return "".join(reversed(chars))


def decode(identifier: str) -> int:
    value = 0
    for char in identifier:
        value = value * 32 + ids._ALPHABET.index(char)
    return value


@pytest.mark.parametrize("ms", [0, 1, 31, 1 << 40, 1_795_325_998_173, (1 << 48) - 1])
def test_id_time_digits_match_the_original_layout(monkeypatch, ms):
    monkeypatch.setattr(ids.time, "time_ns", lambda: ms * 1_000_000 + 999_999)
    identifier = ids.new_id()
    value = decode(identifier)
    assert value >> 80 == ms
    assert identifier == reference_id(ms, value & ((1 << 80) - 1))


def test_ids_are_26_url_safe_chars_and_unique():
    made = [ids.new_id() for _ in range(5000)]
    assert len(set(made)) == len(made)
    assert all(re.fullmatch(r"[0-9a-hjkmnp-tv-z]{26}", i) for i in made)


def test_id_random_part_uses_every_digit():
    digits = "".join(ids.new_id()[10:] for _ in range(2000))
    assert set(digits) == set(ids._ALPHABET)


def test_ids_sort_by_creation_across_milliseconds(monkeypatch):
    clock = iter(range(1_700_000_000_000, 1_700_000_000_000 + 3000, 3))
    monkeypatch.setattr(ids.time, "time_ns", lambda: next(clock) * 1_000_000)
    made = [ids.new_id() for _ in range(1000)]
    assert sorted(made) == made
    assert sorted(reversed(made)) == made


def test_ids_sort_by_real_time():
    first = ids.new_id()
    import time

    time.sleep(0.002)
    assert ids.new_id() > first


# --------------------------------------------------------------------------- metrics


def test_metrics_children_are_cached_and_counted():
    metrics = Metrics()
    for status in (200, 200, 404):
        metrics.observe("/r", "GET", status, 0.002)
    metrics.observe("/r", "POST", 200, 7.0)
    assert len(metrics._children) == 3

    def count(status: str) -> float | None:
        labels = {"route": "/r", "method": "GET", "status": status}
        return metrics.registry.get_sample_value("zhongtai_http_requests_total", labels)

    assert (count("200"), count("404")) == (2, 1)
    from prometheus_client import generate_latest

    exposed = generate_latest(metrics.registry).decode()
    assert 'zhongtai_http_requests_total{method="GET",route="/r",status="200"} 2.0' in exposed
    assert 'zhongtai_http_request_duration_seconds_count{method="GET",route="/r"} 3.0' in exposed
    assert (
        'zhongtai_http_request_duration_seconds_bucket{le="0.0025",method="GET",route="/r"} 3.0'
        in exposed
    )
    assert (
        'zhongtai_http_request_duration_seconds_bucket{le="5.0",method="POST",route="/r"} 0.0'
        in exposed
    )


def test_ids_made_within_one_millisecond_increase(monkeypatch):
    """Rows made faster than the clock ticks still page back in creation order."""
    monkeypatch.setattr(ids.time, "time_ns", lambda: 1_800_000_000_000 * 1_000_000)
    made = [ids.new_id() for _ in range(2000)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    assert {i[:10] for i in made} == {made[0][:10]}
