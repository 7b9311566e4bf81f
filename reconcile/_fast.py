"""The hook's vocabulary and its hit path: identity, cache key, the cache check.

A leaf of the package: it imports nothing of ours but :mod:`journal`, and the modules
that act on what it decides (the hook's dispatch, :mod:`reconcile._hook`; the outbox;
the reconciler) import it. Everything here runs in every hook, in a fresh interpreter
that Claude Code waits for,
so what it loads is what it costs (docs/performance.md). It imports :mod:`journal`'s
hit-path reader (one module) and, from the standard library, only what the interpreter
has loaded anyway: ``posix`` rather than ``os`` (a tenth of the interpreter's start-up),
``sys`` and ``time``; no ``from __future__`` either (annotations that name typing-only
types are quoted). It works on raw records (plain dicts) on purpose: building attrs
classes would cost more than the whole check. What the hook does on anything but a hit
is in :mod:`reconcile._outbox`, reached from :mod:`reconcile._hook`; docs/architecture.md
has the picture.
"""

import posix
import time

from journal import event_time_us, join_path, latest, parse_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

MAX_PAYLOAD = 1 << 20  # bytes of stdin the hook reads at most
MAX_VALUE = 256  # characters of a session id or identity value
AGENT_MAX_AGE_S = 300.0  # RECONCILE_AGENT_MAX_AGE's default
NEGATIVE_TTL_S = 60.0  # RECONCILE_NEGATIVE_TTL's default

RECONCILED = "session.reconciled"
CONFIRMED = "session.confirmed"
DIVERGENCE_PRESERVED = "session.divergence_preserved"
UNRESOLVED = "session.unresolved"  # the database has no executor for this identity
REJECTED = "session.rejected"  # the database refused the observation's values
OBSERVED = "session.observed"  # a hook saw this session id; the reconciler settles it
PENDING = "session.pending"  # written by 0.1 hooks while the database was down
FORGOTTEN = "cache.forgotten"
EVENT_TYPES = (
    OBSERVED,
    RECONCILED,
    CONFIRMED,
    DIVERGENCE_PRESERVED,
    UNRESOLVED,
    REJECTED,
    PENDING,
    FORGOTTEN,
)

# The data field that holds the session id an event settled, per cache-settling type.
SETTLED_SESSION = {
    RECONCILED: "new_session_id",
    CONFIRMED: "session_id",
    DIVERGENCE_PRESERVED: "live_session_id",
    REJECTED: "session_id",
}
# Observations still to settle: their latest record for a key is one of these.
UNSETTLED = (OBSERVED, PENDING)

# The hook's verdicts (see classify).
HIT = "hit"  # settled, or known to have no executor: nothing to do
WAITING = "waiting"  # this very session id is observed, not yet settled: write nothing
MISS = "miss"  # observe it: append session.observed and make sure a reconciler runs
UNTRUSTED_HOME = "untrusted_home"  # the state directory is not ours alone: do nothing

_IDENTITY_VARS = (
    ("executor_id", "EXECUTOR_ID", None),
    ("agent_id", "AGENT_ID", None),
    ("agent_name", "AGENT_NAME", "teammate_name"),
    ("team", "TEAM", "team_name"),
)

# Every reason the hook skips an event for (what :func:`parse_payload`, :func:`observe`
# and :func:`reconcile._hook.handle` return instead of a verdict): one place, so that
# ``reconcile explain`` has words for each (tests/test_explain.py checks both ways).
SKIP_REASONS = (
    "payload_too_large",
    "payload_not_json",
    "payload_not_object",
    "missing_session_id",
    "invalid_session_id",
    *(f"invalid_{field}" for field, _, _ in _IDENTITY_VARS),
    "missing_identity",
    UNTRUSTED_HOME,
)


def default_home(env: "Mapping[str, str]") -> str:
    """``RECONCILE_HOME``, else ``${XDG_STATE_HOME:-~/.local/state}/reconcile``."""
    home = env.get("RECONCILE_HOME")
    if home:
        return home
    state = env.get("XDG_STATE_HOME") or join_path(_user_home(env), ".local/state")
    return join_path(state, "reconcile")


