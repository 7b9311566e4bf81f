"""The earlier handler's behaviours, as scenarios on a real PostgreSQL.

``reconcile_session`` runs both halves of the outbox in the test's process: the hook's
(observe, journal ``session.observed``) and the reconciler's (settle, journal the outcome).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psycopg
import pytest
import structlog
from freezegun import freeze_time
from reconcile_helpers import audit_rows, query, seed, session_of

import journal
from reconcile import Settings, migrate, observe, reconcile_session, settle
from reconcile._store import decide


@pytest.fixture
def db(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn, create_tables=True)
    seed(
        database_url,
        agents=[
            ("a-1", "alice", "core", "e-1"),
            ("a-2", "bob", "core", "e-2"),
            ("a-3", "carol", "core", None),
        ],
        executors=[
            ("e-1", "a-1", "s-old", "running"),
            ("e-2", "a-2", None, "idle"),
            ("e-done", "a-2", "anchor", "done"),
            ("e-error", "a-2", "anchor", "error"),
            ("e-term", "a-2", "anchor", "terminated"),
            ("e-null-done", "a-2", None, "done"),
        ],
    )
    return database_url


@pytest.fixture
def settings(tmp_path: Path, db: str) -> Settings:
    return Settings.from_env({}, home=tmp_path / "home", database_url=db, fsync=False)


def journaled(settings: Settings) -> list[journal.Record]:
    return list(journal.history(settings.home))


def outcomes(settings: Settings) -> list[journal.Record]:
    """The journaled records but the observations."""
    return [r for r in journaled(settings) if r.type != "session.observed"]


EXEC_1 = {"RECONCILE_EXECUTOR_ID": "e-1"}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({}, "missing_session_id"),
        ({"session_id": ""}, "missing_session_id"),
        ({"session_id": 42}, "invalid_session_id"),
        ({"session_id": ["s"]}, "invalid_session_id"),
        ({"session_id": "s\x00x"}, "invalid_session_id"),
        ({"session_id": "s\nx"}, "invalid_session_id"),
        ({"session_id": "x" * 100_000}, "invalid_session_id"),
    ],
)
def test_bad_session_id_is_a_logged_no_op(settings, payload, reason):
    with structlog.testing.capture_logs() as logs:
        outcome = reconcile_session(settings, EXEC_1, payload)
    assert (outcome.kind, outcome.reason) == ("skipped", reason)
    assert [(e["event"], e["reason"], e["log_level"]) for e in logs] == [
        ("hook.skipped", reason, "info")
    ]
    assert session_of(settings.database_url, "e-1") == "s-old"
    assert journaled(settings) == []


def test_missing_identity_is_a_no_op(settings):
    outcome = reconcile_session(settings, {}, {"session_id": "s-new"})
    assert (outcome.kind, outcome.reason) == ("skipped", "missing_identity")
    name_only = reconcile_session(settings, {"RECONCILE_AGENT_NAME": "alice"}, {"session_id": "s"})
    assert name_only.reason == "missing_identity"
    bad = reconcile_session(settings, {"RECONCILE_EXECUTOR_ID": "e\x01"}, {"session_id": "s"})
    assert bad.reason == "invalid_executor_id"
    assert audit_rows(settings.database_url) == []


def test_rotation_while_active_is_reconciled_with_one_audit_row(settings):
    outcome = reconcile_session(settings, EXEC_1, {"session_id": "s-new"})
    assert outcome.kind == "reconciled"
    assert session_of(settings.database_url, "e-1") == "s-new"
    [(event_id, event_type, actor, details)] = audit_rows(settings.database_url)
    assert event_type == "session.reconciled"
    assert actor == "alice"
    assert details == {"old_session_id": "s-old", "new_session_id": "s-new", "team": "core"}
    observed, record = journaled(settings)
    assert observed.type == "session.observed" and observed.key == "executor:e-1"
    assert observed.data["session_id"] == "s-new"
    assert (record.id, record.type, record.key) == (event_id, event_type, "executor:e-1")
    assert outcome.event_id == event_id


def test_first_capture_is_reconciled_with_old_null(settings):
    env = {"RECONCILE_AGENT_NAME": "bob", "RECONCILE_TEAM": "core"}
    assert reconcile_session(settings, env, {"session_id": "s-1"}).kind == "reconciled"
    [(_, _, actor, details)] = audit_rows(settings.database_url)
    assert details["old_session_id"] is None and details["new_session_id"] == "s-1"
    assert actor == "bob"


def test_equal_session_is_confirmed_without_update_or_audit(settings):
    before = query(settings.database_url, "SELECT updated_at FROM executors WHERE id = 'e-1'")
    assert reconcile_session(settings, EXEC_1, {"session_id": "s-old"}).kind == "confirmed"
    after = query(settings.database_url, "SELECT updated_at FROM executors WHERE id = 'e-1'")
    assert before == after
    assert audit_rows(settings.database_url) == []
    assert [r.type for r in journaled(settings)] == ["session.observed", "session.confirmed"]


@pytest.mark.parametrize("executor", ["e-done", "e-error", "e-term"])
def test_terminal_executor_keeps_its_recovery_anchor(settings, executor):
    outcome = reconcile_session(
        settings, {"RECONCILE_EXECUTOR_ID": executor}, {"session_id": "s-live"}
    )
    assert outcome.kind == "divergence_preserved"
    assert session_of(settings.database_url, executor) == "anchor"
    [(_, event_type, actor, details)] = audit_rows(settings.database_url)
    state = query(settings.database_url, "SELECT state FROM executors WHERE id = %s", (executor,))
    assert event_type == "session.divergence_preserved"
    assert actor == "bob"
    assert details == {
        "stored_session_id": "anchor",
        "live_session_id": "s-live",
        "executor_state": state[0][0],
        "team": "core",
        "reason": "terminal_executor_is_recovery_anchor",
    }


def test_terminal_executor_with_null_is_written(settings):
    env = {"RECONCILE_EXECUTOR_ID": "e-null-done"}
    assert reconcile_session(settings, env, {"session_id": "s-1"}).kind == "reconciled"
    assert session_of(settings.database_url, "e-null-done") == "s-1"


def test_repeat_with_the_same_id_writes_no_second_audit_row(settings):
    assert reconcile_session(settings, EXEC_1, {"session_id": "s-new"}).kind == "reconciled"
    assert reconcile_session(settings, EXEC_1, {"session_id": "s-new"}).kind == "hit"
    with journal.Writer(settings.home) as writer:  # an operator forgets the entry
        writer.forget("executor:e-1", type="cache.forgotten")
    assert reconcile_session(settings, EXEC_1, {"session_id": "s-new"}).kind == "confirmed"
    assert len(audit_rows(settings.database_url)) == 1


def test_agent_without_current_executor_changes_nothing(settings):
    env = {"RECONCILE_AGENT_ID": "a-3"}
    assert reconcile_session(settings, env, {"session_id": "s"}).kind == "unresolved"
    unknown = {"RECONCILE_AGENT_NAME": "nobody", "RECONCILE_TEAM": "core"}
    assert reconcile_session(settings, unknown, {"session_id": "s"}).kind == "unresolved"
    assert audit_rows(settings.database_url) == []
    assert [r.type for r in outcomes(settings)] == ["session.unresolved"] * 2
    # Trusted for RECONCILE_NEGATIVE_TTL: the next hook asks nothing of anyone.
    assert reconcile_session(settings, env, {"session_id": "s"}).kind == "hit"


def test_no_executor_is_asked_again_after_the_negative_ttl(settings):
    env = {"RECONCILE_AGENT_ID": "a-3"}
    with freeze_time("2029-06-01 10:00:00"):
        assert reconcile_session(settings, env, {"session_id": "s"}).kind == "unresolved"
    with freeze_time("2029-06-01 10:00:59"):
        assert reconcile_session(settings, env, {"session_id": "s"}).kind == "hit"
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute("UPDATE agents SET current_executor_id = 'e-2' WHERE id = 'a-3'")
    with freeze_time("2029-06-01 10:01:01"):
        assert reconcile_session(settings, env, {"session_id": "s"}).kind == "reconciled"
    assert session_of(settings.database_url, "e-2") == "s"


def test_corrupt_journal_is_tolerated(settings):
    directory = settings.home / "journal"
    directory.mkdir(parents=True)
    (directory / "1-00.jnl").write_bytes(b'garbage\n\xff\xfe{"crc":\nnull\n[1,2]\n{"torn')
    (directory / "2-00.jnl").symlink_to("/etc/passwd")
    assert reconcile_session(settings, EXEC_1, {"session_id": "s-new"}).kind == "reconciled"
    assert reconcile_session(settings, EXEC_1, {"session_id": "s-new"}).kind == "hit"
    report = journal.compact(settings.home)
    assert report.entries == 1 and report.skipped.total >= 5


def test_identity_sources_and_precedence():
    payload = {"session_id": "s", "teammate_name": "p-name", "team_name": "p-team"}
    from_payload = observe({}, payload)
    assert from_payload.key == "agent-name:p-team/p-name"
    genie = observe({"GENIE_AGENT_NAME": "g", "GENIE_TEAM": "gt"}, payload)
    assert (genie.agent_name, genie.team) == ("g", "gt")
    both = observe({"GENIE_AGENT_NAME": "g", "RECONCILE_AGENT_NAME": "r"}, payload)
    assert both.agent_name == "r"
    agent = "0b9f3c9e-5d7a-4c1e-9a51-7f3e2d1c0b9a"
    by_id = observe({"GENIE_AGENT_ID": agent, "RECONCILE_TEAM": "t"}, payload)
    assert by_id.key == f"agent:{agent}"
    by_executor = observe({"GENIE_EXECUTOR_ID": "e-9", "RECONCILE_AGENT_ID": "a"}, payload)
    assert by_executor.key == "executor:e-9"
    slash = observe({"RECONCILE_TEAM": "a/b", "RECONCILE_AGENT_NAME": "c"}, {"session_id": "s"})
    other = observe({"RECONCILE_TEAM": "a", "RECONCILE_AGENT_NAME": "b/c"}, {"session_id": "s"})
    assert slash.key != other.key


def test_an_answer_from_the_future_is_trusted_no_longer_than_its_limit(settings):
    # Journaled while the clock was an hour ahead, then the clock stepped back.
    nobody, agent = {"RECONCILE_AGENT_ID": "a-3"}, {"RECONCILE_AGENT_ID": "a-1"}
    with freeze_time("2031-06-01 11:00:00"):
        assert reconcile_session(settings, nobody, {"session_id": "s"}).kind == "unresolved"
        assert reconcile_session(settings, agent, {"session_id": "s"}).kind == "reconciled"
    with freeze_time("2031-06-01 10:00:00"):  # an hour old in the future: asked again
        assert reconcile_session(settings, nobody, {"session_id": "s"}).kind == "unresolved"
        assert reconcile_session(settings, agent, {"session_id": "s"}).kind == "confirmed"
    # The new answers sort after the old ones (an hour ahead still): trusted once within
    # the limit of their time, either side of it (60 s negative TTL, 300 s max age).
    with freeze_time("2031-06-01 10:59:30"):
        assert reconcile_session(settings, nobody, {"session_id": "s"}).kind == "hit"
    with freeze_time("2031-06-01 10:56:00"):
        assert reconcile_session(settings, agent, {"session_id": "s"}).kind == "hit"


def test_a_settlement_of_ours_never_makes_the_next_observation_stale(db):
    """A rotation seen right after a session start: both session ids observed before the
    first settles. In tables of this tool's own, that settlement moved the only time
    column (updated_at) past the second observation, which was then judged stale (a
    respawn) and never written."""
    with psycopg.connect(db, autocommit=True) as conn:
        [(observed_us,)] = conn.execute(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1e6)::bigint"
        ).fetchall()
        decisions = [
            decide(
                conn,
                session_id=session,
                event_id=str(uuid.uuid4()),
                executor_id=None,
                agent_id=None,
                agent_name="alice",
                team="core",
                deadline_s=30,
                observed_us=observed_us,
            ).outcome
            for session in ("s-1", "s-2")
        ]
    assert decisions == ["reconciled", "reconciled"]
    assert session_of(db, "e-1") == "s-2"


def test_tables_of_our_own_made_before_started_at_gain_it(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE executors (id text PRIMARY KEY, agent_id text, "
            "claude_session_id text, state text NOT NULL DEFAULT 'spawning', "
            "updated_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(
            "INSERT INTO executors (id, state, updated_at) VALUES ('e-1', 'running', "
            "'2026-01-02T03:04:05Z')"
        )
        assert "added column executors.started_at" in migrate(conn, create_tables=True)
        assert migrate(conn, create_tables=True) == []  # once
        conn.execute("INSERT INTO executors (id) VALUES ('e-2')")
    [(old, new)] = query(
        database_url,
        "SELECT min(started_at) = '2026-01-02T03:04:05Z', max(started_at) > now() - "
        "interval '1 hour' FROM executors",
    )
    assert old and new  # a row there began when it was last updated at the latest


def test_agent_keyed_entries_revalidate_after_max_age(settings):
    # In the future of every id issued so far: event ids never go back in time.
    env = {"RECONCILE_AGENT_ID": "a-1"}
    with freeze_time("2030-01-01 10:00:00"):
        assert reconcile_session(settings, env, {"session_id": "s-x"}).kind == "reconciled"
    with freeze_time("2030-01-01 10:04:59"):
        assert reconcile_session(settings, env, {"session_id": "s-x"}).kind == "hit"
    with freeze_time("2030-01-01 10:05:01"):
        assert reconcile_session(settings, env, {"session_id": "s-x"}).kind == "confirmed"
    with freeze_time("2030-01-02 10:00:00"):  # executor keys do not age
        reconcile_session(settings, EXEC_1, {"session_id": "s-x"})
    with freeze_time("2030-02-01 10:00:00"):
        assert reconcile_session(settings, EXEC_1, {"session_id": "s-x"}).kind == "hit"


def test_unreachable_database_journals_pending_and_never_leaks_the_password(tmp_path):
    url = "postgresql://someone:hunter2secret@127.0.0.1:9/nowhere"
    settings = Settings.from_env({}, home=tmp_path, database_url=url, fsync=False)
    reconcile_session_logged = []
    with structlog.testing.capture_logs() as logs:
        outcome = reconcile_session(settings, EXEC_1, {"session_id": "s-1"})
        reconcile_session_logged.extend(logs)
    assert outcome.kind == "pending"
    [record] = journal.history(tmp_path)
    assert record.type == "session.observed"
    assert record.data == {
        "identity": {"executor_id": "e-1", "agent_id": None, "agent_name": None, "team": None},
        "session_id": "s-1",
    }
    assert "hunter2secret" not in repr(reconcile_session_logged) + str(outcome)
    assert "hunter2secret" not in repr(settings)


def test_missing_tables_are_pending_not_errors(tmp_path, database_url):
    settings = Settings.from_env({}, home=tmp_path, database_url=database_url)
    assert reconcile_session(settings, EXEC_1, {"session_id": "s"}).kind == "pending"


def test_statement_timeout_is_pending_within_its_bound(settings):
    fast = Settings.from_env(
        {}, home=settings.home, database_url=settings.database_url, statement_timeout_s=0.5
    )
    with psycopg.connect(settings.database_url) as blocker:
        blocker.execute("SELECT 1 FROM executors WHERE id = 'e-1' FOR UPDATE")
        observation = observe(EXEC_1, {"session_id": "s-new"})
        outcome = settle(fast, observation)
    assert outcome.kind == "pending"
    assert session_of(settings.database_url, "e-1") == "s-old"


def test_connect_timeout_bounds_a_silent_server(tmp_path):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts TCP, never answers the PostgreSQL handshake
    port = listener.getsockname()[1]
    settings = Settings.from_env(
        {}, home=tmp_path, database_url=f"postgresql://x@127.0.0.1:{port}/d", fsync=False
    )
    try:
        outcome = reconcile_session(settings, EXEC_1, {"session_id": "s"})
    finally:
        listener.close()
    assert outcome.kind == "pending"
    # Our own timer gave up, not libpq (which cannot wait less than 2 s).
    assert outcome.reason is not None and "did not answer within 1 s" in outcome.reason


def test_logs_are_json_lines_in_the_home_and_bounded(tmp_path):
    from reconcile import configure_logging

    settings = Settings.from_env({}, home=tmp_path, log_max_bytes=2000)
    configure_logging(settings)
    try:
        for _ in range(100):
            reconcile_session(settings, {}, {"session_id": "s"})
    finally:
        structlog.reset_defaults()
    log = tmp_path / "log" / "reconcile.log"
    assert log.stat().st_size <= 2000 + 400
    assert (tmp_path / "log" / "reconcile.log.1").exists()
    assert oct(os.stat(log).st_mode & 0o777) == "0o600"
    import json

    assert json.loads(log.read_text().splitlines()[-1])["event"] == "hook.skipped"
