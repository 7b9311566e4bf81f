"""PostgreSQL: connecting within a deadline, the one-round-trip reconciliation.

Only the miss path imports this module (psycopg costs more than a whole hit).

Every connection must work through PgBouncer in transaction pooling mode, where
consecutive transactions of one client may run on different server connections. So
nothing here relies on session state: no startup ``options`` (PgBouncer refuses them),
no ``SET`` outside a transaction (it would leak to other clients), no server-side
prepared statements (``prepare_threshold=None``). Timeouts are set per transaction with
``set_config(..., true)``. Migrations, which need session state, have a connection of
their own (:mod:`reconcile._schema`).
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import attrs
import psycopg
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from reconcile._errors import (
    DatabaseUnavailableError,
    MissingSchemaError,
    RejectedError,
    RowBusyError,
    ServerError,
)
from reconcile._settings import Settings, redact_url

TERMINAL_STATES = ("done", "error", "terminated")
# How much longer than the server's statement and lock timeouts the client waits: a row
# locked past the lock timeout is the server's to report (it fails that row alone); the
# client's own deadline is for a server that does not answer at all.
CLIENT_MARGIN_S = 1.0
# The decision for an observation made by agent identity whose executor, resolved now,
# began after the observation (a respawn while the observation waited): the session id
# belongs to an executor before it, so it is not written, nor audited.
STALE = "stale"
RECOVERY_ANCHOR = "terminal_executor_is_recovery_anchor"

# The executor an observation names, else its agent's current one (by agent id, else by
# name + team). Shared by the two statements below.
_RESOLVE = """
    COALESCE(%(executor_id)s::text, (
        SELECT a.current_executor_id
        FROM agents a
        WHERE %(executor_id)s::text IS NULL
          AND CASE WHEN %(agent_id)s::text IS NOT NULL THEN a.id = %(agent_id)s
                   ELSE a.custom_name = %(agent_name)s AND a.team = %(team)s END
        ORDER BY a.id
        LIMIT 1))
"""

# The reconciliation, sent as ONE query string: one round trip, one transaction (a
# multi-statement simple query runs as one implicit transaction; through PgBouncer it
# stays on one server connection). Parameters are bound client-side (ClientCursor).
#
# 1. The timeouts of this transaction only.
# 2. Resolve the executor and lock its row (FOR NO KEY UPDATE: it does not block the
#    foreign-key checks of an orchestrator's rows that reference executors); keep its id
#    in a transaction-local setting for statement 3.
# 3. The whole decision: confirm, preserve a divergence, or update the row and write the
#    audit row carrying the journal event's id.
#
# Why the lock is a statement of its own: under READ COMMITTED each statement reads from
# a snapshot taken when it starts. Racing settlements (other hosts) serialise on the row
# lock; taken by statement 2, it is held before statement 3 starts, so statement 3 sees
# whatever the previous holder committed: its session id (so it confirms: exactly one
# session.reconciled per rotation) and its audit rows (so a divergence already audited
# for the same stored/live pair is not audited again, on any host, however often it is
# revalidated). Within a single statement the NOT EXISTS below would read the snapshot
# taken before the wait and miss the winner's row.
# The executor row and what to decide for it, shared by the settlement and its read-only
# preview (:data:`PREVIEW_SQL`).
_TARGET = """
    SELECT e.id, e.claude_session_id AS stored, e.state,
           COALESCE(a.custom_name, a.id, e.agent_id, %(actor)s) AS actor,
           COALESCE(a.team, %(team)s) AS team,
           -- When the executor began: the orchestrator's started_at or created_at, read
           -- through to_jsonb so that a schema without them still parses; else its
           -- updated_at, the one time column every schema has (a later change of any
           -- kind then counts as a start: see STALE).
           COALESCE((to_jsonb(e) ->> 'started_at')::timestamptz,
                    (to_jsonb(e) ->> 'created_at')::timestamptz,
                    e.updated_at) AS began
    FROM executors e
    LEFT JOIN agents a ON a.id = e.agent_id"""
_DECIDED = """
    SELECT t.*,
           CASE WHEN t.stored IS NOT DISTINCT FROM %(session_id)s THEN 'confirmed'
                WHEN %(executor_id)s::text IS NULL AND %(observed_us)s::bigint IS NOT NULL
                     AND t.began > to_timestamp(%(observed_us)s::bigint / 1e6) THEN 'stale'
                WHEN t.state IN ('done', 'error', 'terminated') AND t.stored IS NOT NULL
                    THEN 'divergence_preserved'
                ELSE 'reconciled' END AS outcome
    FROM target t"""
# A divergence audited already: the same stored/live pair of the same executor.
_AUDITED_BEFORE = """
           SELECT 1 FROM audit_events x
           WHERE x.entity_type = 'executor' AND x.entity_id = d.id
             AND x.event_type = 'session.divergence_preserved'
             AND x.details ->> 'stored_session_id' = d.stored
             AND x.details ->> 'live_session_id' = %(session_id)s::text"""

RECONCILE_SQL = (
    """
