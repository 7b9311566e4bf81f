"""The hook, start to finish, and its hit path: identity, cache key, the cache check.

Everything here runs in every hook, in a fresh interpreter that Claude Code waits for,
so what it loads is what it costs (docs/performance.md). It imports :mod:`journal`'s
hit-path reader (one module) and, from the standard library, only what the interpreter
has loaded anyway: ``posix`` rather than ``os`` (a tenth of the interpreter's start-up),
``sys`` and ``time``; no ``from __future__`` either (annotations that name typing-only
types are quoted). It works on raw records (plain dicts) on purpose: building attrs
classes would cost more than the whole check. What the hook does on anything but a hit
is in :mod:`reconcile._outbox`; docs/architecture.md has the picture.
"""

import posix
import sys
import time

from journal import event_time_us, home_refusal, latest, parse_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, NoReturn

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


def default_home(env: "Mapping[str, str]") -> str:
    """``RECONCILE_HOME``, else ``${XDG_STATE_HOME:-~/.local/state}/reconcile``."""
    home = env.get("RECONCILE_HOME")
    if home:
        return home
    state = env.get("XDG_STATE_HOME") or _join(_user_home(env), ".local/state")
    return _join(state, "reconcile")


def _join(directory: str, name: str) -> str:
    """``os.path.join`` of a directory and a relative name (``os`` is not loaded here)."""
    return directory + name if directory.endswith("/") else f"{directory}/{name}"


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


def check_hit(
    home: str, observation: Observation, *, max_age_s: float, now_us: int | None = None
) -> bool:
    """Whether the cache answers ``observation`` with nothing left to do."""
    return verdict(home, observation, max_age_s=max_age_s, now_us=now_us) == HIT


def handle(env: "Mapping[str, str]", raw: bytes | None, *, sync: bool = False) -> str:
    """The hook, start to finish, given its environment and stdin (None: over 1 MiB).

    Returns what it came to: :data:`HIT`, a reason it skipped (``missing_identity``,
    ``invalid_session_id``, ..., :data:`UNTRUSTED_HOME`), or what the outbox did (see
    :func:`reconcile._outbox.settle_later`). Only the path past a hit imports more.
    """
    payload = parse_payload(raw) if raw is not None else "payload_too_large"
    observation = payload if isinstance(payload, str) else observe(env, payload)
    if isinstance(observation, str):
        return observation
    home = default_home(env)
    if home_refusal(home) is not None:  # three lstat calls (docs/operations.md)
        return UNTRUSTED_HOME  # nothing read: a stranger's record is no hit, nor is it ours
    record = latest(home, observation.key)
    found = classify(
        record,
        observation,
        max_age_s=agent_max_age(env),
        negative_ttl_s=negative_ttl(env),
        now_us=time.time_ns() // 1000,
    )
    if found == HIT:
        return HIT
    from reconcile._outbox import settle_later

    after = record["id"] if record is not None else None
    return settle_later(home, env, observation, found, sync=sync, after=after)


# -- The hook process ----------------------------------------------------------------------

_TRUE = ("1", "true", "yes", "on")
_QUIET = (HIT, "missing_identity")  # outcomes not worth a log line: the usual ones,
_QUIET_ENDINGS = (":started", ":running", ":backoff", ":settled", ":busy")  # or routine


def run_hook(env: "Mapping[str, str] | None" = None, argv: "list[str] | None" = None) -> int:
    """``reconcile hook``: handle one Claude Code hook event; always returns 0.

    Reads the payload from stdin and writes nothing to stdout (what a command hook prints
    is read by Claude Code); ``argv`` holds what followed ``hook``. ``--sync`` (or
    ``RECONCILE_SYNC=1``): settle before returning, within the configured database
    timeouts, for those who need the row updated before the tool runs.
    """
    env = environ() if env is None else env
    argv = sys.argv[2:] if argv is None else argv
    real_stdout = sys.stdout
    try:
        sys.stdout = open("/dev/null", "w")  # noqa: SIM115 - nothing may reach Claude Code
        sync = "--sync" in argv or (env.get("RECONCILE_SYNC") or "").strip().lower() in _TRUE
        outcome = handle(env, _read_stdin(), sync=sync)
        # Silent for a hit and when no identity is set at all (a session the orchestrator
        # did not spawn, on every event, should cost nothing); the rest is logged.
        if outcome in _QUIET or outcome.endswith(_QUIET_ENDINGS):
            pass
        elif outcome == UNTRUSTED_HOME:  # not ours alone: nothing was read or written
            _log(env, "warning", "hook.refused", reason=home_refusal(default_home(env)))
        elif ":" not in outcome:  # input it could not use
            _log(env, "info", "hook.skipped", reason=outcome)
        else:  # observed, but no reconciler could be started: the next hook tries again
            _log(env, "warning", "hook.unsettled", outcome=outcome)
    except BaseException as exc:  # the hook never fails Claude Code, whatever happens
        _log(env, "error", "hook.failed", error=f"{type(exc).__name__}: {exc}"[:500])
    finally:
        if sys.stdout is not real_stdout:
            sys.stdout.close()
        sys.stdout = real_stdout
    return 0


def exit_hook(argv: "list[str]") -> "NoReturn":
    """Run the hook as the whole process, and end it without the interpreter's teardown.

    Tearing down an interpreter (freeing every module, object and arena) costs more than
    the hook's whole hit path (docs/performance.md), for memory the kernel reclaims
    anyway. Nothing is left to run at exit: records and log lines are written with one
    ``write()`` each, never buffered, no ``atexit`` handler is ours, and the two standard
    streams are flushed here. So the process ends with ``_exit``.
    """
    code = run_hook(argv=argv)
    for stream in (sys.stdout, sys.stderr):
        try:  # not contextlib.suppress: that module is not loaded on the hit path
            if stream is not None:
                stream.flush()
        except BaseException:  # a closed or broken stream: nothing is owed to it
            pass
    posix._exit(code)


def environ() -> dict[str, str]:
    """The environment the process started with, decoded as ``os.environ`` decodes it,
    without loading ``os`` (changes made through ``os.environ`` since are not seen)."""
    encoding = sys.getfilesystemencoding()
    return {
        name.decode(encoding, "surrogateescape"): value.decode(encoding, "surrogateescape")
        for name, value in posix.environ.items()
    }


def _read_stdin() -> bytes | None:
    """At most 1 MiB of stdin; None if there was more."""
    stream = sys.stdin.buffer if sys.stdin is not None else None
    if stream is None:
        return b""
    raw = stream.read(MAX_PAYLOAD + 1)
    return None if len(raw) > MAX_PAYLOAD else raw


def _log(env: "Mapping[str, str]", level: str, event: str, **fields: object) -> None:
    import contextlib

    with contextlib.suppress(BaseException):  # nowhere left to report to; still exit 0
        from journal import path_refusal
        from reconcile._log import configure, get_logger
        from reconcile._settings import Settings

        home = default_home(env)
        if path_refusal(home) or path_refusal(_join(home, "log")):
            return  # only into a log directory that is ours, in a state directory of ours
        # A malformed variable takes its default here too; the reconciler logs it.
        configure(Settings.from_env(env, ignore_malformed=True))
        getattr(get_logger(), level)(event, **fields)
