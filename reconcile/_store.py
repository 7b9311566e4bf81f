"""PostgreSQL: connecting within a deadline, the one-statement reconciliation, migrations.

Only the miss path imports this module (psycopg costs more than a whole hit).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from importlib import resources
from typing import Any

import attrs
import psycopg
from psycopg.types.json import Jsonb

from reconcile._errors import DatabaseUnavailableError, RejectedError
from reconcile._settings import Settings, redact_url

TERMINAL_STATES = ("done", "error", "terminated")
RECOVERY_ANCHOR = "terminal_executor_is_recovery_anchor"

# The whole decision of DESIGN §6 in one statement, so a miss costs one round trip and
# one transaction: resolve the executor (named, or the agent's current one), lock its row,
# decide, update it and write the audit row carrying the journal event's id.
# Racing forks serialise on FOR UPDATE; under READ COMMITTED the waiting one re-reads the
# row as committed by the winner, sees its own session id and confirms: exactly one
# session.reconciled per rotation.
RECONCILE_SQL = """
WITH agent AS (
    SELECT a.current_executor_id
    FROM agents a
    WHERE %(executor_id)s::text IS NULL
      AND CASE WHEN %(agent_id)s::text IS NOT NULL THEN a.id = %(agent_id)s
               ELSE a.custom_name = %(agent_name)s AND a.team = %(team)s END
    ORDER BY a.id
    LIMIT 1
), target AS (
    SELECT e.id, e.claude_session_id AS stored, e.state,
           COALESCE(a.custom_name, a.id, e.agent_id, %(actor)s) AS actor,
           COALESCE(a.team, %(team)s) AS team
    FROM executors e
    LEFT JOIN agents a ON a.id = e.agent_id
    WHERE e.id = COALESCE(%(executor_id)s::text, (SELECT current_executor_id FROM agent))
    FOR UPDATE OF e
), decided AS (
    SELECT t.*,
           CASE WHEN t.stored IS NOT DISTINCT FROM %(session_id)s THEN 'confirmed'
                WHEN t.state IN ('done', 'error', 'terminated') AND t.stored IS NOT NULL
                    THEN 'divergence_preserved'
                ELSE 'reconciled' END AS outcome
    FROM target t
), updated AS (
    UPDATE executors e SET claude_session_id = %(session_id)s, updated_at = now()
    FROM decided d
    WHERE e.id = d.id AND d.outcome = 'reconciled'
    RETURNING e.id
), audited AS (
    INSERT INTO audit_events (event_id, entity_type, entity_id, event_type, actor, details)
    SELECT %(event_id)s::uuid, 'executor', d.id, 'session.' || d.outcome, d.actor,
           CASE d.outcome
               WHEN 'reconciled' THEN jsonb_build_object(
                   'old_session_id', d.stored, 'new_session_id', %(session_id)s::text,
                   'team', d.team)
               ELSE jsonb_build_object(
                   'stored_session_id', d.stored, 'live_session_id', %(session_id)s::text,
                   'executor_state', d.state, 'team', d.team,
                   'reason', 'terminal_executor_is_recovery_anchor')
           END
    FROM decided d
    WHERE d.outcome <> 'confirmed'
    ON CONFLICT (event_id) DO NOTHING
    RETURNING id
)
SELECT d.outcome, d.id, d.stored, d.state, d.actor, d.team,
       (SELECT count(*) FROM updated), (SELECT count(*) FROM audited)
FROM decided d
"""

AUDIT_SQL = """
INSERT INTO audit_events
    (event_id, entity_type, entity_id, event_type, actor, details, created_at)
