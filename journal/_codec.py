"""The record line format, version 1 (documented in docs/formats.md).

A line is one JSON object, ASCII only, terminated by ``\\n``::

    {"crc":"1a2b3c4d","rec":{"v":1,"id":"…","ts":"…","pid":1,"type":"…","key":"…","data":{…}}}

``crc`` is the CRC-32 (zlib polynomial) of the exact bytes of the ``rec`` value, so a reader
verifies a line by slicing, without re-serialising anything. ``data`` is a JSON object, or
``null`` for a tombstone. The whole line, newline included, is at most ``MAX_LINE`` bytes.

This module is on the hook's hit path: decoding imports only ``os``, ``time``, ``zlib``
and the C JSON scanner and encoder (:mod:`journal._json`), and works on plain dicts (raw
records); :class:`journal.Record` wraps them later.
"""

from __future__ import annotations

import os
import time
import zlib

from journal._errors import InvalidRecordError, RecordTooLargeError
from journal._json import dump_json, parse_json

TYPE_CHECKING = False  # typing costs milliseconds on the hit path; checkers see True
if TYPE_CHECKING:
    from typing import Any

VERSION = 1
MAX_LINE = 4096  # PIPE_BUF on Linux: one write() of at most this many bytes is atomic.
MAX_KEY = 512
MAX_TYPE = 64

_PREFIX = b'{"crc":"'
_MIDDLE = b'","rec":'
_BODY_START = len(_PREFIX) + 8 + len(_MIDDLE)
_HEX = frozenset(b"0123456789abcdef")
_FIELDS = ("v", "id", "ts", "pid", "type", "key", "data")

# Reasons a line is skipped; the reader counts each one.
CHECKSUM = "checksum"
JSON = "json"
VERSION_REASON = "version"
TORN = "torn"
OVERSIZE = "oversize"
NOT_A_FILE = "not-a-file"
REASONS = (CHECKSUM, JSON, VERSION_REASON, TORN, OVERSIZE, NOT_A_FILE)


def _printable(value: str) -> bool:
    return value.isascii() and value.isprintable()


def encode(*, event_id: str, pid: int, type: str, key: str, data: Any) -> bytes:
    """Return the line (newline included) for one record, or raise what to fix."""
    if not isinstance(key, str) or not key:
        raise InvalidRecordError("record key must be a non-empty string")
    if len(key) > MAX_KEY:
        raise InvalidRecordError(f"record key is {len(key)} characters; the limit is {MAX_KEY}")
    if not isinstance(type, str) or not type or len(type) > MAX_TYPE or not _printable(type):
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
    line = b"%s%08x%s%s}\n" % (_PREFIX, zlib.crc32(raw), _MIDDLE, raw)
    if len(line) > MAX_LINE:
        raise RecordTooLargeError(
            f"record is {len(line)} bytes encoded; the limit is {MAX_LINE} "
            "(one atomic append): store less data per event"
        )
    return line


def decode(line: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """Decode one line without its newline: ``(record, None)`` or ``(None, reason)``.

    Never raises, whatever the bytes.
    """
    if (
        len(line) <= _BODY_START + 1
        or not line.startswith(_PREFIX)
        or line[_BODY_START - len(_MIDDLE) : _BODY_START] != _MIDDLE
        or not line.endswith(b"}")
    ):
        return None, JSON
    crc = line[len(_PREFIX) : len(_PREFIX) + 8]
    if not _HEX.issuperset(crc):
        return None, CHECKSUM
    raw = line[_BODY_START:-1]
    if zlib.crc32(raw) != int(crc, 16):
        return None, CHECKSUM
    try:
        record = parse_json(raw)
    except ValueError:  # also UnicodeDecodeError and RecursionError's cousin ValueError
        return None, JSON
    except RecursionError:
        return None, JSON
    if not isinstance(record, dict):
        return None, JSON
    version = record.get("v")
    if type(version) is not int or version != VERSION:  # not True, not 1.0
        return None, VERSION_REASON
    if not _well_formed(record):
        return None, JSON
    return record, None


def _well_formed(record: dict[str, Any]) -> bool:
    return (
        len(record) == len(_FIELDS)
        and isinstance(record.get("id"), str)
        and isinstance(record.get("ts"), str)
        and type(record.get("pid")) is int
        and isinstance(record.get("type"), str)
        and 0 < len(record["type"]) <= MAX_TYPE
        and _printable(record["type"])
        and isinstance(record.get("key"), str)
        and 0 < len(record["key"]) <= MAX_KEY
        and (record.get("data") is None or isinstance(record["data"], dict))
    )


def order(record: dict[str, Any]) -> tuple[str, str]:
    """The fold order of a raw record: (timestamp, event id)."""
    return record["ts"], record["id"]


def _kind(value: object) -> str:
    return type(value).__name__


class Clock:
    """Issues event ids, strictly increasing within a process.

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
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def is_event_id(value: object) -> bool:
    """True for a UUIDv7 string as :class:`Clock` issues them."""
    if not isinstance(value, str) or len(value) != 36:
        return False
    h = value.replace("-", "")
    return (
        len(h) == 32
        and all(value[i] == "-" for i in (8, 13, 18, 23))
        and _HEX.issuperset(h.encode("ascii", "replace"))
        and h[12] == "7"
        and h[16] in "89ab"
    )


def event_time_us(event_id: str) -> int:
    """The Unix time, in microseconds, encoded in an event id."""
    value = int(event_id.replace("-", ""), 16)
    rand_a = (value >> 64) & 0xFFF
    return (value >> 80) * 1000 + -(-rand_a * 1000 // 4096)


def timestamp(event_id: str) -> str:
    """The record timestamp of an event id: ISO-8601 UTC, microseconds, fixed width."""
    us = event_time_us(event_id)
    seconds, rest = divmod(us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest:06d}Z"
