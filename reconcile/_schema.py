"""The schema this tool needs, checked against the one found, and repaired: migrations.

Two kinds of database (docs/operations.md, "Beside an orchestrator"):

- **its own** (the embedded default, or ``create_tables=True``): the orchestrator's
  tables are created here (``migrations/tables.sql``), with two lookup indexes;
- **an orchestrator's**: its tables are its own, made by its migrations; this tool adds
  only ``audit_events.event_id`` and a unique index on it, and if the tables are missing
  it stops (:class:`SchemaError`) rather than create them, since the orchestrator's
  first migration would then fail on "already exists". Lookup indexes of this tool that
  duplicate one of the orchestrator's are dropped.

What is verified is the schema itself, never a record of what was applied: after a dump
is restored, a table is recreated, or an index build is interrupted, :func:`migrate`
finds the difference and repairs it, and :func:`schema_state` reports it.

Locks. Migrations run beside an orchestrator writing to the same tables, so nothing may
queue a lock its writes would wait behind for long: ``ALTER TABLE`` (an exclusive lock,
held for a catalog change only) waits at most :data:`LOCK_TIMEOUT_S` and is retried with
backoff; indexes are built and dropped ``CONCURRENTLY`` (outside a transaction; their
waits block no writer). The hook's statement timeout does not apply: a migration runs on
a connection of its own with no statement timeout, bounded by ``wait_s`` overall. That
connection keeps session state, so it must reach PostgreSQL directly, not through a
transaction-pooling PgBouncer (:func:`migration_connection` refuses one).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

import attrs
import psycopg
from psycopg import errors, sql

from reconcile._errors import DatabaseUnavailableError, SchemaError
from reconcile._settings import Settings, redact_url
from reconcile._store import deadline, describe, resolve_url

CURRENT = "current"
DRIFTED = "drifted"
MISSING_TABLES = "missing_tables"

LOCK_TIMEOUT_S = 0.1  # the longest an orchestrator's write may queue behind a migration
WAIT_S = 120.0  # a migration's overall budget (busy tables, other migrations, builds)
_ADVISORY_KEY = 0x7265636F6E63  # "reconc": one migration at a time per database

# The columns this tool reads or writes, and their definitions in a database of its own
# (where a missing one is re-added; beside an orchestrator, a missing one is an error).
COLUMNS: dict[str, dict[str, str]] = {
    "agents": {
        "id": "text",
        "custom_name": "text",
        "team": "text",
        "current_executor_id": "text",
    },
    "executors": {
        "id": "text",
        "agent_id": "text",
        "claude_session_id": "text",
        "state": "text NOT NULL DEFAULT 'spawning'",
        "updated_at": "timestamptz NOT NULL DEFAULT now()",
    },
    "audit_events": {
        "id": "bigserial",
        "entity_type": "text",
        "entity_id": "text",
        "event_type": "text",
        "actor": "text",
        "details": "jsonb NOT NULL DEFAULT '{}'::jsonb",
        "created_at": "timestamptz NOT NULL DEFAULT now()",
    },
}
TABLES = tuple(COLUMNS)
EVENT_ID_INDEX = "audit_events_event_id"
# Lookups the reconciliation makes, indexed in a database of this tool's own. An
# orchestrator has its own (genie: idx_agents_custom_name_team, idx_audit_entity), so
# there ours are not created, and dropped if an earlier version created them.
LOOKUP_INDEXES: dict[str, tuple[str, tuple[str, ...]]] = {
    "agents_team_custom_name": ("agents", ("team", "custom_name")),
    "audit_events_entity": ("audit_events", ("entity_type", "entity_id")),
}

_COLUMNS_SQL = """
SELECT t.name, a.attname, format_type(a.atttypid, a.atttypmod)
FROM unnest(%s::text[]) AS t(name)
JOIN pg_attribute a ON a.attrelid = to_regclass(t.name) AND a.attnum > 0
                   AND NOT a.attisdropped
"""
_INDEXES_SQL = """
SELECT t.name, i.relname, x.indexrelid::regclass::text, x.indisunique,
       x.indisvalid AND x.indisready, x.indpred IS NOT NULL,
       (SELECT array_agg(a.attname ORDER BY k.n)
        FROM unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
        LEFT JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
        WHERE k.n <= x.indnkeyatts)
