"""The compactor (DESIGN §7): fold journals into the snapshot, archive finished ones.

Crash safety rests on order and on the fold being idempotent: quarantine files are
written first, then the new snapshot (temp, fsync, rename, fsync dir), and only then are
finished journals moved to the archive. A crash anywhere leaves every record either in
a journal still to be folded or already in the snapshot; folding it twice is harmless.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import attrs

from journal._codec import NOT_A_FILE, Clock, encode, timestamp
from journal._fold import Table, fold, trim
from journal._layout import (
    ARCHIVE_DIR,
    COMPACT_LOCK,
    FILE_MODE,
    JOURNAL_DIR,
    PENDING_SUFFIX,
    QUARANTINE_DIR,
    SNAPSHOT,
    ensure_home,
    fsync_dir,
    list_files,
    write_atomically,
)
from journal._model import CompactionReport, Skips
from journal._read import archive_files, fold_file, journal_files, writer_gone
from journal._scan import Line
from journal._snapshot import read_snapshot, write_snapshot


@attrs.frozen
class Retention:
    """How much of the archive to keep for replay (defaults in docs/operations.md)."""

    max_files: int = 10_000
    max_age_s: float = 30 * 86400.0


STALE_PENDING_S = 60.0  # a ".new" journal this old, unlocked, is a writer that died creating it


def compact(
    home: Path | str,
    *,
    max_entries: int = 1000,
    wait: bool = False,
    retention: Retention | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CompactionReport:
    """Fold every journal into a new snapshot and archive the finished ones.

    Takes ``compact.lock`` without blocking: if another compaction holds it, returns a
    report with ``busy=True`` (or waits for it with ``wait=True``). ``progress`` is called
    with (journals folded, journals in all) as the fold advances.
    """
    if max_entries < 1:
        raise ValueError("max_entries must be at least 1")
    home = ensure_home(Path(home))
    started = time.monotonic()
    lock = os.open(
        home / COMPACT_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE
    )
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return CompactionReport(busy=True)
        report = _compact_locked(home, max_entries, retention or Retention(), progress)
    finally:
        os.close(lock)
    return attrs.evolve(report, duration_s=time.monotonic() - started)


def _compact_locked(
    home: Path,
    max_entries: int,
    retention: Retention,
    progress: Callable[[int, int], None] | None,
) -> CompactionReport:
    skips: Counter[str] = Counter()
    snap = read_snapshot(home / SNAPSHOT)
    table: Table = fold(snap.records)
    skips.update(line.reason for line in snap.skipped if line.reason)
    records = 0
    floor = snap.floor
    if not snap.intact:
        for path in archive_files(home):
            records += fold_file(table, path, skips, finished=True)

    # A journal whose lock can be taken is finished for good: writers never reopen a
    # journal, so the lock need not be held while it is folded and archived (holding
    # one descriptor per journal would run out of them on a large backlog).
    finished: list[Path] = []
    live = quarantined = 0
    journals = journal_files(home)
    for index, path in enumerate(journals):
        if progress is not None:
            progress(index, len(journals))
        done = writer_gone(path)
        if done is None:
            skips[NOT_A_FILE] += 1
            continue
        if not done:
            live += 1
            records += fold_file(table, path, skips, finished=False, floor=floor)
            continue
        finished.append(path)
        bad: list[Line] = []
        records += fold_file(table, path, skips, finished=True, floor=floor, bad=bad)
        if bad:  # written now, before the snapshot: memory stays flat
            _quarantine(home, path, bad)
            quarantined += len(bad)

    evicted, floor = trim(table, max_entries, floor)
    created = timestamp(Clock().next())
    write_snapshot(home / SNAPSHOT, _encoded(table), created, floor)
    _archive(home, finished)
    pruned = _prune_archive(home, retention)
    _remove_stale_pending(home)
    return CompactionReport(
        busy=False,
        files_folded=live + len(finished),
        files_archived=len(finished),
        live_files=live,
        records=records,
        skipped=Skips.from_counts(skips),
        quarantined=quarantined,
        entries=sum(1 for r in table.values() if r["data"] is not None),
        evicted=len(evicted),
        archive_pruned=pruned,
        snapshot_rebuilt=not snap.intact and snap.present,
    )


def _encoded(table: Table) -> list[bytes]:
    return [
        encode(event_id=r["id"], pid=r["pid"], type=r["type"], key=r["key"], data=r["data"])
        for _, r in sorted(table.items())
    ]


def _quarantine(home: Path, source: Path, lines: list[Line]) -> None:
    """Write the corrupt lines of ``source`` to quarantine/<name>.jsonl (replaced whole, so
    a compaction that crashed and ran again writes the same file)."""
    entries = [
        json.dumps(
            {
                "file": source.name,
                "line": line.number,
                "reason": line.reason,
                "bytes": line.raw.decode("latin-1"),
            },
            separators=(",", ":"),
        )
        for line in lines
    ]
    write_atomically(
        home / QUARANTINE_DIR / f"{source.name}.jsonl", ("\n".join(entries) + "\n").encode("utf-8")
    )


def _archive(home: Path, paths: list[Path]) -> None:
    if not paths:
        return
    archive = home / ARCHIVE_DIR
    for path in paths:
        if os.stat(path).st_size == 0:
            os.unlink(path)
        else:
            os.rename(path, archive / path.name)
    fsync_dir(archive)
    fsync_dir(home / JOURNAL_DIR)


def _prune_archive(home: Path, retention: Retention) -> int:
    files = archive_files(home)
    now = time.time()
    aged: list[tuple[float, Path]] = []
    for path in files:
        try:
            aged.append((os.lstat(path).st_mtime, path))
        except FileNotFoundError:
            continue
    aged.sort()
    excess = len(aged) - retention.max_files
    doomed = [
        path
        for i, (mtime, path) in enumerate(aged)
        if i < excess or now - mtime > retention.max_age_s
    ]
    for path in doomed:
        os.unlink(path)
    if doomed:
        fsync_dir(home / ARCHIVE_DIR)
    return len(doomed)


def _remove_stale_pending(home: Path) -> None:
    now = time.time()
    for path in map(Path, list_files(home / JOURNAL_DIR, PENDING_SUFFIX)):
        if not writer_gone(path):
            continue
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if st.st_size == 0 and now - st.st_mtime > STALE_PENDING_S:
                os.unlink(path)
