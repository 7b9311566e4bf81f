"""Replay and verify (DESIGN §9): the event history applied to the database, and checked
against the snapshot and the database."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs

import journal
from journal._fold import Table, apply
from reconcile._engine import NO_EXECUTOR, audit_details, event_for
from reconcile._fast import (
    DIVERGENCE_PRESERVED,
    PENDING,
    RECONCILED,
    SETTLED_SESSION,
    settled_session,
)
from reconcile._log import get_logger
from reconcile._settings import Settings
from reconcile._store import connect, decide, executor_sessions, insert_audit_rows

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


def _executor_of(record: journal.Record) -> str | None:
    data = record.data or {}
    if "executor_id" in data:
        return data["executor_id"]
    identity = data.get("identity")
    return identity.get("executor_id") if isinstance(identity, dict) else None


@attrs.frozen
class ReplayReport:
    """What ``replay --to-db`` did."""

    pending: int  # pending observations still current (not superseded)
    superseded: int  # pending observations a later event for the same key made moot
    outcomes: dict[str, int]  # how the current ones were settled
    audit_rows_inserted: int

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def replay_to_db(settings: Settings, *, writer: journal.Writer | None = None) -> ReplayReport:
    """Apply pending observations and missing audit rows to the database, idempotently.

    Audit rows of journaled events are inserted unless their event id is already there.
    Each pending observation that is still the latest event of its key is settled through
    the same statement as a hook's miss, in event order, and the result is journaled, so
    a second replay finds nothing to do. Raises :class:`DatabaseUnavailable` when the
    database cannot be used.
    """
    latest: dict[str, journal.Record] = {}
    pending_seen = 0
    inserted = 0
    batch: list[tuple[Any, ...]] = []
    own_writer = writer is None
    writer = writer or journal.Writer(settings.home, fsync=settings.fsync)
    outcomes: dict[str, int] = {}
    try:
        with connect(settings, application="reconcile-replay") as conn:
            for record in journal.history(settings.home):
                latest[record.key] = record
                pending_seen += record.type == PENDING
                if record.type in AUDITED_TYPES and record.data is not None:
                    batch.append(_audit_row(record))
                    if len(batch) >= _BATCH:
                        inserted += insert_audit_rows(conn, batch)
                        batch.clear()
            inserted += insert_audit_rows(conn, batch)
            current = sorted(
                (r for r in latest.values() if r.type == PENDING), key=lambda r: (r.ts, r.id)
            )
            for record in current:
                kind = _settle_pending(conn, settings, writer, record)
                outcomes[kind] = outcomes.get(kind, 0) + 1
    finally:
        if own_writer:
            writer.close()
    report = ReplayReport(len(current), pending_seen - len(current), outcomes, inserted)
    get_logger().info("replay.done", **report.to_dict())
    return report


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


def _settle_pending(
    conn: Any, settings: Settings, writer: journal.Writer, record: journal.Record
) -> str:
    data = record.data or {}
    identity = data.get("identity") if isinstance(data.get("identity"), dict) else {}
    session_id = data.get("session_id")
    if not isinstance(session_id, str):
        return "invalid"
    event_id = journal.new_event_id()
    decision = decide(
        conn,
        session_id=session_id,
        event_id=event_id,
        executor_id=identity.get("executor_id"),
        agent_id=identity.get("agent_id"),
        agent_name=identity.get("agent_name"),
        team=identity.get("team"),
        deadline_s=settings.statement_timeout_s,
    )
    if decision.outcome != NO_EXECUTOR:
        event_type, event_data = event_for(decision, session_id)
        writer.append(record.key, event_data, event_type, event_id=event_id)
    return decision.outcome


@attrs.frozen
class Difference:
    """One disagreement found by :func:`verify`."""

    key: str
    kind: str  # snapshot_differs | missing_from_cache | not_in_history | database_differs
    expected: str | None
    found: str | None

    def __str__(self) -> str:
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
    rebuilt: Table = {}
    count = 0
    for record in journal.history(settings.home):
        apply(rebuilt, record.to_dict())
        count += 1
    state = journal.load(settings.home)
    differences: list[Difference] = []
    unverifiable = 0
    for key, entry in state.items():
        expected = rebuilt.get(key)
        if expected is None:
            unverifiable += 1
        elif expected["id"] != entry.id:
            differences.append(Difference(key, "snapshot_differs", expected["id"], entry.id))
    oldest = min(((e.ts, e.id) for e in state.values()), default=None)
    for key, record in rebuilt.items():
        if record["data"] is None or key in state:
            continue
        if oldest is None or (record["ts"], record["id"]) > oldest:
            differences.append(Difference(key, "missing_from_cache", record["id"], None))
    if db:
        differences.extend(_database_differences(settings, state))
    return VerifyReport(len(state), count, unverifiable, differences)


def _database_differences(settings: Settings, state: journal.State) -> list[Difference]:
    settled = {key: record for key, record in state.items() if record.type in SETTLED_SESSION}
    executors = {key: (record.data or {}).get("executor_id") for key, record in settled.items()}
    with connect(settings, application="reconcile-verify") as conn:
        stored = executor_sessions(conn, [e for e in executors.values() if e])
    differences = []
    for key, record in settled.items():
        executor = executors[key]
        found = stored.get(executor) if executor else None
        if found is None:
            differences.append(Difference(key, "database_differs", executor, None))
            continue
        raw = {"type": record.type, "data": dict(record.data or {})}
        expected = (
            raw["data"].get("stored_session_id")
            if record.type == DIVERGENCE_PRESERVED
            else settled_session(raw)
        )
        if found[0] != expected:
            differences.append(Difference(key, "database_differs", expected, found[0]))
    return differences