VALUES (%s, 'executor', %s, %s, %s, %s, %s)
ON CONFLICT (event_id) DO NOTHING
"""


@attrs.frozen
class Decision:
    """What the database decided for one observation."""

    outcome: str  # confirmed | reconciled | divergence_preserved | no_executor
    executor_id: str | None = None
    stored_session_id: str | None = None
    executor_state: str | None = None
    actor: str | None = None
    team: str | None = None


def resolve_url(settings: Settings) -> str:
    """The database URL: the configured one, else the embedded server's (never started
    here: ``reconcile db up`` does that)."""
    if settings.database_url:
        return settings.database_url
    from reconcile._server import url

    found = url(settings.home)
    if found is None:
        raise DatabaseUnavailableError(
            "no database: set RECONCILE_DATABASE_URL or start the embedded one "
            "with `reconcile db up`"
        )
    return found


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`DatabaseUnavailableError` if the block runs longer than ``seconds``.

    libpq rounds connect timeouts up to 2 s; a hook must give up sooner, so the main
    thread arms a real-time timer instead. Elsewhere only the server-side timeouts apply.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum: int, frame: object) -> None:
        raise DatabaseUnavailableError(f"database did not answer within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def connect(settings: Settings, *, application: str = "reconcile") -> Iterator[psycopg.Connection]:
    """An autocommit connection with the configured timeouts; any failure to connect is
    :class:`DatabaseUnavailableError` with a message that never contains the password."""
    url = resolve_url(settings)
    statement_ms = int(settings.statement_timeout_s * 1000)
    try:
        with deadline(settings.connect_timeout_s):
            conn = psycopg.connect(
                url,
                autocommit=True,
                connect_timeout=max(1, round(settings.connect_timeout_s)),
                application_name=application,
                options=f"-c statement_timeout={statement_ms} -c lock_timeout={statement_ms}",
            )
    except psycopg.Error as exc:
        raise DatabaseUnavailableError(describe(exc, url)) from None
    try:
        yield conn
    except psycopg.Error as exc:
        raise DatabaseUnavailableError(describe(exc, url)) from None
    finally:
        conn.close()


def describe(exc: BaseException, url: str) -> str:
    """One line about a database error, with the URL redacted and no password in it."""
    first = _first_line(exc)
    for secret in _passwords(url):
        first = first.replace(secret, "***")
    return f"{redact_url(url)}: {first}"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _passwords(url: str) -> list[str]:
    from psycopg.conninfo import conninfo_to_dict

    try:
        password = conninfo_to_dict(url).get("password")
    except psycopg.Error:
        return []
    return [str(password)] if password else []


def decide(
    conn: psycopg.Connection,
    *,
    session_id: str,
    event_id: str,
    executor_id: str | None,
    agent_id: str | None,
    agent_name: str | None,
    team: str | None,
    deadline_s: float,
) -> Decision:
    """Run the reconciliation statement for one observation (one round trip)."""
    params = {
        "session_id": session_id,
        "event_id": event_id,
        "executor_id": executor_id,
        "agent_id": agent_id,
        "agent_name": agent_name,
        "team": team,
        "actor": agent_name or agent_id,
    }
    try:
        with deadline(deadline_s):
            row = conn.execute(RECONCILE_SQL, params, prepare=False).fetchone()
    except psycopg.DataError as exc:  # values no database could take: not an outage
        raise RejectedError(_first_line(exc)) from None
    except psycopg.Error as exc:  # gone, slow, locked, or without its tables
        raise DatabaseUnavailableError(f"{conn.info.dsn}: {_first_line(exc)}") from None
    if row is None:
        return Decision("no_executor")
    outcome, executor, stored, state, actor, team_found, _, _ = row
    return Decision(outcome, executor, stored, state, actor, team_found)


def insert_audit_rows(conn: psycopg.Connection, rows: Iterable[tuple[Any, ...]]) -> int:
    """Insert audit rows ``(event_id, executor_id, event_type, actor, details, created_at)``
    unless their event id is already there; return how many were new."""
    inserted = 0
    with conn.transaction(), conn.cursor() as cur:
        for event_id, executor_id, event_type, actor, details, created_at in rows:
            cur.execute(
                AUDIT_SQL, (event_id, executor_id, event_type, actor, Jsonb(details), created_at)
            )
            inserted += cur.rowcount
    return inserted


def executor_sessions(
    conn: psycopg.Connection, executor_ids: Iterable[str]
) -> dict[str, tuple[str | None, str]]:
    """``executor id -> (claude_session_id, state)`` for the executors that exist."""
    rows = conn.execute(
        "SELECT id, claude_session_id, state FROM executors WHERE id = ANY(%s)",
        (list(executor_ids),),
    ).fetchall()
    return {executor: (session, state) for executor, session, state in rows}


def migrate(conn: psycopg.Connection) -> list[str]:
    """Apply the shipped migrations not yet recorded in ``schema_migrations``, in order,
    in one transaction; concurrent runs serialise on an advisory lock. Returns the
    versions applied (none when the schema is current)."""
    applied: list[str] = []
    scripts = sorted(
        (entry.name, entry)
        for entry in resources.files("reconcile.migrations").iterdir()
        if entry.name.endswith(".sql")
    )
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('reconcile.migrate'))")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for name, entry in scripts:
            version = name.removesuffix(".sql")
            if version in done:
                continue
            conn.execute(entry.read_text(encoding="utf-8"))
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied


def ping(conn: psycopg.Connection) -> str:
    """The server's version string (a cheap reachability check)."""
    row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def database_activity(probe: psycopg.Connection, database: str) -> tuple[int, int]:
    """(statements, connections) the server has counted for ``database``'s clients.

    From ``pg_stat_database``: ``sessions``, and ``xact_commit - sessions`` as the
    statements, since each connection's start-up commits a transaction of its own (in
    autocommit each statement is one transaction). Connect ``probe`` to another database
    so that its own queries are not counted. Waits until the figures settle: backends
    report their statistics as they exit.
    """
    previous = None
    for _ in range(100):
        probe.execute("SELECT pg_stat_clear_snapshot()")
        row = probe.execute(
            "SELECT xact_commit - sessions, sessions FROM pg_stat_database WHERE datname = %s",
            (database,),
        ).fetchone()
        current = (int(row[0]), int(row[1])) if row else (0, 0)
        if current == previous:
            return current
        previous = current
        time.sleep(0.1)
    raise DatabaseUnavailableError(f"the statistics of {database} did not settle")
