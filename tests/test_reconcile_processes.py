"""Reconciliation across real hook processes on a real PostgreSQL: zero-DB hits proven on
the server side, racing forks settled by one reconciler, pending observations replayed.

Hooks leave the database work to a detached reconciler, so each test waits for the
observations to be settled (``wait_settled``) before it looks at the database.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from reconcile_helpers import (
    audit_rows,
    cli,
    hook_process,
    query,
    run_hook,
    seed,
    session_of,
    wait_idle,
    wait_settled,
)

import journal
from reconcile import (
    Settings,
    database_activity,
    migrate,
    reconciler_running,
    replay_to_db,
    verify,
)


@pytest.fixture
def db(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn, create_tables=True)
    return database_url


def server_sessions(probe: psycopg.Connection, database: str) -> int:
    """Connections ever made to ``database``, as the server counts them."""
    return database_activity(probe, database)[1]


def test_a_hit_makes_zero_database_calls_across_processes(tmp_path: Path, db: str):
    seed(db, [("a-1", "alice", "core", "e-1")], [("e-1", "a-1", None, "running")])
    home = tmp_path / "home"
    payload = {"session_id": "s-1", "hook_event_name": "PreToolUse"}
    run_hook(home, db, payload, RECONCILE_EXECUTOR_ID="e-1")  # the miss
    run_hook(home, db, payload, GENIE_AGENT_NAME="alice", GENIE_TEAM="core")  # another key
    wait_settled(home)
    name = conninfo_to_dict(db)["dbname"]
    with psycopg.connect(make_conninfo(db, dbname="postgres"), autocommit=True) as probe:
        before = server_sessions(probe, name)
        for identity in [{"RECONCILE_EXECUTOR_ID": "e-1"}] * 5 + [
            {"GENIE_AGENT_NAME": "alice", "GENIE_TEAM": "core"}
        ] * 5:
            run_hook(home, db, payload, **identity)
        after = server_sessions(probe, name)
        assert after - before == 0
        assert len(list(journal.history(home))) == 4  # hits wrote nothing either
        run_hook(home, db, {"session_id": "s-2"}, RECONCILE_EXECUTOR_ID="e-1")  # a miss
        wait_settled(home)
        assert server_sessions(probe, name) - after == 1  # the probe does see a connection


def test_a_hit_needs_no_database_at_all(tmp_path: Path, db: str):
    seed(db, [], [("e-1", None, None, "running")])
    home = tmp_path / "home"
    run_hook(home, db, {"session_id": "s-1"}, RECONCILE_EXECUTOR_ID="e-1")
    wait_settled(home)
    journal.compact(home)
    run_hook(
        home, "postgresql://x@127.0.0.1:9/gone", {"session_id": "s-1"}, RECONCILE_EXECUTOR_ID="e-1"
    )
    types = [r.type for r in journal.history(home)]
    assert types == ["session.observed", "session.reconciled"]  # nothing new: a hit


def test_64_forks_racing_on_one_executor_write_one_reconciled_row(tmp_path: Path, db: str):
    seed(db, [("a-1", "alice", "core", "e-1")], [("e-1", "a-1", "s-old", "working")])
    home = tmp_path / "home"
    procs = [
        hook_process(home, db, {"session_id": "s-new"}, RECONCILE_EXECUTOR_ID="e-1")
        for _ in range(64)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert (proc.returncode, out) == (0, b""), err
    wait_settled(home)
    rows = audit_rows(db, "e-1")
    assert [r[1] for r in rows] == ["session.reconciled"]
    assert session_of(db, "e-1") == "s-new"
    types = [r.type for r in journal.history(home)]
    assert types.count("session.reconciled") == 1
    assert set(types) <= {"session.observed", "session.reconciled", "session.confirmed"}
    assert rows[0][0] in {r.id for r in journal.history(home)}


def test_64_forks_on_64_executors_lose_nothing(tmp_path: Path, db: str):
    n = 64
    seed(
        db,
        [(f"a-{i}", f"agent-{i}", "team", f"e-{i}") for i in range(n)],
        [(f"e-{i}", f"a-{i}", f"old-{i}", "running") for i in range(n)],
    )
    home = tmp_path / "home"
    procs = []
    for i in range(n):
        identity = (
            {"RECONCILE_EXECUTOR_ID": f"e-{i}"}
            if i % 2
            else {"GENIE_AGENT_NAME": f"agent-{i}", "GENIE_TEAM": "team"}
        )
        procs.append(hook_process(home, db, {"session_id": f"new-{i}"}, **identity))
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert (proc.returncode, out) == (0, b""), err
    wait_settled(home)
    updated = query(db, "SELECT count(*) FROM executors WHERE claude_session_id LIKE 'new-%'")
    assert updated == [(n,)]
    assert len(audit_rows(db)) == n
    report = journal.compact(home, wait=True)
    assert report.entries == n
    assert len(journal.load(home)) == n
    assert all(r.type == "session.reconciled" for r in journal.load(home).values())
    settings = Settings.from_env({}, home=home, database_url=db)
    assert verify(settings, db=True).ok


def test_database_down_then_back_replays_pending_exactly_once(tmp_path: Path, db: str):
    seed(db, [("a-1", "alice", "core", "e-1")], [("e-1", "a-1", "s-old", "running")])
    home = tmp_path / "home"
    down = "postgresql://postgres@127.0.0.1:9/gone"
    identity = {"GENIE_AGENT_NAME": "alice", "GENIE_TEAM": "core"}
    # The database comes back under another URL here: the reconcilers that met the dead
    # one give up at once (RECONCILE_RETRY_HORIZON=0) rather than retry it.
    for session in ("s-mid", "s-new", "s-new", "s-new"):
        run_hook(home, down, {"session_id": session}, RECONCILE_RETRY_HORIZON="0", **identity)
    wait_settled_or_backoff(home)
    # One line per (key, session id), not per tool use.
    assert [r.type for r in journal.history(home)] == ["session.observed"] * 2
    assert session_of(db, "e-1") == "s-old"

    settings = Settings.from_env({}, home=home, database_url=db)
    first = replay_to_db(settings)
    assert (first.pending, first.superseded, first.outcomes) == (1, 1, {"reconciled": 1})
    assert session_of(db, "e-1") == "s-new"
    assert [r[1] for r in audit_rows(db)] == ["session.reconciled"]

    second = replay_to_db(settings)
    assert (second.pending, second.superseded, second.outcomes) == (0, 0, {})
    assert second.audit_rows_inserted == 0
    assert len(audit_rows(db)) == 1
    assert verify(settings, db=True).ok


def test_replay_restores_missing_audit_rows_once(tmp_path: Path, db: str):
    seed(db, [], [("e-1", None, "s-old", "running"), ("e-2", None, "x", "done")])
    home = tmp_path / "home"
    run_hook(home, db, {"session_id": "s-new"}, RECONCILE_EXECUTOR_ID="e-1")
    run_hook(home, db, {"session_id": "s-live"}, RECONCILE_EXECUTOR_ID="e-2")
    wait_settled(home)
    original = audit_rows(db)
    query(db, "DELETE FROM audit_events RETURNING id")  # restored from an older backup
    settings = Settings.from_env({}, home=home, database_url=db)
    assert replay_to_db(settings).audit_rows_inserted == 2
    assert audit_rows(db) == original
    assert replay_to_db(settings).audit_rows_inserted == 0


def wait_settled_or_backoff(home: Path) -> None:
    """Wait until no reconciler runs (with the database down, the last one leaves a
    backoff and the observations in place)."""
    import time

    give_up = time.monotonic() + 180
    while reconciler_running(home):
        assert time.monotonic() < give_up, "a reconciler kept running"
        time.sleep(0.05)


def test_database_values_too_long_for_a_record_are_cut_and_the_key_settles(tmp_path: Path, db: str):
    """An agent name and team of 5,000 characters (and a terminal executor's stored id of
    as many) make the outcome record exceed one journal line: it used to be dropped
    (journal.append_failed) after the row was updated and audited, leaving the key
    pending. The record now holds their start and says which fields were cut."""
    name, team, stored = "n" * 5000, "t" * 5000, "s" * 5000
    seed(
        db,
        [("a-9", name, team, "e-9")],
        [("e-9", "a-9", "s-old", "running"), ("e-10", "a-9", stored, "done")],
    )
    home = tmp_path / "home"
    run_hook(home, db, {"session_id": "s-new"}, RECONCILE_EXECUTOR_ID="e-9")
    run_hook(home, db, {"session_id": "s-live"}, RECONCILE_EXECUTOR_ID="e-10")
    wait_settled(home)

    assert session_of(db, "e-9") == "s-new" and session_of(db, "e-10") == stored
    state = journal.load(home)
    reconciled, preserved = state["executor:e-9"], state["executor:e-10"]
    assert reconciled.type == "session.reconciled"
    assert reconciled.data["new_session_id"] == "s-new"  # what the hit needs, whole
    assert reconciled.data["truncated"] == ["agent", "team"]
    assert name.startswith(reconciled.data["agent"]) and team.startswith(reconciled.data["team"])
    assert preserved.type == "session.divergence_preserved"
    assert preserved.data["live_session_id"] == "s-live"
    assert preserved.data["truncated"] == ["agent", "team", "stored_session_id"]
    [(event_id, _, actor, details)] = audit_rows(db, "e-9")  # the audit row holds it whole
    assert (event_id, actor, details["team"]) == (reconciled.id, name, team)

    status = cli("status", "--json", home=home, url=db)
    assert json.loads(status.stdout)["pending"] == 0
    settings = Settings.from_env({}, home=home, database_url=db)
    assert verify(settings, db=True).ok  # the cut stored id is compared by its start
    run_hook(home, db, {"session_id": "s-new"}, RECONCILE_EXECUTOR_ID="e-9")  # a hit now
    assert [r.type for r in journal.history(home) if r.key == "executor:e-9"] == [
        "session.observed",
        "session.reconciled",
    ]


def test_a_late_settlement_never_writes_onto_an_executor_spawned_after_it(tmp_path: Path, db: str):
    """Observed by agent identity while the database was away, settled after a respawn:
    the agent's current executor is then one that did not exist when the session id was
    seen. Writing it there put an old session's id on the new executor."""
    seed(db, [("a-1", "alice", "core", "e-1")], [("e-1", "a-1", "s-old", "running")])
    home = tmp_path / "home"
    down = "postgresql://postgres@127.0.0.1:9/gone"
    run_hook(
        home,
        down,
        {"session_id": "s-1"},
        GENIE_AGENT_NAME="alice",
        GENIE_TEAM="core",
        RECONCILE_RETRY_HORIZON="0",  # its reconciler gives up: the database comes back
    )  # under another URL here, and one retrying the dead URL would hold the backoff
    wait_idle(home)
    [observed] = journal.history(home)
    # The respawn, after the observation: the database's clock has passed its time.
    _wait_database_clock_past(db, observed.id)
    seed(db, [], [("e-2", "a-1", "s-2", "running")])
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE agents SET current_executor_id = 'e-2' WHERE id = 'a-1'")

    replayed = cli("replay", "--to-db", "--json", home=home, url=db)  # a real process
    assert replayed.returncode == 0, replayed.stderr
    assert session_of(db, "e-2") == "s-2"  # the new executor keeps its own session
    assert session_of(db, "e-1") == "s-old"
    assert audit_rows(db) == []
    latest = journal.load(home)["agent-name:core/alice"]
    assert latest.type == "session.rejected" and "after it was observed" in latest.data["error"]
    assert json.loads(cli("status", "--json", home=home, url=db).stdout)["pending"] == 0

    # The session, if it still runs, is observed afresh by its next hook and settles
    # by the usual rule (here: after the agent max age, as for any agent-keyed entry).
    run_hook(
        home,
        db,
        {"session_id": "s-3"},
        GENIE_AGENT_NAME="alice",
        GENIE_TEAM="core",
    )
    wait_settled(home)
    assert session_of(db, "e-2") == "s-3"


def _wait_database_clock_past(url: str, event_id: str) -> None:
    """Until the database's now() is past the event's time (clocks of one machine)."""
    import time

    limit = time.monotonic() + 60
    while True:
        [(after,)] = query(
            url, "SELECT now() > to_timestamp(%s / 1e6)", (journal.event_time_us(event_id),)
        )
        if after:
            return
        assert time.monotonic() < limit, "the database clock never passed the observation"
        time.sleep(0.01)
