"""The database's backoff, shared by every process of a state directory
(docs/architecture.md, "The reconciler").

A reconciler that finds the database unusable (unreachable, silent, refusing, without
its tables) records in ``backoff`` when the next attempt may be made: a delay doubling
from 1 s up to ``RECONCILE_BACKOFF_MAX``, with equal jitter. Every hook reads it before
it starts a reconciler, and the reconciler itself waits it out before trying again.

The file holds wall-clock times, the only clock processes share, and wall clocks step
(NTP, a laptop waking up). A reconciler never writes an ``until`` further than the
record's own cap (``cap_s``: ``RECONCILE_BACKOFF_MAX`` when it was written) from its
now; so a record whose ``until`` is further than that from the reader's now was written
while the clock ran ahead, and is not in force at all: the next hook starts a
reconciler, which tries the database and writes a backoff on today's clock if it still
fails. (Capping it at the cap from now instead would hold it forever: that bound moves
with the reader's now.) A step forward only ends a backoff early.

This module runs in the hook (a miss, and an observation still waiting): the standard
library and the journal's already-loaded functions only.
"""

import posix
import time

from journal import join_path, parse_json

BACKOFF = "backoff"
BASE_S = 1.0
DEFAULT_CAP_S = 30.0  # RECONCILE_BACKOFF_MAX's default: for records without a cap


def read(home: str) -> dict[str, object] | None:
    """The backoff record the last reconciler left, or None if there is none (or it
    cannot be read: a backoff is advice, and an unreadable one advises nothing)."""
    try:
        fd = posix.open(
            join_path(home, BACKOFF),
            posix.O_RDONLY | posix.O_NOFOLLOW | posix.O_CLOEXEC,
        )
    except OSError:
        return None
    try:
        raw = posix.read(fd, 1 << 16)
    except OSError:
        return None
    finally:
        posix.close(fd)
    try:
        value = parse_json(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def until(home: str, now_s: float | None = None) -> float:
    """Until when (Unix seconds) no process of this home may try the database; 0: now.
    Never further than the record's cap from ``now_s`` (default: the clock now)."""
    return capped_until(read(home), time.time() if now_s is None else now_s)


def capped_until(record: dict[str, object] | None, now_s: float) -> float:
    """``record``'s ``until``; 0 (not in force) when that is further than its ``cap_s``
    from ``now_s``, a record written by a clock ahead of this one."""
    if not record:
        return 0.0
    end, cap = record.get("until"), record.get("cap_s")
    if not isinstance(end, int | float) or isinstance(end, bool):
        return 0.0
    if not isinstance(cap, int | float) or isinstance(cap, bool) or cap <= 0:
        cap = DEFAULT_CAP_S
    if float(end) > now_s + float(cap):
        return 0.0
    return float(end)


def delay_s(failures: int, cap_s: float) -> float:
    """The wait after the ``failures``-th failure in a row: doubling from 1 s up to
    ``cap_s``, equal jitter (half fixed, half random: processes that failed together do
    not come back together). Only reconcilers call it: ``random`` is not the hook's."""
    import random

    delay = min(cap_s, BASE_S * 2.0 ** min(max(failures, 1) - 1, 30))
    return delay / 2 + random.uniform(0, delay / 2)


def failed(home: str, error: str, cap_s: float) -> dict[str, object]:
    """Push the shared backoff further after a failure; return the record to write
    (:func:`write` writes it). ``since`` keeps when the failures began."""
    previous = read(home) or {}
    count = previous.get("failures")
    failures = count + 1 if isinstance(count, int) and count >= 0 else 1
    now = time.time()
    return {
        "failures": failures,
        "until": now + delay_s(failures, cap_s),
        "cap_s": cap_s,
        "since": previous.get("since") if failures > 1 else now,
        "last_error": error[:500],
        "last_error_at": now,
    }


def succeeded(home: str) -> dict[str, object] | None:
    """The record that clears the backoff (keeping the last error for ``reconcile
    status``), or None when none is in force: nothing to write."""
    previous = read(home)
    if previous is None or not previous.get("failures"):
        return None
    return {
        "failures": 0,
        "until": 0,
        "cap_s": previous.get("cap_s"),
        "since": None,
        "last_error": previous.get("last_error"),
        "last_error_at": previous.get("last_error_at"),
    }


def write(home: str, record: dict[str, object]) -> None:
    """Replace ``backoff`` by ``record``, atomically (raises ``OSError`` or
    :class:`journal.JournalError`; the caller decides whether advice is worth a word)."""
    from pathlib import Path

    from journal import dump_json, write_atomically

    content = (dump_json(record) + "\n").encode("ascii")
    write_atomically(Path(home, BACKOFF), content)