SELECT set_config('statement_timeout', %(timeout_ms)s, true),
       set_config('lock_timeout', %(timeout_ms)s, true);
SELECT set_config('reconcile.executor_id', e.id, true)
FROM executors e
WHERE e.id = """
    + _RESOLVE
    + """
FOR NO KEY UPDATE;
WITH target AS (
    """
    + _TARGET
    + """
    WHERE e.id = NULLIF(current_setting('reconcile.executor_id', true), '')
    FOR NO KEY UPDATE OF e
), decided AS ("""
    + _DECIDED
    + """
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
    WHERE d.outcome = 'reconciled'
       OR d.outcome = 'divergence_preserved' AND NOT EXISTS ("""
    + _AUDITED_BEFORE
    + """)
    ON CONFLICT (event_id) DO NOTHING
    RETURNING id
)
SELECT d.outcome, d.id, d.stored, d.state, d.actor, d.team,
       (SELECT count(*) FROM updated), (SELECT count(*) FROM audited)
FROM decided d
"""
)

# What :data:`RECONCILE_SQL` would decide, read-only (``reconcile explain``): the same
# resolution and decision, no row lock, no write; and whether a divergence would be
# audited (not if the same pair is audited already).
PREVIEW_SQL = (
    """
SELECT set_config('statement_timeout', %(timeout_ms)s, true);
WITH target AS ("""
    + _TARGET
    + """
    WHERE e.id = """
    + _RESOLVE
    + """
), decided AS ("""
    + _DECIDED
    + """
)
SELECT d.outcome, d.id, d.stored, d.state, d.actor, d.team,
       d.outcome = 'reconciled'
       OR d.outcome = 'divergence_preserved' AND NOT EXISTS ("""
    + _AUDITED_BEFORE
    + """)
FROM decided d
"""
)

# An audit row for a journaled event, unless its event id is there already, or the same
# change of the executor is audited already under another id: for a divergence, the same
# stored/live pair; for a reconciliation, the same old/new pair (session ids do not
# recur, so the same pair twice is one change audited twice: a database restored from an
# older backup whose row was then settled again, docs/operations.md "Restored from a
# backup"). The executor row is locked first (statement of its own, same reason as above).
AUDIT_LOCK_SQL = "SELECT 1 FROM executors WHERE id = %s FOR NO KEY UPDATE"
_SAME_CHANGE = """
    SELECT 1 FROM audit_events x
    WHERE x.entity_type = 'executor' AND x.entity_id = {executor}
      AND x.event_type = {event_type}
      AND x.details ->> {first_field} IS NOT DISTINCT FROM {first}
      AND x.details ->> {second_field} = {second}"""
AUDIT_SQL = (
    """
INSERT INTO audit_events
    (event_id, entity_type, entity_id, event_type, actor, details, created_at)
SELECT %(event_id)s::uuid, 'executor', %(executor_id)s::text, %(event_type)s::text,
       %(actor)s::text, %(details)s, %(created_at)s::timestamptz
WHERE NOT EXISTS ("""
    + _SAME_CHANGE.format(
        executor="%(executor_id)s::text",
        event_type="%(event_type)s::text",
        first_field="%(first_field)s::text",
        first="%(first)s::text",
        second_field="%(second_field)s::text",
        second="%(second)s::text",
    )
    + """)
ON CONFLICT (event_id) DO NOTHING
"""
)
# Of journaled events' audit rows, those :data:`AUDIT_SQL` would insert: no row of their
# event id, nor of the same change (``verify --db``).
MISSING_AUDIT_SQL = (
    """
SELECT r.event_id::text
FROM unnest(%(event_ids)s::uuid[], %(executor_ids)s::text[], %(event_types)s::text[],
            %(first_fields)s::text[], %(firsts)s::text[],
            %(second_fields)s::text[], %(seconds)s::text[])
    AS r(event_id, executor_id, event_type, first_field, first, second_field, second)
