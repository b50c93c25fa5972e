"""Failed-login throttling: lockout, Retry-After, windows, and counts under concurrency."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from zhongtai.identity import throttle
from zhongtai.identity.models import LoginThrottle
from zhongtai.platform import Platform

EMAIL = throttle.email_key("Alice@Example.com")
ADDR = throttle.addr_key("203.0.113.7")
KEYS = [EMAIL, ADDR]
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def fail(platform: Platform, keys: list[str], now: datetime, **kw: object) -> None:
    with platform.db.transaction() as s:
        throttle.record_failure(s, keys, now=now, **kw)  # type: ignore[arg-type]


def check(platform: Platform, keys: list[str], now: datetime) -> float | None:
    with platform.db.transaction() as s:
        return throttle.check(s, keys, now=now)


def failures(platform: Platform, key: str) -> int | None:
    with platform.db.transaction() as s:
        return s.scalar(select(LoginThrottle.failures).where(LoginThrottle.key == key))


def test_keys() -> None:
    assert throttle.email_key(" Alice@Example.COM ") == "email:alice@example.com"
    assert throttle.addr_key("203.0.113.7") == "addr:203.0.113.7"
    assert throttle.keys_for("a@b.c", None) == ["email:a@b.c"]
    assert throttle.keys_for("a@b.c", "::1") == ["email:a@b.c", "addr:::1"]
    long = throttle.email_key("x" * 10_000)
    assert len(long) <= 400 and long != throttle.email_key("y" * 10_000)


def test_locks_after_max_failures(zt_platform: Platform) -> None:
    for i in range(4):
        fail(zt_platform, KEYS, T0 + timedelta(seconds=i))
        assert check(zt_platform, KEYS, T0 + timedelta(seconds=i)) is None
    fail(zt_platform, KEYS, T0 + timedelta(seconds=4))
    wait = check(zt_platform, KEYS, T0 + timedelta(seconds=4))
    assert wait == pytest.approx(15 * 60)
    # Either key alone is locked.
    assert check(zt_platform, [EMAIL], T0 + timedelta(seconds=5)) is not None
    assert check(zt_platform, [ADDR], T0 + timedelta(seconds=5)) is not None
    # Another account from another address is not.
    other = throttle.keys_for("bob@example.com", "198.51.100.1")
    assert check(zt_platform, other, T0 + timedelta(seconds=5)) is None


def test_retry_after_counts_down(zt_platform: Platform) -> None:
    for _ in range(3):
        fail(zt_platform, KEYS, T0, max_failures=3, lockout=timedelta(minutes=10))
    assert check(zt_platform, KEYS, T0 + timedelta(seconds=90)) == pytest.approx(510)
    assert check(zt_platform, KEYS, T0 + timedelta(minutes=10)) is None


def test_lock_is_the_latest_among_keys(zt_platform: Platform) -> None:
    for _ in range(5):
        fail(zt_platform, [ADDR], T0)
    for _ in range(5):
        fail(zt_platform, [EMAIL], T0 + timedelta(minutes=5))
    assert check(zt_platform, KEYS, T0 + timedelta(minutes=6)) == pytest.approx(14 * 60)


def test_window_expiry_resets_the_count(zt_platform: Platform) -> None:
    for i in range(4):
        fail(zt_platform, KEYS, T0 + timedelta(minutes=i))
    later = T0 + timedelta(minutes=16)  # the window started at T0
    fail(zt_platform, KEYS, later)
    assert failures(zt_platform, EMAIL) == 1
    assert check(zt_platform, KEYS, later) is None
    for i in range(3):
        fail(zt_platform, KEYS, later + timedelta(seconds=i + 1))
    assert check(zt_platform, KEYS, later + timedelta(seconds=4)) is None
    fail(zt_platform, KEYS, later + timedelta(seconds=5))
    assert check(zt_platform, KEYS, later + timedelta(seconds=5)) is not None


def test_after_a_lock_ends_the_count_starts_afresh(zt_platform: Platform) -> None:
    kw: dict[str, object] = {"window": timedelta(hours=1), "lockout": timedelta(minutes=5)}
    for _ in range(5):
        fail(zt_platform, KEYS, T0, **kw)
    after = T0 + timedelta(minutes=6)
    assert check(zt_platform, KEYS, after) is None
    fail(zt_platform, KEYS, after, **kw)  # one more failure does not relock at once
    assert check(zt_platform, KEYS, after) is None
    assert failures(zt_platform, EMAIL) == 1


def test_success_resets_the_account_not_the_address(zt_platform: Platform) -> None:
    for _ in range(4):
        fail(zt_platform, KEYS, T0)
    with zt_platform.db.transaction() as s:
        throttle.record_success(s, EMAIL)
    assert failures(zt_platform, EMAIL) is None
    assert failures(zt_platform, ADDR) == 4
    fail(zt_platform, KEYS, T0)
    assert check(zt_platform, [EMAIL], T0) is None
    assert check(zt_platform, [ADDR], T0) is not None  # the address reached 5
    with pytest.raises(ValueError), zt_platform.db.transaction() as s:
        throttle.record_success(s, ADDR)


def test_duplicate_keys_count_once(zt_platform: Platform) -> None:
    fail(zt_platform, [EMAIL, EMAIL], T0)
    assert failures(zt_platform, EMAIL) == 1


def test_purge(zt_platform: Platform) -> None:
    fail(zt_platform, [ADDR], T0)
    for _ in range(5):
        fail(zt_platform, [EMAIL], T0 + timedelta(minutes=10))
    with zt_platform.db.transaction() as s:
        assert throttle.purge(s, now=T0 + timedelta(minutes=20)) == 1  # EMAIL still locked
    assert failures(zt_platform, ADDR) is None
    assert failures(zt_platform, EMAIL) == 5


def test_concurrent_failures_all_count(zt_platform: Platform) -> None:
    threads, per_thread = 8, 10
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    # Each thread also has an address of its own, so the shared account key is
    # upserted together with a key nobody else touches.
    def worker(n: int) -> None:
        try:
            barrier.wait()
            for _ in range(per_thread):
                with zt_platform.db.transaction() as s:
                    throttle.record_failure(
                        s,
                        [EMAIL, ADDR, throttle.addr_key(f"10.0.0.{n}")],
                        now=T0,
                        max_failures=1000,
                    )
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    assert failures(zt_platform, EMAIL) == threads * per_thread
    assert failures(zt_platform, ADDR) == threads * per_thread
    for n in range(threads):
        assert failures(zt_platform, throttle.addr_key(f"10.0.0.{n}")) == per_thread


def test_concurrent_first_failures_all_count(zt_platform: Platform) -> None:
    # Every thread's first statement inserts the same new key at once: the
    # conflict path must add to the winner's row, not fail or overwrite it.
    threads = 8
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []
    key = throttle.email_key("fresh@example.com")

    def worker() -> None:
        try:
            barrier.wait()
            with zt_platform.db.transaction() as s:
                throttle.record_failure(s, [key], now=T0, max_failures=3)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    assert failures(zt_platform, key) == threads
    assert check(zt_platform, [key], T0) == pytest.approx(15 * 60)
