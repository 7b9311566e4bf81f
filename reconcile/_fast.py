"""The hook's hit path: identity, cache key and the cache check, on the standard library.

Everything here runs on every tool use, in a fresh process, so it imports nothing but
``os``/``json`` and :mod:`journal`'s hit-path reader, and it works on raw records
(plain dicts) on purpose: building attrs classes would cost more than the whole check.
The miss path (:mod:`reconcile._engine`) builds its value objects from what this returns.
"""

from __future__ import annotations

import os

from journal import event_time_us, latest, parse_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

MAX_PAYLOAD = 1 << 20  # bytes of stdin the hook reads at most
MAX_VALUE = 256  # characters of a session id or identity value
AGENT_MAX_AGE_S = 300.0  # RECONCILE_AGENT_MAX_AGE's default

RECONCILED = "session.reconciled"
CONFIRMED = "session.confirmed"
DIVERGENCE_PRESERVED = "session.divergence_preserved"
PENDING = "session.pending"
FORGOTTEN = "cache.forgotten"

# The data field that holds the session id an event settled, per cache-settling type.
SETTLED_SESSION = {
    RECONCILED: "new_session_id",
    CONFIRMED: "session_id",
    DIVERGENCE_PRESERVED: "live_session_id",
}

_IDENTITY_VARS = (
    ("executor_id", "EXECUTOR_ID", None),
    ("agent_id", "AGENT_ID", None),
    ("agent_name", "AGENT_NAME", "teammate_name"),
    ("team", "TEAM", "team_name"),
)


def default_home(env: Mapping[str, str]) -> str:
    """``RECONCILE_HOME``, else ``${XDG_STATE_HOME:-~/.local/state}/reconcile``."""
    home = env.get("RECONCILE_HOME")
    if home:
        return home
    state = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "reconcile")


def agent_max_age(env: Mapping[str, str]) -> float:
    """``RECONCILE_AGENT_MAX_AGE`` for the hit check, the default if unset or malformed
    (the miss path's :class:`Settings` reports a malformed one)."""
    try:
        value = float(env.get("RECONCILE_AGENT_MAX_AGE") or AGENT_MAX_AGE_S)
    except ValueError:
        return AGENT_MAX_AGE_S
    return value if value > 0 else AGENT_MAX_AGE_S


def valid_value(value: object) -> bool:
    """A session id or identity value: 1-256 printable ASCII characters."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_VALUE
        and value.isascii()
        and value.isprintable()
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
    """The cache key (DESIGN §5): the executor when named, else the agent identity."""
    if executor_id:
        return f"executor:{executor_id}"
    if agent_id:
        return f"agent:{agent_id}"
    escaped = (team or "").replace("%", "%25").replace("/", "%2F")
    return f"agent-name:{escaped}/{agent_name}"


def observe(env: Mapping[str, str], payload: Mapping[str, Any]) -> Observation | str:
    """The observation in a hook's environment and payload, or why there is none.

    Each identity value comes from ``RECONCILE_<X>``, else ``GENIE_<X>``, else (name and
    team only) the payload's ``teammate_name`` / ``team_name``. An agent id wins over a
    name + team. Missing or malformed input is a reason string, never an error.
    """
    session_id = payload.get("session_id")
    if session_id is None or session_id == "":
        return "missing_session_id"
    if not valid_value(session_id):
        return "invalid_session_id"
    values: dict[str, str | None] = {}
    for field, suffix, payload_field in _IDENTITY_VARS:
        value: object = env.get("RECONCILE_" + suffix) or env.get("GENIE_" + suffix)
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
    return Observation(session_id, **values)  # type: ignore[arg-type]


def parse_payload(raw: bytes) -> dict[str, Any] | str:
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


def settled_session(record: Mapping[str, Any]) -> str | None:
    """The session id a cache record settled, or None if it settles nothing (pending)."""
    field = SETTLED_SESSION.get(record["type"])
    return None if field is None else record["data"].get(field)


def is_hit(
    record: Mapping[str, Any] | None,
    observation: Observation,
    *,
    max_age_s: float,
    now_us: int,
) -> bool:
    """A hit (DESIGN §5): the entry settled this very session id, and, for agent keys, is
    no older than ``max_age_s`` (the agent may have moved to another executor since)."""
    if record is None or settled_session(record) != observation.session_id:
        return False
    return not observation.agent_keyed or now_us - event_time_us(record["id"]) <= max_age_s * 1e6


def check_hit(
    home: str, observation: Observation, *, max_age_s: float, now_us: int | None = None
) -> bool:
    """Read the cache (snapshot + journals) and say whether ``observation`` is a hit."""
    import time

    record = latest(home, observation.key)
    now = time.time_ns() // 1000 if now_us is None else now_us
    return is_hit(record, observation, max_age_s=max_age_s, now_us=now)
