"""The hit path's read, kept apart so that it imports nothing beyond the standard library.

It returns raw records (plain dicts, see docs/formats.md) on purpose: building a
:class:`journal.Record` would import attrs, which costs more than the whole lookup.

It never raises and never trusts less than :func:`journal.load` does: whatever it cannot
read or check (an I/O error, a snapshot that is not intact, a compaction that replaced
the snapshot while the journals were being read) is a miss, and the database answers.
"""

from __future__ import annotations

import os

from journal._layout import ARCHIVE_DIR, JOURNAL_DIR, JOURNAL_SUFFIX, SNAPSHOT, list_files
from journal._scan import (
    READ_WHOLE_MAX,
    floor_of,
    latest_in,
    lookup,
    newer,
    open_regular,
    parse_snapshot,
)

TYPE_CHECKING = False  # typing costs milliseconds on the hit path; checkers see True
if TYPE_CHECKING:
    from typing import Any

    from journal._layout import StrPath

    Identity = tuple[int, int, int, int]


def journal_files(home: StrPath) -> list[str]:
    """The journals under ``home/journal/``, finished and live (OSError if unlistable)."""
    return list_files(os.path.join(home, JOURNAL_DIR), JOURNAL_SUFFIX)


def latest(home: StrPath, key: str) -> dict[str, Any] | None:
    """The hit path's read: the latest raw record for ``key``, None if absent or forgotten.

    Reads the snapshot and the journals and decodes only lines that mention ``key``;
    returns a plain dict (see docs/formats.md) so that no class is imported. Journal
    records at or below the snapshot's eviction floor count only for keys the snapshot
    holds, exactly as in :func:`journal.load` (see :mod:`journal._fold`).

    Where :func:`journal.load` would rebuild from the archive (a snapshot corrupt,
    unreadable, or missing while the archive is not empty), this returns None: a miss,
    and the database answers. So does any I/O error, and a snapshot replaced by a
    compaction while the journals were read (a journal archived meanwhile would be
    missed). Never raises.
    """
    try:
        if os.path.islink(home):  # refused, as everywhere in the state directory
            return None
        path = os.path.join(home, SNAPSHOT)
        snapshot, identity = _read_snapshot(path)
        if snapshot is None:
            return None  # not a file, or absurdly large: not ours to trust here
        if snapshot:
            header, body, sealed = parse_snapshot(snapshot)
            if header is None or not sealed or header["entries"] != body.count(b"\n"):
                return None
            floor = floor_of(header)
        elif list_files(os.path.join(home, ARCHIVE_DIR), JOURNAL_SUFFIX):
            return None  # the snapshot is gone but history was archived: do not guess
        else:
            body, floor = b"", None  # never compacted: every record is in the journals
        best = latest_in(body, key)
        found = lookup(journal_files(home), key)
        if _identity(path) != identity:
            return None  # compacted meanwhile: what it archived may have been missed
    except (OSError, ValueError):
        return None
    if (
        found is not None
        and newer(found, best)
        and (best is not None or floor is None or (found["ts"], found["id"]) > floor)
    ):
        best = found
    return None if best is None or best["data"] is None else best


def _read_snapshot(path: str) -> tuple[bytes | None, Identity | None]:
    """The snapshot's bytes (empty if there is none) and identity; None for the bytes if
    it is not a regular file or too large. Raises OSError if it cannot be read."""
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        return b"", None
    if fd is None:
        return None, None
    try:
        st = os.fstat(fd)
        if st.st_size > READ_WHOLE_MAX:
            return None, None
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _identity(path: str) -> Identity | None:
    """What tells one snapshot file from the next: a compaction renames a new file over
    it (another inode, size or time). None if there is none."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns
