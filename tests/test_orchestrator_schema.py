"""Beside an orchestrator, on a schema shaped like its own (tests/orchestrator_helpers.py).

The normal path field by field, then what running beside the orchestrator exposed:
migrating before it, bookkeeping trusted over the schema (a dump restored), migrations
under the hook's timeouts and blocking its inserts, a non-UUID agent id, repeated
divergence rows, indexes duplicating its own.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from orchestrator_helpers import (
    MIGRATIONS,
    orchestrator_migrate,
    rows,
    spawn_team_lead,
    spawn_worker,
)
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from reconcile_helpers import clean_env, reconcile_command

import journal
import reconcile
from reconcile import Decision, Settings

ORCHESTRATOR_MIGRATIONS = [name for name, _ in MIGRATIONS]
BUILT = ["added column audit_events.event_id", "built unique index audit_events_event_id"]


def run_cli(*args: str, url: str, home: Path, **env: str) -> subprocess.CompletedProcess[bytes]:
    environment = clean_env(RECONCILE_HOME=str(home), RECONCILE_DATABASE_URL=url, **env)
    return subprocess.run(
        [*reconcile_command(), *args], capture_output=True, env=environment, timeout=600
    )


def migrate_cli(url: str, home: Path, *args: str, **env: str) -> list[str]:
    done = run_cli("db", "migrate", "--json", *args, url=url, home=home, **env)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout)["applied"])


def schema_of(url: str, home: Path) -> dict[str, Any]:
    done = run_cli("status", "--json", url=url, home=home)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout)["database"]["schema"])


def settings_for(url: str, home: Path) -> Settings:
    # Generous timeouts: a verdict here never depends on the machine's speed.
    return Settings(home=home, database_url=url, connect_timeout_s=30, statement_timeout_s=60)


def settle(settings: Settings, env: dict[str, str], session_id: str) -> Decision:
    """One observation, decided by the one-round-trip statement, as the reconciler does."""
    observation = reconcile.observe(env, {"session_id": session_id})
    assert not isinstance(observation, str), observation
    with reconcile.connect(settings) as conn:
        return reconcile.decide(
            conn,
            session_id=session_id,
            event_id=journal.new_event_id(),
            deadline_s=settings.statement_timeout_s,
            **observation.identity(),
        )


def public_tables(url: str) -> set[str]:
    return {r[0] for r in rows(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def index_names(url: str, table: str) -> set[str]:
    found = rows(url, "SELECT indexname FROM pg_indexes WHERE tablename = %s", (table,))
    return {r[0] for r in found}


def audit(url: str) -> list[tuple[Any, ...]]:
    return rows(
        url,
        "SELECT entity_type, entity_id, event_type, actor, details FROM audit_events "
        "WHERE event_type LIKE 'session.%%' ORDER BY id",
    )


@pytest.fixture
def orchestrator(database_url: str) -> str:
    """A database where the orchestrator's migrations have run, and not this tool's."""
    assert orchestrator_migrate(database_url) == ORCHESTRATOR_MIGRATIONS
    return database_url


@pytest.fixture
def beside(orchestrator: str, tmp_path: Path) -> str:
    """The orchestrator's database, then ``reconcile db migrate``."""
    assert migrate_cli(orchestrator, tmp_path / "migrate") == BUILT
    return orchestrator


# 1. Install order ---------------------------------------------------------------------


