"""Reading the state directory: the folded state, and the ordered event history.

Readers never raise on what another process does meanwhile, and never take an error for
absence:

- A compaction may archive a journal at any moment (a hard link into ``archive/``, then
  the unlink from ``journal/``). So a journal gone from ``journal/`` is read from
  ``archive/`` instead, and listings are taken journals first: a file moved between the
  two listings is in the second.
- :func:`load` reads the snapshot first; if a compaction replaced it while the journals
  were read, what that compaction archived may have been missed, so the read is done
  again (and the last attempt folds the archive too, which holds it for sure).
- An I/O error (a file or directory that exists but cannot be read) is reported, in
  :attr:`State.errors` or :attr:`History.errors`, never silently passed over.
"""

from __future__ import annotations

import fcntl
import heapq
import os
from collections import Counter
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path
from typing import Any

from journal import _hit
from journal._codec import order
from journal._fold import Order, Table, apply, fold
from journal._hit import (
    ARCHIVE_DIR,
    JOURNAL_DIR,
    JOURNAL_SUFFIX,
    NOT_A_FILE,
    SNAPSHOT,
    floor_in_force,
    list_files,
    open_regular,
)
from journal._model import Record, Skips, State
from journal._scan import Line, scan, scan_stream
from journal._snapshot import identity, read_snapshot

LOAD_ATTEMPTS = 4  # reads of the state while compactions keep replacing the snapshot


def archive_files(home: Path) -> list[Path]:
    """The archived journals, oldest name first (OSError if unlistable)."""
    return [Path(p) for p in list_files(home / ARCHIVE_DIR, JOURNAL_SUFFIX)]


def journal_files(home: Path) -> list[Path]:
    """The journals under ``home/journal/``, finished and live (OSError if unlistable)."""
    return [Path(p) for p in _hit.journal_files(home)]


def describe(path: Path | str, exc: OSError) -> str:
    """One line for an I/O error on ``path``: where, and what the system said."""
    return f"{path}: {exc.strerror or exc}"


def probe(path: Path) -> tuple[int, bool | None] | None:
    """Open a journal and tell whether its writer is gone.

    Returns ``(fd, finished)``: ``finished`` True if no writer holds the journal's lock
    (the probe then holds it until ``fd`` is closed; writers never reopen a journal),
    False if one does, None if the lock could not be tried (an error: fold it as live,
    archive nothing). None instead of a pair if ``path`` is not a regular file. Raises
    FileNotFoundError if it is gone, OSError if it cannot be opened.
    """
    fd = open_regular(path)
    if fd is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return fd, False
    except OSError:
        return fd, None
    return fd, True


def writer_gone(path: Path) -> bool | None:
    """True if no writer holds the journal's lock, False if one does, None if it is not
    a regular file, is gone, or cannot be opened."""
    try:
        opened = probe(path)
    except OSError:
        return None
    if opened is None:
        return None
    os.close(opened[0])  # closing releases the probe's lock
    return opened[1] is not False


def fold_lines(
    table: Table,
    lines: Iterable[Line],
    skips: Counter[str],
    *,
    floor: Order | None = None,
    bad: list[Line] | None = None,
) -> int:
    """Fold the records among ``lines`` into ``table``; count skipped lines (and keep them
    in ``bad`` if given). Returns the number of records read."""
    records = 0
    for line in lines:
        if line.record is not None:
            apply(table, line.record, floor)
            records += 1
        else:
            skips[line.reason or NOT_A_FILE] += 1
            if bad is not None:
                bad.append(line)
    return records


def fold_file(
    table: Table,
    path: Path,
    skips: Counter[str],
    *,
    finished: bool,
    floor: Order | None = None,
    bad: list[Line] | None = None,
) -> int:
    """Fold every record of one file into ``table``; see :func:`fold_lines`. Raises
    FileNotFoundError if it is gone, OSError if it cannot be read."""
    lines = scan(path, finished=finished)
    return fold_lines(table, lines, skips, floor=floor, bad=bad)


def load_table(home: Path) -> tuple[Table, Counter[str], bool, list[str]]:
    """Snapshot + journals (+ archive when the snapshot is not intact), folded; with the
    I/O errors met. Never raises."""
    if os.path.islink(home):  # refused, never followed
        return {}, Counter({NOT_A_FILE: 1}), False, []
    for attempt in range(LOAD_ATTEMPTS):
        last = attempt == LOAD_ATTEMPTS - 1
        table, skips, intact, errors, stable = _load_once(home, with_archive=last)
        if stable:
            break
    return table, skips, intact, errors


def _load_once(
    home: Path, *, with_archive: bool
) -> tuple[Table, Counter[str], bool, list[str], bool]:
    errors: list[str] = []
    snap = read_snapshot(home / SNAPSHOT)
    if snap.error is not None:
        errors.append(snap.error)
    skips: Counter[str] = Counter(line.reason for line in snap.skipped if line.reason)
    table = fold(snap.records)
    journals = _listed(home, JOURNAL_DIR, errors)  # before the archive: see above
    in_force = floor_in_force(snap.floor)  # none from the future (docs/architecture.md)
    if not snap.intact or with_archive:
        floor = None if not snap.intact else in_force
        listed = {path.name for path in journals}
        for path in _listed(home, ARCHIVE_DIR, errors):
            if path.name in listed:
                continue  # archived between the two listings: folded once, below
            _fold_named(table, home, path.name, skips, errors, floor, archived_first=True)
    for path in journals:
        _fold_named(table, home, path.name, skips, errors, in_force, archived_first=False)
    try:
        stable = snap.error is not None or identity(home / SNAPSHOT) == snap.identity
    except OSError:
        stable = True  # cannot tell: the read stands, as good as it was
    return table, skips, snap.intact, errors, stable


