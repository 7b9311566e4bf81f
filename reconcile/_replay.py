"""Replay and verify (docs/architecture.md): the event history applied to the database, and checked
against the snapshot and the database."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs

import journal
from reconcile._errors import DatabaseUnavailableError
from reconcile._fast import (
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
from reconcile._store import connect, executor_sessions, insert_audit_rows

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
    """The event history (archive + live journals) in order, filtered; streamed."""
    for record in journal.history(settings.home, since=since, until=until):
        if key is not None and record.key != key:
            continue
        if types and record.type not in types:
            continue
        if executor is not None and _executor_of(record) != executor:
            continue
        yield record


def event_matcher(
    *,
    since: str | None = None,
    key: str | None = None,
    executor: str | None = None,
    types: tuple[str, ...] = (),
) -> Callable[[dict[str, Any]], bool]:
    """Whether a raw record passes replay's filters (``until`` is the reader's: a record
    after it is not consumed at all)."""

    def matches(raw: dict[str, Any]) -> bool:
        if since is not None and raw["ts"] < since:
            return False
        if key is not None and raw["key"] != key:
            return False
        if types and raw["type"] not in types:
            return False
        return executor is None or _executor_of(journal.Record.from_raw(raw)) == executor

    return matches


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

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def replay_to_db(
    settings: Settings, *, progress: Callable[[int, int], None] | None = None
) -> ReplayReport:
    """Settle every pending observation and insert missing audit rows, idempotently.

    Audit rows of journaled events are inserted unless their event id is already there.
    Observations still waiting are settled by the reconciler, in the foreground (waiting
    for a running one, whatever the backoff), so a second replay finds nothing to do.
    Raises :class:`DatabaseUnavailableError` when the database cannot be used.
    """
    waiting: dict[str, int] = {}  # key -> observations since its latest other event
    inserted = 0
    batch: list[tuple[Any, ...]] = []
    with connect(settings, application="reconcile-replay") as conn:
        for record in journal.history(settings.home):
            if record.type in UNSETTLED:
                waiting[record.key] = waiting.get(record.key, 0) + 1
            else:  # settled (or forgotten): history, neither pending nor superseded
                waiting.pop(record.key, None)
            if record.type in AUDITED_TYPES and record.data and audited(record.data):
                batch.append(_audit_row(record))
                if len(batch) >= _BATCH:
                    inserted += insert_audit_rows(conn, batch)
                    batch.clear()
        inserted += insert_audit_rows(conn, batch)
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
    result = ReplayReport(pending, superseded, dict(report.outcomes), inserted)
    get_logger().info("replay.done", **result.to_dict())
    return result


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
    # unreadable (found: the I/O error that kept a file from being read)
    kind: str
    expected: str | None
    found: str | None

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


def verify(settings: Settings, *, db: bool = False) -> VerifyReport:
    """Rebuild the state from history and compare it with the cache (and the database).

    A key the rebuilt state has but the cache lacks is fine when it is older than every
    cache entry (it was evicted, least recently reconciled first); a cache entry with
    no history left (archive retention) is counted as unverifiable, not as a difference.
    """
    rebuilt: dict[str, dict[str, Any]] = {}
    count = 0
    history = journal.history(settings.home)
    for record in history:
        journal.fold([record.to_dict()], rebuilt)
        count += 1
    state = journal.load(settings.home)
    differences: list[Difference] = []
    # What could not be read cannot be verified: an error is never evidence of absence.
    for error in (*history.errors, *state.errors):
        differences.append(Difference("-", "unreadable", None, error))
    unverifiable = 0
    for key, entry in state.items():
        expected = rebuilt.get(key)
        if expected is None:
            unverifiable += 1
        elif expected["id"] != entry.id:
            differences.append(Difference(key, "snapshot_differs", expected["id"], entry.id))
    oldest = min(((e.ts, e.id) for e in state.values()), default=None)
    for key, raw in rebuilt.items():
        if raw["data"] is None or key in state:
            continue
        if oldest is None or (raw["ts"], raw["id"]) > oldest:
            differences.append(Difference(key, "missing_from_cache", raw["id"], None))
    if db:
        differences.extend(_database_differences(settings, state))
    return VerifyReport(len(state), count, unverifiable, differences)


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