FROM unnest(%s::text[]) AS t(name)
JOIN pg_index x ON x.indrelid = to_regclass(t.name)
JOIN pg_class i ON i.oid = x.indexrelid
"""
_LOCK_TIMEOUT_MS_SQL = "SELECT setting FROM pg_settings WHERE name = 'lock_timeout'"
_BUILDING_SQL = """
SELECT count(*) FROM pg_stat_progress_create_index WHERE index_relid = to_regclass(%s)
"""


@attrs.frozen
class SchemaState:
    """What :func:`schema_state` found: ``state`` is ``current``, ``drifted`` (each
    problem says what is wrong; ``reconcile db migrate`` repairs it) or
    ``missing_tables`` (the orchestrator's migrations have not run)."""

    state: str
    missing_tables: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "missing_tables": list(self.missing_tables),
            "problems": list(self.problems),
        }

    def __str__(self) -> str:
        if self.state == CURRENT:
            return CURRENT
        return f"{self.state.replace('_', ' ')}: {'; '.join(self.problems)}"


@attrs.frozen
class _Index:
    name: str  # relname
    qualified: str  # for DDL: schema-qualified when not on the search path
    unique: bool
    valid: bool
    partial: bool
    columns: tuple[str | None, ...]  # None: an expression


@attrs.frozen
class _Found:
    columns: dict[str, dict[str, str]]  # table -> column -> type, for tables that exist
    indexes: dict[str, tuple[_Index, ...]]

    @property
    def missing_tables(self) -> tuple[str, ...]:
        return tuple(t for t in TABLES if t not in self.columns)

    def missing_columns(self) -> list[tuple[str, str]]:
        return [
            (table, column)
            for table, wanted in COLUMNS.items()
            if table in self.columns
            for column in wanted
            if column not in self.columns[table]
        ]

    def index(self, name: str) -> _Index | None:
        found = [i for table in self.indexes.values() for i in table if i.name == name]
        return found[0] if found else None

    def event_id_indexed(self) -> bool:
        """A valid unique index on ``audit_events (event_id)`` alone: what
        ``ON CONFLICT (event_id)`` needs, whatever its name."""
        return any(map(_serves_event_id, self.indexes.get("audit_events", ())))

    def equivalent(self, name: str) -> _Index | None:
        """Another valid index serving the lookup of ``LOOKUP_INDEXES[name]``."""
        table, columns = LOOKUP_INDEXES[name]
        for i in self.indexes.get(table, ()):
            leading = set(i.columns[: len(columns)])
            if i.name != name and i.valid and leading == set(columns):
                return i
        return None


def _serves_event_id(index: _Index) -> bool:
    return index.unique and index.valid and not index.partial and index.columns == ("event_id",)


def _inspect(conn: psycopg.Connection) -> _Found:
    columns: dict[str, dict[str, str]] = {}
    for table, column, kind in conn.execute(_COLUMNS_SQL, (list(TABLES),), prepare=False):
        columns.setdefault(table, {})[column] = kind
    indexes: dict[str, list[_Index]] = {}
    for table, name, qualified, unique, valid, partial, keys in conn.execute(
        _INDEXES_SQL, (list(TABLES),), prepare=False
    ):
        indexes.setdefault(table, []).append(
            _Index(name, qualified, unique, valid, partial, tuple(keys or ()))
        )
    return _Found(columns, {table: tuple(found) for table, found in indexes.items()})


