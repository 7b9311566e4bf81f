"""The snapshot file: the folded cache, replaced atomically by the compactor.

Format version 2 (docs/formats.md)::

    {"crc":"1a2b3c4d","snapshot":2,"entries":N,"created":"…","floor":null}\n
    <N record lines, sorted by key>

``crc`` is the CRC-32 of every byte of the file after its eight hex digits (from byte 16
to the end): the rest of the header and every record line, so that any single bit flip,
header included, is detected. Version 1 covered the record lines only (a flip in its
header could move the eviction floor unseen); it is still read, and the next compaction
replaces it. The check is :func:`journal._hit.parse_snapshot`, shared with the hit path.

A snapshot whose header is missing, whose count or checksum disagree, or with any bad
line is *corrupt*: its intact records are still used, and the caller rebuilds from the
archive as well.

*Corrupt* (read, and proved bad) is not *unreadable* (an I/O error): an unreadable
snapshot is reported in :attr:`SnapshotRead.error`, and the compactor then changes
nothing, for rebuilding without it could drop entries only it still holds.
"""

from __future__ import annotations

import io
import json
import os
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from journal._hit import SNAPSHOT_PREFIX, floor_of, open_regular, parse_snapshot
from journal._layout import write_atomically
from journal._scan import Line, scan_stream

FORMAT = 2  # the version written
MAX_SNAPSHOT_BYTES = 256 << 20  # far above any bounded cache; beyond it the file is not read

Identity = tuple[int, int, int, int]


class SnapshotRead(NamedTuple):
    records: list[dict[str, Any]]
    intact: bool  # False: missing, corrupt or unreadable, so rebuild from the archive too
    present: bool
    skipped: list[Line]
    floor: tuple[str, str] | None  # the newest (ts, id) ever evicted (see journal._fold)
    identity: Identity | None = None  # which file was read (see identity())
    error: str | None = None  # why it could not be read; None if it was read (or absent)


def identity(path: Path) -> Identity | None:
    """What tells one snapshot file from the next (a compaction renames a new file over
    it); None if there is none. Raises OSError if it cannot be looked at."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def read_snapshot(path: Path) -> SnapshotRead:
    """Read the snapshot at ``path``; never raises."""
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        # Missing: not intact, so readers fold the archive too (empty before the first
        # compaction; after it, what an operator's delete would lose).
        return SnapshotRead([], False, False, [], None)
    except OSError as exc:
        return _unreadable(path, exc)
    if fd is None:  # a symlink, a directory: corrupt (and replaced by the compactor)
        try:
            found = identity(path)
        except OSError:
            found = None
        return SnapshotRead([], False, True, [], None, found)
    try:
        with os.fdopen(fd, "rb") as stream:
            st = os.fstat(fd)
            content = stream.read(MAX_SNAPSHOT_BYTES + 1)
    except OSError as exc:
        return _unreadable(path, exc)
    header, body, sealed = parse_snapshot(content)
    records: list[dict[str, Any]] = []
    skipped: list[Line] = []
    for line in scan_stream(io.BytesIO(body), finished=True):
        if line.record is not None:
            records.append(line.record)
        else:
            skipped.append(line)
    intact = (
        header is not None
        and sealed
        and len(content) <= MAX_SNAPSHOT_BYTES
        and not skipped
        and header["entries"] == len(records)
    )
    return SnapshotRead(
        records,
        intact,
        True,
        skipped,
        floor_of(header) if intact else None,
        (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns),
    )


def _unreadable(path: Path, exc: OSError) -> SnapshotRead:
    return SnapshotRead([], False, True, [], None, None, f"{path}: {exc.strerror or exc}")


def write_snapshot(
    path: Path, lines: Iterable[bytes], created: str, floor: tuple[str, str] | None = None
) -> int:
    """Atomically replace the snapshot with ``lines`` (encoded records); return its size.
    Raises StorageError (nothing replaced) if the file system refuses."""
    lines = list(lines)
    content = seal(b"".join(lines), len(lines), created, floor)
    write_atomically(path, content)
    return len(content)


def seal(body: bytes, entries: int, created: str, floor: tuple[str, str] | None) -> bytes:
    """The whole snapshot file, format version 2, for the record lines ``body``."""
    fields = json.dumps(
        {"created": created, "floor": list(floor) if floor else None}, separators=(",", ":")
    )
    rest = b'","snapshot":%d,"entries":%d,%s\n%s' % (
        FORMAT,
        entries,
        fields[1:].encode("ascii"),
        body,
    )
    return b"%s%08x%s" % (SNAPSHOT_PREFIX, zlib.crc32(rest), rest)


def read_header(path: Path) -> dict[str, Any] | None:
    """The snapshot's header (entries, created, ...) if it is intact, else None.
    Raises OSError if it exists but cannot be read."""
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        return None
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as stream:
        content = stream.read(MAX_SNAPSHOT_BYTES + 1)
    header, _, sealed = parse_snapshot(content)
    return header if header is not None and sealed else None
