"""``reconcile hook``: the Claude Code command hook. Exits 0, prints nothing, never raises.

The hit path here imports only the standard library, :mod:`journal._hit` and
:mod:`reconcile._fast`: no attrs, structlog, psycopg or argparse (see
docs/performance.md for the ``-X importtime`` evidence). The miss path imports the rest.
"""

from __future__ import annotations

import os
import sys

from reconcile._fast import (
    MAX_PAYLOAD,
    agent_max_age,
    check_hit,
    default_home,
    observe,
    parse_payload,
)


def run(env: dict[str, str] | None = None) -> int:
    """Handle one hook invocation; always returns 0."""
    env = dict(os.environ) if env is None else env
    real_stdout = sys.stdout
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - nothing may reach Claude Code's stdout
    try:
        _handle(env)
    except BaseException as exc:  # the hook never fails Claude Code, whatever happens
        _log_failure(env, exc)
    finally:
        sys.stdout.close()
        sys.stdout = real_stdout
    return 0


def _handle(env: dict[str, str]) -> None:
    raw = _read_stdin()
    payload = parse_payload(raw) if raw is not None else "payload_too_large"
    observation = payload if isinstance(payload, str) else observe(env, payload)
    if isinstance(observation, str):
        # Silent when no identity is set at all: a session the orchestrator did not
        # spawn, on every tool use, should cost nothing. Anything malformed is logged.
        if observation != "missing_identity":
            _log_skip(env, observation)
        return
    home = default_home(env)
    if check_hit(home, observation, max_age_s=agent_max_age(env)):
        return
    from reconcile import Settings, configure_logging, settle

    settings = Settings.from_env(env)
    configure_logging(settings)
    settle(settings, observation)


def _read_stdin() -> bytes | None:
    """At most 1 MiB of stdin; None if there was more."""
    stream = sys.stdin.buffer if sys.stdin is not None else None
    if stream is None:
        return b""
    raw = stream.read(MAX_PAYLOAD + 1)
    return None if len(raw) > MAX_PAYLOAD else raw


def _logger(env: dict[str, str]) -> object:
    from reconcile import Settings, configure_logging
    from reconcile._log import get_logger

    try:
        settings = Settings.from_env(env)
    except Exception:  # a malformed variable: log under the home alone
        settings = Settings(home=default_home(env))
    configure_logging(settings)
    return get_logger()


def _log_skip(env: dict[str, str], reason: str) -> None:
    _logger(env).info("hook.skipped", reason=reason)  # type: ignore[attr-defined]


def _log_failure(env: dict[str, str], exc: BaseException) -> None:
    import contextlib

    with contextlib.suppress(BaseException):  # nowhere left to report to; still exit 0
        error = f"{type(exc).__name__}: {exc}"[:500]
        _logger(env).error("hook.failed", error=error)  # type: ignore[attr-defined]
