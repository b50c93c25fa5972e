"""What authentication and a permission-filtered list cost per request.

One ``zhongtai serve`` (embedded SQLite, access log on, as a user runs it) over a data
directory seeded with 10,000 projects in 100 organizations; the benchmark user is a
member of 100 of them (50 through a project membership, 50 through two organization
memberships), so ``GET /api/v1/projects`` must find 100 visible projects among
10,000 with the one SQL filter every list endpoint uses. Measured with wrk, rounds
interleaved so the shared machine slows all alike:

* ``GET /healthz`` — the baseline: the same server, no credentials, no database;
* ``GET /api/v1/projects?limit=100`` with an API key (``Authorization: Bearer zt_…``);
* the same with a JWT access token;
* the default page (50) with the key;
* for comparison, the key's list on a second ``zhongtai serve`` over the same data
  directory with the identity cache off (``ZHONGTAI_IDENTITY__CACHE=false``): every
  request then authenticates against the database and runs the list's SQL.

Repeated requests are what the identity cache is for (``zhongtai.identity.cache``):
each one still reads the identity generation from the database, re-checks the key's
expiry and encodes nothing it kept; the first request after a write to the identity
tables pays for the SQL again.

Target (issue 3): each authenticated list at ≥ half the requests per second of
``/healthz``; p99 reported. Run: ``.venv/bin/python bench/auth_overhead.py``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    RESULTS,
    get_status,
    machine,
    median,
    scratch_dir,
    verdict,
    zhongtai_server,
)
from http_overhead import LoadResult, _ms

TARGET = 0.5
PROJECTS, ORGS, VISIBLE = 10_000, 100, 100


def seed(home: Path) -> tuple[str, str]:
    """Create the data directory's database and fill it; return (API key, access token)."""
    import os

    os.environ["ZHONGTAI_HOME"] = str(home)
    from sqlalchemy import insert

    from zhongtai.identity.apikeys import create_api_key
    from zhongtai.identity.models import Organization, OrgMember, Project, ProjectMember, User
    from zhongtai.identity.passwords import hash_password
    from zhongtai.identity.roles import Role
    from zhongtai.identity.tokens import issue_access_token
    from zhongtai.metadata.ids import new_id
    from zhongtai.platform import bootstrap
    from zhongtai.settings import load_settings

    platform = bootstrap(load_settings(home=home), schema="upgrade")
    try:
        with platform.db.transaction() as session:
            user = User(email="bench@example.com", password_hash=hash_password("bench-password-1"))
            others = [User(email=f"u{i}@example.com") for i in range(50)]
            session.add_all([user, *others])
            session.flush()
            # Organization 0 ("small") holds 50 projects; the others share the rest.
            orgs = [{"id": new_id(), "slug": f"org{i}", "name": f"Org {i}"} for i in range(ORGS)]
            session.execute(insert(Organization), orgs)
            per_org = (PROJECTS - 50) // (ORGS - 1)

            def org_of(i: int) -> str:
                return str(orgs[0 if i < 50 else 1 + min((i - 50) // per_org, ORGS - 2)]["id"])

            projects = [
                {
                    "id": new_id(),
                    "org_id": org_of(i),
                    "slug": f"p{i}",
                    "name": f"Project {i}",
                    "description": "",
                }
                for i in range(PROJECTS)
            ]
            session.execute(insert(Project), projects)
            # 50 visible through the organization role, 50 through project memberships
            # spread over other organizations.
            session.add(OrgMember(org_id=orgs[0]["id"], user_id=user.id, role=int(Role.developer)))
            direct = [projects[50 + k * 150]["id"] for k in range(VISIBLE - 50)]
            session.execute(
                insert(ProjectMember),
                [
                    {
                        "id": new_id(),
                        "project_id": pid,
                        "user_id": user.id,
                        "role": int(Role.viewer),
                    }
                    for pid in direct
                ],
            )
            # Other users are members everywhere too, so the membership tables are not tiny.
            session.execute(
                insert(ProjectMember),
                [
                    {
                        "id": new_id(),
                        "project_id": projects[(i * 97) % PROJECTS]["id"],
                        "user_id": others[i % 50].id,
                        "role": int(Role.developer),
                    }
                    for i in range(5000)
                ],
            )
            _row, key = create_api_key(
                session, user_id=user.id, name="bench", secret=platform.secret_key
            )
            user_id = user.id
        token = issue_access_token(user_id, secret=platform.secret_key, ttl=timedelta(hours=2))
        return key, token
    finally:
        platform.close()


def wrk(url: str, header: str | None, connections: int, duration: float) -> LoadResult:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency"]
    if header:
        argv += ["-H", header]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    import re

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        errors += int(m.group(1))
    return LoadResult(rps, p50, p99, errors, requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get update && apt-get install -y wrk")

    with scratch_dir("zt-bench-auth-") as work:
        home = work / "home"
        print(f"seeding {PROJECTS} projects, {VISIBLE} visible to the benchmark user …", flush=True)
        key, token = seed(home)
        server = zhongtai_server(home, work / "server.log", bytecode_cache=True)
        # The same data directory served with the identity cache off: every request
        # authenticates against the database and runs the list's SQL.
        uncached = zhongtai_server(
            home,
            work / "uncached.log",
            bytecode_cache=True,
            name="zhongtai (cache off)",
            env={"ZHONGTAI_IDENTITY__CACHE": "false"},
        )
        base = f"http://127.0.0.1:{server.port}"
        bearer_key = f"Authorization: Bearer {key}"
        targets = {
            "healthz": (base, "/healthz", None),
            "projects (API key)": (base, "/api/v1/projects?limit=100", bearer_key),
            "projects (JWT)": (
                base,
                "/api/v1/projects?limit=100",
                f"Authorization: Bearer {token}",
            ),
            # The default page (50 of the 100), as a client that sends no limit sees it.
            "projects, page 50 (key)": (base, "/api/v1/projects", bearer_key),
            "projects, cache off (key)": (
                f"http://127.0.0.1:{uncached.port}",
                "/api/v1/projects?limit=100",
                bearer_key,
            ),
        }
        results: dict[str, list[LoadResult]] = {name: [] for name in targets}
        with server, uncached:
            server.wait_ready()
            uncached.wait_ready()
            assert get_status(server.port, "/healthz") == 200
            # Check the list answers 200 with exactly the visible projects before timing it.
            check = subprocess.run(
                [
                    "curl",
                    "-s",
                    "-H",
                    f"Authorization: Bearer {key}",
                    base + "/api/v1/projects?limit=500",
                ],
                capture_output=True,
                text=True,
            )
            if check.returncode == 0 and check.stdout:
                items = json.loads(check.stdout).get("items", [])
                print(f"GET /api/v1/projects sees {len(items)} projects (expected {VISIBLE})")
            for origin, path, header in targets.values():  # warm-up, unmeasured
                wrk(origin + path, header, args.connections, 1)
            names = list(targets)
            for r in range(args.rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    origin, path, header = targets[name]
                    res = wrk(origin + path, header, args.connections, args.duration)
                    results[name].append(res)
                    print(
                        f"round {r + 1}/{args.rounds} {name:<24} {res.rps:8.0f} rps  "
                        f"p50 {res.p50_ms:6.2f} ms  p99 {res.p99_ms:6.2f} ms"
                        + (f"  NON-2XX {res.errors}" if res.errors else ""),
                        flush=True,
                    )

    def ratio(name: str) -> float:
        pairs = zip(results[name], results["healthz"], strict=True)
        return median([a.rps / b.rps for a, b in pairs])

    summary = {
        "machine": machine(),
        "projects": PROJECTS,
        "visible": VISIBLE,
        "rps": {n: median([x.rps for x in v]) for n, v in results.items()},
        "p99_ms": {n: median([x.p99_ms for x in v]) for n, v in results.items()},
        "ratio_api_key": ratio("projects (API key)"),
        "ratio_jwt": ratio("projects (JWT)"),
        "ratio_default_page": ratio("projects, page 50 (key)"),
        "ratio_cache_off": ratio("projects, cache off (key)"),
        "errors": {n: sum(x.errors for x in v) for n, v in results.items()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "auth_overhead.json").write_text(json.dumps(summary, indent=2))
    print()
    print(f"== auth overhead ({summary['machine']}) ==")
    for name in targets:
        print(f"{name:<20} {summary['rps'][name]:8.0f} rps  p99 {summary['p99_ms'][name]:6.2f} ms")
    for label, key_name in (
        ("API key, all 100", "ratio_api_key"),
        ("JWT, all 100", "ratio_jwt"),
        ("API key, default page of 50", "ratio_default_page"),
    ):
        value = summary[key_name]
        print(
            f"projects list ({label}) ÷ healthz: {value:.2f} (target ≥ {TARGET}) "
            f"{verdict(value >= TARGET)}"
        )
    print(
        f"projects list (API key, all 100, identity cache off) ÷ healthz: "
        f"{summary['ratio_cache_off']:.2f} (for comparison; no target)"
    )
    if any(summary["errors"].values()):
        print(f"WARNING: non-2xx responses during the runs: {summary['errors']}")


if __name__ == "__main__":
    main()