WHERE NOT EXISTS (SELECT 1 FROM audit_events a WHERE a.event_id = r.event_id)
  AND NOT EXISTS ("""
    + _SAME_CHANGE.format(
        executor="r.executor_id",
        event_type="r.event_type",
        first_field="r.first_field",
        first="r.first",
        second_field="r.second_field",
        second="r.second",
    )
    + """)
"""
)
# Put back the session a journaled change wrote, on a row that went back to an older
# value (``replay --to-db``): only if the row still holds that older value and its
# executor is not terminal (a terminal executor's session is its recovery anchor).
RESTORE_SQL = """
UPDATE executors SET claude_session_id = %(session_id)s::text, updated_at = now()
WHERE id = %(executor_id)s::text
  AND claude_session_id IS NOT DISTINCT FROM %(found)s::text
  AND NOT COALESCE(state IN ('done', 'error', 'terminated'), false)
"""


@attrs.frozen
class Decision:
    """What the database decided for one observation."""

    outcome: str  # confirmed | reconciled | divergence_preserved | stale | no_executor
    executor_id: str | None = None
    stored_session_id: str | None = None
    executor_state: str | None = None
    actor: str | None = None
    team: str | None = None
    # Whether this call wrote the audit row: False for a confirmation, and for a
    # divergence whose stored/live pair was audited before (by this host or another).
    audited: bool = False


def resolve_url(settings: Settings) -> str:
    """The database URL: the configured one, else the embedded server's (never started
    here: ``reconcile db up`` does that). Refused over a libpq that cannot demand the
    server's proof (:func:`reconcile._server.require_checking_client`)."""
    if settings.database_url:
        return settings.database_url
    from reconcile._server import require_checking_client, url

    try:
        found = url(settings.home)
        if found is not None:  # its password goes to no one who cannot prove they are it
            require_checking_client()
    except ServerError as exc:  # a copy of another home, an old libpq: no database here
        raise DatabaseUnavailableError(str(exc)) from None
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
    """An autocommit connection that keeps no session state (PgBouncer's transaction
    pooling); any failure to connect is :class:`DatabaseUnavailableError` with a message that
    never contains the password. Statement and lock timeouts are per transaction:
    :func:`decide` sets its own."""
    url = resolve_url(settings)
    try:
        with deadline(settings.connect_timeout_s):
            conn = psycopg.connect(
                url,
                autocommit=True,
                connect_timeout=max(1, round(settings.connect_timeout_s)),
                application_name=application,
                prepare_threshold=None,
            )
    except (psycopg.Error, DatabaseUnavailableError) as exc:  # the latter: the deadline
        raise unavailable(exc, url, origin(settings)) from None
    try:
        yield conn
    except psycopg.Error as exc:
        raise unusable(exc, describe(exc, url)) from None
    finally:
        conn.close()


def describe(exc: BaseException, url: str) -> str:
    """One line about a database error, with the URL redacted and no password in it."""
    first = _first_line(exc)
    for secret in _passwords(url):
        first = first.replace(secret, "***")
    return f"{redact_url(url)}: {first}"


def unavailable(exc: BaseException, url: str, origin: str | None) -> DatabaseUnavailableError:
    """The error for a failure to connect: :func:`describe`, and :func:`next_step`.
    ``origin``: where the URL came from (``--database-url``, ``RECONCILE_DATABASE_URL``),
    None for the embedded server. The one place such failures get their words."""
    return DatabaseUnavailableError(describe(exc, url), next_step(exc, origin))


# libpq's words for a connection string it cannot parse, and for the failures below.
_NOT_A_URL = (
    'missing "="',
    "invalid connection option",
    "invalid uri",
    "invalid percent-encoded",
    "unterminated quoted string",
    "invalid integer value",
    "invalid port number",
    "invalid value for parameter",
    "invalid sslmode",
)
_NOT_THERE = (
    "connection refused",
    "no such file or directory",
    "timeout expired",
    "did not answer",
    "could not connect",
    "network is unreachable",
    "no route to host",
    "server closed the connection",
)
EXAMPLE_URL = "postgresql://USER@HOST:5432/DBNAME"