def _listed(home: Path, directory: str, errors: list[str]) -> list[Path]:
    """The journals in ``home/directory``; none, with the error noted, if unlistable."""
    try:
        return [Path(p) for p in list_files(home / directory, JOURNAL_SUFFIX)]
    except OSError as exc:
        errors.append(describe(home / directory, exc))
        return []


def _fold_named(
    table: Table,
    home: Path,
    name: str,
    skips: Counter[str],
    errors: list[str],
    floor: Order | None,
    *,
    archived_first: bool,
) -> None:
    """Fold the journal ``name``, from ``journal/`` or, once archived, ``archive/``."""
    dirs = (ARCHIVE_DIR,) if archived_first else (JOURNAL_DIR, ARCHIVE_DIR)
    for directory in dirs:
        path = home / directory / name
        try:
            opened = probe(path)
        except FileNotFoundError:
            continue  # archived meanwhile (look there next), or pruned, or empty and removed
        except OSError as exc:
            errors.append(describe(path, exc))
            return
        if opened is None:
            skips[NOT_A_FILE] += 1
            return
        fd, finished = opened
        try:
            with os.fdopen(fd, "rb") as stream:
                lines = scan_stream(stream, finished=finished is True)
                fold_lines(table, lines, skips, floor=floor)
        except OSError as exc:
            errors.append(describe(path, exc))
        return


def load(home: Path | str) -> State:
    """The folded state of ``home``: snapshot + every journal. Never raises.

    Finished journals count a last line without newline as torn; live ones are read up
    to their last complete line. A corrupt, unreadable or missing snapshot is rebuilt
    from the archive as well. Files that could not be read are named in
    :attr:`State.errors`.
    """
    table, skips, intact, errors = load_table(Path(home))
    return State(table, Skips.from_counts(skips), intact, tuple(errors))


class History(Iterator[Record]):
    """The iterator :func:`history` returns: records in (ts, event id) order.

    ``errors`` names each file or directory that could not be read (an I/O error) so
    far: once the iteration is over, an empty ``errors`` means nothing was passed over.
    """

    def __init__(self, home: Path, since: str | None, until: str | None) -> None:
        self._errors: list[str] = []
        self._records = _merged(home, since, until, self._errors)

    @property
    def errors(self) -> tuple[str, ...]:
        return tuple(self._errors)

    def __iter__(self) -> History:
        return self

    def __next__(self) -> Record:
        return next(self._records)

    def close(self) -> None:
        """Stop early, closing whatever file is open."""
        self._records.close()


def history(home: Path | str, since: str | None = None, until: str | None = None) -> History:
    """Every valid record of the archive and the journals, in (ts, event id) order.

    ``since``/``until`` are timestamps in the record format (ISO-8601 UTC), inclusive.
    Streams: each file's records are already in order (a writer's clock is monotonic),
    so files are merged lazily, opened only when the merge reaches their first record;
    memory grows with the number of overlapping files, not with history.

    Each journal is read once, from ``journal/`` or ``archive/``, wherever a concurrent
    compaction put it, so every record appended before the call is yielded exactly once
    (unless retention pruned its archived journal meanwhile). Never raises on I/O: a
    file that cannot be read is named in :attr:`History.errors`.
    """
    return History(Path(home), since, until)


Head = tuple[Order, int, str]


def _merged(
    home: Path, since: str | None, until: str | None, errors: list[str]
) -> Generator[Record, None, None]:
    if os.path.islink(home):  # refused, never followed
        return
    names = [p.name for p in _listed(home, JOURNAL_DIR, errors)]
    names += [p.name for p in _listed(home, ARCHIVE_DIR, errors)]
    heads: list[Head] = []
    for index, name in enumerate(sorted(set(names))):
        first = next(_records(home, name, errors), None)
        if first is not None:
            heads.append((order(first), index, name))
    heads.sort()
    active: list[tuple[Order, int, dict[str, Any], Iterator[dict[str, Any]]]] = []
    waiting = iter(heads)
    upcoming = next(waiting, None)
    while active or upcoming is not None:
        while upcoming is not None and (not active or upcoming[0] <= active[0][0]):
            stream = _records(home, upcoming[2], errors)
            head = next(stream, None)
            if head is not None:
                heapq.heappush(active, (order(head), upcoming[1], head, stream))
            upcoming = next(waiting, None)
        if not active:
            continue
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


def _records(home: Path, name: str, errors: list[str]) -> Iterator[dict[str, Any]]:
    """The records of journal ``name``, read from ``journal/``, else from ``archive/``.
    Read errors are appended to ``errors`` (once per file: a file is read twice, for
    its head and then for good, and an error the first time ends it the second)."""
    for directory in (JOURNAL_DIR, ARCHIVE_DIR):
        path = home / directory / name
        lines = scan(path, finished=False)
        try:
            line = next(lines, None)
        except FileNotFoundError:
            continue
        except OSError as exc:
            _note(errors, describe(path, exc))
            return
        try:
            while line is not None:
                if line.record is not None:
                    yield line.record
                line = next(lines, None)
        except OSError as exc:
            _note(errors, describe(path, exc))
        finally:
            lines.close()
        return


def _note(errors: list[str], message: str) -> None:
    if message not in errors:
        errors.append(message)
