"""reconcile: keep ``executors.claude_session_id`` in step with live Claude Code sessions.

The domain over :mod:`journal`: who the agent is and which cache key it has
(:func:`observe`), whether the cache already answers (:func:`check_hit`), and otherwise
one database transaction (:func:`settle`). Replay and verification work on the journal's
history. See DESIGN §5-§9 and docs/.

Exports load lazily: the hook's hit path imports ``reconcile._fast`` alone, and pays for
attrs, structlog and psycopg only on a miss.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False

__all__ = [
    "ConfigError",
    "DatabaseUnavailable",
    "Difference",
    "Observation",
    "Outcome",
    "ReconcileError",
    "ReplayReport",
    "ServerError",
    "Settings",
    "VerifyReport",
    "check_hit",
    "configure_logging",
    "events",
    "observe",
    "parse_payload",
    "reconcile_session",
    "replay_to_db",
    "settle",
    "verify",
]

_WHERE = {
    "ConfigError": "_errors",
    "DatabaseUnavailable": "_errors",
    "ReconcileError": "_errors",
    "ServerError": "_errors",
    "Observation": "_fast",
    "check_hit": "_fast",
    "observe": "_fast",
    "parse_payload": "_fast",
    "Settings": "_settings",
    "Outcome": "_engine",
    "reconcile_session": "_engine",
    "settle": "_engine",
    "Difference": "_replay",
    "ReplayReport": "_replay",
    "VerifyReport": "_replay",
    "events": "_replay",
    "replay_to_db": "_replay",
    "verify": "_replay",
}


def __getattr__(name: str) -> object:
    if name == "configure_logging":
        return importlib.import_module("reconcile._log").configure
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'reconcile' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"reconcile.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from reconcile._engine import Outcome, reconcile_session, settle
    from reconcile._errors import ConfigError, DatabaseUnavailable, ReconcileError, ServerError
    from reconcile._fast import Observation, check_hit, observe, parse_payload
    from reconcile._log import configure as configure_logging
    from reconcile._replay import (
        Difference,
        ReplayReport,
        VerifyReport,
        events,
        replay_to_db,
        verify,
    )
    from reconcile._settings import Settings
