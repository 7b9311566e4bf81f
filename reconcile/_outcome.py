"""What the database decided, as journal records: the outcome events of a settlement.

Below the reconciler and the foreground settlement alike (both write these records),
and above the store whose :class:`reconcile._store.Decision` they record.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import journal
from reconcile._fast import CONFIRMED, DIVERGENCE_PRESERVED, RECONCILED
from reconcile._log import get_logger
from reconcile._store import RECOVERY_ANCHOR, Decision
from reconcile._transcript import FIELDS as TRANSCRIPT_FIELDS
from reconcile._transcript import without

NO_EXECUTOR = "no_executor"


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
    longer than the cut becomes its first characters, listed in ``"truncated"``; last,
    the shortest without the transcript's paths (never cut: a cut path names another
    file), named under ``"dropped"``."""
    yield dict(data)
    last = dict(data)
    for limit in _CUTS:
        cut = [f for f in TRUNCATABLE if isinstance(data.get(f), str) and len(data[f]) > limit]
        if cut:
            last = {**data, **{f: data[f][:limit] for f in cut}, "truncated": cut}
            yield last
    if any(field in data for field in TRANSCRIPT_FIELDS):
        yield without(last, "record too long")


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
        if number > 1 and "dropped" in attempt and "dropped" not in data:
            get_logger().warning("outcome.paths_dropped", key=key)
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
