"""Replay and verify (docs/architecture.md): the event history applied to the database, and checked
against the snapshot and the database."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs

import journal
from reconcile._errors import DatabaseUnavailableError
from reconcile._fast import (
    CONFIRMED,
    DIVERGENCE_PRESERVED,
    RECONCILED,
    REJECTED,
    SETTLED_SESSION,
    UNSETTLED,
    settled_session,
)
from reconcile._log import get_logger
from reconcile._outcome import audit_details
from reconcile._reconciler import settle_pending, unsettled
from reconcile._settings import Settings
from reconcile._store import (
    TERMINAL_STATES,
    connect,
    executor_sessions,
    insert_audit_rows,
    missing_audit_rows,
    restore_session,
)

AUDITED_TYPES = (RECONCILED, DIVERGENCE_PRESERVED)
_BATCH = 500


def events(
    settings: Settings,
    *,
    since: str | None = None,
    until: str | None = None,
    key: str | None = None,
    executor: str | None = None,
    types: tuple[str, ...] = (),
) -> Iterator[journal.Record]:
    """The event history (archive + live journals) in order, filtered; streamed.
    ``executor``: the records naming that executor (an agent-keyed observation names
    none; ``reconcile replay --executor`` also gives it when its outcome names the
    executor, cli/_replay.py)."""
    for record in journal.history(settings.home, since=since, until=until):
        if key is not None and record.key != key:
            continue
        if types and record.type not in types:
            continue
        if executor is not None and _executor_of(record) != executor:
            continue
        yield record


def _executor_of(record: journal.Record) -> str | None:
    data = record.data or {}
    if "executor_id" in data:
        found = data["executor_id"]
        return found if isinstance(found, str) else None
    identity = data.get("identity")
    return identity.get("executor_id") if isinstance(identity, dict) else None


@attrs.frozen
class ReplayReport:
    """What ``replay --to-db`` did."""

    pending: int  # observations still to settle when it began (the latest of their key)
    # waiting observations a later one of the same key replaced (only the latest is
    # settled); settled history is not counted, so with nothing waiting both are 0
    superseded: int
    outcomes: dict[str, int]  # how the pending ones were settled
    audit_rows_inserted: int
    # executor rows put back on the session the journal's latest change wrote, from an
    # older value the journal knows (a database restored from an older backup)
    rows_restored: int = 0
    # rows that hold another session than the journal's latest change wrote, left alone:
    # a value the retained journal does not know, or a terminal executor
    rows_left_alone: int = 0

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def replay_to_db(
    settings: Settings, *, progress: Callable[[int, int], None] | None = None
) -> ReplayReport:
    """Restore rows, insert missing audit rows and settle every pending observation,
    idempotently.

    Audit rows of journaled events are inserted unless their event id is already there
    (or the same change is audited under another id). Executor rows that went back to an
    older session the journal knows are put back on the one the journal's latest change
    wrote (:func:`_restore_rows`, docs/operations.md "Restored from a backup").
    Observations still waiting are then settled by the reconciler, in the foreground
    (waiting for a running one, whatever the backoff), so a second replay finds nothing
    to do. Raises :class:`DatabaseUnavailableError` when the database cannot be used.
    """
    waiting: dict[str, int] = {}  # key -> observations since its latest other event
    inserted = 0
    batch: list[tuple[Any, ...]] = []
    changes = _Changes()
    with connect(settings, application="reconcile-replay") as conn:
        for record in journal.history(settings.home):
            if record.type in UNSETTLED:
                waiting[record.key] = waiting.get(record.key, 0) + 1
            else:  # settled (or forgotten): history, neither pending nor superseded
                waiting.pop(record.key, None)
            changes.add(record)
            if record.type in AUDITED_TYPES and record.data and audited(record.data):
                batch.append(_audit_row(record))
                if len(batch) >= _BATCH:
                    inserted += insert_audit_rows(conn, batch)
                    batch.clear()
        inserted += insert_audit_rows(conn, batch)
        restored, left = _restore_rows(settings, conn, changes)
    # Of a key's observations still waiting, the latest is settled; the earlier ones are
    # moot (superseded), and settled with it.
    superseded = sum(count - 1 for count in waiting.values())
    pending = len(unsettled(str(settings.home)))
    report = settle_pending(
        settings,
        wait_s=max(60.0, settings.statement_timeout_s),
        ignore_backoff=True,
        progress=progress,
    )
    if report.error is not None:
        raise DatabaseUnavailableError(report.error)
    if report.busy:
        raise DatabaseUnavailableError(
            "another reconciler kept reconcile.lock for a minute; try again"
        )
    result = ReplayReport(pending, superseded, dict(report.outcomes), inserted, restored, left)
    get_logger().info("replay.done", **result.to_dict())
    return result


class _Changes:
    """Per executor, what the journal says its row holds: its latest outcome, and the
    latest change (``session.reconciled``) this tool made to it. Bounded by the number of
    executors, not the history's length."""

    def __init__(self) -> None:
        self.latest: dict[str, journal.Record] = {}  # executor -> its latest outcome
        self.change: dict[str, journal.Record] = {}  # executor -> its latest change

    def add(self, record: journal.Record) -> None:
        if record.type not in (RECONCILED, CONFIRMED, DIVERGENCE_PRESERVED):
            return
        executor = (record.data or {}).get("executor_id")
        if not isinstance(executor, str):
            return
        self.latest[executor] = record  # history comes in (timestamp, event id) order
        if record.type == RECONCILED:
            self.change[executor] = record

    def restorable(self) -> dict[str, journal.Record]:
        """Executor -> the change whose session the journal says its row holds now: the
        latest outcome is that change, or a confirmation of the session it wrote (a
        divergence says the row is a terminal executor's anchor: never restored)."""
        found = {}
        for executor, latest in self.latest.items():
            change = self.change.get(executor)
            if change is None:
                continue
            wrote = (change.data or {}).get("new_session_id")
            if latest is change or (
                latest.type == CONFIRMED and (latest.data or {}).get("session_id") == wrote
            ):
                found[executor] = change
        return found


