"""zhongtai.ui.vendor: browser assets come from the npm tarballs the lockfile pins.

The tarballs here are small fakes served over HTTP from 127.0.0.1, so the tests need no
network; ``_allow_http_hosts`` is the switch that exists for this purpose only.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from zhongtai.ui import vendor

REPO = Path(__file__).resolve().parents[3]
ASSETS = {
    "htmx.org": [("package/dist/htmx.min.js", "htmx.min.js")],
    "uplot": [
        ("package/dist/uPlot.iife.min.js", "uPlot.iife.min.js"),
        ("package/dist/uPlot.min.css", "uPlot.min.css"),
    ],
}
LOCAL = ("127.0.0.1",)


@dataclass
class Registry:
    """A local stand-in for the npm registry: serves tarballs, counts requests."""

    base: str
    tarballs: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    state = Registry(base="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            body = state.tarballs.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def make_tgz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def publish(
    registry: Registry, tmp_path: Path, extra: dict[str, bytes] | None = None
) -> tuple[Path, dict[str, bytes]]:
    """Serve a fake tarball per package and write a lockfile pinning them."""
    expected: dict[str, bytes] = {}
    packages: dict[str, object] = {"": {"name": "fake"}}
    for name, members in ASSETS.items():
        contents = {member: f"/* {name} {member} */".encode() for member, _ in members}
        for member, file_name in members:
            expected[file_name] = contents[member]
        tgz = make_tgz({**contents, **(extra or {})})
        path = f"/{name}/-/{name}-1.0.0.tgz"
        registry.tarballs[path] = tgz
        packages[f"node_modules/{name}"] = {
            "version": "1.0.0",
            "resolved": registry.base + path,
            "integrity": sri(tgz),
        }
    lockfile = tmp_path / "package-lock.json"
    lockfile.write_text(json.dumps({"lockfileVersion": 3, "packages": packages}))
    return lockfile, expected


def test_download_writes_files_and_manifest(registry: Registry, tmp_path: Path) -> None:
    lockfile, expected = publish(registry, tmp_path)
    target = tmp_path / "vendor"

    paths = vendor.fetch(lockfile, target, _allow_http_hosts=LOCAL)

    assert [p.name for p in paths] == ["htmx.min.js", "uPlot.iife.min.js", "uPlot.min.css"]
    for path in paths:
        assert path.read_bytes() == expected[path.name]
    manifest = json.loads((target / "MANIFEST.json").read_text())["packages"]
    assert set(manifest) == {"htmx.org", "uplot"}
    lock = json.loads(lockfile.read_text())["packages"]
    for name, entry in manifest.items():
        assert entry["version"] == "1.0.0"
        assert entry["integrity"] == lock[f"node_modules/{name}"]["integrity"]
        for file_name, record in entry["files"].items():
            assert record["sha256"] == hashlib.sha256(expected[file_name]).hexdigest()
    assert sorted(p.name for p in target.iterdir()) == [
        "MANIFEST.json",
        "htmx.min.js",
        "uPlot.iife.min.js",
        "uPlot.min.css",
    ]


def test_second_run_does_not_download(registry: Registry, tmp_path: Path) -> None:
    lockfile, _ = publish(registry, tmp_path)
    target = tmp_path / "vendor"
    vendor.fetch(lockfile, target, _allow_http_hosts=LOCAL)
    assert len(registry.requests) == 2

    vendor.fetch(lockfile, target, _allow_http_hosts=LOCAL)
    assert len(registry.requests) == 2

    # A file changed on disk no longer matches the manifest: only its package is fetched.
    (target / "uPlot.min.css").write_text("tampered")
    vendor.fetch(lockfile, target, _allow_http_hosts=LOCAL)
    assert registry.requests[2:] == ["/uplot/-/uplot-1.0.0.tgz"]
    assert (target / "uPlot.min.css").read_text() != "tampered"


def test_cache_serves_a_new_target_offline(registry: Registry, tmp_path: Path) -> None:
    lockfile, expected = publish(registry, tmp_path)
    cache = tmp_path / "cache"
    vendor.fetch(lockfile, tmp_path / "one", cache=cache, _allow_http_hosts=LOCAL)
    paths = vendor.fetch(lockfile, tmp_path / "two", cache=cache, _allow_http_hosts=LOCAL)
    assert len(registry.requests) == 2
    assert all(p.read_bytes() == expected[p.name] for p in paths)


def test_integrity_mismatch_leaves_nothing(registry: Registry, tmp_path: Path) -> None:
    lockfile, _ = publish(registry, tmp_path)
    # The second package's tarball changes after locking: nothing at all may be written.
    registry.tarballs["/uplot/-/uplot-1.0.0.tgz"] = make_tgz({"package/dist/x": b"evil"})
    target = tmp_path / "vendor"

    with pytest.raises(vendor.VendorError, match="integrity mismatch"):
        vendor.fetch(lockfile, target, _allow_http_hosts=LOCAL)

    assert not target.exists() or not any(target.iterdir())


def test_member_paths_outside_are_never_written(registry: Registry, tmp_path: Path) -> None:
    evil = {"../evil": b"x", "package/../../evil2": b"x", f"{tmp_path}/evil3": b"x"}
    lockfile, _ = publish(registry, tmp_path, extra=evil)
    target = tmp_path / "a" / "b" / "vendor"

    vendor.fetch(lockfile, target, _allow_http_hosts=LOCAL)

    written = {p.name for p in tmp_path.rglob("*")}
    assert not written & {"evil", "evil2", "evil3"}
    with pytest.raises(vendor.VendorError, match="unsafe tarball member path"):
        vendor.fetch(
            lockfile,
            target,
            assets={"htmx.org": [("../evil", "evil")]},
            _allow_http_hosts=LOCAL,
        )


def test_refuses_plain_http_and_foreign_hosts(registry: Registry, tmp_path: Path) -> None:
    lockfile, _ = publish(registry, tmp_path)
    with pytest.raises(vendor.VendorError, match="non-https"):
        vendor.fetch(lockfile, tmp_path / "vendor")
    document = json.loads(lockfile.read_text())
    document["packages"]["node_modules/htmx.org"]["resolved"] = (
        "https://example.com/htmx.org/-/htmx.org-1.0.0.tgz"
    )
    lockfile.write_text(json.dumps(document))
    with pytest.raises(vendor.VendorError, match=r"example\.com"):
        vendor.fetch(lockfile, tmp_path / "vendor")
    assert registry.requests == []


def test_main_reports_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = vendor.main(["--lockfile", str(tmp_path / "missing.json"), "--target", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: lockfile not found") and err.count("\n") == 1


def test_committed_lockfile_pins_the_assets() -> None:
    lockfile = REPO / "core" / "ui-assets" / "package-lock.json"
    assert lockfile == vendor.DEFAULT_LOCKFILE
    packages = json.loads(lockfile.read_text())["packages"]
    for name in vendor.ASSETS:
        entry = packages[f"node_modules/{name}"]
        assert entry["resolved"].startswith(f"https://registry.npmjs.org/{name}/-/")
        assert entry["resolved"].endswith(f"-{entry['version']}.tgz")
        assert entry["integrity"].startswith("sha512-")
    assert packages["node_modules/htmx.org"]["version"].startswith("2.")
    assert packages["node_modules/uplot"]["version"].startswith("1.6.")
