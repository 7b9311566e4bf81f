"""The miss path (DESIGN §6): one database transaction, then one journal append.

The hit path lives in :mod:`reconcile._fast`; :func:`reconcile_session` runs both for a
caller that has the environment and the payload in hand.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import attrs

import journal
from reconcile._errors import DatabaseUnavailable
from reconcile._fast import (
    CONFIRMED,
    DIVERGENCE_PRESERVED,
    PENDING,
    RECONCILED,
    Observation,
    check_hit,
    observe,
)
from reconcile._log import get_logger
from reconcile._settings import Settings
from reconcile._store import RECOVERY_ANCHOR, Decision, connect, decide

HIT = "hit"
NO_EXECUTOR = "no_executor"
SKIPPED = "skipped"
OUTCOMES = (HIT, "confirmed", "reconciled", "divergence_preserved", NO_EXECUTOR, "pending", SKIPPED)


@attrs.frozen
class Outcome:
    """What one observation came to: ``kind`` is one of :data:`OUTCOMES`."""

    kind: str
    key: str | None = None
    event_id: str | None = None
    executor_id: str | None = None
    reason: str | None = None


def reconcile_session(
    settings: Settings,
    env: Mapping[str, str],
    payload: Mapping[str, Any],
    *,
    writer: journal.Writer | None = None,
) -> Outcome:
    """Observe, answer from the cache if possible, else settle with the database."""
    observation = observe(env, payload)
    if isinstance(observation, str):
        get_logger().info("hook.skipped", reason=observation)
        return Outcome(SKIPPED, reason=observation)
    if check_hit(str(settings.home), observation, max_age_s=settings.agent_max_age_s):
        return Outcome(HIT, key=observation.key)
    return settle(settings, observation, writer=writer)


def settle(
    settings: Settings, observation: Observation, *, writer: journal.Writer | None = None
) -> Outcome:
    """A cache miss: decide in the database, then journal the event (DESIGN §6).

    The database unreachable, slow or unusable: journal ``session.pending`` for
    ``reconcile replay --to-db`` instead. Never raises for anything the database does.
    """
    log = get_logger().bind(key=observation.key)
    own_writer = writer is None
    writer = writer or journal.Writer(settings.home, fsync=settings.fsync)
    event_id = journal.new_event_id()
    try:
        try:
            with connect(settings, application="reconcile-hook") as conn:
                decision = decide(
                    conn,
                    session_id=observation.session_id,
                    event_id=event_id,
                    deadline_s=settings.statement_timeout_s,
                    **observation.identity(),
                )
        except DatabaseUnavailable as exc:
            data = {"identity": observation.identity(), "session_id": observation.session_id}
            writer.append(observation.key, data, PENDING, event_id=event_id)
            log.warning("session.pending", event_id=event_id, error=str(exc))
            return Outcome("pending", observation.key, event_id, reason=str(exc))
        if decision.outcome == NO_EXECUTOR:
            log.info("session.no_executor")
            return Outcome(NO_EXECUTOR, observation.key)
        event_type, data = event_for(decision, observation.session_id)
        try:
            writer.append(observation.key, data, event_type, event_id=event_id)
        except journal.JournalError as exc:  # committed already: the DB stays right
            log.error("journal.append_failed", event_id=event_id, error=str(exc))
        log.info(event_type, event_id=event_id, executor_id=decision.executor_id)
        return Outcome(decision.outcome, observation.key, event_id, decision.executor_id)
    finally:
        if own_writer:
            writer.close()
        maybe_compact(settings)


def event_for(decision: Decision, session_id: str) -> tuple[str, dict[str, Any]]:
    """The journal event (type, data) recording a database decision."""
    if decision.outcome == "confirmed":
        return CONFIRMED, {"executor_id": decision.executor_id, "session_id": session_id}
    if decision.outcome == "divergence_preserved":
        return DIVERGENCE_PRESERVED, {
            "executor_id": decision.executor_id,
            "stored_session_id": decision.stored_session_id,
            "live_session_id": session_id,
            "executor_state": decision.executor_state,
            "agent": decision.actor,
            "team": decision.team,
        }
    return RECONCILED, {
        "executor_id": decision.executor_id,
        "old_session_id": decision.stored_session_id,
        "new_session_id": session_id,
        "agent": decision.actor,
        "team": decision.team,
    }


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


def maybe_compact(settings: Settings) -> bool:
    """Past ``compact_threshold`` journals, start a compaction in a detached process and
    do not wait for it (DESIGN §6). Returns whether one was started."""
    try:
        count = sum(1 for n in os.listdir(settings.home / "journal") if n.endswith(".jnl"))
    except OSError:
        return False
    if count <= settings.compact_threshold or compaction_running(settings):
        return False
    code = "import journal, sys; journal.compact(sys.argv[1], max_entries=int(sys.argv[2]))"
    try:
        subprocess.Popen(
            [sys.executable, "-c", code, str(settings.home), str(settings.max_entries)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            cwd="/",
            env={**os.environ, "PYTHONPATH": _package_root()},
        )
    except OSError as exc:
        get_logger().warning("compaction.spawn_failed", error=str(exc))
        return False
    get_logger().info("compaction.started", journals=count)
    return True


def compaction_running(settings: Settings) -> bool:
    """Whether a compactor holds ``compact.lock`` (a shared probe, released at once)."""
    import fcntl

    try:
        fd = os.open(settings.home / "compact.lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False  # never compacted, or unreadable: let the compactor find out
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _package_root() -> str:
    """Where :mod:`journal` is importable from, for the detached compactor."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(journal.__file__)))
    existing = os.environ.get("PYTHONPATH")
    return root if not existing else root + os.pathsep + existing