def test_migrating_before_the_orchestrator_creates_nothing_and_says_what_to_do(
    database_url, tmp_path
):
    home = tmp_path / "home"
    assert schema_of(database_url, home)["state"] == "missing_tables"
    early = run_cli("db", "migrate", url=database_url, home=home)
    assert early.returncode == 3
    message = early.stderr.decode()
    assert "run the orchestrator's migrations first" in message and "--create-tables" in message
    assert message.count("\n") == 1 and "Traceback" not in message
    assert public_tables(database_url) == set()

    # The orchestrator installs normally, then this tool adds only its own column/index.
    assert orchestrator_migrate(database_url) == ORCHESTRATOR_MIGRATIONS
    assert schema_of(database_url, home) == {
        "state": "drifted",
        "missing_tables": [],
        "problems": [
            "column audit_events.event_id is missing",
            "no unique index on audit_events (event_id)",
        ],
    }
    assert migrate_cli(database_url, home) == BUILT
    assert migrate_cli(database_url, home) == []
    # Even told the database is its own, it duplicates none of the orchestrator's indexes.
    assert migrate_cli(database_url, home, "--create-tables") == []
    assert schema_of(database_url, home)["state"] == "current"
    assert index_names(database_url, "audit_events") == {
        "audit_events_pkey",
        "idx_audit_entity",
        "idx_audit_created",
        "audit_events_event_id",
    }
    assert index_names(database_url, "agents") == {"agents_pkey", "idx_agents_custom_name_team"}
    assert public_tables(database_url) == {
        "_genie_migrations",
        "agents",
        "executors",
        "assignments",
        "audit_events",
        "audit_feed",
    }
    names = rows(database_url, "SELECT name FROM _genie_migrations ORDER BY id")
    assert [n for (n,) in names] == ORCHESTRATOR_MIGRATIONS
    assert orchestrator_migrate(database_url) == []  # its runner still sees its own state


def test_a_database_of_its_own_gets_the_tables_and_lookup_indexes(database_url, tmp_path):
    applied = migrate_cli(database_url, tmp_path, "--create-tables")
    assert applied == [
        "created table agents",
        "created table executors",
        "created table audit_events",
        "built unique index audit_events_event_id",
        "built index agents_team_custom_name",
        "built index audit_events_entity",
    ]
    assert migrate_cli(database_url, tmp_path, "--create-tables") == []
    assert migrate_cli(database_url, tmp_path) == []  # its own tables are there: fine
    assert schema_of(database_url, tmp_path)["state"] == "current"


def test_db_up_migrates_the_embedded_database():
    base = Path(tempfile.mkdtemp(prefix="reconcile-test-up-"))  # not tmp_path: conftest.py
    home = base / "state"
    try:
        command = [*reconcile_command(), "--home", str(home), "db", "up", "--json"]
        up = subprocess.run(command, capture_output=True, env=clean_env(), timeout=300)
        assert up.returncode == 0, up.stderr
        assert "created table executors" in json.loads(up.stdout)["applied"]
        again = subprocess.run(command, capture_output=True, env=clean_env(), timeout=300)
        assert json.loads(again.stdout)["applied"] == []
    finally:
        from reconcile import _server

        _server.remove(home)  # as root, its data lives outside base
        subprocess.run(["rm", "-rf", str(base)], check=False)


# The normal path, field by field -------------------------------------------------------


def test_the_normal_path_writes_what_the_orchestrator_writes(beside, tmp_path):
    settings = settings_for(beside, tmp_path)
    env = spawn_worker(beside, "alice", "core", session_id="s-spawn")
    executor = env["GENIE_EXECUTOR_ID"]
    before = rows(beside, "SELECT updated_at FROM executors WHERE id = %s", (executor,))[0][0]

    decision = settle(settings, env, "s-live")
    assert (decision.outcome, decision.executor_id, decision.audited) == (
        "reconciled",
        executor,
        True,
    )
    new = {"old_session_id": "s-spawn", "new_session_id": "s-live", "team": "core"}
    assert audit(beside) == [("executor", executor, "session.reconciled", "alice", new)]
    stored, updated = rows(
        beside, "SELECT claude_session_id, updated_at FROM executors WHERE id = %s", (executor,)
    )[0]
    assert stored == "s-live" and updated > before
    # The orchestrator's trigger on audit_events saw the row.
    assert rows(beside, "SELECT event_type FROM audit_feed") == [("session.reconciled",)]

    assert settle(settings, env, "s-live").outcome == "confirmed"
    assert len(audit(beside)) == 1

    done = spawn_worker(beside, "bob", "core", session_id="anchor", state="done")
    decision = settle(settings, done, "s-other")
    assert (decision.outcome, decision.audited) == ("divergence_preserved", True)
    assert audit(beside)[-1] == (
        "executor",
        done["GENIE_EXECUTOR_ID"],
        "session.divergence_preserved",
        "bob",
        {
            "stored_session_id": "anchor",
            "live_session_id": "s-other",
            "executor_state": "done",
            "team": "core",
            "reason": "terminal_executor_is_recovery_anchor",
        },
    )
    anchor = done["GENIE_EXECUTOR_ID"]
    stored = rows(beside, "SELECT claude_session_id FROM executors WHERE id = %s", (anchor,))
    assert stored == [("anchor",)]


