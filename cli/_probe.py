"""Looking before acting: is the state directory usable, is the database there and ready?

Shared by ``status``, ``db status`` and ``doctor``. Each probe returns plain data (the
``--json`` output) and never raises for what it finds: a missing server or table is a
finding, with the one command that fixes it (:func:`database_next_step`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import journal
import reconcile


def home_problem(home: Path) -> tuple[str, str] | None:
    """What makes ``home`` unusable as the state directory, and what to do about it; None
    when it is usable or does not exist yet (the first hook or ``db up`` creates it)."""
    elsewhere = "choose another RECONCILE_HOME (or --home)"
    try:
        st = os.lstat(home)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{home} cannot be used ({exc.strerror})", elsewhere
    if stat.S_ISLNK(st.st_mode):
        return f"{home} is a symlink", "set RECONCILE_HOME to the real directory"
    if not stat.S_ISDIR(st.st_mode):
        return f"{home} exists and is not a directory", f"move it away, or {elsewhere}"
    if st.st_uid != os.geteuid():
        return f"{home} belongs to another user (uid {st.st_uid})", elsewhere
    mode = journal.mode_text(st.st_mode)
    if st.st_mode & 0o022:
        return f"{home} is writable by group or others (mode {mode})", journal.writable_fix(home)
    if not os.access(home, os.R_OK | os.W_OK | os.X_OK):
        return f"{home} is not readable and writable (mode {mode})", f"chmod 700 {home}"
    return None


def no_home(home: Path) -> str:
    """What a read-only command says of a state directory that does not exist."""
    return f"no state directory at {home} yet; the first hook or `reconcile db up` creates it"


def ignored_settings() -> list[dict[str, Any]]:
    """The malformed ``RECONCILE_*`` variables of this process's environment, which the
    hook and the reconciler replace by their defaults (docs/operations.md, "Settings")."""
    return [bad.to_dict() for bad in reconcile.Settings.malformed(os.environ)]


def settings_next_step(ignored: list[dict[str, Any]]) -> str | None:
    """What to do about the first malformed variable; None if there is none."""
    if not ignored:
        return None
    names = ", ".join(bad["variable"] for bad in ignored)
    return f"correct or unset {names} (the hook and the reconciler use the defaults meanwhile)"


def database(settings: reconcile.Settings) -> dict[str, Any]:
    """Where the database is, whether it answers, and whether its schema is current."""
    found: dict[str, Any] = {
        "url": None,
        "embedded": not settings.database_url,
        "reachable": False,
        "server_version": None,
        "schema": None,  # {"state": current | drifted | missing_tables, ...}; None: unknown
        "error": None,
        # Where the URL came from: --database-url, RECONCILE_DATABASE_URL; None: embedded.
        "origin": settings.database_url_origin if settings.database_url else None,
        "error_next_step": None,  # what the failure itself says to do, when it says
    }
    try:
        url = reconcile.resolve_url(settings)
    except reconcile.DatabaseUnavailableError as exc:
        return {**found, "error": str(exc)}
    found["url"] = reconcile.redact_url(url)
    try:
        with reconcile.connect(settings, application="reconcile-status") as conn:
            found["server_version"] = reconcile.ping(conn)
            found["reachable"] = True
            found["schema"] = reconcile.schema_state(conn).to_dict()
    except reconcile.DatabaseUnavailableError as exc:
        found["error"] = exc.reason
        found["error_next_step"] = exc.next_step
    return found


def database_next_step(found: dict[str, Any]) -> str | None:
    """The one command (or action) that fixes the first database problem; None if none."""
    if not found["reachable"]:
        if found["embedded"]:
            return "reconcile db up"
        origin = found["origin"]
        return found["error_next_step"] or f"start the database at {origin}, or correct that URL"
    state = (found["schema"] or {}).get("state", "current")
    if state == "missing_tables" and not found["embedded"]:
        return (
            "run the orchestrator's migrations (or, in a database of this tool's own: "
            "reconcile db migrate --create-tables)"
        )
    return None if state == "current" else "reconcile db migrate"


def describe_database(found: dict[str, Any]) -> list[tuple[str, str | None]]:
    """The human lines of :func:`database`: where, whether it answers, its schema."""
    where = found["url"] or "none"
    if found["url"] and found["embedded"]:
        where += " (embedded)"
    tables: str | None = None
    if found["reachable"]:
        answers = f"yes, PostgreSQL {found['server_version']}"
        tables = describe_schema(found["schema"])
    else:
        answers = (
            f"no: {found['error']}" if found["url"] else "no: the embedded server is not running"
        )
    return [("database", where), ("reachable", answers), ("schema", tables)]


def describe_schema(schema: dict[str, Any]) -> str:
    """``current``, the missing tables, or what drifted."""
    if schema["state"] == "missing_tables":
        return "missing tables: " + ", ".join(schema["missing_tables"])
    if schema["state"] == "drifted":
        return "drifted: " + "; ".join(schema["problems"])
    return str(schema["state"])
