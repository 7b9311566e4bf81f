"""Reading record files line by line, tolerating anything (the hit path uses this too).

A reader never raises on content: each line yields either a raw record (a dict, before
any class exists) or the reason it was skipped. Memory stays bounded whatever the file
holds: a line longer than ``MAX_LINE`` is consumed in chunks and never kept whole.
"""

from __future__ import annotations

import os
import stat
import zlib

from journal._codec import _HEX, MAX_LINE, NOT_A_FILE, OVERSIZE, TORN, decode
from journal._json import parse_json
from journal._layout import READ_FLAGS

TYPE_CHECKING = False  # typing costs milliseconds on the hit path; checkers see True
if TYPE_CHECKING:
    from collections.abc import Generator, Iterable, Iterator
    from typing import Any

    from journal._layout import StrPath

QUARANTINE_KEEP = MAX_LINE + 1  # bytes of an oversize line kept: the first read's


class Line:
    """One line of a file: a record, or why it was skipped (with the offending bytes)."""

    __slots__ = ("number", "raw", "reason", "record")

    def __init__(
        self, number: int, record: dict[str, Any] | None, reason: str | None, raw: bytes
    ) -> None:
        self.number = number
        self.record = record
        self.reason = reason
        self.raw = raw


def open_regular(path: StrPath) -> int | None:
    """Open ``path`` for reading without following a symlink; None if it is not a regular
    file (a symlink, a directory, a FIFO, a socket: content that is proved unusable).

    Raises FileNotFoundError if it is gone, and OSError if it exists but cannot be
    opened: a file that could not be read is never taken for one that holds nothing.
    """
    try:
        fd = os.open(path, READ_FLAGS)
    except FileNotFoundError:
        raise
    except OSError:
        # O_NOFOLLOW met a symlink (ELOOP), or a socket refused (ENXIO): not a file.
        # Told apart by lstat, not errno codes (the hit path imports no errno module).
        try:
            regular = stat.S_ISREG(os.lstat(path).st_mode)
        except OSError:
            regular = True  # cannot tell: the open's error stands
        if not regular:
            return None
        raise
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        os.close(fd)
        raise
    if not regular:
        os.close(fd)
        return None
    return fd


def scan(
    path: StrPath, *, finished: bool, needle: bytes | None = None
) -> Generator[Line, None, None]:
    """Yield every line of the file at ``path``.

    ``finished``: the writer is gone, so a last line without newline is torn (counted);
    otherwise it is still being written and is silently left for later.
    ``needle``: skip, without decoding, lines that do not contain these bytes.

    A name that is not a regular file yields one ``not-a-file`` line. A file that is
    gone raises FileNotFoundError, and one that cannot be opened or read raises OSError
    (from the first ``next()``, or part-way): the caller decides, never this reader.
    """
    fd = open_regular(path)
    if fd is None:
        yield Line(0, None, NOT_A_FILE, b"")
        return
    with os.fdopen(fd, "rb") as stream:
        yield from scan_stream(stream, finished=finished, needle=needle)


def scan_stream(stream: Any, *, finished: bool, needle: bytes | None = None) -> Iterator[Line]:
    """Like :func:`scan`, over an open binary stream."""
    number = 0
    while True:
        line = stream.readline(MAX_LINE + 1)  # an OSError propagates: not content
        if not line:
            return
        number += 1
        if line.endswith(b"\n") and len(line) <= MAX_LINE:
            if needle is not None and needle not in line:
                continue
            record, reason = decode(line[:-1])
            yield Line(number, record, reason, line if reason else b"")
        elif len(line) > MAX_LINE:
            kept = line  # readline() stopped at QUARANTINE_KEEP bytes
            while not line.endswith(b"\n"):
                line = stream.readline(1 << 16)
                if not line:
                    break
            yield Line(number, None, OVERSIZE, kept)
        elif finished:
            yield Line(number, None, TORN, line)
        else:
            return  # a live writer's line in progress


def lookup(files: Iterable[StrPath], key: str) -> dict[str, Any] | None:
    """The latest raw record for ``key`` in ``files`` (tombstones included), or None.

    The hit path: each file is read whole and searched for the key's bytes; only the
    lines that mention it are decoded, and only plain dicts are built. A line still
    being written (no newline yet) is left alone, as in :func:`scan`. A file gone since
    it was listed is passed over (a compactor archived it: the caller checks that the
    snapshot it read is still the current one); one that cannot be read raises OSError.
    """
    needle = key_needle(key)
    best: dict[str, Any] | None = None
    for path in files:
        try:
            data = read_all(path)
            records: Iterator[dict[str, Any] | None]
            if data is None:  # too large to hold: stream it line by line instead
                records = (line.record for line in scan(path, finished=False, needle=needle))
            else:
                records = _mentioning(data, needle)
            for record in records:
                if record is not None and record["key"] == key and newer(record, best):
                    best = record
        except FileNotFoundError:
            continue
    return best