# 4. A non-UUID agent id ----------------------------------------------------------------


def test_an_agent_id_that_is_not_a_uuid_falls_back_to_name_and_team(beside, tmp_path):
    settings = settings_for(beside, tmp_path)
    # A directory agent's id is "dir:<name>"; the orchestrator ignores it for lookups.
    spawned = spawn_worker(beside, "reviewer", "core", agent_id="dir:reviewer")
    env = {"GENIE_AGENT_ID": "dir:reviewer", "GENIE_AGENT_NAME": "reviewer", "GENIE_TEAM": "core"}
    observation = reconcile.observe(env, {"session_id": "s-1"})
    assert not isinstance(observation, str)
    assert (observation.agent_id, observation.key) == (None, "agent-name:core/reviewer")
    decision = settle(settings, env, "s-1")
    assert (decision.outcome, decision.executor_id) == ("reconciled", spawned["GENIE_EXECUTOR_ID"])

    garbled = {**env, "GENIE_AGENT_ID": "0b9f3c9e-5d7a-4c1e-9a51-7f3e2d1c0b9"}  # one short
    assert settle(settings, garbled, "s-2").outcome == "reconciled"

    # A UUID is used as the agent id, in any case.
    worker = spawn_worker(beside, "carol", "core")
    by_id = {"GENIE_AGENT_ID": worker["GENIE_AGENT_ID"].upper()}
    assert reconcile.observe(by_id, {"session_id": "s"}).key.startswith("agent:")  # type: ignore[union-attr]
    assert settle(settings, {"GENIE_AGENT_ID": worker["GENIE_AGENT_ID"]}, "s-3").outcome == (
        "reconciled"
    )
    # Nothing else to go by: skipped, as the orchestrator skips it.
    assert reconcile.observe({"GENIE_AGENT_ID": "dir:x"}, {"session_id": "s"}) == (
        "missing_identity"
    )
    # This tool's own variable is taken as given.
    own = reconcile.observe({"RECONCILE_AGENT_ID": "dir:x"}, {"session_id": "s"})
    assert own.key == "agent:dir:x"  # type: ignore[union-attr]


# 5. One divergence row per (executor, stored, live) -------------------------------------


