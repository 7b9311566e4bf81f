"""reconcile: keep ``executors.claude_session_id`` in step with live Claude Code sessions.

The domain over :mod:`journal`: who the agent is and which cache key it has
(:func:`observe`), what the hook does with it (:func:`handle`: a hit, or an observation
journaled for the reconciler), the reconciler that settles observations with the
database (:func:`settle_pending`), the database itself (:func:`connect`, :func:`decide`,
:func:`migrate`), the embedded server (``server_*``), and replay and verification over
the journal's history. docs/architecture.md draws the whole.

Exports load lazily: the hook's hit path imports ``reconcile._hook`` and
``reconcile._fast`` alone, and pays for attrs, structlog and psycopg only where it needs
them.
"""

import sys

TYPE_CHECKING = False

__all__ = [
    "CONFIRMED",
    "DIVERGENCE_PRESERVED",
    "EVENT_TYPES",
    "FORGOTTEN",
    "HIT",
    "MAX_PAYLOAD",
    "MISS",
    "OBSERVED",
    "PENDING",
    "RECONCILED",
    "REJECTED",
    "SETTLED_SESSION",
    "UNRESOLVED",
    "UNSETTLED",
    "UNTRUSTED_HOME",
    "WAITING",
    "SKIP_REASONS",
    "ConfigError",
    "DatabaseUnavailableError",
    "Decision",
    "Difference",
    "Explanation",
    "MissingSchemaError",
    "Observation",
    "Outcome",
    "Preview",
    "ReconcileError",
    "ReconcileReport",
    "RejectedError",
    "ReplayReport",
    "RowBusyError",
    "SchemaError",
    "SchemaState",
    "TranscriptReport",
    "ServerError",
    "ServerOrphan",
    "ServerRemoval",
    "ServerStatus",
    "Settings",
    "VerifyReport",
    "check_hit",
    "compaction_running",
    "configure_logging",
    "connect",
    "database_activity",
    "database_unavailable",
    "decide",
    "default_home",
    "events",
    "exit_hook",
    "executor_sessions",
    "explain",
    "get_logger",
    "handle",
    "migrate",
    "migration_connection",
    "observe",
    "outbox_status",
    "parse_payload",
    "preview_settlement",
    "ping",
    "reconcile_session",
    "reconciler_running",
    "redact_url",
    "repair_transcripts",
    "release_lock",
    "replay_to_db",
    "run_hook",
    "resolve_url",
    "run_reconciler",
    "schema_state",
    "server_binaries",
    "server_client_environment",
    "server_down",
    "server_orphans",
    "server_remove",
    "server_remove_orphans",
    "server_removal",
    "server_status",
    "server_up",
    "server_url",
    "settle",
    "settle_pending",
    "settled_session",
    "take_lock",
    "unsettled",
    "verdict",
    "verify",
    "verify_transcripts",
]

