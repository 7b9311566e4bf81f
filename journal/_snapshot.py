"""The snapshot file: the folded cache, replaced atomically by the compactor.

Format (docs/formats.md): one header line, then one record line per entry, in the
record line format, sorted by key::

    {"snapshot":1,"entries":N,"crc":"1a2b3c4d","created":"2026-11-24T09:21:43.123456Z"}

``crc`` is the CRC-32 of every byte after the header line. A snapshot whose header is
missing, whose count or crc disagree, or with any bad line is *corrupt*: its intact
records are still used, and the caller rebuilds from the archive as well.
"""

from __future__ import annotations

import io
import json
import os
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from journal._layout import write_atomically
from journal._scan import Line, floor_of, open_regular, scan_stream

FORMAT = 1
MAX_SNAPSHOT_BYTES = 256 << 20  # far above any bounded cache; beyond it the file is not read


class SnapshotRead(NamedTuple):
    records: list[dict[str, Any]]
    intact: bool  # False: missing or corrupt, so rebuild from the archive too
    present: bool
    skipped: list[Line]
    floor: tuple[str, str] | None  # the newest (ts, id) ever evicted (see journal._fold)


def read_snapshot(path: Path) -> SnapshotRead:
    """Read the snapshot at ``path``; never raises."""
    fd = open_regular(path)
    if fd is None:
        # Missing or not a file: not intact, so readers fold the archive too (empty
        # before the first compaction; after it, what an operator's delete would lose).
        return SnapshotRead([], False, os.path.lexists(path), [], None)
    with os.fdopen(fd, "rb") as stream:
        content = stream.read(MAX_SNAPSHOT_BYTES + 1)
    header_end = content.find(b"\n")
    header = _header(content[:header_end]) if header_end >= 0 else None
    body = content[header_end + 1 :] if header is not None else content
    records: list[dict[str, Any]] = []
    skipped: list[Line] = []
    for line in scan_stream(io.BytesIO(body), finished=True):
        if line.record is not None:
            records.append(line.record)
        else:
            skipped.append(line)
    intact = (
        header is not None
        and len(content) <= MAX_SNAPSHOT_BYTES
        and not skipped
        and header.get("entries") == len(records)
        and header.get("crc") == f"{zlib.crc32(body):08x}"
    )
    return SnapshotRead(records, intact, True, skipped, floor_of(header) if intact else None)


def _header(line: bytes) -> dict[str, Any] | None:
    try:
        header = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if isinstance(header, dict) and header.get("snapshot") == FORMAT:
        return header
    return None


def write_snapshot(
    path: Path, lines: Iterable[bytes], created: str, floor: tuple[str, str] | None = None
) -> int:
    """Atomically replace the snapshot with ``lines`` (encoded records); return its size."""
    lines = list(lines)
    body = b"".join(lines)
    header = json.dumps(
        {
            "snapshot": FORMAT,
            "entries": len(lines),
            "crc": f"{zlib.crc32(body):08x}",
            "created": created,
            "floor": list(floor) if floor else None,
        },
        separators=(",", ":"),
    ).encode("ascii")
    content = header + b"\n" + body
    write_atomically(path, content)
    return len(content)


def read_header(path: Path) -> dict[str, Any] | None:
    """The snapshot's header line (entries, crc, created), or None if unreadable."""
    fd = open_regular(path)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as stream:
        return _header(stream.readline(4096).rstrip(b"\n"))