def test_a_divergence_is_audited_once_however_often_and_wherever_revalidated(beside, tmp_path):
    executor, lead = spawn_team_lead(beside, "lead", "core", session_id="anchor", state="done")
    hosts = [settings_for(beside, tmp_path / f"host-{i}") for i in range(3)]
    # Revalidations after RECONCILE_AGENT_MAX_AGE, on every host in turn.
    decisions = [settle(hosts[i % 3], lead, "s-live") for i in range(6)]
    assert {d.outcome for d in decisions} == {"divergence_preserved"}
    assert [d.audited for d in decisions] == [True, False, False, False, False, False]

    # Sixteen hosts at the same instant, on a new live session.
    barrier = threading.Barrier(16)
    results: list[Decision] = []

    def one(i: int) -> None:
        settings = settings_for(beside, tmp_path / f"racer-{i}")
        observation = reconcile.observe(lead, {"session_id": "s-next"})
        assert not isinstance(observation, str)
        with reconcile.connect(settings) as conn:
            barrier.wait(timeout=120)
            results.append(
                reconcile.decide(
                    conn,
                    session_id="s-next",
                    event_id=journal.new_event_id(),
                    deadline_s=60,
                    **observation.identity(),
                )
            )

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert len(results) == 16 and sum(d.audited for d in results) == 1

    pairs = rows(
        beside,
        "SELECT details->>'stored_session_id', details->>'live_session_id', count(*) "
        "FROM audit_events WHERE entity_id = %s GROUP BY 1, 2 ORDER BY 2",
        (executor,),
    )
    assert pairs == [("anchor", "s-live", 1), ("anchor", "s-next", 1)]

    # Replaying the journaled divergences (their audit rows look missing) adds none.
    home = tmp_path / "replayer"
    with journal.Writer(home) as writer:
        for live in ("s-live", "s-next"):
            data = {
                "executor_id": executor,
                "stored_session_id": "anchor",
                "live_session_id": live,
                "executor_state": "done",
                "agent": "lead",
                "team": "core",
            }
            writer.append("agent-name:core/lead", data, "session.divergence_preserved")
    report = reconcile.replay_to_db(settings_for(beside, home))
    assert report.audit_rows_inserted == 0
    assert len(rows(beside, "SELECT 1 FROM audit_events WHERE entity_id = %s", (executor,))) == 2


# 2. The schema, not the bookkeeping: a dump restored -----------------------------------


