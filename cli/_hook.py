"""``reconcile hook``: the Claude Code command hook. Exits 0, prints nothing, never raises.

Claude Code blocks on this process, so it never waits on the database: it answers from
the journal, or journals what it saw for the reconciler (:func:`reconcile.handle`,
docs/architecture.md). The hit path imports the standard library and two small modules
of ours, nothing else (tests/test_hook_imports.py holds it to that).

``--sync`` (or ``RECONCILE_SYNC=1``): settle before exiting, within the configured
database timeouts, for those who need the row updated before the tool runs.
"""

from __future__ import annotations

import os
import sys

from reconcile import HIT, MAX_PAYLOAD, UNTRUSTED_HOME, handle

_TRUE = ("1", "true", "yes", "on")
_QUIET = (HIT, "missing_identity")  # outcomes not worth a log line: the usual ones,
_QUIET_ENDINGS = (":started", ":running", ":backoff", ":settled", ":busy")  # or routine


def run(env: dict[str, str] | None = None, argv: list[str] | None = None) -> int:
    """Handle one hook invocation; always returns 0."""
    env = dict(os.environ) if env is None else env
    argv = sys.argv[2:] if argv is None else argv
    real_stdout = sys.stdout
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - nothing may reach Claude Code's stdout
    try:
        sync = "--sync" in argv or (env.get("RECONCILE_SYNC") or "").strip().lower() in _TRUE
        outcome = handle(env, _read_stdin(), sync=sync)
        # Silent for a hit and when no identity is set at all (a session the orchestrator
        # did not spawn, on every event, should cost nothing); the rest is logged.
        if outcome in _QUIET or outcome.endswith(_QUIET_ENDINGS):
            pass
        elif outcome == UNTRUSTED_HOME:  # not ours alone: nothing was read or written
            _log(env, "warning", "hook.refused", reason=_refusal(env))
        elif ":" not in outcome:  # input it could not use
            _log(env, "info", "hook.skipped", reason=outcome)
        else:  # observed, but no reconciler could be started: the next hook tries again
            _log(env, "warning", "hook.unsettled", outcome=outcome)
    except BaseException as exc:  # the hook never fails Claude Code, whatever happens
        _log(env, "error", "hook.failed", error=f"{type(exc).__name__}: {exc}"[:500])
    finally:
        sys.stdout.close()
        sys.stdout = real_stdout
    return 0


def _read_stdin() -> bytes | None:
    """At most 1 MiB of stdin; None if there was more."""
    stream = sys.stdin.buffer if sys.stdin is not None else None
    if stream is None:
        return b""
    raw = stream.read(MAX_PAYLOAD + 1)
    return None if len(raw) > MAX_PAYLOAD else raw


def _refusal(env: dict[str, str]) -> str | None:
    from journal import home_refusal
    from reconcile import default_home

    return home_refusal(default_home(env))


def _log(env: dict[str, str], level: str, event: str, **fields: object) -> None:
    import contextlib

    with contextlib.suppress(BaseException):  # nowhere left to report to; still exit 0
        from journal import path_refusal
        from reconcile import ConfigError, Settings, configure_logging, default_home, get_logger

        home = default_home(env)
        if path_refusal(home) or path_refusal(os.path.join(home, "log")):
            return  # only into a log directory that is ours, in a state directory of ours
        try:
            settings = Settings.from_env(env)
        except ConfigError:  # a malformed variable: log under the home alone
            settings = Settings(home=default_home(env))
        configure_logging(settings)
        getattr(get_logger(), level)(event, **fields)