def _judge(found: _Found) -> SchemaState:
    missing = found.missing_tables
    problems = [
        f"table {table} is missing: run the orchestrator's migrations first "
        "(or `reconcile db migrate --create-tables` in a database of this tool's own)"
        for table in missing
    ]
    problems += [f"column {table}.{column} is missing" for table, column in found.missing_columns()]
    audit = found.columns.get("audit_events")
    if audit is not None:
        kind = audit.get("event_id")
        if kind is None:
            problems.append("column audit_events.event_id is missing")
        elif kind != "uuid":
            problems.append(f"column audit_events.event_id is {kind}, not uuid")
        ours = found.index(EVENT_ID_INDEX)
        if ours is not None and not ours.valid:
            problems.append(f"index {EVENT_ID_INDEX} is invalid (an interrupted build)")
        elif ours is not None and not _serves_event_id(ours):
            problems.append(f"index {EVENT_ID_INDEX} is not unique on (event_id) alone")
        elif not found.event_id_indexed():
            problems.append("no unique index on audit_events (event_id)")
    for name in LOOKUP_INDEXES:
        ours = found.index(name)
        other = found.equivalent(name)
        if ours is not None and other is not None:
            problems.append(f"index {name} duplicates {other.name}")
        elif ours is not None and not ours.valid:
            problems.append(f"index {name} is invalid (an interrupted build)")
    if missing:
        return SchemaState(MISSING_TABLES, missing, tuple(problems))
    return SchemaState(DRIFTED if problems else CURRENT, (), tuple(problems))


def schema_state(conn: psycopg.Connection) -> SchemaState:
    """How the schema found compares with what this tool needs (catalog reads only; safe
    on any connection, PgBouncer's included)."""
    return _judge(_inspect(conn))


# Migrating ---------------------------------------------------------------------------


def migrate(
    conn: psycopg.Connection,
    *,
    create_tables: bool = False,
    wait_s: float = WAIT_S,
) -> list[str]:
    """Bring the schema to what this tool needs; return what was done (empty when it
    already was). Idempotent; concurrent runs take turns.

    ``create_tables``: the database is this tool's own, so the orchestrator's tables are
    created (or completed) here. Otherwise missing tables or columns raise
    :class:`SchemaError` and nothing is changed.

    ``conn`` must be an autocommit connection straight to PostgreSQL (it sets session
    parameters, and restores them): :func:`migration_connection` makes one.
    """
    if not conn.autocommit:
        raise ValueError("migrate needs an autocommit connection (indexes are built concurrently)")
    until = time.monotonic() + wait_s
    applied: list[str] = []
    with _session(conn, until):
        found = _inspect(conn)
        if found.missing_tables:
            if not create_tables:
                raise SchemaError(_missing_tables_message(found.missing_tables))
            script = resources.files("reconcile.migrations") / "tables.sql"
            text = script.read_text(encoding="utf-8")
            _retrying(until, "creating the tables", lambda: _transaction(conn, text))
            applied += [f"created table {table}" for table in found.missing_tables]
            found = _inspect(conn)
        missing = found.missing_columns()
        if missing and not create_tables:
            names = ", ".join(f"{t}.{c}" for t, c in missing)
            raise SchemaError(
                f"the orchestrator's tables lack {names}: this tool cannot work with that "
                "schema; run the orchestrator's migrations (or, in a database of this "
                "tool's own, `reconcile db migrate --create-tables`)"
            )
        for table, column in missing:
            definition = COLUMNS[table][column]
            _add_column(conn, until, table, column, definition)
            applied.append(f"added column {table}.{column}")
        if create_tables:
            applied += _started_at(conn, until, found)
        applied += _event_id(conn, until, found)
        applied += _lookup_indexes(conn, until, _inspect(conn), create=create_tables)
        state = schema_state(conn)
        if state.state != CURRENT:  # a bug, or someone changing the schema meanwhile
            raise SchemaError(f"the schema is still {state}: run `reconcile db migrate` again")
    return applied


def _missing_tables_message(tables: tuple[str, ...]) -> str:
    return (
        f"the orchestrator's tables are missing ({', '.join(tables)}): run the "
        "orchestrator's migrations first, then `reconcile db migrate`; or, if this "
        "database is this tool's own, `reconcile db migrate --create-tables`"
    )


def _started_at(conn: psycopg.Connection, until: float, found: _Found) -> list[str]:
    """When each executor began, in tables of this tool's own made before they had it.

    Without it a late settlement falls back on ``updated_at``, which this tool's own
    settlements move: a session id observed before the previous one's settlement
    committed (a rotation right after a session start) was then judged stale and never
    written. Rows already there began at the latest when they were last updated."""
    if {"started_at", "created_at"} & set(found.columns["executors"]):
        return []
    text = (
        "ALTER TABLE executors ADD COLUMN IF NOT EXISTS started_at timestamptz;"
        "UPDATE executors SET started_at = updated_at WHERE started_at IS NULL;"
        "ALTER TABLE executors ALTER COLUMN started_at SET DEFAULT now(),"
        " ALTER COLUMN started_at SET NOT NULL"
    )
    _retrying(until, "adding executors.started_at", lambda: _transaction(conn, text))
    return ["added column executors.started_at"]


