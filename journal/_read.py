"""Reading the state directory: the folded state, and the ordered event history."""

from __future__ import annotations

import fcntl
import heapq
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from journal import _hit
from journal._codec import NOT_A_FILE, order
from journal._fold import Order, Table, apply, fold
from journal._layout import ARCHIVE_DIR, JOURNAL_SUFFIX, SNAPSHOT, list_files
from journal._model import Record, Skips, State
from journal._scan import Line, open_regular, scan
from journal._snapshot import read_snapshot


def archive_files(home: Path) -> list[Path]:
    """The archived journals, oldest name first."""
    return [Path(p) for p in list_files(home / ARCHIVE_DIR, JOURNAL_SUFFIX)]


def journal_files(home: Path) -> list[Path]:
    """The journals under ``home/journal/``, finished and live."""
    return [Path(p) for p in _hit.journal_files(home)]


def writer_gone(path: Path) -> bool | None:
    """True if no writer holds the journal's lock, False if one does, None if unreadable."""
    fd = open_regular(path)
    if fd is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # closing releases the probe's lock
    return True


def fold_file(
    table: Table,
    path: Path,
    skips: Counter[str],
    *,
    finished: bool,
    floor: Order | None = None,
    bad: list[Line] | None = None,
) -> int:
    """Fold every record of one file into ``table``; count skipped lines (and keep them
    in ``bad`` if given). Returns the number of records read."""
    records = 0
    for line in scan(path, finished=finished):
        if line.record is not None:
            apply(table, line.record, floor)
            records += 1
        else:
            skips[line.reason or NOT_A_FILE] += 1
            if bad is not None:
                bad.append(line)
    return records


def load_table(home: Path) -> tuple[Table, Counter[str], bool]:
    """Snapshot + journals (+ archive when the snapshot is not intact), folded."""
    if os.path.islink(home):  # refused, never followed
        return {}, Counter({NOT_A_FILE: 1}), False
    snap = read_snapshot(home / SNAPSHOT)
    skips: Counter[str] = Counter(line.reason for line in snap.skipped if line.reason)
    table = fold(snap.records)
    if not snap.intact:
        for path in archive_files(home):
            fold_file(table, path, skips, finished=True)
    for path in journal_files(home):
        done = writer_gone(path)
        if done is None:
            skips[NOT_A_FILE] += 1
        else:
            fold_file(table, path, skips, finished=done, floor=snap.floor)
    return table, skips, snap.intact


def load(home: Path | str) -> State:
    """The folded state of ``home``: snapshot + every journal. Never raises on content.

    Finished journals count a last line without newline as torn; live ones are read up
    to their last complete line. A corrupt or missing snapshot is rebuilt from the
    archive as well.
    """
    table, skips, intact = load_table(Path(home))
    return State(table, Skips.from_counts(skips), intact)


def history(
    home: Path | str, since: str | None = None, until: str | None = None
) -> Iterator[Record]:
    """Every valid record of the archive and the journals, in (ts, event id) order.

    ``since``/``until`` are timestamps in the record format (ISO-8601 UTC), inclusive.
    Streams: each file's records are already in order (a writer's clock is monotonic),
    so files are merged lazily, opened only when the merge reaches their first record;
    memory grows with the number of overlapping files, not with history.
    """
    home = Path(home)
    if home.is_symlink():  # refused, never followed
        return
    heads: list[tuple[tuple[str, str], int, Path]] = []
    for index, path in enumerate(archive_files(home) + journal_files(home)):
        first = next(_records(path), None)
        if first is not None:
            heads.append((order(first), index, path))
    heads.sort()
    active: list[tuple[tuple[str, str], int, dict[str, Any], Iterator[dict[str, Any]]]] = []
    waiting = iter(heads)
    upcoming = next(waiting, None)
    while active or upcoming is not None:
        while upcoming is not None and (not active or upcoming[0] <= active[0][0]):
            stream = _records(upcoming[2])
            head = next(stream, None)
            if head is not None:
                heapq.heappush(active, (order(head), upcoming[1], head, stream))
            upcoming = next(waiting, None)
        key, index, record, stream = heapq.heappop(active)
        following = next(stream, None)
        if following is not None:
            heapq.heappush(active, (order(following), index, following, stream))
        if since is not None and key[0] < since:
            continue
        if until is not None and key[0] > until:
            if upcoming is None and all(entry[0][0] > until for entry in active):
                return
            continue
        yield Record.from_raw(record)


def _records(path: Path) -> Iterator[dict[str, Any]]:
    for line in scan(path, finished=False):
        if line.record is not None:
            yield line.record
