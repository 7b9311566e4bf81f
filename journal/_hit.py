"""The hit path's read, kept apart so that it imports nothing beyond the standard library.

It returns raw records (plain dicts, see docs/formats.md) on purpose: building a
:class:`journal.Record` would import attrs, which costs more than the whole lookup.
"""

from __future__ import annotations

import os
import zlib

from journal._json import parse_json
from journal._layout import ARCHIVE_DIR, JOURNAL_DIR, JOURNAL_SUFFIX, SNAPSHOT, list_files
from journal._scan import floor_of, latest_in, lookup, newer, read_all

TYPE_CHECKING = False  # typing costs milliseconds on the hit path; checkers see True
if TYPE_CHECKING:
    from typing import Any

    from journal._layout import StrPath


def journal_files(home: StrPath) -> list[str]:
    """The journals under ``home/journal/``, finished and live."""
    return list_files(os.path.join(home, JOURNAL_DIR), JOURNAL_SUFFIX)


def latest(home: StrPath, key: str) -> dict[str, Any] | None:
    """The hit path's read: the latest raw record for ``key``, None if absent or forgotten.

    Reads the snapshot and the journals and decodes only lines that mention ``key``;
    returns a plain dict (see docs/formats.md) so that no class is imported. Journal
    records at or below the snapshot's eviction floor count only for keys the snapshot
    holds, exactly as in :func:`journal.load` (see :mod:`journal._fold`).

    Where :func:`journal.load` would rebuild from the archive (a snapshot corrupt,
    unreadable, or missing while the archive is not empty), this returns None: a miss,
    and the database answers. The hit path never trusts less than ``load`` does.
    """
    if os.path.islink(home):  # refused, as everywhere in the state directory
        return None
    snapshot = read_all(os.path.join(home, SNAPSHOT))
    if snapshot is None:
        return None  # absurdly large: not ours to trust on the hit path
    if snapshot:
        header, _, body = snapshot.partition(b"\n")
        intact, floor = _check_snapshot(header, body)
        if not intact:
            return None
    elif list_files(os.path.join(home, ARCHIVE_DIR), JOURNAL_SUFFIX):
        return None  # the snapshot is gone but history was archived: do not guess
    else:
        body, floor = b"", None  # never compacted: every record is in the journals
    best = latest_in(body, key)
    found = lookup(journal_files(home), key)
    if found is not None and newer(found, best):
        order = (found["ts"], found["id"])
        if best is not None or floor is None or order > floor:
            best = found
    return None if best is None or best["data"] is None else best


def _check_snapshot(header: bytes, body: bytes) -> tuple[bool, tuple[str, str] | None]:
    """Whether the snapshot is intact (its header parses, and its entry count and CRC
    match the body: a CRC of ~300 KB costs ~30 us), and its eviction floor."""
    try:
        parsed = parse_json(header)
    except (ValueError, RecursionError):
        return False, None
    if (
        not isinstance(parsed, dict)
        or parsed.get("snapshot") != 1
        or parsed.get("entries") != body.count(b"\n")
        or parsed.get("crc") != f"{zlib.crc32(body):08x}"
    ):
        return False, None
    return True, floor_of(parsed)
