"""Opaque, time-ordered identifiers (ULID layout: 48-bit milliseconds + 80 random bits).

An id is the 128-bit value ``milliseconds << 80 | random`` written as 26 Crockford
base-32 digits (lower case), most significant first; the first digit carries only
the top 3 bits, as in a ULID. The alphabet is in ascending ASCII order, so ids sort
as text exactly as their values sort as numbers: by creation time, to the
millisecond (ids made within the same millisecond are in random order).

The 80 random bits are 16 whole base-32 digits, so they are drawn directly as
digits: each of 16 random bytes maps to the digit of its low 5 bits with one
``bytes.translate`` (256 is a multiple of 32, so every digit is equally likely).
The 10 time digits change once per millisecond and are cached in between.
(``base64.b32encode`` is written in Python on 3.11 and alone costs ~4 µs per id.)
"""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_BYTE_TO_DIGIT = _ALPHABET.encode() * 8  # translate table: byte b -> _ALPHABET[b & 31]
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # 10 bits -> two digits
_last: tuple[int, str] = (-1, "")  # (milliseconds, their 10 digits)


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
    last_ms, prefix = _last
    if ms != last_ms:
        prefix = _time_digits(ms)
        _last = (ms, prefix)
    return prefix + os.urandom(16).translate(_BYTE_TO_DIGIT).decode("ascii")