def _event_id(conn: psycopg.Connection, until: float, found: _Found) -> list[str]:
    applied = []
    kind = found.columns["audit_events"].get("event_id")
    if kind is None:
        _add_column(conn, until, "audit_events", "event_id", "uuid")
        applied.append("added column audit_events.event_id")
    elif kind != "uuid":
        raise SchemaError(
            f"audit_events.event_id is {kind}, not uuid: it is not this tool's column; "
            "rename it, then run `reconcile db migrate`"
        )
    ours = found.index(EVENT_ID_INDEX)
    if ours is not None and not _serves_event_id(ours):
        _drop_index(conn, until, EVENT_ID_INDEX)
        applied.append(f"dropped index {EVENT_ID_INDEX} (invalid or not unique)")
    if not found.event_id_indexed():
        _build_index(conn, until, EVENT_ID_INDEX, "audit_events", ("event_id",), unique=True)
        applied.append(f"built unique index {EVENT_ID_INDEX}")
    return applied


def _lookup_indexes(
    conn: psycopg.Connection, until: float, found: _Found, *, create: bool
) -> list[str]:
    applied = []
    for name, (table, columns) in LOOKUP_INDEXES.items():
        ours = found.index(name)
        other = found.equivalent(name)
        if ours is not None and (other is not None or not ours.valid):
            _drop_index(conn, until, name)
            why = f"duplicates {other.name}" if other is not None else "invalid"
            applied.append(f"dropped index {name} ({why})")
            ours = None
        if create and ours is None and other is None:
            _build_index(conn, until, name, table, columns, unique=False)
            applied.append(f"built index {name}")
    return applied


# Steps -------------------------------------------------------------------------------


@contextlib.contextmanager
def _session(conn: psycopg.Connection, until: float) -> Iterator[None]:
    """No statement timeout, a short lock timeout, and this database's migration lock."""
    conn.execute("SET statement_timeout = 0")
    conn.execute(sql.SQL("SET lock_timeout = {}").format(_ms(LOCK_TIMEOUT_S)))
    try:
        delay_s = 0.05
        while not _scalar(conn, "SELECT pg_try_advisory_lock(%s)", _ADVISORY_KEY):
            if time.monotonic() >= until:
                raise SchemaError(
                    "another `reconcile db migrate` kept this database busy: try again "
                    "when it has finished"
                )
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, 1.0)
        try:
            yield
        finally:
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(%s)", (_ADVISORY_KEY,))
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.execute("RESET statement_timeout")
            conn.execute("RESET lock_timeout")


def _scalar(conn: psycopg.Connection, query: str, *params: object) -> Any:
    row = conn.execute(query, params, prepare=False).fetchone()
    return None if row is None else row[0]


def _ms(seconds: float) -> sql.Literal:
    return sql.Literal(max(1, int(seconds * 1000)))


def _transaction(conn: psycopg.Connection, statements: str) -> None:
    # A crash that loses an asynchronous commit loses DDL that the next run re-checks
    # and redoes; in exchange the exclusive lock is released without waiting for the
    # WAL flush, so an orchestrator's writes queue behind it for less.
    with conn.transaction():
        conn.execute("SET LOCAL synchronous_commit = off")
        conn.execute(statements)


def _retrying(until: float, what: str, action: Callable[[], None]) -> None:
    """``action``, retried with jittered backoff while it times out on a lock."""
    delay_s = 0.05
    while True:
        try:
            action()
            return
        except errors.LockNotAvailable:
            remaining_s = until - time.monotonic()
            if remaining_s <= 0:
                raise SchemaError(
                    f"{what}: the table stayed busy (each attempt waits at most "
                    f"{LOCK_TIMEOUT_S:g} s for its lock, so as never to hold up the "
                    "orchestrator's writes); run `reconcile db migrate` again later"
                ) from None
            time.sleep(min(remaining_s, delay_s * random.uniform(0.5, 1.5)))
            delay_s = min(delay_s * 2, 2.0)