def _user_home(env: "Mapping[str, str]") -> str:
    """``~``, as :func:`os.path.expanduser` finds it: ``HOME``, else the password entry."""
    home = env.get("HOME")
    if home is None:
        try:
            import pwd

            home = pwd.getpwuid(posix.getuid()).pw_dir
        except (ImportError, KeyError):
            return "~"
    return home.rstrip("/") or "/"


def positive_seconds(env: "Mapping[str, str]", name: str, default: float) -> float:
    """A duration variable for the hook, the default if unset or malformed, as the
    reconciler takes it too (it logs the malformed one as ``settings.ignored``)."""
    try:
        value = float(env.get(name) or default)
    except ValueError:
        return default
    return value if value > 0 else default


def agent_max_age(env: "Mapping[str, str]") -> float:
    """``RECONCILE_AGENT_MAX_AGE``: agent-keyed entries are revalidated after this."""
    return positive_seconds(env, "RECONCILE_AGENT_MAX_AGE", AGENT_MAX_AGE_S)


def negative_ttl(env: "Mapping[str, str]") -> float:
    """``RECONCILE_NEGATIVE_TTL``: how long "no executor" is trusted."""
    return positive_seconds(env, "RECONCILE_NEGATIVE_TTL", NEGATIVE_TTL_S)


