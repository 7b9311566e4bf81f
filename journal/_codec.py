"""The record line format, version 1 (documented in docs/formats.md): writing it.

A line is one JSON object, ASCII only, terminated by ``\\n``::

    {"crc":"1a2b3c4d","rec":{"v":1,"id":"…","ts":"…","pid":1,"type":"…","key":"…","data":{…}}}

``crc`` is the CRC-32 (zlib polynomial) of the exact bytes of the ``rec`` value, so a reader
verifies a line by slicing, without re-serialising anything. ``data`` is a JSON object, or
``null`` for a tombstone. The whole line, newline included, is at most ``MAX_LINE`` bytes.

Reading a line (:func:`decode`) is on the hook's hit path, so it lives in
:mod:`journal._hit` with the format's constants; this module writes lines and issues the
event ids they carry.
"""

import posix
import time
import zlib

from journal._errors import InvalidRecordError, RecordTooLargeError
from journal._hit import (
    HEX_DIGITS,
    LINE_MIDDLE,
    LINE_PREFIX,
    MAX_KEY,
    MAX_LINE,
    MAX_TYPE,
    VERSION,
    event_time_us,
    printable,
)
from journal._json import dump_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def encode(*, event_id: str, pid: int, type: str, key: str, data: "Any") -> bytes:
    """Return the line (newline included) for one record, or raise what to fix."""
    if not isinstance(key, str) or not key:
        raise InvalidRecordError("record key must be a non-empty string")
    if len(key) > MAX_KEY:
        raise InvalidRecordError(f"record key is {len(key)} characters; the limit is {MAX_KEY}")
    if not isinstance(type, str) or not type or len(type) > MAX_TYPE or not printable(type):
        raise InvalidRecordError(
            f"record type must be 1-{MAX_TYPE} printable ASCII characters, got {type!r:.80}"
        )
    if data is not None and not isinstance(data, dict):
        raise InvalidRecordError(f"record data must be a JSON object (dict), got {_kind(data)}")
    body = {
        "v": VERSION,
        "id": event_id,
        "ts": timestamp(event_id),
        "pid": pid,
        "type": type,
        "key": key,
        "data": data,
    }
    try:
        text = dump_json(body)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidRecordError(f"record data is not JSON-serialisable: {exc}") from None
    raw = text.encode("ascii")
    line = b"%s%08x%s%s}\n" % (LINE_PREFIX, zlib.crc32(raw), LINE_MIDDLE, raw)
    if len(line) > MAX_LINE:
        raise RecordTooLargeError(
            f"record is {len(line)} bytes encoded; the limit is {MAX_LINE} "
            "(one atomic append): store less data per event"
        )
    return line


def order(record: "dict[str, Any]") -> tuple[str, str]:
    """The fold order of a raw record: (timestamp, event id)."""
    return record["ts"], record["id"]


def _kind(value: object) -> str:
    return type(value).__name__


class Clock:
    """Issues event ids, each after the one before, whatever the wall clock does.

    An id is the later of the clock and the last id plus one microsecond, so a clock
    that stalls or steps back cannot make an id sort before one issued earlier: the ids
    then run ahead of the clock, one microsecond apart, until it catches up. Strictly
    increasing for the ids of one :class:`Clock`: each :class:`journal.Writer` has its
    own, and so does :func:`journal.new_event_id`. A process of ours issues fresh ids
    through one of them (a hook appends once; the reconciler's outcomes take the id of
    the observation they answer, :func:`event_id_next_to`), so its ids stay in order
    across clock steps (tests/test_clock_steps.py steps a real process's clock).

    Event ids are UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, 12 bits of
    sub-millisecond time, 62 random bits. They sort by time across processes with no
    coordination and fit PostgreSQL's ``uuid`` type. A record's timestamp is derived from
    its id (:func:`timestamp`), so the two always agree.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> str:
        now = time.time_ns() // 1000  # whole microseconds, the timestamp's resolution
        now = max(now, self._last + 1)  # the clock may stall or step back: stay monotonic
        self._last = now
        return _uuid7(now)

    def advance(self, event_id: str) -> None:
        """Never issue an id before ``event_id`` (one issued elsewhere in this process)."""
        self._last = max(self._last, event_time_us(event_id))


def _uuid7(us: int) -> str:
    ms, sub = divmod(us, 1000)
    rand_a = sub * 4096 // 1000  # 4.096 steps per microsecond: exactly reversible
    rand_b = int.from_bytes(posix.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def event_id_next_to(event_id: str) -> str:
    """An event id right after ``event_id`` in the fold order: the same microsecond (so
    the same record timestamp), a greater random part. It sorts before every id issued
    after ``event_id`` (:meth:`Clock.advance` then :meth:`Clock.next` give a later
    microsecond), so an answer to an event never shadows a newer event of the same key,
    however late the answer comes. A random part already at its maximum (a chance of
    2**-62) gets the next microsecond instead."""
    value = int(event_id.replace("-", ""), 16)
    rand_b_max = (1 << 62) - 1
    rand_b = value & rand_b_max
    if rand_b == rand_b_max:  # pragma: no cover - one chance in 2**62
        return _uuid7(event_time_us(event_id) + 1)
    above = rand_b + 1 + int.from_bytes(posix.urandom(8), "big") % (rand_b_max - rand_b)
    h = f"{value - rand_b + above:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def is_event_id(value: object) -> bool:
    """True for a UUIDv7 string as :class:`Clock` issues them."""
    if not isinstance(value, str) or len(value) != 36:
        return False
    h = value.replace("-", "")
    return (
        len(h) == 32
        and all(value[i] == "-" for i in (8, 13, 18, 23))
        and HEX_DIGITS.issuperset(h.encode("ascii", "replace"))
        and h[12] == "7"
        and h[16] in "89ab"
    )


def timestamp(event_id: str) -> str:
    """The record timestamp of an event id: ISO-8601 UTC, microseconds, fixed width."""
    us = event_time_us(event_id)
    seconds, rest = divmod(us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest:06d}Z"