def _add_column(
    conn: psycopg.Connection, until: float, table: str, column: str, definition: str
) -> None:
    statement = sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
        sql.Identifier(table), sql.Identifier(column), sql.SQL(definition)
    )
    text = statement.as_string(conn)
    _retrying(until, f"adding {table}.{column}", lambda: _transaction(conn, text))


def _concurrently(conn: psycopg.Connection, until: float, statement: sql.Composed) -> None:
    """A ``CONCURRENTLY`` statement: its waits for older transactions block no writer, so
    its lock timeout is whatever is left of the budget."""
    remaining_s = until - time.monotonic()
    if remaining_s <= 0:
        raise SchemaError("the migration ran out of time: run `reconcile db migrate` again")
    conn.execute(sql.SQL("SET lock_timeout = {}").format(_ms(remaining_s)))
    try:
        conn.execute(statement)
    except errors.LockNotAvailable:
        raise SchemaError(
            "older transactions kept running past the migration's budget; an index left "
            "half-built is redone by the next `reconcile db migrate`"
        ) from None
    finally:
        conn.execute(sql.SQL("SET lock_timeout = {}").format(_ms(LOCK_TIMEOUT_S)))


def _drop_index(conn: psycopg.Connection, until: float, name: str) -> None:
    while _scalar(conn, _BUILDING_SQL, name):
        if time.monotonic() >= until:  # someone else is building it: let them finish
            raise SchemaError(f"index {name} is being built by another session: try later")
        time.sleep(0.2)
    statement = sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(name))
    _concurrently(conn, until, statement)


def _build_index(
    conn: psycopg.Connection,
    until: float,
    name: str,
    table: str,
    columns: tuple[str, ...],
    *,
    unique: bool,
) -> None:
    statement = sql.SQL("CREATE {}INDEX CONCURRENTLY {} ON {} ({})").format(
        sql.SQL("UNIQUE " if unique else ""),
        sql.Identifier(name),
        sql.Identifier(table),
        sql.SQL(", ").join(map(sql.Identifier, columns)),
    )
    try:
        _concurrently(conn, until, statement)
    except errors.UniqueViolation:
        _drop_index(conn, until, name)
        raise SchemaError(
            f"{table} holds duplicate {', '.join(columns)} values, so {name} cannot be "
            f"unique: list them with SELECT {', '.join(columns)}, count(*) FROM {table} "
            "GROUP BY 1 HAVING count(*) > 1"
        ) from None


# The migration connection ------------------------------------------------------------


@contextlib.contextmanager
def migration_connection(settings: Settings) -> Iterator[psycopg.Connection]:
    """An autocommit connection for :func:`migrate`: no statement timeout (the hook's
    does not apply), a short lock timeout, set at connection start. PgBouncer in
    transaction pooling refuses startup parameters, or ignores them if configured to:
    either way this refuses to go on, since a migration needs one server session
    throughout. Errors are :class:`DatabaseUnavailableError` without the password."""
    url = resolve_url(settings)
    lock_ms = max(1, int(LOCK_TIMEOUT_S * 1000))
    pooled = (
        ": migrations need a direct connection to PostgreSQL, not one through a "
        "transaction-pooling PgBouncer; pass its own URL with --database-url"
    )
    try:
        with deadline(max(settings.connect_timeout_s, 5.0)):
            conn = psycopg.connect(
                url,
                autocommit=True,
                connect_timeout=max(2, round(settings.connect_timeout_s)),
                application_name="reconcile-migrate",
                prepare_threshold=None,
                options=f"-c statement_timeout=0 -c lock_timeout={lock_ms}",
            )
    except psycopg.Error as exc:
        hint = pooled if "startup parameter" in str(exc) else ""
        raise DatabaseUnavailableError(describe(exc, url) + hint) from None
    try:
        if _scalar(conn, _LOCK_TIMEOUT_MS_SQL) != str(lock_ms):
            ignored = f"{redact_url(url)}: startup options were ignored"
            raise DatabaseUnavailableError(ignored + pooled)
        yield conn
    except psycopg.Error as exc:
        raise DatabaseUnavailableError(describe(exc, url)) from None
    finally:
        conn.close()
