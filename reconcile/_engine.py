"""Settling in the foreground: what the hook and its reconciler do, in one call.

The hook (:func:`reconcile._fast.handle`) and the detached reconciler
(:mod:`reconcile._reconciler`) split the work across processes so that no tool use waits
on the database. :func:`reconcile_session` runs both halves in the caller's process,
for library users and the synchronous mode; the decision itself is one statement
(:func:`reconcile._store.decide`), journaled under the audit row's event id.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import attrs

import journal
from reconcile._fast import (
    CONFIRMED,
    DIVERGENCE_PRESERVED,
    HIT,
    MISS,
    RECONCILED,
    REJECTED,
    UNRESOLVED,
    UNSETTLED,
    Observation,
    observe,
    verdict,
)
from reconcile._log import get_logger
from reconcile._settings import Settings
from reconcile._store import RECOVERY_ANCHOR, Decision

NO_EXECUTOR = "no_executor"
SKIPPED = "skipped"
PENDING = "pending"  # observed, not settled: the database could not be used
OUTCOMES = (
    HIT,
    "confirmed",
    "reconciled",
    "divergence_preserved",
    "unresolved",
    "rejected",
    PENDING,
    SKIPPED,
)
_KIND = {
    RECONCILED: "reconciled",
    CONFIRMED: "confirmed",
    DIVERGENCE_PRESERVED: "divergence_preserved",
    UNRESOLVED: "unresolved",
    REJECTED: "rejected",
}


@attrs.frozen
class Outcome:
    """What one observation came to: ``kind`` is one of :data:`OUTCOMES`."""

    kind: str
    key: str | None = None
    event_id: str | None = None
    executor_id: str | None = None
    reason: str | None = None


def reconcile_session(
    settings: Settings, env: Mapping[str, str], payload: Mapping[str, Any]
) -> Outcome:
    """Observe, answer from the cache if possible, else settle now, in this process."""
    observation = observe(env, payload)
    if isinstance(observation, str):
        get_logger().info("hook.skipped", reason=observation)
        return Outcome(SKIPPED, reason=observation)
    found = verdict(
        str(settings.home),
        observation,
        max_age_s=settings.agent_max_age_s,
        negative_ttl_s=settings.negative_ttl_s,
    )
    if found == HIT:
        return Outcome(HIT, key=observation.key)
    return settle(settings, observation, observed=found != MISS)


def settle(settings: Settings, observation: Observation, *, observed: bool = False) -> Outcome:
    """Journal ``observation`` (unless ``observed`` already) and settle it now: run the
    reconciler in this process, waiting for a running one within the statement timeout.

    The database unusable: the observation stays journaled (kind ``pending``), for the
    next reconciler. Never raises for anything the database does.
    """
    from reconcile._outbox import append_observation
    from reconcile._reconciler import settle_pending

    home = str(settings.home)
    if not observed:
        current = journal.latest(home, observation.key)
        after = current["id"] if current is not None else None
        append_observation(home, observation, fsync=settings.fsync, after=after)
    report = settle_pending(settings, wait_s=settings.statement_timeout_s, ignore_backoff=True)
    record = journal.latest(home, observation.key)
    kind = _KIND.get(record["type"], PENDING) if record is not None else PENDING
    if record is None or record["type"] in UNSETTLED:
        return Outcome(PENDING, observation.key, reason=report.error)
    data = record["data"] or {}
    return Outcome(kind, observation.key, record["id"], data.get("executor_id"))


def event_for(decision: Decision, session_id: str) -> tuple[str, dict[str, Any]]:
    """The journal event (type, data) recording a database decision."""
    if decision.outcome == "confirmed":
        return CONFIRMED, {"executor_id": decision.executor_id, "session_id": session_id}
    if decision.outcome == "divergence_preserved":
        data: dict[str, Any] = {
            "executor_id": decision.executor_id,
            "stored_session_id": decision.stored_session_id,
            "live_session_id": session_id,
            "executor_state": decision.executor_state,
            "agent": decision.actor,
            "team": decision.team,
        }
        if not decision.audited:  # this pair's audit row exists already, under another id
            data["audited"] = False
        return DIVERGENCE_PRESERVED, data
    return RECONCILED, {
        "executor_id": decision.executor_id,
        "old_session_id": decision.stored_session_id,
        "new_session_id": session_id,
        "agent": decision.actor,
        "team": decision.team,
    }


# What the database may hold at any length and an outcome record repeats only for people
# and audits: cut, when the record would not fit in one journal line, and named in the
# record's "truncated" list. Never cut: the key, the session id the record settles (the
# fold and the hook's hit need them; the hook bounds them) and the executor id (verify
# and replay look the row up by it).
TRUNCATABLE = ("agent", "team", "executor_state", "old_session_id", "stored_session_id")
_CUTS = (256, 64, 16)  # characters; at 16 the rest always fits (docs/formats.md)


def fitted(data: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """``data``, then shorter and shorter versions of it: each :data:`TRUNCATABLE` field
    longer than the cut becomes its first characters, listed in ``"truncated"``."""
    yield dict(data)
    for limit in _CUTS:
        cut = [f for f in TRUNCATABLE if isinstance(data.get(f), str) and len(data[f]) > limit]
        if cut:
            yield {**data, **{f: data[f][:limit] for f in cut}, "truncated": cut}


def append_fitted(
    writer: journal.Writer,
    key: str,
    data: Mapping[str, Any],
    event_type: str,
    *,
    event_id: str | None = None,
) -> str:
    """Append an outcome, cut to fit one journal line if need be (:func:`fitted`): a
    database value too long for a record must not keep the observation unsettled, its
    row updated and audited. Raises what :meth:`journal.Writer.append` raises when even
    the shortest version does not fit (an executor id of kilobytes)."""
    attempts = list(fitted(data))
    for number, attempt in enumerate(attempts, 1):
        try:
            done = writer.append(key, attempt, event_type, event_id=event_id)
        except journal.RecordTooLargeError:
            if number == len(attempts):
                raise
            continue
        if "truncated" in attempt:
            get_logger().warning("outcome.truncated", key=key, fields=attempt["truncated"])
        return done
    raise AssertionError("unreachable: fitted() yields at least once")  # pragma: no cover


def audit_details(event_type: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """The audit row ``details`` of a journaled event (the earlier handler's keys)."""
    if event_type == RECONCILED:
        return {
            "old_session_id": data.get("old_session_id"),
            "new_session_id": data.get("new_session_id"),
            "team": data.get("team"),
        }
    return {
        "stored_session_id": data.get("stored_session_id"),
        "live_session_id": data.get("live_session_id"),
        "executor_state": data.get("executor_state"),
        "team": data.get("team"),
        "reason": RECOVERY_ANCHOR,
    }
