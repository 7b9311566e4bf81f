"""The reconcile package's exceptions: one base class, each message says what to fix."""

from __future__ import annotations


class ReconcileError(Exception):
    """Base class of every error raised by :mod:`reconcile`."""


class ServerError(ReconcileError):
    """The embedded PostgreSQL server could not be set up, started or stopped."""


class DatabaseUnavailableError(ReconcileError, ConnectionError):
    """The database could not be reached or used (down, slow, auth, missing tables).

    ``reason``: what happened; ``next_step``: what to do about it, when known (the
    message is both, ``reason; next_step``)."""

    def __init__(self, reason: str = "", next_step: str | None = None) -> None:
        super().__init__(f"{reason}; {next_step}" if next_step else reason)
        self.reason = reason
        self.next_step = next_step


class RowBusyError(ReconcileError, TimeoutError):
    """One observation's row could not be settled in time: its executor row locked by
    another transaction past the lock timeout, or its statement past the statement
    timeout. That key waits and is tried again; the database serves the others."""


class RejectedError(ReconcileError, ValueError):
    """The database refused an observation's values (say, a NUL in a text value)."""


class SchemaError(ReconcileError):
    """The database schema is not one this tool can work with, or a migration could not
    finish (missing tables, busy tables, duplicate values); the message says what to do."""


class MissingSchemaError(DatabaseUnavailableError, SchemaError):
    """A statement met a missing table or column: the database cannot be used until
    ``reconcile db migrate`` (or the orchestrator's migrations) created it."""


class ConfigError(ReconcileError, ValueError):
    """A setting from the environment or the command line is invalid."""