def next_step(exc: BaseException, origin: str | None) -> str | None:
    """What to do about a failure to connect, by its kind (docs/operations.md, "When the
    database does not answer"); None when libpq's words are all there is to say."""
    text = str(exc).lower()
    where = origin or "the embedded server's URL"
    if any(words in text for words in _NOT_A_URL):
        return (
            f"{where} is not a valid PostgreSQL URL or connection string; write it as "
            f"{EXAMPLE_URL} (or host=HOST port=5432 dbname=DBNAME user=USER)"
        )
    missing = re.search(r'database "([^"]*)" does not exist', str(exc))
    if missing:
        name = missing.group(1)
        return (
            f"the server has no database {name}: create it (createdb {name}, or CREATE "
            "DATABASE), then run the orchestrator's migrations, or reconcile db migrate "
            f"--create-tables in a database of this tool's own; or correct {where}"
        )
    if "could not translate host name" in text or "name or service not known" in text:
        return f"no such host: correct the host in {where}"
    if "password authentication failed" in text or ("role" in text and "does not exist" in text):
        return f"the server refuses that user or password: correct them in {where}"
    if any(words in text for words in _NOT_THERE):
        if origin is None:
            return "the embedded server does not answer: run reconcile db up"
        return f"start the database at {origin}, or correct that URL"
    return None


def origin(settings: Settings) -> str | None:
    """Where the database URL of ``settings`` came from; None: the embedded server."""
    return settings.database_url_origin if settings.database_url else None


def unusable(exc: psycopg.Error, message: str) -> DatabaseUnavailableError:
    """The error for a database that cannot be used; a missing table or column is a
    :class:`MissingSchemaError` that says how to create it."""
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn):
        return MissingSchemaError(f"{message}; run: reconcile db migrate")
    return DatabaseUnavailableError(message)


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
    observed_us: int | None = None,
) -> Decision:
    """Settle one observation: one round trip, one transaction (:data:`RECONCILE_SQL`),
    with statement and lock timeouts of ``deadline_s`` for that transaction only.
    ``conn`` is in autocommit mode, as :func:`connect` makes it, so that the query string
    is a transaction of its own. ``Decision.audited`` says whether the audit row with
    ``event_id`` was written (not for a divergence audited before). ``observed_us``: when
    the session id was seen (µs since the epoch); an agent-resolved executor that began
    after it is :data:`STALE`, left alone (docs/architecture.md, "Late settlement").

    Raises :class:`RowBusyError` when the executor row stayed locked past the lock
    timeout, or the statement ran past the statement timeout, on a connection still
    usable: a failure of that key alone. :class:`DatabaseUnavailableError` for the rest.
    """
    params = _parameters(session_id, executor_id, agent_id, agent_name, team, deadline_s)
    params.update(event_id=event_id, observed_us=observed_us)
    try:  # the server's timeouts first (they fail this row alone), then the client's
        with deadline(deadline_s + CLIENT_MARGIN_S), psycopg.ClientCursor(conn) as cur:
            cur.execute(RECONCILE_SQL, params)
            while cur.nextset():  # the decision is the last statement's result
                pass
            row = cur.fetchone()
    except psycopg.DataError as exc:  # values no database could take: not an outage
        raise RejectedError(_first_line(exc)) from None
    except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as exc:
        if conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
            raise unusable(exc, f"{conn.info.dsn}: {_first_line(exc)}") from None
        raise RowBusyError(f"{_first_line(exc)} (executor {executor_id or '?'})") from None
    except psycopg.Error as exc:  # gone, or without its tables
        raise unusable(exc, f"{conn.info.dsn}: {_first_line(exc)}") from None
    if row is None:
        return Decision("no_executor")
    outcome, executor, stored, state, actor, team_found, _, audited = row
    return Decision(outcome, executor, stored, state, actor, team_found, audited > 0)


def preview(
    conn: psycopg.Connection,
    *,
    session_id: str,
    executor_id: str | None,
    agent_id: str | None,
    agent_name: str | None,
    team: str | None,
    deadline_s: float,
    observed_us: int | None = None,
) -> Decision:
    """What :func:`decide` would decide now, read-only: a ``READ ONLY`` transaction, no
    row lock, nothing written. ``Decision.audited`` says whether the settlement would
    write an audit row. Raises as :func:`decide` does (but takes no lock to time out)."""
    params = _parameters(session_id, executor_id, agent_id, agent_name, team, deadline_s)
    params.update(observed_us=observed_us)
    try:
        with (
            deadline(deadline_s + CLIENT_MARGIN_S),
            conn.transaction(),
            psycopg.ClientCursor(conn) as cur,
        ):
            cur.execute("SET TRANSACTION READ ONLY")
            cur.execute(PREVIEW_SQL, params)
            while cur.nextset():
                pass
            row = cur.fetchone()
    except psycopg.Error as exc:
        raise unusable(exc, f"{conn.info.dsn}: {_first_line(exc)}") from None
    if row is None:
        return Decision("no_executor")
    outcome, executor, stored, state, actor, team_found, audited = row
    return Decision(outcome, executor, stored, state, actor, team_found, bool(audited))


