"""The hook, start to finish: read the event, answer from the cache, dispatch the rest.

``reconcile hook`` comes here straight from the script (no command-line dispatcher):
:func:`exit_hook` runs :func:`run_hook` as the whole process. What a hit needs is in
:mod:`reconcile._fast`, the vocabulary below this module; anything past a hit is
imported only when it happens (:mod:`reconcile._outbox`, and the log). Like
:mod:`reconcile._fast`, this module loads no more than the interpreter has loaded
anyway: ``posix``, ``sys`` and ``time`` (docs/performance.md).
"""

import posix
import sys
import time

from journal import home_refusal, join_path
from reconcile._fast import (
    HIT,
    MAX_PAYLOAD,
    UNTRUSTED_HOME,
    default_home,
    lookup,
    observe,
    parse_payload,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import NoReturn


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
    record, found = lookup(env, home, observation, time.time_ns() // 1000)
    if found == HIT:
        return HIT
    from reconcile._outbox import settle_later

    after = record["id"] if record is not None else None
    given = payload if isinstance(payload, dict) else None  # (it is: observed from it)
    return settle_later(home, env, observation, found, sync=sync, after=after, payload=given)


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
        if path_refusal(home) or path_refusal(join_path(home, "log")):
            return  # only into a log directory that is ours, in a state directory of ours
        # A malformed variable takes its default here too; the reconciler logs it.
        configure(Settings.from_env(env, ignore_malformed=True))
        getattr(get_logger(), level)(event, **fields)
