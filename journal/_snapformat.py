"""The snapshot's bytes: sealing (format version 2) and checking (versions 1 and 2).

Version 2, written since it exists (docs/formats.md)::

    {"crc":"1a2b3c4d","snapshot":2,"entries":N,"created":"…","floor":null}\\n
    <N record lines>

``crc`` is the CRC-32 of every byte of the file after its eight hex digits (from byte 16
to the end): the rest of the header and every record line, so that any single bit flip,
header included, is detected. Version 1 covered the record lines only (a flip in its
header could move the eviction floor unseen); it is still read, and the next compaction
replaces it by a version 2 file.

Standard library only: the hit path (:mod:`journal._hit`) and the compactor check a
snapshot with the same function, :func:`parse`.
"""

from __future__ import annotations

import zlib

from journal._json import parse_json

TYPE_CHECKING = False  # typing costs milliseconds on the hit path; checkers see True
if TYPE_CHECKING:
    from typing import Any

VERSION = 2
VERSIONS = (1, 2)  # the versions this reader understands
PREFIX = b'{"crc":"'  # version 2: the CRC's eight hex digits follow, at bytes 8-15
CRC_END = len(PREFIX) + 8
_HEX = frozenset(b"0123456789abcdef")


def parse(content: bytes) -> tuple[dict[str, Any] | None, bytes, bool]:
    """Split a snapshot into ``(header, body, sealed)``.

    ``header`` is the first line, parsed, when it is a snapshot header of a known
    version (else None, and ``body`` is the whole content); ``body`` the bytes of the
    record lines; ``sealed`` whether the checksum holds and ``entries`` is an integer.
    Intact means sealed, and ``entries`` equal to the number of lines of ``body``, each
    a valid record: the caller counts those. Never raises.
    """
    end = content.find(b"\n")
    header = _header(content[:end]) if end >= 0 else None
    if header is None:
        return None, content, False
    body = content[end + 1 :]
    if header["snapshot"] == 2:
        digits = content[len(PREFIX) : CRC_END]
        sealed = (
            content.startswith(PREFIX)
            and _HEX.issuperset(digits)
            and int(digits, 16) == zlib.crc32(memoryview(content)[CRC_END:])
        )
    else:
        sealed = header.get("crc") == f"{zlib.crc32(body):08x}"
    return header, body, sealed and type(header.get("entries")) is int


def _header(line: bytes) -> dict[str, Any] | None:
    try:
        parsed = parse_json(line)
    except (ValueError, RecursionError):
        return None
    version = parsed.get("snapshot") if isinstance(parsed, dict) else None
    if type(version) is int and version in VERSIONS:
        return parsed  # type: ignore[return-value]  # a dict, checked above
    return None


def seal(body: bytes, entries: int, created: str, floor: tuple[str, str] | None) -> bytes:
    """The whole version 2 snapshot file for record lines ``body``."""
    import json  # the writer's side only: never on the hit path

    fields = json.dumps(
        {"created": created, "floor": list(floor) if floor else None}, separators=(",", ":")
    )
    rest = b'","snapshot":%d,"entries":%d,%s\n%s' % (
        VERSION,
        entries,
        fields[1:].encode("ascii"),
        body,
    )
    return b"%s%08x%s" % (PREFIX, zlib.crc32(rest), rest)