def floor_of(header: object) -> tuple[str, str] | None:
    """The eviction floor recorded in a parsed snapshot header (see :mod:`journal._fold`)."""
    floor = header.get("floor") if isinstance(header, dict) else None
    if isinstance(floor, list) and len(floor) == 2 and all(isinstance(x, str) for x in floor):
        return floor[0], floor[1]
    return None


def key_needle(key: str) -> bytes:
    """The bytes every record line about ``key`` contains."""
    return b'"key":' + _json_string(key) + b","


def newer(record: dict[str, Any], than: dict[str, Any] | None) -> bool:
    return than is None or (record["ts"], record["id"]) > (than["ts"], than["id"])


def _mentioning(data: bytes, needle: bytes) -> Iterator[dict[str, Any] | None]:
    """Decode the complete lines of ``data`` that contain ``needle``. The needle may also
    sit in another record's data: callers check the key itself."""
    at = data.find(needle)
    while at >= 0:
        start = data.rfind(b"\n", 0, at) + 1
        end = data.find(b"\n", at)
        if end < 0:
            return
        if end - start < MAX_LINE:
            yield decode(data[start:end])[0]
        at = data.find(needle, end)


def latest_in(data: bytes, key: str) -> dict[str, Any] | None:
    """The latest record for ``key`` among the complete lines of ``data``."""
    best = None
    for record in _mentioning(data, key_needle(key)):
        if record is not None and record["key"] == key and newer(record, best):
            best = record
    return best


READ_WHOLE_MAX = 64 << 20  # bytes: a larger file (hostile, surely) is streamed


def read_all(path: StrPath) -> bytes | None:
    """The bytes of the file at ``path`` (none if it is not a regular file), or None if it
    is too large to hold. Raises FileNotFoundError if it is gone, OSError if it cannot
    be read."""
    fd = open_regular(path)
    if fd is None:
        return b""
    try:
        if os.fstat(fd).st_size > READ_WHOLE_MAX:
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _json_string(text: str) -> bytes:
    """``text`` as the encoder writes it in a record (ASCII, escaped)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return b'"' + text.encode("ascii") + b'"'
    import json  # rare keys only: the hit path's keys are printable ASCII

    return json.dumps(text).encode("ascii")


# The snapshot file (docs/formats.md; written by journal._snapshot), checked here because
# the hit path checks it too, exactly as the compactor does. Version 2: the CRC-32 of
# every byte after its own eight hex digits (bytes 8-15) covers the whole file, header
# included; version 1 covered the record lines only, and is still read.
SNAPSHOT_VERSIONS = (1, 2)  # the snapshot format versions this reader understands
SNAPSHOT_PREFIX = b'{"crc":"'  # version 2: the CRC's eight hex digits follow, at bytes 8-15
SNAPSHOT_CRC_END = len(SNAPSHOT_PREFIX) + 8


def parse_snapshot(content: bytes) -> tuple[dict[str, Any] | None, bytes, bool]:
    """Split a snapshot (docs/formats.md) into ``(header, body, sealed)``.

    ``header`` is the first line, parsed, when it is a snapshot header of a known
    version (else None, and ``body`` is the whole content); ``body`` the bytes of the
    record lines; ``sealed`` whether the checksum holds and ``entries`` is an integer.
    Intact means sealed, and ``entries`` equal to the number of lines of ``body``, each
    a valid record: the caller counts those. Never raises.
    """
    end = content.find(b"\n")
    header = _snapshot_header(content[:end]) if end >= 0 else None
    if header is None:
        return None, content, False
    body = content[end + 1 :]
    if header["snapshot"] == 2:
        digits = content[len(SNAPSHOT_PREFIX) : SNAPSHOT_CRC_END]
        sealed = (
            content.startswith(SNAPSHOT_PREFIX)
            and _HEX.issuperset(digits)
            and int(digits, 16) == zlib.crc32(memoryview(content)[SNAPSHOT_CRC_END:])
        )
    else:
        sealed = header.get("crc") == f"{zlib.crc32(body):08x}"
    return header, body, sealed and type(header.get("entries")) is int


def _snapshot_header(line: bytes) -> dict[str, Any] | None:
    try:
        parsed = parse_json(line)
    except (ValueError, RecursionError):
        return None
    version = parsed.get("snapshot") if isinstance(parsed, dict) else None
    if type(version) is int and version in SNAPSHOT_VERSIONS:
        return parsed  # type: ignore[return-value]  # a dict, checked above
    return None
