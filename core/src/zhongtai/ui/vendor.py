"""Install the third-party browser assets (htmx, uPlot) into the core package.

Why this exists: the web UI needs a few files from npm packages, but we do not want
those files committed to the repository, and a machine that installs zhongtai may have
Python but no node or npm. So ``core/ui-assets/package-lock.json`` (made by npm and
committed) is the single record of which versions we use, where their tarballs live and
what their SHA-512 digests are; this module reads it, downloads each tarball from the
``resolved`` URL, refuses it unless it matches the recorded ``integrity``, and copies
only the few files we need into ``static/vendor/`` (which git ignores).

Run it with ``python -m zhongtai.ui.vendor``. A second run with the same lockfile finds
``MANIFEST.json`` up to date and touches neither the network nor the files.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import http.client
import io
import json
import os
import posixpath
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

#: For each npm package: (path of the file inside the package's tarball, file name to
#: write under the target folder). Only these members are ever read from a tarball.
ASSETS: Final[Mapping[str, Sequence[tuple[str, str]]]] = {
    "htmx.org": [("package/dist/htmx.min.js", "htmx.min.js")],
    "uplot": [
        ("package/dist/uPlot.iife.min.js", "uPlot.iife.min.js"),
        ("package/dist/uPlot.min.css", "uPlot.min.css"),
    ],
}

#: Hosts a lockfile may send us to. The digest already proves the bytes are the ones npm
#: locked; the host check keeps an edited lockfile from turning this into a fetch of
#: arbitrary URLs.
REGISTRY_HOSTS: Final[frozenset[str]] = frozenset({"registry.npmjs.org"})

MANIFEST_NAME: Final = "MANIFEST.json"
TIMEOUT_S: Final = 30.0
# The tarballs we use are well under 1 MiB; a cap keeps a bad response from filling memory.
MAX_TARBALL_BYTES: Final = 32 * 1024 * 1024
MAX_MEMBER_BYTES: Final = 8 * 1024 * 1024

_UI_DIR: Final = Path(__file__).resolve().parent
#: core/src/zhongtai/ui/ -> core/ui-assets/package-lock.json (exists in a source checkout).
DEFAULT_LOCKFILE: Final = _UI_DIR.parents[2] / "ui-assets" / "package-lock.json"
DEFAULT_TARGET: Final = _UI_DIR / "static" / "vendor"


class VendorError(Exception):
    """Why the assets could not be installed, in one line a person can act on."""


@dataclass(frozen=True)
class _Locked:
    """What the lockfile says about one package."""

    name: str
    version: str
    resolved: str
    integrity: str


@dataclass(frozen=True)
class _Asset:
    """One installed file, and whether this run downloaded it or found it up to date."""

    package: str
    version: str
    path: Path
    size: int
    fetched: bool


def fetch(
    lockfile: Path,
    target: Path,
    *,
    cache: Path | None = None,
    assets: Mapping[str, Sequence[tuple[str, str]]] = ASSETS,
    _allow_http_hosts: Collection[str] = (),
) -> list[Path]:
    """Install the files listed in ``assets`` into ``target`` and return their paths.

    Every package is downloaded and verified before any file is written, so a bad
    tarball leaves ``target`` as it was. With ``cache``, verified tarballs are kept there
    (and re-verified on use) so that a new target folder needs no network.

    ``_allow_http_hosts`` is for the tests only: it lets them serve tarballs over plain
    HTTP from a local server. Nothing else should pass it.
    """
    return [asset.path for asset in _install(lockfile, target, cache, assets, _allow_http_hosts)]


def _install(
    lockfile: Path,
    target: Path,
    cache: Path | None,
    assets: Mapping[str, Sequence[tuple[str, str]]],
    allow_http_hosts: Collection[str],
) -> list[_Asset]:
    """Do the work of :func:`fetch`, also saying which packages were downloaded."""
    for name, members in assets.items():
        for member, file_name in members:
            _check_member_path(name, member)
            _check_file_name(name, file_name)
    locked = _read_lockfile(lockfile, assets)
    manifest = _read_manifest(target)

    entries: dict[str, dict[str, Any]] = {}
    contents: dict[str, bytes] = {}  # file name -> bytes, for the packages downloaded now
    fetched: set[str] = set()
    for name, members in assets.items():
        lock = locked[name]
        if _up_to_date(manifest.get(name), lock, members, target):
            entries[name] = manifest[name]
            continue
        data = _tarball(lock, cache, allow_http_hosts)
        files = _extract(name, data, members)
        contents.update(files)
        fetched.add(name)
        entries[name] = {
            "version": lock.version,
            "resolved": lock.resolved,
            "integrity": lock.integrity,
            "files": {
                file_name: {
                    "member": member,
                    "size": len(files[file_name]),
                    "sha256": hashlib.sha256(files[file_name]).hexdigest(),
                }
                for member, file_name in members
            },
        }

    if fetched or set(manifest) != set(entries):
        target.mkdir(parents=True, exist_ok=True)
        for file_name, data in contents.items():
            _write_atomic(target / file_name, data)
        text = json.dumps({"packages": entries}, indent=2, sort_keys=True) + "\n"
        _write_atomic(target / MANIFEST_NAME, text.encode())

    return [
        _Asset(
            package=name,
            version=entries[name]["version"],
            path=target / file_name,
            size=int(entries[name]["files"][file_name]["size"]),
            fetched=name in fetched,
        )
        for name, members in assets.items()
        for _, file_name in members
    ]


def _check_member_path(package: str, member: str) -> None:
    """Refuse a member path that could name something outside the package folder."""
    parts = member.split("/")
    if (
        not member.startswith("package/")
        or posixpath.isabs(member)
        or "\\" in member
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise VendorError(f"{package}: refusing unsafe tarball member path {member!r}")


def _check_file_name(package: str, file_name: str) -> None:
    """Refuse a target name that is not one plain file name inside the target folder."""
    if (
        file_name in ("", ".", "..", MANIFEST_NAME)
        or "/" in file_name
        or "\\" in file_name
        or file_name.startswith(".")
    ):
        raise VendorError(f"{package}: refusing target file name {file_name!r}")


def _read_lockfile(
    lockfile: Path, assets: Mapping[str, Sequence[tuple[str, str]]]
) -> dict[str, _Locked]:
    """Read version, tarball URL and digest of each needed package from package-lock.json."""
    try:
        document = json.loads(lockfile.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VendorError(f"lockfile not found: {lockfile} (pass --lockfile)") from None
    except (OSError, ValueError) as exc:
        raise VendorError(f"cannot read lockfile {lockfile}: {exc}") from None
    packages = document.get("packages") if isinstance(document, dict) else None
    if not isinstance(packages, dict):
        raise VendorError(f"{lockfile} has no 'packages' table (npm lockfileVersion 2 or 3)")
    locked: dict[str, _Locked] = {}
    for name in assets:
        entry = packages.get(f"node_modules/{name}")
        if not isinstance(entry, dict):
            raise VendorError(f"{lockfile} does not lock {name!r}")
        fields: dict[str, str] = {}
        for key in ("version", "resolved", "integrity"):
            value = entry.get(key)
            if isinstance(value, str) and value:
                fields[key] = value
        missing = [key for key in ("version", "resolved", "integrity") if key not in fields]
        if missing:
            raise VendorError(
                f"{lockfile}: {name} lacks {', '.join(missing)} "
                "(regenerate with npm --omit-lockfile-registry-resolved=false)"
            )
        locked[name] = _Locked(
            name=name,
            version=fields["version"],
            resolved=fields["resolved"],
            integrity=fields["integrity"],
        )
    return locked


def _read_manifest(target: Path) -> dict[str, Any]:
    """Return the packages recorded by the last run, or nothing if there is no usable record."""
    try:
        document = json.loads((target / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    packages = document.get("packages") if isinstance(document, dict) else None
    return packages if isinstance(packages, dict) else {}


def _up_to_date(
    entry: Any, lock: _Locked, members: Sequence[tuple[str, str]], target: Path
) -> bool:
    """Whether the files of a package are already installed, unchanged, at the locked version."""
    if not isinstance(entry, dict):
        return False
    if entry.get("version") != lock.version or entry.get("integrity") != lock.integrity:
        return False
    files = entry.get("files")
    if not isinstance(files, dict) or set(files) != {file_name for _, file_name in members}:
        return False
    for member, file_name in members:
        record = files[file_name]
        if not isinstance(record, dict) or record.get("member") != member:
            return False
        try:
            data = (target / file_name).read_bytes()
        except OSError:
            return False
        if hashlib.sha256(data).hexdigest() != record.get("sha256"):
            return False
    return True


def _tarball(lock: _Locked, cache: Path | None, allow_http_hosts: Collection[str]) -> bytes:
    """Return the verified tarball of a package, from the cache or from its resolved URL."""
    _check_url(lock, allow_http_hosts)
    cached = cache / f"{lock.name.replace('/', '__')}-{lock.version}.tgz" if cache else None
    if cached is not None and cached.is_file():
        data = cached.read_bytes()
        if _digest_matches(lock, data):
            return data
    data = _download(lock.resolved, allow_http_hosts)
    if not _digest_matches(lock, data):
        raise VendorError(
            f"{lock.name}@{lock.version}: integrity mismatch for {lock.resolved} "
            "(the download is not the tarball the lockfile records)"
        )
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(cached, data)
    return data


def _check_url(lock: _Locked, allow_http_hosts: Collection[str]) -> None:
    """Refuse a resolved URL that is not an https tarball of this package on the registry."""
    url = urllib.parse.urlsplit(lock.resolved)
    host = url.hostname or ""
    if host in allow_http_hosts and url.scheme in ("http", "https"):
        return
    if url.scheme != "https":
        raise VendorError(f"{lock.name}: refusing non-https tarball URL {lock.resolved}")
    if host not in REGISTRY_HOSTS:
        raise VendorError(
            f"{lock.name}: refusing tarball URL on {host!r}; "
            f"allowed: {', '.join(sorted(REGISTRY_HOSTS))}"
        )
    base = lock.name.rsplit("/", 1)[-1]
    if url.path != f"/{lock.name}/-/{base}-{lock.version}.tgz":
        raise VendorError(
            f"{lock.name}: tarball URL {lock.resolved} is not {lock.name}@{lock.version}"
        )


def _digest_matches(lock: _Locked, data: bytes) -> bool:
    """Check ``data`` against the lockfile's SRI string, which must include a sha512 digest."""
    expected = [
        token.split("-", 1)[1].split("?", 1)[0]
        for token in lock.integrity.split()
        if token.startswith("sha512-")
    ]
    if not expected:
        raise VendorError(f"{lock.name}: lockfile integrity has no sha512 digest")
    actual = base64.b64encode(hashlib.sha512(data).digest()).decode()
    return any(hmac.compare_digest(actual, digest) for digest in expected)


