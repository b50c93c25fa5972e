"""The ``zhongtai`` command, run as a real process the way an operator runs it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

SUPPORT = str(Path(__file__).parents[1] / "support")


@pytest.fixture
def run(zt_settings, zt_clean_env):
    base = {k: v for k, v in os.environ.items() if not k.startswith("ZHONGTAI_")}
    base.update(
        ZHONGTAI_HOME=str(zt_settings.home),
        ZHONGTAI_DATABASE_URL=zt_settings.effective_database_url,
        ZHONGTAI_PLUGINS="",
        PYTHONPATH=SUPPORT,
    )

    def run_(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "zhongtai", *args],
            env={**base, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run_


def test_help_lists_core_commands(run):
    result = run("--help")
    assert result.returncode == 0
    for command in ("serve", "db", "plugins", "settings"):
        assert command in result.stdout


@pytest.mark.parametrize(
    "url", ["mysql://db/x", "postgresql://127.0.0.1:1/nothing", "sqlite:////proc/nope/x.db"]
)
def test_bad_database_url_exits_nonzero_with_one_clear_line(run, url):
    result = run("db", "current", ZHONGTAI_DATABASE_URL=url)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("zhongtai: ")
    assert "Traceback" not in result.stderr


def test_serve_with_bad_setting_exits_2(run):
    result = run("serve", ZHONGTAI_PORT="eighty")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "zhongtai: ZHONGTAI_PORT: Input should be a valid integer, unable to parse string as an"
        " integer"
    )


def test_plugins_shows_load_errors(run):
    result = run("plugins", "--json", ZHONGTAI_PLUGINS="broken")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["broken"]["loaded"] is False
    assert "boom while importing" in plugins["broken"]["error"]
    assert plugins["lineage"]["loaded"] is True


def test_db_commands(run):
    assert "pending" in run("db", "current").stdout
    upgraded = run("db", "upgrade", ZHONGTAI_PLUGINS="withmig")
    assert upgraded.returncode == 0, upgraded.stderr
    current = run("db", "current", ZHONGTAI_PLUGINS="withmig").stdout
    assert "a1withmig0001" in current and "up to date" in current
    history = run("db", "history", ZHONGTAI_PLUGINS="withmig").stdout
    assert "(withmig) [applied]" in history
    down = run("db", "downgrade", "withmig@base", ZHONGTAI_PLUGINS="withmig")
    assert down.returncode == 0, down.stderr
    assert "(withmig) [pending]" in run("db", "history", ZHONGTAI_PLUGINS="withmig").stdout


def test_settings_lists_with_secrets_masked(run):
    result = run("settings", ZHONGTAI_SECRET_KEY="very-secret-value")
    assert result.returncode == 0, result.stderr
    assert "ZHONGTAI_SECRET_KEY=********" in result.stdout
    assert "very-secret-value" not in result.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_starts_and_answers(zt_settings, run):
    if not zt_settings.is_embedded_database:
        assert run("db", "upgrade").returncode == 0
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZHONGTAI_")}
    env.update(
        ZHONGTAI_HOME=str(zt_settings.home),
        ZHONGTAI_DATABASE_URL=zt_settings.effective_database_url,
        ZHONGTAI_PLUGINS="",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "zhongtai", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    assert r.status == 200
                    assert r.headers["x-request-id"]
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "server did not become ready"
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.postgres_only
def test_serve_refuses_out_of_date_postgres_schema(run):
    result = run("serve")
    assert result.returncode == 1
    assert "run `zhongtai db upgrade` first" in result.stderr
    assert "Traceback" not in result.stderr


def test_settings_lists_plugin_settings_under_their_variable(run):
    result = run("settings", ZHONGTAI_PLUGINS="hello", ZHONGTAI_HELLO__GREETING="Hi")
    assert result.returncode == 0, result.stderr
    assert "ZHONGTAI_HELLO__GREETING=Hi" in result.stdout


def test_unknown_storage_driver_names_the_available_ones(run):
    result = run("db", "current", ZHONGTAI_STORAGE__DRIVER="nope")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "zhongtai: unknown zhongtai.storage driver 'nope'; available: local, s3"
    )
