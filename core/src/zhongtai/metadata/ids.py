"""Opaque, time-ordered identifiers (ULID layout: 48-bit milliseconds + 80 random bits).

An id is the 128-bit value ``milliseconds << 80 | random`` written as 26 Crockford
base-32 digits (lower case), most significant first; the first digit carries only
the top 3 bits, as in a ULID. The alphabet is in ascending ASCII order, so ids sort
as text exactly as their values sort as numbers: by creation time.

Within one process ids are strictly increasing, as in ULID's monotonic mode: the
first id of a millisecond draws 79 random bits, and each further id in the same
millisecond adds one to them, so lists paged by id come back in creation order even
when rows are made faster than the clock ticks. (Ids made by different processes in
the same millisecond sort in random order.) The 10 time digits change once per
millisecond and are cached in between; the 16 random digits are 8 lookups of 10 bits.
"""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_MAX_RANDOM = (1 << 80) - 1
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # 10 bits -> two digits
# (milliseconds, their 10 digits, the random part of the last id made in them)
_last: tuple[int, str, int] = (-1, "", 0)
_lock = threading.Lock()


def _time_digits(ms: int) -> str:
    """The 10 leading digits of an id made at ``ms``: 50 bits, the top 2 always zero."""
    pairs = _PAIRS
    return (
        pairs[ms >> 40]
        + pairs[(ms >> 30) & 1023]
        + pairs[(ms >> 20) & 1023]
        + pairs[(ms >> 10) & 1023]
        + pairs[ms & 1023]
    )


def new_id() -> str:
    """A 26-character id that sorts by creation time (used for cursor pagination)."""
    global _last
    ms = time.time_ns() // 1_000_000
    with _lock:
        last_ms, prefix, rnd = _last
        if ms == last_ms and rnd < _MAX_RANDOM:
            rnd += 1
        else:
            # A new millisecond (or the clock stepped back): a fresh random start with
            # the top bit clear, so 2**79 more ids fit in the millisecond.
            prefix = _time_digits(ms) if ms != last_ms else prefix
            rnd = int.from_bytes(os.urandom(10)) >> 1
        _last = (ms, prefix, rnd)
    pairs = _PAIRS
    return (
        prefix
        + pairs[rnd >> 70]
        + pairs[(rnd >> 60) & 1023]
        + pairs[(rnd >> 50) & 1023]
        + pairs[(rnd >> 40) & 1023]
        + pairs[(rnd >> 30) & 1023]
        + pairs[(rnd >> 20) & 1023]
        + pairs[(rnd >> 10) & 1023]
        + pairs[rnd & 1023]
    )
