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

from __future__ import annotations

import os
import sys
import time

from journal import Writer
from reconcile import _backoff as backoff
from reconcile._fast import MISS, OBSERVED, UNSETTLED, Observation
from reconcile._lock import compaction_running, release_lock, take_lock

TYPE_CHECKING = False  # typing costs milliseconds in the hook; checkers see True
if TYPE_CHECKING:
    from collections.abc import Mapping

COMPACT_THRESHOLD = 64  # RECONCILE_COMPACT_THRESHOLD's default

_FALSE = ("0", "false", "no", "off")

# What the detached processes run: a fresh interpreter, isolated from the directory the
# hook runs in (the user's project) and from PYTHON* variables; see _isolated.
_RECONCILER = "import sys; from reconcile import run_reconciler; sys.exit(run_reconciler(sys.argv))"
# The compactor pins the record types it is given (argv[3:]): unsettled observations,
# which only the journal remembers, are never evicted.
_COMPACTOR = (
    "import journal, sys; "
    "journal.compact(sys.argv[1], max_entries=int(sys.argv[2]), pinned_types=sys.argv[3:])"
)


def settle_later(
    home: str,
    env: Mapping[str, str],
    observation: Observation,
    verdict: str,
    *,
    sync: bool,
    after: str | None = None,
) -> str:
    """Past a hit: journal the observation on a miss, then see that it gets settled.

    ``sync``: settle it in this process before returning (the opt-in synchronous mode;
    it waits for the database within the configured timeouts). ``after``: the event id of
    the key's latest record, which the observation must sort after. Returns
    ``"<verdict>:<what the reconciler side did>"``, e.g. ``"miss:started"``.
    """
    if verdict == MISS:
        fsync = (env.get("RECONCILE_FSYNC") or "1").strip().lower() not in _FALSE
        append_observation(home, observation, fsync=fsync, after=after)
    if sync:
        from reconcile._reconciler import run_now

        done = run_now(env)
    else:
        done = ensure_reconciler(home, env)
    maybe_compact(home, env)
    return f"{verdict}:{done}"


def append_observation(
    home: str, observation: Observation, *, fsync: bool = True, after: str | None = None
) -> str:
    """Journal that the hook saw ``observation``, after the event ``after`` if given (the
    key's latest: the fold must see the observation as newer, whatever the clocks did);
    return the record's event id."""
    data = {"identity": observation.identity(), "session_id": observation.session_id}
    with Writer(home, fsync=fsync) as writer:
        return writer.append(observation.key, data, OBSERVED, after=after)


def ensure_reconciler(home: str, env: Mapping[str, str], *, now_s: float | None = None) -> str:
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
    try:
        spawn(_isolated(home, _RECONCILER, str(fd)), env, keep_fd=fd)
    except OSError:
        return "failed"
    finally:
        release_lock(fd)  # the child holds the lock now (or, if none started, no one does)
    return "started"


def maybe_compact(home: str, env: Mapping[str, str]) -> bool:
    """Past the journal threshold, start a compaction in the background (unless one runs).

    Journals stay bounded with no cron: each hook that wrote counts them (one
    ``listdir``). Returns whether a compactor was started.
    """
    threshold = _count(env, "RECONCILE_COMPACT_THRESHOLD", COMPACT_THRESHOLD, least=0)
    try:
        count = sum(
            1 for name in os.listdir(os.path.join(home, "journal")) if name.endswith(".jnl")
        )
    except OSError:
        return False
    if count <= threshold or compaction_running(home):  # a probe: it takes nothing
        return False
    max_entries = str(_count(env, "RECONCILE_MAX_ENTRIES", 1000, least=1))
    try:
        home = os.path.abspath(home)  # the child runs elsewhere
        spawn(_isolated(home, _COMPACTOR, home, max_entries, *UNSETTLED), env)
    except OSError:
        return False
    return True


def _count(env: Mapping[str, str], name: str, default: int, *, least: int) -> int:
    """A count variable, the default if unset, malformed or below ``least`` (as the
    reconciler's settings take it: docs/operations.md, "Settings")."""
    try:
        value = int(env.get(name) or default)
    except ValueError:
        return default
    return value if value >= least else default


def spawn(argv: list[str], env: Mapping[str, str], *, keep_fd: int | None = None) -> int:
    """Start ``argv`` detached: its own session, stdin/stdout/stderr on /dev/null (Claude
    Code waits for every holder of the hook's pipes), ``keep_fd`` inherited under the same
    number. Returns its pid; it is not waited for (init reaps it)."""
    null = os.devnull
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, null, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, null, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, null, os.O_WRONLY, 0),
    ]
    if keep_fd is not None:
        os.set_inheritable(keep_fd, True)
    try:
        return os.posix_spawn(argv[0], argv, dict(env), file_actions=actions, setsid=True)
    finally:
        if keep_fd is not None:
            os.set_inheritable(keep_fd, False)


def _isolated(home: str, code: str, *args: str) -> list[str]:
    """The command line that runs ``code`` in a fresh interpreter that imports our
    environment and nothing else (docs/architecture.md, "What the hook runs").

    ``-I``: no script or working directory on ``sys.path`` (``python -c`` would put the
    user's project first, ahead of the standard library), no ``PYTHON*`` variable, no
    user site. ``-S``: no ``site``, so no ``.pth`` file or ``sitecustomize`` runs. Our
    packages' directory and this process's own import path (absolute entries only, and
    never the working directory) are appended after the standard library, and the child
    moves to ``home`` before it imports anything of ours.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        cwd = os.getcwd()
    except OSError:  # removed under us: nothing of it can be on the path anyway
        cwd = ""
    path = [root]
    for entry in sys.path:
        if entry.startswith("/") and entry != cwd and entry not in path:
            path.append(entry)
    prelude = f"import os, sys; os.chdir({os.path.abspath(home)!r}); sys.path += {path!r}; "
    return [sys.executable, "-I", "-S", "-c", prelude + code, *args]