class _SameHostRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to the host we asked, over https (or allowed test http)."""

    def __init__(self, host: str, allow_http_hosts: Collection[str]) -> None:
        self._host = host
        self._allow_http_hosts = allow_http_hosts

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        url = urllib.parse.urlsplit(newurl)
        secure = url.scheme == "https" or url.hostname in self._allow_http_hosts
        if url.hostname != self._host or not secure:
            raise VendorError(f"refusing redirect from {req.full_url} to {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _download(url: str, allow_http_hosts: Collection[str]) -> bytes:
    """GET ``url`` with a timeout, trying once more after a network error or a 5xx."""
    opener = urllib.request.build_opener(
        _SameHostRedirects(urllib.parse.urlsplit(url).hostname or "", allow_http_hosts)
    )
    # The scheme and host were checked by _check_url: https on the registry (or test http).
    headers = {"User-Agent": "zhongtai-ui-vendor"}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310
    for attempt in (1, 2):
        try:
            with opener.open(request, timeout=TIMEOUT_S) as response:
                data: bytes = response.read(MAX_TARBALL_BYTES + 1)
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == 2:
                raise VendorError(f"download failed: {url}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            if attempt == 2:
                reason = getattr(exc, "reason", exc)
                raise VendorError(f"download failed: {url}: {reason}") from None
        else:
            if len(data) > MAX_TARBALL_BYTES:
                raise VendorError(f"download refused: {url} is over {MAX_TARBALL_BYTES} bytes")
            return data
        time.sleep(1.0)
    raise AssertionError("unreachable")


def _extract(package: str, data: bytes, members: Sequence[tuple[str, str]]) -> dict[str, bytes]:
    """Read the listed members (regular files only) out of a .tgz, without extracting it.

    Nothing is written to disk here and only exact member names are matched, so paths such
    as ``../evil`` or links inside the tarball can never land anywhere.
    """
    wanted = {member: file_name for member, file_name in members}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            for info in archive:
                if info.name not in wanted:
                    continue
                file_name = wanted[info.name]
                if file_name in found:
                    raise VendorError(f"{package}: tarball has {info.name} twice")
                if not info.isfile():
                    raise VendorError(f"{package}: {info.name} in the tarball is not a file")
                if info.size > MAX_MEMBER_BYTES:
                    raise VendorError(f"{package}: {info.name} is over {MAX_MEMBER_BYTES} bytes")
                stream = archive.extractfile(info)
                if stream is None:
                    raise VendorError(f"{package}: cannot read {info.name} from the tarball")
                found[file_name] = stream.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise VendorError(f"{package}: not a readable .tgz: {exc}") from None
    missing = [member for member, file_name in members if file_name not in found]
    if missing:
        raise VendorError(f"{package}: tarball lacks {', '.join(missing)}")
    return found


def _write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder, so a reader never sees half a file."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: install the assets, print one line per file, exit 1 on failure."""
    parser = argparse.ArgumentParser(
        prog="python -m zhongtai.ui.vendor",
        description="Install the browser assets locked in core/ui-assets/package-lock.json.",
    )
    parser.add_argument("--lockfile", type=Path, default=DEFAULT_LOCKFILE)
    parser.add_argument("--target", type=Path, default=DEFAULT_TARGET)
    parser.add_argument("--cache", type=Path, default=None, help="keep verified tarballs here")
    parser.add_argument("--quiet", action="store_true", help="print only what was downloaded")
    args = parser.parse_args(argv)
    try:
        installed = _install(args.lockfile, args.target, args.cache, ASSETS, ())
    except (VendorError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for asset in installed:
        if args.quiet and not asset.fetched:
            continue
        state = "downloaded" if asset.fetched else "up to date"
        print(f"{asset.package}@{asset.version}  {asset.path}  {asset.size} bytes  {state}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
