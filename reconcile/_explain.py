"""``reconcile explain``: what the hook would do with this payload and environment, and why.

The hook is silent by design (exit 0, nothing on stdout, no log line for the usual
outcomes), so when it does nothing a user cannot see why. :func:`explain` walks the
hook's own steps with the hook's own functions (:func:`reconcile._fast.parse_payload`,
:func:`~reconcile._fast.observe`, :func:`~reconcile._fast.classify`,
:func:`journal.home_refusal`, :func:`journal.latest`) and says at each what it saw.

Invariants:

- It WRITES NOTHING: no journal record, no log line, no directory, no lock taken.
  Where the hook would act (append an observation, take ``reconcile.lock`` and start a
  reconciler), it only reads: the backoff record (:func:`reconcile._backoff.until`) and
  the lock's mark (:func:`reconcile._lock.reconciler_running`, a probe that takes
  nothing).
- Its verdict is the hook's: the skip reason or verdict comes from the very functions
  :func:`reconcile._hook.handle` calls, never from a copy of their logic. Only the words
  around it (which variable was ignored and why) are derived here, and the tests run
  the real hook beside it.
- Every skip reason of the hook (:data:`reconcile._fast.SKIP_REASONS`) has words in
  :data:`REASONS`.
- :func:`explain` does not ask the database. :func:`preview_settlement` does, apart and
  read-only (:func:`reconcile._store.preview`: a ``READ ONLY`` transaction, the
  settlement's own resolution and decision, no row lock): what settling this session id
  now would decide for the row.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import attrs

from journal import home_refusal
from reconcile import _backoff as backoff
from reconcile._fast import (
    _IDENTITY_VARS,
    HIT,
    MISS,
    SKIP_REASONS,
    UNTRUSTED_HOME,
    WAITING,
    default_home,
    is_uuid,
    lookup,
    observe,
    parse_payload,
    valid_value,
)
from reconcile._lock import reconciler_running

_IDENTITY_HELP = (
    "the hook needs RECONCILE_EXECUTOR_ID, or an agent id (RECONCILE_AGENT_ID, or "
    "GENIE_AGENT_ID as a UUID), or an agent name with its team (RECONCILE_AGENT_NAME and "
    "RECONCILE_TEAM, their GENIE_* fallbacks, or the payload's teammate_name and team_name)"
)

# Words for each reason the hook skips an event (tests check one per SKIP_REASONS entry).
REASONS: dict[str, str] = {
    "payload_too_large": "the payload is over 1 MiB: the hook reads no more and skips it",
    "payload_not_json": "the payload is not JSON (an empty stdin is not JSON either)",
    "payload_not_object": "the payload is JSON but not an object ({...})",
    "missing_session_id": "the payload has no session_id: there is no session to record",
    "invalid_session_id": (
        "the payload's session_id is not 1-256 printable ASCII characters (or not a string)"
    ),
    "invalid_executor_id": "the executor id is not 1-256 printable ASCII characters",
    "invalid_agent_id": "the agent id is not 1-256 printable ASCII characters",
    "invalid_agent_name": "the agent name is not 1-256 printable ASCII characters",
    "invalid_team": "the team is not 1-256 printable ASCII characters",
    "missing_identity": "this session has no identity the hook can use: " + _IDENTITY_HELP,
    UNTRUSTED_HOME: (
        "the state directory is not this user's alone: the hook reads and writes nothing in it"
    ),
}
VERDICTS: dict[str, str] = {
    HIT: "the cache settled this very session id (or knows the database has no executor "
    "for it, recently): nothing to do",
    WAITING: "this very session id is observed and not settled yet: nothing new to journal",
    MISS: "the cache does not answer for this session id: it must be observed",
}


# Words for what the settlement would decide (reconcile._store.preview's outcomes).
DECISIONS: dict[str, str] = {
    "reconciled": "update the row to this session id, with one audit row session.reconciled",
    "confirmed": "nothing: the row holds this session id already (journaled as "
    "session.confirmed, no audit row)",
    "divergence_preserved": "keep the row: its executor is finished and its session id is "
    "the recovery anchor (journaled as session.divergence_preserved)",
    "stale": "write nothing: the agent's current executor began after this session id was "
    "observed (a respawn), so the id is not its own (journaled as session.rejected)",
    "no_executor": "write nothing: the database has no executor for this identity "
    "(journaled as session.unresolved, asked again after the negative TTL)",
}


@attrs.frozen
class Preview:
    """What settling the session id now would decide for the row, read from the database
    without writing (:func:`preview_settlement`), or why the database did not answer."""

    answered: bool
    why: str
    outcome: str | None = None  # a DECISIONS key
    executor_id: str | None = None
    stored_session_id: str | None = None
    executor_state: str | None = None
    audited: bool | None = None  # whether the settlement would write an audit row
    error: str | None = None


@attrs.frozen
class Variable:
    """One place an identity value may come from, what it held, and whether it counted."""

    field: str  # executor_id, agent_id, agent_name, team
    source: str  # RECONCILE_AGENT_ID, GENIE_AGENT_ID, payload teammate_name, ...
    value: str | None  # None: unset (or empty); non-strings are shown as JSON-ish text
    used: bool
    note: str | None  # why it was not used, when set


@attrs.frozen
class Explanation:
    """The hook's steps for one event, as :func:`explain` found them (nothing written).

    ``outcome`` is what :func:`reconcile._hook.handle` would return, as near as can be
    told without acting: a skip reason, ``hit``, or ``<verdict>:<reconciler>`` where
    the reconciler part is ``started``, ``running`` or ``backoff`` (``settled`` with
    ``--sync``); ``action`` says it in words.
    """

    payload: str  # "ok" or the reason it cannot be used
    session_id: str | None
    variables: tuple[Variable, ...]
    identity: dict[str, str | None] | None  # the values the hook uses, if any
    key: str | None
    home: str
    home_exists: bool
    home_refusal: str | None
    record: dict[str, Any] | None
    verdict: str  # hit | waiting | miss | a SKIP_REASONS entry
    why: str
    action: str
    outcome: str
    backoff_until: float | None = None  # Unix seconds, when a backoff is in force
    reconciler_running: bool | None = None

    @property
    def skipped(self) -> bool:
        return self.verdict in SKIP_REASONS


def explain(
    env: Mapping[str, str], raw: bytes | None, *, sync: bool = False, now_s: float | None = None
) -> Explanation:
    """What the hook would do with ``raw`` (its stdin; None: over 1 MiB) in ``env``."""
    now = time.time() if now_s is None else now_s
    home = default_home(env)
    exists = _exists(home)
    payload = parse_payload(raw) if raw is not None else "payload_too_large"
    if isinstance(payload, str):
        return _skipped(payload, None, (), home, exists, REASONS[payload])
    session = payload.get("session_id")
    session_id = session if isinstance(session, str) else None
    variables = tuple(_variables(env, payload))
    observation = observe(env, payload)
    if isinstance(observation, str):
        why = _why_skipped(observation, variables, payload)
        if observation == "missing_identity":
            variables = tuple(_not_enough(v, variables) for v in variables)
        return _skipped(observation, session_id, variables, home, exists, why, payload="ok")
    refusal = home_refusal(home)
    common: dict[str, Any] = {
        "payload": "ok",
        "session_id": observation.session_id,
        "variables": variables,
        "identity": observation.identity(),
        "key": observation.key,
        "home": home,
        "home_exists": exists,
        "home_refusal": refusal,
    }
    if refusal is not None:
        why = f"{REASONS[UNTRUSTED_HOME]} ({refusal})"
        action = (
            "nothing but a warning hook.refused in the log (no log line when the state "
            "directory itself is the one refused)"
        )
        return Explanation(
            **common, record=None, verdict=UNTRUSTED_HOME, why=why, action=action,
            outcome=UNTRUSTED_HOME,
        )  # fmt: skip
    record, found = lookup(env, home, observation, int(now * 1e6))
    why = VERDICTS[found]
    if found == HIT:
        return Explanation(
            **common, record=record, verdict=HIT, why=why, outcome=HIT,
            action="nothing: exit at once (the hit path, no database call)",
        )  # fmt: skip
    steps = []
    if found == MISS:
        steps.append(f"journal a session.observed record for {observation.key} under {home}")
    running = reconciler_running(home)
    until = backoff.until(home, now)
    if sync:
        done = "settled"
        steps.append("settle it in this process before exiting (--sync / RECONCILE_SYNC)")
    elif until > now:
        done = "backoff"
        steps.append(
            f"start no reconciler: the database is in backoff for {until - now:.1f} s more "
            "(a later hook starts one)"
        )
    elif running:
        done = "running"
        steps.append("start no reconciler: one already runs for this state directory")
    else:
        done = "started"
        steps.append("take reconcile.lock and start a reconciler to settle it")
    return Explanation(
        **common,
        record=record,
        verdict=found,
        why=why,
        action="; then ".join(steps),
        outcome=f"{found}:{done}",
        backoff_until=until if until > now else None,
        reconciler_running=running,
    )


def preview_settlement(
    settings: Any, found: Explanation, *, now_s: float | None = None
) -> Preview | None:
    """What the settlement would decide for ``found``'s row, read-only; None when the hook
    would not observe anything (a skip, a refused state directory)."""
    from journal import event_time_us
    from reconcile._errors import DatabaseUnavailableError
    from reconcile._store import connect, preview

    if found.identity is None or found.session_id is None or found.home_refusal is not None:
        return None
    now = time.time() if now_s is None else now_s
    observed_us = int(now * 1e6)  # a miss or a hit: the hook would observe it now
    if found.verdict == WAITING and found.record is not None:  # settled at its own time
        observed_us = event_time_us(found.record["id"])
    try:
        with connect(settings, application="reconcile-explain") as conn:
            decision = preview(
                conn,
                session_id=found.session_id,
                deadline_s=settings.statement_timeout_s,
                observed_us=observed_us,
                **found.identity,
            )
    except DatabaseUnavailableError as exc:
        why = (
            "the database did not answer, so what it would decide is unknown; the hook "
            "would leave the observation journaled for a reconciler to retry"
        )
        return Preview(answered=False, why=why, error=str(exc))
    why = DECISIONS[decision.outcome]
    if decision.outcome == "divergence_preserved" and not decision.audited:
        why += "; no audit row: this stored/live pair is audited already"
    elif decision.outcome == "divergence_preserved":
        why += ", with one audit row"
    return Preview(
        answered=True,
        why=why,
        outcome=decision.outcome,
        executor_id=decision.executor_id,
        stored_session_id=decision.stored_session_id,
        executor_state=decision.executor_state,
        audited=decision.audited,
    )


def _skipped(
    reason: str,
    session_id: str | None,
    variables: tuple[Variable, ...],
    home: str,
    exists: bool,
    why: str,
    *,
    payload: str | None = None,
) -> Explanation:
    logged = "nothing (no log line: the usual case)" if reason == "missing_identity" else (
        f"nothing but an info log line hook.skipped reason={reason}"
    )  # fmt: skip
    return Explanation(
        payload=payload or reason,
        session_id=session_id,
        variables=variables,
        identity=None,
        key=None,
        home=home,
        home_exists=exists,
        home_refusal=None,
        record=None,
        verdict=reason,
        why=why,
        action=logged,
        outcome=reason,
    )


def _variables(env: Mapping[str, str], payload: Mapping[str, Any]) -> list[Variable]:
    """Each source of each identity value, in the order :func:`observe` looks."""
    found = []
    for field, suffix, payload_field in _IDENTITY_VARS:
        sources: list[tuple[str, object]] = [
            (f"RECONCILE_{suffix}", env.get(f"RECONCILE_{suffix}")),
            (f"GENIE_{suffix}", env.get(f"GENIE_{suffix}")),
        ]
        if payload_field is not None:
            sources.append((f"payload {payload_field}", payload.get(payload_field)))
        chosen = False
        for source, value in sources:
            shown = None if value is None or value == "" else _text(value)
            note = None
            used = False
            if shown is None:
                pass
            elif chosen:
                note = "not used: a source above it is set"
            elif source == "GENIE_AGENT_ID" and isinstance(value, str) and not is_uuid(value):
                note = (
                    "ignored: not a UUID (the orchestrator ignores such an agent id too; "
                    "set RECONCILE_AGENT_ID to use it, or an agent name and team)"
                )
            else:
                chosen = used = True
                if not valid_value(value):
                    note = "used, but not 1-256 printable ASCII characters: the hook skips"
            found.append(Variable(field, source, shown, used, note))
    return found


def _not_enough(variable: Variable, variables: tuple[Variable, ...]) -> Variable:
    """A value taken that made no identity alone (a name without a team, or the
    reverse): said on its line, so that "used" does not read as "enough"."""
    if not variable.used or variable.field not in ("agent_name", "team"):
        return variable
    other = "team" if variable.field == "agent_name" else "agent_name"
    if any(v.used and v.field == other for v in variables):
        return variable
    wanted = "a team" if other == "team" else "an agent name"
    return attrs.evolve(variable, note=f"taken, but counts for nothing without {wanted}")


def _why_skipped(reason: str, variables: tuple[Variable, ...], payload: Mapping[str, Any]) -> str:
    """The skip reason in words, naming the variables that made it."""
    why = REASONS[reason]
    used = {v.field: v for v in variables if v.used}
    if reason.startswith("invalid_") and reason != "invalid_session_id":
        bad = used.get(reason.removeprefix("invalid_"))
        if bad is not None:
            why += f": {bad.source}={bad.value!r}"
    if reason != "missing_identity":
        return why
    parts = []
    for v in variables:
        if v.value is not None and v.note and v.note.startswith("ignored"):
            parts.append(f"{v.source}={v.value!r} is ignored: it is not a UUID")
    if "agent_name" in used and "team" not in used:
        name = used["agent_name"]
        parts.append(
            f"an agent name ({name.source}={name.value!r}) counts only with a team: set "
            "RECONCILE_TEAM (or GENIE_TEAM, or the payload's team_name)"
        )
    if "team" in used and "agent_name" not in used:
        team = used["team"]
        parts.append(
            f"a team ({team.source}={team.value!r}) counts only with an agent name: set "
            "RECONCILE_AGENT_NAME (or GENIE_AGENT_NAME, or the payload's teammate_name)"
        )
    if not any(v.value is not None for v in variables):
        parts.append("no identity variable is set at all (a session the orchestrator did not "
                     "spawn: the hook rightly does nothing)")  # fmt: skip
    return "; ".join([why, *parts])


def _text(value: object) -> str:
    return value if isinstance(value, str) else repr(value)


def _exists(path: str) -> bool:
    import os

    return os.path.lexists(path)