def _parameters(
    session_id: str,
    executor_id: str | None,
    agent_id: str | None,
    agent_name: str | None,
    team: str | None,
    deadline_s: float,
) -> dict[str, Any]:
    """The parameters :data:`RECONCILE_SQL` and :data:`PREVIEW_SQL` share."""
    return {
        "timeout_ms": str(max(1, int(deadline_s * 1000))),
        "session_id": session_id,
        "executor_id": executor_id,
        "agent_id": agent_id,
        "agent_name": agent_name,
        "team": team,
        "actor": agent_name or agent_id,
    }


def _change(event_type: str, details: dict[str, Any] | None) -> dict[str, Any]:
    """What identifies an audited change besides its executor and type: the two session
    ids of its details (old/new for a reconciliation, stored/live for a divergence)."""
    details = details or {}
    first, second = (
        ("old_session_id", "new_session_id")
        if event_type == "session.reconciled"
        else ("stored_session_id", "live_session_id")
    )
    return {
        "first_field": first,
        "first": details.get(first),
        "second_field": second,
        "second": details.get(second),
    }


def _audit_params(row: tuple[Any, ...]) -> dict[str, Any]:
    event_id, executor_id, event_type, actor, details, created_at = row
    return {
        "event_id": event_id,
        "executor_id": executor_id,
        "event_type": event_type,
        "actor": actor,
        "details": Jsonb(details),
        "created_at": created_at,
        **_change(event_type, details),
    }


def insert_audit_rows(conn: psycopg.Connection, rows: Iterable[tuple[Any, ...]]) -> int:
    """Insert audit rows ``(event_id, executor_id, event_type, actor, details, created_at)``
    unless their event id is already there, or the same change of the executor is
    audited already (:data:`AUDIT_SQL`); return how many were new."""
    inserted = 0
    with conn.transaction(), conn.cursor() as cur:
        for row in rows:
            cur.execute(AUDIT_LOCK_SQL, (row[1],), prepare=False)
            cur.execute(AUDIT_SQL, _audit_params(row), prepare=False)
            inserted += cur.rowcount
    return inserted


def missing_audit_rows(conn: psycopg.Connection, rows: Iterable[tuple[Any, ...]]) -> list[str]:
    """The event ids, among audit rows as :func:`insert_audit_rows` takes them, that
    :func:`insert_audit_rows` would insert: read-only."""
    columns: dict[str, list[Any]] = {
        name: []
        for name in (
            "event_ids",
            "executor_ids",
            "event_types",
            "first_fields",
            "firsts",
            "second_fields",
            "seconds",
        )
    }
    for event_id, executor_id, event_type, _, details, _ in rows:
        change = _change(event_type, details)
        for name, value in (
            ("event_ids", event_id),
            ("executor_ids", executor_id),
            ("event_types", event_type),
            ("first_fields", change["first_field"]),
            ("firsts", change["first"]),
            ("second_fields", change["second_field"]),
            ("seconds", change["second"]),
        ):
            columns[name].append(value)
    if not columns["event_ids"]:
        return []
    found = conn.execute(MISSING_AUDIT_SQL, columns, prepare=False).fetchall()
    return [event_id for (event_id,) in found]


def restore_session(
    conn: psycopg.Connection,
    *,
    executor_id: str,
    found: str | None,
    session_id: str,
    audit_row: tuple[Any, ...],
) -> bool:
    """Put ``session_id`` back on an executor row that holds ``found`` (an older value),
    with the audit row of the journaled change that wrote it (inserted as
    :func:`insert_audit_rows` does: once), in one transaction; False, writing nothing,
    when the row holds anything else by then or its executor is terminal."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(AUDIT_LOCK_SQL, (executor_id,), prepare=False)
        params = {"executor_id": executor_id, "found": found, "session_id": session_id}
        cur.execute(RESTORE_SQL, params, prepare=False)
        if cur.rowcount != 1:
            return False
        cur.execute(AUDIT_SQL, _audit_params(audit_row), prepare=False)
    return True


def executor_sessions(
    conn: psycopg.Connection, executor_ids: Iterable[str]
) -> dict[str, tuple[str | None, str]]:
    """``executor id -> (claude_session_id, state)`` for the executors that exist."""
    rows = conn.execute(
        "SELECT id, claude_session_id, state FROM executors WHERE id = ANY(%s)",
        (list(executor_ids),),
    ).fetchall()
    return {executor: (session, state) for executor, session, state in rows}


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
