"""The compactor: fold journals into the snapshot, archive finished ones (docs/operations.md).

Crash safety rests on order and on the fold being idempotent: quarantine files are
written first, then the new snapshot (temp, fsync, rename, fsync dir), and only then are
finished journals archived: their data fsynced (a writer with fsync off never did), a
hard link made in ``archive/``, ``archive/`` fsynced, the name in ``journal/`` removed,
``journal/`` fsynced. A crash anywhere leaves every record either in a journal still to
be folded or already in the snapshot, and every journal in at least one directory;
folding it twice is harmless.

An error is never evidence of absence. A journal that could not be opened, read, synced
or moved stays in ``journal/`` (never archived), is named in the report's ``errors``,
and :func:`compact` raises :class:`CompactionIncompleteError` after doing what it safely
could; the next compaction folds it. An unreadable snapshot, or an unreadable archive
when the snapshot must be rebuilt from it, stops the compaction before anything is
written: rebuilding without them could drop entries only they hold. Only content that
was read and proved bad is quarantined.

The floor stays below every record the compaction did not fold. Those are written while
it runs (a journal created after the listing, a line appended to a live journal after it
was read), so before anything else it takes a *horizon*, the time now, and evicts nothing
written at or after it (:func:`journal._fold.trim`): the floor is older than the horizon.
The horizon comes first, not at the listing, because the earlier it is the fewer records
fall in the window it leaves: a record whose id was issued before the horizon and whose
line was written after its journal was read (docs/architecture.md, "The compactor").
A snapshot's floor after the horizon is from the future (the clock stepped back since):
it is dropped before the fold, and the floor written is this compaction's own, so a
snapshot never keeps a floor ahead of its compactor's clock (docs/architecture.md, "Time").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Collection
from pathlib import Path

import attrs

from journal._codec import Clock, encode, timestamp
from journal._errors import CompactionIncompleteError, StorageError
from journal._fold import Table, fold, trim
from journal._hit import (
    ARCHIVE_DIR,
    COMPACT_LOCK,
    JOURNAL_DIR,
    NOT_A_FILE,
    PENDING_SUFFIX,
    QUARANTINE_DIR,
    SNAPSHOT,
    TEMP_SUFFIX,
    event_time_us,
    floor_in_force,
    list_files,
    open_regular,
)
from journal._layout import FILE_MODE, ensure_home, fsync_dir, write_atomically
from journal._model import CompactionReport, Skips
from journal._platform import mark_lock, release_lock
from journal._read import archive_files, describe, fold_file, fold_lines, journal_files, probe
from journal._scan import Line, scan_stream
from journal._snapshot import read_snapshot, write_snapshot


@attrs.frozen
class Retention:
    """How much of the archive to keep for replay (defaults in docs/operations.md)."""

    max_files: int = 10_000
    max_age_s: float = 30 * 86400.0


STALE_PENDING_S = 60.0  # a ".new" journal this old, unlocked, is a writer that died creating it
STALE_TEMP_S = 60.0  # a temp file this old, unlocked, is a replacement that died half-way
# link() errors of a file system without hard links: fall back to rename() there.
_NO_HARD_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS)


def compact(
    home: Path | str,
    *,
    max_entries: int = 1000,
    wait: bool = False,
    retention: Retention | None = None,
    pinned_types: Collection[str] = (),
    progress: Callable[[int, int], None] | None = None,
) -> CompactionReport:
    """Fold every journal into a new snapshot and archive the finished ones.

    Takes ``compact.lock`` without blocking: if another compaction holds it, returns a
    report with ``busy=True`` (or waits for it with ``wait=True``). ``progress`` is called
    with (journals folded, journals in all) as the fold advances.

    The snapshot keeps at most ``max_entries`` live entries, evicting the least recently
    written, except that an entry whose record type is in ``pinned_types`` is never
    evicted, nor one written since the compaction began (it may have a record the
    compaction did not fold): if those alone exceed ``max_entries``, all of them are kept
    and the report's ``over_bound`` says by how many.

    Raises :class:`CompactionIncompleteError` (its ``report`` says what was done) if a
    file could not be read, synced or moved: it was left in place for the next run.
    Raises :class:`StorageError` if the lock cannot be taken for an I/O error.
    """
    if max_entries < 1:
        raise ValueError("max_entries must be at least 1")
    if isinstance(pinned_types, str):
        raise TypeError("pinned_types is a collection of record types, not one string")
    home = ensure_home(Path(home))
    started = time.monotonic()
    try:
        lock = os.open(
            home / COMPACT_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE
        )
    except OSError as exc:
        raise StorageError(f"cannot open {home / COMPACT_LOCK}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return CompactionReport(busy=True)
        except OSError as exc:
            raise StorageError(f"cannot lock {home / COMPACT_LOCK}: {exc.strerror}") from None
        mark_lock(lock, str(home / COMPACT_LOCK))  # for probes, which never take the lock
        report = _compact_locked(
            home, max_entries, retention or Retention(), frozenset(pinned_types), progress
        )
    finally:
        with contextlib.suppress(OSError):
            release_lock(lock)
    report = attrs.evolve(report, duration_s=time.monotonic() - started)
    if report.errors:
        more = f" (and {len(report.errors) - 1} more)" if len(report.errors) > 1 else ""
        raise CompactionIncompleteError(
            f"compaction incomplete: {report.errors[0]}{more}; what could not be read or "
            "moved was left in place: fix the file system and run compact again",
            report,
        )
    return report


def _compact_locked(
    home: Path,
    max_entries: int,
    retention: Retention,
    pinned: frozenset[str],
    progress: Callable[[int, int], None] | None,
) -> CompactionReport:
    # The horizon, first of all: see the module's docstring.
    horizon_id = Clock().next()
    horizon = timestamp(horizon_id)
    errors: list[str] = []
    removed = _remove_stale_temporaries(home, errors)
    snap = read_snapshot(home / SNAPSHOT)
    if snap.error is not None:
        return _aborted(removed, errors, f"{snap.error} (the snapshot could not be read)")
    skips: Counter[str] = Counter(line.reason for line in snap.skipped if line.reason)
    table: Table = fold(snap.records)
    records = 0
    # A floor after the horizon is from the future: the clock stepped back since it was
    # set, and records written since may sort below it. It is dropped, so they are folded,
    # and the new floor is this compaction's own, older than the horizon: the snapshot
    # never keeps a floor ahead of the clock that wrote it (docs/architecture.md, "Time").
    floor = floor_in_force(snap.floor, event_time_us(horizon_id))
    try:
        journals = journal_files(home)
    except OSError as exc:
        return _aborted(removed, errors, describe(home / JOURNAL_DIR, exc))
    if not snap.intact:  # rebuild: everything the snapshot was made from is needed
        try:
            for path in archive_files(home):
                with contextlib.suppress(FileNotFoundError):
                    records += fold_file(table, path, skips, finished=True)
        except OSError as exc:
            return _aborted(removed, errors, f"{describe(home / ARCHIVE_DIR, exc)} (rebuild)")

    # A journal whose lock can be taken is finished for good: writers never reopen a
    # journal. The probe's lock is held only while that journal is folded (holding one
    # descriptor per journal would run out of them on a large backlog).
    finished: list[tuple[Path, int]] = []  # (journal, size in bytes)
    live = quarantined = 0
    for index, path in enumerate(journals):
        if progress is not None:
            progress(index, len(journals))
        try:
            opened = probe(path)
        except FileNotFoundError:
            continue  # removed meanwhile (a writer that failed to create it)
        except OSError as exc:
            errors.append(f"{describe(path, exc)} (left in {JOURNAL_DIR}/)")
            continue
        if opened is None:
            skips[NOT_A_FILE] += 1
            continue
        fd, done = opened
        bad: list[Line] = []
        size = 0
        try:
            with os.fdopen(fd, "rb") as stream:
                lines = scan_stream(stream, finished=done is True)
                records += fold_lines(table, lines, skips, floor=floor, bad=bad if done else None)
                if done:  # written with fsync off, perhaps: durable before it is archived
                    os.fsync(fd)
                    size = os.fstat(fd).st_size
        except OSError as exc:
            errors.append(f"{describe(path, exc)} (left in {JOURNAL_DIR}/)")
            continue
        if not done:
            live += 1
            if done is None:
                errors.append(
                    f"{path}: cannot tell whether its writer is gone (flock "
                    f"failed); folded as live, left in {JOURNAL_DIR}/"
                )
            continue
        if bad:  # written now, before the snapshot: memory stays flat
            try:
                _quarantine(home, path, bad)
            except StorageError as exc:
                errors.append(f"{exc} (its journal {path.name} left in {JOURNAL_DIR}/)")
                continue
            quarantined += len(bad)
        finished.append((path, size))
    if progress is not None:
        progress(len(journals), len(journals))

    evicted, floor = trim(table, max_entries, floor, pinned, horizon)
    entries = sum(1 for r in table.values() if r["data"] is not None)
    created = timestamp(Clock().next())
    try:
        write_snapshot(home / SNAPSHOT, _encoded(table), created, floor)
    except StorageError as exc:
        return _aborted(removed, errors, f"{exc} (nothing was archived)")
    archived = _archive(home, finished, errors)
    pruned = _prune_archive(home, retention, errors)
    _remove_stale_pending(home, errors)
    return CompactionReport(
        busy=False,
        files_folded=live + len(finished),
        files_archived=archived,
        live_files=live,
        records=records,
        skipped=Skips.from_counts(skips),
        quarantined=quarantined,
        entries=entries,
        evicted=len(evicted),
        pinned=sum(1 for r in table.values() if r["data"] is not None and r["type"] in pinned),
        over_bound=max(0, entries - max_entries),
        archive_pruned=pruned,
        snapshot_rebuilt=not snap.intact and snap.present,
        temporaries_removed=removed,
        errors=tuple(errors),
    )


def _aborted(removed: int, errors: list[str], error: str) -> CompactionReport:
    """The report of a compaction stopped before it wrote anything."""
    return CompactionReport(busy=False, temporaries_removed=removed, errors=(*errors, error))


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


def _archive(home: Path, finished: list[tuple[Path, int]], errors: list[str]) -> int:
    """Move finished journals to the archive (an empty one is deleted); return how many.

    A hard link first, made durable, and only then the old name removed: the journal is
    in at least one directory at every instant, crash or power loss, and readers find it
    in one or the other (:mod:`journal._read`).
    """
    archive = home / ARCHIVE_DIR
    done = 0
    linked: list[Path] = []
    renamed = False
    for path, size in finished:
        target = archive / path.name
        try:
            if size == 0:
                os.unlink(path)  # nothing to keep
                done += 1
                continue
            os.link(path, target, follow_symlinks=False)
            linked.append(path)
        except FileExistsError:  # linked by a compaction that died before the unlink
            if _same_file(path, target):
                linked.append(path)
            else:
                errors.append(
                    f"{target} exists and is another file: {path} left in "
                    f"{JOURNAL_DIR}/ (move one of them away)"
                )
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                errors.append(f"{describe(path, exc)} (not archived, left in {JOURNAL_DIR}/)")
                continue
            try:  # no hard links on this file system: a rename is the best there is
                os.rename(path, target)
            except OSError as exc2:
                errors.append(f"{describe(path, exc2)} (not archived, left in {JOURNAL_DIR}/)")
                continue
            done += 1
            renamed = True
    if not linked and not renamed and not done:
        return 0
    try:
        fsync_dir(archive)
    except OSError as exc:
        errors.append(
            f"{describe(archive, exc)} (journals linked there stay in "
            f"{JOURNAL_DIR}/ too, for the next compaction)"
        )
        return done
    for path in linked:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            errors.append(f"{describe(path, exc)} (archived, but still in {JOURNAL_DIR}/)")
            continue
        done += 1
    try:
        fsync_dir(home / JOURNAL_DIR)
    except OSError as exc:
        errors.append(describe(home / JOURNAL_DIR, exc))
    return done


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samestat(os.lstat(a), os.lstat(b))
    except OSError:
        return False


def _prune_archive(home: Path, retention: Retention, errors: list[str]) -> int:
    try:
        files = archive_files(home)
    except OSError as exc:
        errors.append(f"{describe(home / ARCHIVE_DIR, exc)} (not pruned)")
        return 0
    now = time.time()
    aged: list[tuple[float, Path]] = []
    for path in files:
        try:
            aged.append((os.lstat(path).st_mtime, path))
        except FileNotFoundError:
            continue
        except OSError as exc:
            errors.append(f"{describe(path, exc)} (not pruned)")
    aged.sort()
    excess = len(aged) - retention.max_files
    doomed = [
        path
        for i, (mtime, path) in enumerate(aged)
        if i < excess or now - mtime > retention.max_age_s
    ]
    pruned = 0
    for path in doomed:
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            errors.append(f"{describe(path, exc)} (not pruned)")
            continue
        pruned += 1
    if pruned:
        try:
            fsync_dir(home / ARCHIVE_DIR)
        except OSError as exc:
            errors.append(describe(home / ARCHIVE_DIR, exc))
    return pruned


def _remove_stale_pending(home: Path, errors: list[str]) -> None:
    """Remove the ``.new`` files of writers that died creating their journal.

    Stale means empty and over a minute old, and no one holds its lock; the first two
    are read from the opened file *before* its lock is tried, because a writer creates
    its ``.new`` file and only then locks it: a cleanup that tried the lock of a file it
    had not proved stale could hold it in that instant and make the writer's flock fail
    (docs/reliability.md, "No lost wake-up"). A file the cleanup does lock and remove
    was a minute old: its writer, if alive, finds its flock or rename failing and
    starts over under a fresh name (:meth:`journal.Writer.append` loses nothing).
    """
    now = time.time()
    try:
        pending = list_files(home / JOURNAL_DIR, PENDING_SUFFIX)
    except OSError as exc:
        errors.append(describe(home / JOURNAL_DIR, exc))
        return
    for path in pending:
        try:
            fd = open_regular(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            errors.append(describe(path, exc))
            continue
        if fd is None:
            continue
        try:
            st = os.fstat(fd)
            if st.st_size != 0 or now - st.st_mtime <= STALE_PENDING_S:
                continue  # being created (or in use): not ours to touch, not even its lock
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(path)
        except (BlockingIOError, FileNotFoundError):
            pass  # its writer holds it after all, or it is gone
        except OSError as exc:
            errors.append(describe(path, exc))
        finally:
            os.close(fd)


def _remove_stale_temporaries(home: Path, errors: list[str]) -> int:
    """Remove the temp files of replacements that died half-way; return how many.

    A temp file (``.<name>.<pid>.tmp``) is removed when no process holds its flock
    (:func:`journal._layout.write_atomically` holds it while writing) and it is either
    older than a minute or one of a compactor's own (the snapshot's, a quarantine
    file's): the compaction lock we hold says no other compactor is writing one.
    """
    removed = 0
    now = time.time()
    for directory, own in ((home, f".{SNAPSHOT}."), (home / QUARANTINE_DIR, ".")):
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            continue
        except OSError as exc:
            errors.append(f"{describe(directory, exc)} (temp files not cleaned)")
            continue
        for name in names:
            if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
                continue
            path = directory / name
            try:
                fd = open_regular(path)
                if fd is None:
                    continue
                try:
                    # The age of the file opened, before its lock is tried: a temp file
                    # of the same name created meanwhile is fresh, and its writer locks
                    # it only after creating it (see _remove_stale_pending).
                    st = os.fstat(fd)
                    if not name.startswith(own) and now - st.st_mtime < STALE_TEMP_S:
                        continue
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    os.unlink(path)
                finally:
                    os.close(fd)
            except (BlockingIOError, FileNotFoundError):
                continue  # held by its writer, or gone
            except OSError as exc:
                errors.append(f"{describe(path, exc)} (a stale temp file, not removed)")
                continue
            removed += 1
    return removed