# Public name -> (private module, its name there).
_WHERE = {
    "ConfigError": ("_errors", "ConfigError"),
    "DatabaseUnavailableError": ("_errors", "DatabaseUnavailableError"),
    "ReconcileError": ("_errors", "ReconcileError"),
    "RejectedError": ("_errors", "RejectedError"),
    "RowBusyError": ("_errors", "RowBusyError"),
    "MissingSchemaError": ("_errors", "MissingSchemaError"),
    "SchemaError": ("_errors", "SchemaError"),
    "ServerError": ("_errors", "ServerError"),
    **{
        name: ("_fast", name)
        for name in (
            "CONFIRMED",
            "DIVERGENCE_PRESERVED",
            "EVENT_TYPES",
            "FORGOTTEN",
            "HIT",
            "MAX_PAYLOAD",
            "MISS",
            "OBSERVED",
            "PENDING",
            "RECONCILED",
            "REJECTED",
            "SETTLED_SESSION",
            "SKIP_REASONS",
            "UNRESOLVED",
            "UNSETTLED",
            "UNTRUSTED_HOME",
            "WAITING",
            "Observation",
            "check_hit",
            "default_home",
            "observe",
            "parse_payload",
            "settled_session",
            "verdict",
        )
    },
    **{name: ("_hook", name) for name in ("exit_hook", "handle", "run_hook")},
    "Settings": ("_settings", "Settings"),
    "Explanation": ("_explain", "Explanation"),
    "explain": ("_explain", "explain"),
    "Preview": ("_explain", "Preview"),
    "preview_settlement": ("_explain", "preview_settlement"),
    "redact_url": ("_settings", "redact_url"),
    "configure_logging": ("_log", "configure"),
    "get_logger": ("_log", "get_logger"),
    "Outcome": ("_engine", "Outcome"),
    "reconcile_session": ("_engine", "reconcile_session"),
    "settle": ("_engine", "settle"),
    "compaction_running": ("_lock", "compaction_running"),
    "reconciler_running": ("_lock", "reconciler_running"),
    "take_lock": ("_lock", "take_lock"),
    "release_lock": ("_lock", "release_lock"),
    "ReconcileReport": ("_reconciler", "ReconcileReport"),
    "outbox_status": ("_reconciler", "outbox_status"),
    "run_reconciler": ("_reconciler", "run_reconciler"),
    "settle_pending": ("_reconciler", "settle_pending"),
    "unsettled": ("_reconciler", "unsettled"),
    "Decision": ("_store", "Decision"),
    "connect": ("_store", "connect"),
    "database_activity": ("_store", "database_activity"),
    "database_unavailable": ("_store", "unavailable"),
    "decide": ("_store", "decide"),
    "executor_sessions": ("_store", "executor_sessions"),
    "ping": ("_store", "ping"),
    "resolve_url": ("_store", "resolve_url"),
    "SchemaState": ("_schema", "SchemaState"),
    "migrate": ("_schema", "migrate"),
    "migration_connection": ("_schema", "migration_connection"),
    "schema_state": ("_schema", "schema_state"),
    "ServerOrphan": ("_server_root", "Orphan"),
    "ServerRemoval": ("_server", "ServerRemoval"),
    "ServerStatus": ("_server", "ServerStatus"),
    "server_binaries": ("_server", "binaries"),
    "server_client_environment": ("_server", "client_environment"),
    "server_down": ("_server", "down"),
    "server_orphans": ("_server", "orphans"),
    "server_remove": ("_server", "remove"),
    "server_remove_orphans": ("_server", "remove_orphans"),
    "server_removal": ("_server", "removal"),
    "server_status": ("_server", "status"),
    "server_up": ("_server", "up"),
    "server_url": ("_server", "url"),
    "Difference": ("_replay", "Difference"),
    "ReplayReport": ("_replay", "ReplayReport"),
    "VerifyReport": ("_replay", "VerifyReport"),
    "events": ("_replay", "events"),
    "replay_to_db": ("_replay", "replay_to_db"),
    "verify": ("_replay", "verify"),
    "TranscriptReport": ("_transcripts", "TranscriptReport"),
    "repair_transcripts": ("_transcripts", "repair_transcripts"),
    "verify_transcripts": ("_transcripts", "verify_transcripts"),
}


def __getattr__(name: str) -> object:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'reconcile' has no attribute {name!r}")
    module, attribute = where
    __import__(f"reconcile.{module}")  # not importlib: that costs the hook half a millisecond
    value = getattr(sys.modules[f"reconcile.{module}"], attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from reconcile._engine import Outcome, reconcile_session, settle
    from reconcile._errors import (
        ConfigError,
        DatabaseUnavailableError,
        MissingSchemaError,
        ReconcileError,
        RejectedError,
        RowBusyError,
        SchemaError,
        ServerError,
    )
    from reconcile._explain import Explanation, Preview, explain, preview_settlement
    from reconcile._fast import (
        CONFIRMED,
        DIVERGENCE_PRESERVED,
        EVENT_TYPES,
        FORGOTTEN,
        HIT,
        MAX_PAYLOAD,
        MISS,
        OBSERVED,
        PENDING,
        RECONCILED,
        REJECTED,
        SETTLED_SESSION,
        SKIP_REASONS,
        UNRESOLVED,
        UNSETTLED,
        UNTRUSTED_HOME,
        WAITING,
        Observation,
        check_hit,
        default_home,
        observe,
        parse_payload,
        settled_session,
        verdict,
    )
    from reconcile._hook import exit_hook, handle, run_hook
    from reconcile._lock import compaction_running, reconciler_running, release_lock, take_lock
    from reconcile._log import configure as configure_logging
    from reconcile._log import get_logger
    from reconcile._reconciler import (
        ReconcileReport,
        outbox_status,
        run_reconciler,
        settle_pending,
        unsettled,
    )
    from reconcile._replay import (
        Difference,
        ReplayReport,
        VerifyReport,
        events,
        replay_to_db,
        verify,
    )
    from reconcile._schema import SchemaState, migrate, migration_connection, schema_state
    from reconcile._server import ServerRemoval, ServerStatus
    from reconcile._server import binaries as server_binaries
    from reconcile._server import client_environment as server_client_environment
    from reconcile._server import down as server_down
    from reconcile._server import orphans as server_orphans
    from reconcile._server import removal as server_removal
    from reconcile._server import remove as server_remove
    from reconcile._server import remove_orphans as server_remove_orphans
    from reconcile._server import status as server_status
    from reconcile._server import up as server_up
    from reconcile._server import url as server_url
    from reconcile._server_root import Orphan as ServerOrphan
    from reconcile._settings import Settings, redact_url
    from reconcile._store import (
        Decision,
        connect,
        database_activity,
        decide,
        executor_sessions,
        ping,
        resolve_url,
    )
    from reconcile._store import unavailable as database_unavailable
    from reconcile._transcripts import (
        TranscriptReport,
        repair_transcripts,
        verify_transcripts,
    )