def pg_tool(name: str, *args: str) -> None:
    from reconcile import _server

    done = subprocess.run([str(_server.binaries() / name), *args], capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()


def test_a_restored_dump_is_found_drifted_and_repaired(orchestrator, admin_url, tmp_path):
    home = tmp_path / "home"
    settings = settings_for(orchestrator, home)
    env = spawn_worker(orchestrator, "alice", "core", session_id="s-0")
    before = tmp_path / "before.dump"  # taken before this tool was installed
    pg_tool("pg_dump", "--format=custom", f"--file={before}", f"--dbname={orchestrator}")

    assert migrate_cli(orchestrator, home) == BUILT
    assert settle(settings, env, "s-1").audited

    # The orchestrator restores its old dump: audit_events comes back without event_id.
    pg_tool("pg_restore", "--clean", "--if-exists", f"--dbname={orchestrator}", str(before))
    state = schema_of(orchestrator, home)
    assert state["state"] == "drifted"
    assert "column audit_events.event_id is missing" in state["problems"]
    human = run_cli("status", url=orchestrator, home=home).stdout.decode()
    assert "schema" in human and "reconcile db migrate" in human
    with pytest.raises(reconcile.DatabaseUnavailableError, match="event_id"):
        settle(settings, env, "s-2")

    assert migrate_cli(orchestrator, home) == BUILT
    assert schema_of(orchestrator, home)["state"] == "current"
    assert settle(settings, env, "s-2").outcome == "reconciled"
    # The orchestrator's own things came back with its dump and still work.
    assert rows(orchestrator, "SELECT count(*) FROM _genie_migrations") == [(len(MIGRATIONS),)]
    assert rows(orchestrator, "SELECT event_type FROM audit_feed") == [("session.reconciled",)]

    # And the other way: a dump of the migrated database, restored into a new one.
    after = tmp_path / "after.dump"
    pg_tool("pg_dump", "--format=custom", f"--file={after}", f"--dbname={orchestrator}")
    copy = conninfo_to_dict(orchestrator)["dbname"] + "_copy"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {copy}")
    try:
        copy_url = make_conninfo(orchestrator, dbname=copy)
        pg_tool("pg_restore", f"--dbname={copy_url}", str(after))
        assert schema_of(copy_url, home)["state"] == "current"
        assert migrate_cli(copy_url, home) == []
        assert settle(settings_for(copy_url, home), env, "s-3").outcome == "reconciled"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {copy} WITH (FORCE)")


# 3. A large audit_events, migrated while the orchestrator keeps inserting ----------------


INSERT_SQL = (
    "INSERT INTO audit_events (entity_type, entity_id, event_type, actor, details) "
    "VALUES ('executor', 'e-live', 'state.changed', 'orchestrator', '{}')"
)
# A lock request of the migration (application_name reconcile-migrate) still waiting.
MIGRATION_WAITS_SQL = """
SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE NOT l.granted AND a.application_name = 'reconcile-migrate'
"""


class Writer(threading.Thread):
    """The orchestrator's audit inserts, one per transaction, for as long as it runs.

    Its session's lock_timeout is 1 s, so PostgreSQL itself fails any insert that waits
    longer than that for a lock: counting those failures measures lock waits, which the
    machine's load does not lengthen, rather than insert latency, which it does.

    A ``blocking`` writer keeps each transaction open until it sees a lock request of
    the migration waiting (the first one from before the migration starts, so its first
    ALTER TABLE is sure to wait), then 1.5 s more, then pauses 1 s. Any lock the
    migration queued behind it for longer than a moment would hold up the other writer
    for more than a second, whatever the size of the table and the speed of the machine.
    """

    def __init__(self, url: str, *, blocking: bool = False) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.blocking = blocking
        self.inserted = 0
        self.lock_waits_over_1s = 0
        self.migration_waits_seen = 0
        self.errors: list[str] = []
        self.in_transaction = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '1s'")
            while not self.stop.is_set():
                try:
                    with conn.transaction():
                        conn.execute(INSERT_SQL)
                        if self.blocking:
                            self._hold(conn)
                    self.inserted += 1
                except errors.LockNotAvailable:
                    self.lock_waits_over_1s += 1
                except psycopg.Error as exc:
                    self.errors.append(str(exc))
                    return
                if self.blocking:
                    self.stop.wait(1.0)

    def _hold(self, conn: psycopg.Connection) -> None:
        first = not self.in_transaction.is_set()
        self.in_transaction.set()
        started = time.monotonic()
        while not self.stop.is_set():
            if conn.execute(MIGRATION_WAITS_SQL).fetchone()[0]:  # type: ignore[index]
                self.migration_waits_seen += 1
                time.sleep(1.5)
                return
            if not first and time.monotonic() - started > 1.5:
                return
            time.sleep(0.01)


def test_a_million_row_audit_table_is_migrated_without_holding_up_its_writers(
    orchestrator, tmp_path
):
    with psycopg.connect(orchestrator, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")  # no triggers: bulk load
        conn.execute(
            "INSERT INTO audit_events (entity_type, entity_id, event_type, actor, details) "
            "SELECT 'executor', 'e-' || (g % 5000), 'state.changed', 'orchestrator', "
            "jsonb_build_object('n', g) FROM generate_series(1, 1000000) AS g"
        )
    quick, blocker = Writer(orchestrator), Writer(orchestrator, blocking=True)
    quick.start()
    blocker.start()
    assert blocker.in_transaction.wait(timeout=120), blocker.errors
    deadline = time.monotonic() + 120
    while quick.inserted < 20:
        assert time.monotonic() < deadline and quick.is_alive(), quick.errors
        time.sleep(0.05)

    started = quick.inserted
    # The hook's statement timeout, absurdly short: migrations do not use it.
    applied = migrate_cli(orchestrator, tmp_path, RECONCILE_STATEMENT_TIMEOUT="0.001")
    during = quick.inserted - started
    quick.stop.set()
    blocker.stop.set()
    quick.join(timeout=60)
    blocker.join(timeout=60)

    assert applied == BUILT
    assert quick.errors == [] and blocker.errors == []
    assert quick.lock_waits_over_1s == 0 and blocker.lock_waits_over_1s == 0
    assert blocker.migration_waits_seen >= 1  # the migration did meet a busy writer
    assert during > 0  # and the other writer kept going while it ran
    total = 1_000_000 + quick.inserted + blocker.inserted
    assert rows(orchestrator, "SELECT count(*) FROM audit_events") == [(total,)]
    assert schema_of(orchestrator, tmp_path)["state"] == "current"


# An interrupted index build, and one that cannot succeed ---------------------------------


def test_an_interrupted_index_build_is_detected_and_rebuilt(beside, tmp_path):
    with psycopg.connect(beside, autocommit=True) as conn:
        conn.execute("DROP INDEX audit_events_event_id")
    # An open writer makes the concurrent build wait; cancelled while it waits, the build
    # leaves an invalid index behind, as a killed `db migrate` or a timeout would.
    writer = psycopg.connect(beside)
    writer.execute(
        "INSERT INTO audit_events (entity_type, entity_id, event_type) VALUES ('x', 'x', 'x')"
    )
    builder = psycopg.connect(beside, autocommit=True)
    pid = builder.info.backend_pid
    failure: list[BaseException] = []

    def build() -> None:
        try:
            builder.execute(
                "CREATE UNIQUE INDEX CONCURRENTLY audit_events_event_id ON audit_events (event_id)"
            )
        except psycopg.Error as exc:
            failure.append(exc)

    thread = threading.Thread(target=build)
    thread.start()
    deadline = time.monotonic() + 120
    while not rows(
        beside,
        "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
        (pid,),
    ):
        assert time.monotonic() < deadline, "the build never waited for the writer"
        time.sleep(0.05)
    rows(beside, "SELECT pg_cancel_backend(%s)", (pid,))
    thread.join(timeout=60)
    writer.rollback()
    writer.close()
    builder.close()
    assert len(failure) == 1 and isinstance(failure[0], errors.QueryCanceled)

    state = schema_of(beside, tmp_path)
    assert state["problems"] == ["index audit_events_event_id is invalid (an interrupted build)"]
    assert migrate_cli(beside, tmp_path) == [
        "dropped index audit_events_event_id (invalid or not unique)",
        "built unique index audit_events_event_id",
    ]
    valid = rows(
        beside,
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'audit_events_event_id'::regclass",
    )
    assert valid == [(True,)]


def test_duplicate_event_ids_are_reported_and_leave_no_half_built_index(orchestrator, tmp_path):
    with psycopg.connect(orchestrator, autocommit=True) as conn:
        conn.execute("ALTER TABLE audit_events ADD COLUMN event_id uuid")
        for _ in range(2):
            conn.execute(
                "INSERT INTO audit_events (entity_type, entity_id, event_type, event_id) "
                "VALUES ('x', 'x', 'x', '0190f3c9-5d7a-7c1e-9a51-7f3e2d1c0b9a')"
            )
    done = run_cli("db", "migrate", url=orchestrator, home=tmp_path)
    assert done.returncode == 3
    assert b"duplicate event_id" in done.stderr and b"HAVING count(*) > 1" in done.stderr
    assert "audit_events_event_id" not in index_names(orchestrator, "audit_events")


# 6. Indexes that duplicate the orchestrator's --------------------------------------------


def test_lookup_indexes_duplicating_the_orchestrators_are_dropped(beside, tmp_path):
    with psycopg.connect(beside, autocommit=True) as conn:  # as an earlier version made them
        conn.execute("CREATE INDEX agents_team_custom_name ON agents (team, custom_name)")
        conn.execute("CREATE INDEX audit_events_entity ON audit_events (entity_type, entity_id)")
    assert schema_of(beside, tmp_path)["problems"] == [
        "index agents_team_custom_name duplicates idx_agents_custom_name_team",
        "index audit_events_entity duplicates idx_audit_entity",
    ]
    assert migrate_cli(beside, tmp_path) == [
        "dropped index agents_team_custom_name (duplicates idx_agents_custom_name_team)",
        "dropped index audit_events_entity (duplicates idx_audit_entity)",
    ]
    assert schema_of(beside, tmp_path)["state"] == "current"
