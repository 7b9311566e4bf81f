"""Settling in the foreground: what the hook and its reconciler do, in one call.

The hook (:func:`reconcile._hook.handle`) and the detached reconciler
(:mod:`reconcile._reconciler`) split the work across processes so that no tool use waits
on the database. :func:`reconcile_session` runs both halves in the caller's process,
for library users and the synchronous mode; the decision itself is one statement
(:func:`reconcile._store.decide`), journaled under the audit row's event id.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    return settle(settings, observation, observed=found != MISS, payload=payload)


def settle(
    settings: Settings,
    observation: Observation,
    *,
    observed: bool = False,
    payload: Mapping[str, Any] | None = None,
) -> Outcome:
    """Journal ``observation`` (unless ``observed`` already) and settle it now: run the
    reconciler in this process, waiting for a running one within the statement timeout.
    ``payload``: the hook's, whose ``transcript_path`` and ``cwd`` the observation keeps
    and its outcome carries on.

    The database unusable: the observation stays journaled (kind ``pending``), for the
    next reconciler. Never raises for anything the database does.
    """
    from reconcile._outbox import append_observation
    from reconcile._reconciler import settle_pending

    home = str(settings.home)
    if not observed:
        current = journal.latest(home, observation.key)
        after = current["id"] if current is not None else None
        append_observation(home, observation, fsync=settings.fsync, after=after, payload=payload)
    report = settle_pending(settings, wait_s=settings.statement_timeout_s, ignore_backoff=True)
    record = journal.latest(home, observation.key)
    kind = _KIND.get(record["type"], PENDING) if record is not None else PENDING
    if record is None or record["type"] in UNSETTLED:
        return Outcome(PENDING, observation.key, reason=report.error)
    data = record["data"] or {}
    return Outcome(kind, observation.key, record["id"], data.get("executor_id"))