def _row_values(record: journal.Record) -> list[str | None]:
    """The values an outcome says its executor's row held (whole ones only: a value the
    record holds cut, docs/formats.md, proves nothing)."""
    data = record.data or {}
    cut = set(data.get("truncated") or ())
    fields = {
        RECONCILED: ("old_session_id", "new_session_id"),
        CONFIRMED: ("session_id",),
        DIVERGENCE_PRESERVED: ("stored_session_id",),
    }.get(record.type, ())
    return [data.get(f) for f in fields if f in data and f not in cut]


def _reachable(successors: Mapping[str | None, set[str]], start: str | None) -> set[str]:
    """The values a chain of journaled changes leads to from ``start``."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for value in successors.get(todo.pop(), ()):
            if value not in seen:
                seen.add(value)
                todo.append(value)
    return seen


def _restore_rows(settings: Settings, conn: Any, changes: _Changes) -> tuple[int, int]:
    """Put back, on each executor row that went back in time, the session the journal's
    latest change wrote; return (rows restored, differing rows left alone).

    The rule (docs/operations.md, "Restored from a backup"): the journal's latest outcome
    for the executor says its row holds session X, written by a journaled
    ``session.reconciled``; the row holds V != X; V is a value the retained journal
    records that row as holding before (an earlier session id, or NULL where a record
    says the row held none), since session ids do not recur, a row holding one of them
    again went back in time; the executor is not terminal. Then X is written back, with
    the audit row of that change (by its event id: once), compare-and-set on V, so a
    concurrent settlement wins. Anything else (a session the journal does not know, a
    terminal executor, an anchor) is the orchestrator's and is left alone.
    """
    candidates = changes.restorable()
    if not candidates:
        return 0, 0
    rows = executor_sessions(conn, candidates)
    differing = {}
    for executor, change in candidates.items():
        if executor not in rows:
            continue  # deleted: verify --db reports it
        found, state = rows[executor]
        if found != (change.data or {}).get("new_session_id"):
            differing[executor] = (found, state)
    if not differing:
        return 0, 0
    known: set[str] = set()  # executors whose found value the journal knows as older
    # Each differing executor's journaled changes, old -> new: a row's value that a chain
    # of changes leads to from the session the latest change wrote came after it (a
    # change settled late, after a later-stamped one), not before.
    successors: dict[str, dict[str | None, set[str]]] = {e: {} for e in differing}
    for record in journal.history(settings.home):
        named = (record.data or {}).get("executor_id")
        if not isinstance(named, str) or named not in differing:
            continue
        values = _row_values(record)
        if differing[named][0] in values:
            known.add(named)
        if record.type == RECONCILED and len(values) == 2:
            successors[named].setdefault(values[0], set()).add(str(values[1]))
    for executor in list(known):
        wrote = (candidates[executor].data or {}).get("new_session_id")
        if differing[executor][0] in _reachable(successors[executor], wrote):
            known.discard(executor)
    restored = 0
    for executor, (found, state) in differing.items():
        if executor not in known or state in TERMINAL_STATES:
            continue
        change = candidates[executor]
        if restore_session(
            conn,
            executor_id=executor,
            found=found,
            session_id=(change.data or {})["new_session_id"],
            audit_row=_audit_row(change),
        ):
            restored += 1
            get_logger().info(
                "replay.restored", executor_id=executor, found=found, event_id=change.id
            )
    return restored, len(differing) - restored


def audited(data: Mapping[str, Any]) -> bool:
    """Whether a journaled reconciled/divergence event has an audit row of its own id: a
    divergence already audited for the same pair (by any host) says ``"audited": false``."""
    return data.get("audited", True) is not False


def _audit_row(record: journal.Record) -> tuple[Any, ...]:
    data = dict(record.data or {})
    return (
        record.id,
        data.get("executor_id"),
        record.type,
        data.get("agent"),
        audit_details(record.type, data),
        record.ts,
    )


@attrs.frozen
class Difference:
    """One disagreement found by :func:`verify`."""

    key: str
    # snapshot_differs | missing_from_cache | not_in_history | database_differs (expected:
    # a session id) | executor_missing (expected: the executor id the database lacks) |
    # audit_missing (expected: the event id of a journaled change whose audit row the
    # database lacks; detail: that change) |
    # unreadable (found: the I/O error that kept a file from being read)
    kind: str
    expected: str | None
    found: str | None
    detail: str | None = None  # audit_missing: the change, in words

    def __str__(self) -> str:
        if self.kind == "unreadable":
            return f"unreadable: {self.found}"
        return f"{self.kind}: {self.key}: expected {self.expected!r}, found {self.found!r}"


@attrs.frozen
class VerifyReport:
    entries: int
    history_records: int
    unverifiable: int  # cache entries whose history the archive retention already dropped
    differences: list[Difference]

    @property
    def ok(self) -> bool:
        return not self.differences

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["ok"] = self.ok
        return data


def verify(settings: Settings, *, db: bool = False, at: str | None = None) -> VerifyReport:
    """Rebuild the state from history and compare it with the cache (and the database).

    A key the rebuilt state has but the cache lacks is fine when it is older than every
    cache entry (it was evicted, least recently reconciled first); a cache entry with
    no history left (archive retention) is counted as unverifiable, not as a difference.
    With ``db``, each settled entry is compared with its executor row, and each audited
    event the retained history holds must have its audit row (``audit_missing``).

    ``at`` (a timestamp in the record format): the same check as of that instant
    (docs/operations.md, "Verify"): the history up to it, folded; each cache entry
    written by then must be that fold's entry of its key (it is the key's latest, so it
    was its latest then); with ``db``, each audited event up to it must have its audit
    row. What holds only the present is not compared: executor rows, and keys the cache
    lacks (evicted or changed since).
    """
    with contextlib.ExitStack() as stack:
        conn = (
            stack.enter_context(connect(settings, application="reconcile-verify")) if db else None
        )
        rebuilt: dict[str, dict[str, Any]] = {}
        count = 0
        missing: list[Difference] = []
        batch: list[tuple[Any, ...]] = []
        keys: dict[str, str] = {}  # event id -> key, of the batch
        history = journal.history(settings.home, until=at)
        for record in history:
            journal.fold([record.to_dict()], rebuilt)
            count += 1
            if (
                conn is not None
                and record.type in AUDITED_TYPES
                and record.data
                and audited(record.data)
            ):
                batch.append(_audit_row(record))
                keys[record.id] = record.key
                if len(batch) >= _BATCH:
                    missing.extend(_audit_differences(conn, batch, keys))
                    batch.clear()
                    keys.clear()
        if conn is not None:
            missing.extend(_audit_differences(conn, batch, keys))
    state = journal.load(settings.home)
    differences: list[Difference] = []
    # What could not be read cannot be verified: an error is never evidence of absence.
    for error in (*history.errors, *state.errors):
        differences.append(Difference("-", "unreadable", None, error))
    unverifiable = 0
    for key, entry in state.items():
        if at is not None and entry.ts > at:
            continue  # written after the instant: the present's, not the instant's
        expected = rebuilt.get(key)
        if expected is None:
            unverifiable += 1
        elif expected["id"] != entry.id:
            differences.append(Difference(key, "snapshot_differs", expected["id"], entry.id))
    oldest = min(((e.ts, e.id) for e in state.values()), default=None)
    for key, raw in rebuilt.items():
        if at is not None or raw["data"] is None or key in state:
            continue
        if oldest is None or (raw["ts"], raw["id"]) > oldest:
            differences.append(Difference(key, "missing_from_cache", raw["id"], None))
    if db and at is None:
        differences.extend(_database_differences(settings, state))
    differences.extend(missing)
    return VerifyReport(len(state), count, unverifiable, differences)


def _audit_differences(
    conn: Any, batch: list[tuple[Any, ...]], keys: Mapping[str, str]
) -> list[Difference]:
    """``audit_missing`` for each audit row of ``batch`` the database lacks (by its event
    id, or the same change under another id: what ``replay --to-db`` would insert)."""
    by_id = {row[0]: row for row in batch}
    return [
        Difference(keys[event_id], "audit_missing", event_id, None, _change_words(by_id[event_id]))
        for event_id in missing_audit_rows(conn, batch)
    ]


def _change_words(row: tuple[Any, ...]) -> str:
    """The change an audit row records, in words: ``session.reconciled s-1 -> s-2``."""
    _, executor, event_type, _, details, _ = row
    first, second = (
        ("old_session_id", "new_session_id")
        if event_type == RECONCILED
        else ("stored_session_id", "live_session_id")
    )
    return f"{event_type} of {executor}: {details.get(first)} -> {details.get(second)}"


def _database_differences(settings: Settings, state: journal.State) -> list[Difference]:
    settled = {
        key: record
        for key, record in state.items()
        if record.type in SETTLED_SESSION and record.type != REJECTED
    }
    executors = {key: (record.data or {}).get("executor_id") for key, record in settled.items()}
    with connect(settings, application="reconcile-verify") as conn:
        stored = executor_sessions(conn, [e for e in executors.values() if e])
    differences = []
    for key, record in settled.items():
        executor = executors[key]
        found = stored.get(executor) if executor else None
        if found is None:
            differences.append(Difference(key, "executor_missing", executor, None))
            continue
        data = dict(record.data or {})
        expected = (
            data.get("stored_session_id")
            if record.type == DIVERGENCE_PRESERVED
            else settled_session({"type": record.type, "data": data})
        )
        if "stored_session_id" in (data.get("truncated") or ()) and isinstance(expected, str):
            start = found[0][: len(expected)] if isinstance(found[0], str) else found[0]
            if start == expected:  # the record holds the start of it (docs/formats.md)
                continue
        if found[0] != expected:
            differences.append(Difference(key, "database_differs", expected, found[0]))
    return differences