def valid_value(value: object) -> bool:
    """A session id or identity value: 1-256 printable ASCII characters."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_VALUE
        and value.isascii()
        and value.isprintable()
    )


_HEX = frozenset("0123456789abcdefABCDEF")


def is_uuid(value: str) -> bool:
    """A UUID in its 36-character hyphenated form, any case (checked by hand: importing
    ``uuid`` or ``re`` would cost the hit path more than the whole check)."""
    return len(value) == 36 and all(
        char == "-" if i in (8, 13, 18, 23) else char in _HEX for i, char in enumerate(value)
    )


class Observation:
    """What one hook saw: the live session id and who the agent is.

    A plain slotted class rather than attrs, because it is built on the hit path.
    """

    __slots__ = ("agent_id", "agent_name", "executor_id", "key", "session_id", "team")

    def __init__(
        self,
        session_id: str,
        executor_id: str | None,
        agent_id: str | None,
        agent_name: str | None,
        team: str | None,
    ) -> None:
        self.session_id = session_id
        self.executor_id = executor_id
        self.agent_id = agent_id
        self.agent_name = agent_name
        self.team = team
        self.key = cache_key(executor_id, agent_id, agent_name, team)

    @property
    def agent_keyed(self) -> bool:
        return self.executor_id is None

    def identity(self) -> dict[str, str | None]:
        return {
            "executor_id": self.executor_id,
            "agent_id": self.agent_id,
            "agent_name": self.agent_name,
            "team": self.team,
        }

    def __repr__(self) -> str:
        return f"Observation(key={self.key!r}, session_id={self.session_id!r})"


def cache_key(
    executor_id: str | None, agent_id: str | None, agent_name: str | None, team: str | None
) -> str:
    """The cache key: the executor when named, else the agent identity
    (docs/architecture.md, "The cache key and the hit")."""
    if executor_id:
        return f"executor:{executor_id}"
    if agent_id:
        return f"agent:{agent_id}"
    escaped = (team or "").replace("%", "%25").replace("/", "%2F")
    return f"agent-name:{escaped}/{agent_name}"


def observe(env: "Mapping[str, str]", payload: "Mapping[str, Any]") -> "Observation | str":
    """The observation in a hook's environment and payload, or why there is none.

    Each identity value comes from ``RECONCILE_<X>``, else ``GENIE_<X>``, else (name and
    team only) the payload's ``teammate_name`` / ``team_name``. An agent id wins over a
    name + team; a ``GENIE_AGENT_ID`` that is not a UUID is ignored, as the orchestrator
    ignores it. Missing or malformed input is a reason string, never an error.
    """
    session_id = payload.get("session_id")
    if session_id is None or session_id == "":
        return "missing_session_id"
    if not valid_value(session_id):
        return "invalid_session_id"
    values: dict[str, str | None] = {}
    for field, suffix, payload_field in _IDENTITY_VARS:
        value: object = env.get("RECONCILE_" + suffix)
        if not value:
            genie = env.get("GENIE_" + suffix)
            # The orchestrator ignores an agent id that is not a UUID (name + team then).
            value = None if suffix == "AGENT_ID" and genie and not is_uuid(genie) else genie
        if not value and payload_field is not None:
            value = payload.get(payload_field)
        if value is None or value == "":
            values[field] = None
        elif valid_value(value):
            values[field] = value  # type: ignore[assignment]
        else:
            return f"invalid_{field}"
    if not (
        values["executor_id"] or values["agent_id"] or (values["agent_name"] and values["team"])
    ):
        return "missing_identity"
    return Observation(session_id, **values)


def parse_payload(raw: bytes) -> "dict[str, Any] | str":
    """The hook payload (a JSON object), or why it cannot be used."""
    if len(raw) > MAX_PAYLOAD:
        return "payload_too_large"
    try:
        payload = parse_json(raw)
    except (ValueError, RecursionError):
        return "payload_not_json"
    if not isinstance(payload, dict):
        return "payload_not_object"
    return payload


def settled_session(record: "Mapping[str, Any]") -> str | None:
    """The session id a cache record settled, or None if it settles nothing (observed)."""
    field = SETTLED_SESSION.get(record["type"])
    data = record["data"]
    return None if field is None or not isinstance(data, dict) else data.get(field)


def observed_session(record: "Mapping[str, Any]") -> str | None:
    """The session id of an observation or of a "no executor" answer, else None."""
    data = record["data"]
    if record["type"] in (*UNSETTLED, UNRESOLVED) and isinstance(data, dict):
        return data.get("session_id")
    return None


def classify(
    record: "Mapping[str, Any] | None",
    observation: Observation,
    *,
    max_age_s: float,
    negative_ttl_s: float,
    now_us: int,
) -> str:
    """The hook's verdict on the latest record for the observation's key.

    :data:`HIT`: the record settled this very session id (for agent keys, no longer ago
    than ``max_age_s``: the agent may have moved to another executor since), or says the
    database has no executor for it, no longer ago than ``negative_ttl_s``.
    :data:`WAITING`: it is an observation of this session id, not settled yet.
    :data:`MISS`: anything else.

    An age is fresh within the limit either way: ``-limit <= age <= limit``. A record
    from the future (journaled while the clock was ahead, then stepped back) has a
    negative age; counted as fresh, it would be trusted for the step plus the limit. So
    one more than ``limit`` ahead is stale now, and one less is trusted until its own
    time plus ``limit``: at most twice the limit from now, whatever the step
    (docs/architecture.md, "Time"). Arithmetic only: this is the hit path.
    """
    if record is None:
        return MISS
    live = observation.session_id
    age_us = now_us - event_time_us(record["id"])
    if settled_session(record) == live:
        if not observation.agent_keyed:
            return HIT
        limit = max_age_s * 1e6
        return HIT if -limit <= age_us <= limit else MISS
    if observed_session(record) != live:
        return MISS
    if record["type"] == UNRESOLVED:
        limit = negative_ttl_s * 1e6
        return HIT if -limit <= age_us <= limit else MISS
    return WAITING


def verdict(
    home: str,
    observation: Observation,
    *,
    max_age_s: float = AGENT_MAX_AGE_S,
    negative_ttl_s: float = NEGATIVE_TTL_S,
    now_us: int | None = None,
) -> str:
    """Read the cache (snapshot + journals) and classify ``observation`` against it."""
    record = latest(home, observation.key)
    now = time.time_ns() // 1000 if now_us is None else now_us
    return classify(
        record, observation, max_age_s=max_age_s, negative_ttl_s=negative_ttl_s, now_us=now
    )


def lookup(
    env: "Mapping[str, str]", home: str, observation: Observation, now_us: int
) -> "tuple[dict[str, Any] | None, str]":
    """The key's latest record and the verdict on ``observation``, with the limits the
    environment sets: what the hook decides on, and what ``reconcile explain`` shows."""
    record = latest(home, observation.key)
    found = classify(
        record,
        observation,
        max_age_s=agent_max_age(env),
        negative_ttl_s=negative_ttl(env),
        now_us=now_us,
    )
    return record, found


def check_hit(
    home: str, observation: Observation, *, max_age_s: float, now_us: int | None = None
) -> bool:
    """Whether the cache answers ``observation`` with nothing left to do."""
    return verdict(home, observation, max_age_s=max_age_s, now_us=now_us) == HIT
