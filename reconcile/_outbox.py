"""The hook's path past a hit: the journal as an outbox (docs/architecture.md, "The outbox").

The hook never talks to the database. On a miss it appends one ``session.observed``
record to its own journal; on a miss, or while its observation waits, it makes sure one
reconciler runs for the state directory and exits. The reconciler
(:mod:`reconcile._reconciler`) settles observations with the database and journals
the outcomes, which later hooks read as hits.

"Makes sure one runs" costs two system calls when one does: the hook tries
``reconcile.lock`` without blocking (:mod:`reconcile._lock`). If the lock is free and no
backoff is in force, the hook keeps it and hands it to the reconciler it starts (the child
inherits the locked descriptor), so a burst of hooks starts one reconciler, not one each.

Like the hit path, this module imports only the standard library and the journal's
writer: it runs in the hook process.
"""

import posix
import time

from journal import RecordTooLargeError, Writer, join_path
from reconcile import _backoff as backoff
from reconcile._fast import MISS, OBSERVED, UNSETTLED, Observation
from reconcile._lock import compaction_running, release_lock, take_lock

TYPE_CHECKING = False  # typing costs milliseconds in the hook; checkers see True
if TYPE_CHECKING:
    from collections.abc import Mapping

COMPACT_THRESHOLD = 64  # RECONCILE_COMPACT_THRESHOLD's default

_FALSE = ("0", "false", "no", "off")


def settle_later(
    home: str,
    env: "Mapping[str, str]",
    observation: Observation,
    verdict: str,
    *,
    sync: bool,
    after: str | None = None,
    payload: "Mapping[str, object] | None" = None,
) -> str:
    """Past a hit: journal the observation on a miss, then see that it gets settled.

    ``sync``: settle it in this process before returning (the opt-in synchronous mode;
    it waits for the database within the configured timeouts). ``after``: the event id of
    the key's latest record, which the observation must sort after. Returns
    ``"<verdict>:<what the reconciler side did>"``, e.g. ``"miss:started"``.
    """
    if verdict == MISS:
        fsync = (env.get("RECONCILE_FSYNC") or "1").strip().lower() not in _FALSE
        append_observation(home, observation, fsync=fsync, after=after, payload=payload)
    if sync:
        from reconcile._reconciler import run_now

        done = run_now(env)
    else:
        done = ensure_reconciler(home, env)
    maybe_compact(home, env)
    return f"{verdict}:{done}"


def append_observation(
    home: str,
    observation: Observation,
    *,
    fsync: bool = True,
    after: str | None = None,
    payload: "Mapping[str, object] | None" = None,
    extra: "Mapping[str, object] | None" = None,
) -> str:
    """Journal that the hook saw ``observation``, after the event ``after`` if given (the
    key's latest: the fold must see the observation as newer, whatever the clocks did);
    return the record's event id.

    ``payload``: the hook's; its ``transcript_path`` and ``cwd`` are kept when valid. A
    record they would make too long for one line is journaled without them, noted under
    ``dropped``: the observation itself is never lost for them. ``extra``: more fields
    (``reconcile verify --transcripts --repair`` notes where its observation came from).
    """
    data: dict[str, object] = {
        "identity": observation.identity(),
        "session_id": observation.session_id,
    }
    located = payload is not None and ("transcript_path" in payload or "cwd" in payload)
    if located:
        from reconcile._transcript import transcript_fields

        data.update(transcript_fields(payload))
    if extra:
        data.update(extra)
    with Writer(home, fsync=fsync) as writer:
        try:
            return writer.append(observation.key, data, OBSERVED, after=after)
        except RecordTooLargeError:
            if not located:
                raise
            from reconcile._transcript import without

            shorter = without(data, "record too long")
            return writer.append(observation.key, shorter, OBSERVED, after=after)


def ensure_reconciler(home: str, env: "Mapping[str, str]", *, now_s: float | None = None) -> str:
    """Start a reconciler unless one runs or the database is in backoff.

    Returns ``"started"``, ``"running"``, ``"backoff"`` or ``"failed"`` (could not spawn;
    the observation stays in the journal for the next hook).
    """
    now = time.time() if now_s is None else now_s
    if backoff.until(home, now) > now:
        return "backoff"
    fd = take_lock(home)
    if fd is None:
        return "running"
    from reconcile._spawn import start_reconciler

    try:
        start_reconciler(home, env, fd)
    except OSError:
        return "failed"
    finally:
        release_lock(fd)  # the child holds the lock now (or, if none started, no one does)
    return "started"


def maybe_compact(home: str, env: "Mapping[str, str]") -> bool:
    """Past the journal threshold, start a compaction in the background (unless one runs).

    Journals stay bounded with no cron: each hook that wrote counts them (one
    ``listdir``). Returns whether a compactor was started.
    """
    threshold = _count(env, "RECONCILE_COMPACT_THRESHOLD", COMPACT_THRESHOLD, least=0)
    try:
        count = sum(
            1 for name in posix.listdir(join_path(home, "journal")) if name.endswith(".jnl")
        )
    except OSError:
        return False
    if count <= threshold or compaction_running(home):  # a probe: it takes nothing
        return False
    max_entries = str(_count(env, "RECONCILE_MAX_ENTRIES", 1000, least=1))
    from reconcile._spawn import start_compactor

    try:
        start_compactor(home, env, max_entries, UNSETTLED)
    except OSError:
        return False
    return True


def _count(env: "Mapping[str, str]", name: str, default: int, *, least: int) -> int:
    """A count variable, the default if unset, malformed or below ``least`` (as the
    reconciler's settings take it: docs/operations.md, "Settings")."""
    try:
        value = int(env.get(name) or default)
    except ValueError:
        return default
    return value if value >= least else default
