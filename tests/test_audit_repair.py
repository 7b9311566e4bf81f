"""Audit repair after a database restored from an older backup, and audit checks: real
hook processes, a real PostgreSQL, the command line as a user runs it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from reconcile_helpers import (
    audit_rows,
    cli,
    command_line_database,
    query,
    run_hook,
    seed,
    session_of,
    wait_settled,
)

import journal


@pytest.fixture
def db(database_url: str, tmp_path: Path) -> str:
    return command_line_database(database_url, tmp_path)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def rotate(home: Path, db: str, executor: str, *sessions: str) -> None:
    """Real hooks of ``executor`` seeing each session in turn, each settled."""
    for session in sessions:
        run_hook(home, db, {"session_id": session}, RECONCILE_EXECUTOR_ID=executor)
        wait_settled(home)


def change_id(home: Path, executor: str, old: str | None, new: str) -> str:
    """The event id of the journaled change ``old -> new`` of ``executor``."""
    [found] = [
        r.id
        for r in journal.history(home)
        if r.type == "session.reconciled"
        and r.data["executor_id"] == executor
        and (r.data["old_session_id"], r.data["new_session_id"]) == (old, new)
    ]
    return found


def restore_backup(db: str, executor: str, session: str | None, *event_ids: str) -> None:
    """What restoring a dump taken before those changes does to the tables: the row back
    on ``session``, the changes' audit rows gone."""
    query(
        db,
        "UPDATE executors SET claude_session_id = %s WHERE id = %s RETURNING id",
        (session, executor),
    )
    for event_id in event_ids:
        query(db, "DELETE FROM audit_events WHERE event_id = %s RETURNING id", (event_id,))


def pairs(db: str, executor: str) -> list[tuple[str, str | None, str]]:
    return [
        (event_id, d.get("old_session_id"), d.get("new_session_id"))
        for event_id, kind, _, d in audit_rows(db, executor)
        if kind == "session.reconciled"
    ]


def replay_to_db(home: Path, db: str) -> dict:
    done = cli("replay", "--to-db", "--json", home=home, url=db)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# -- replay --to-db puts back what the journal knows -------------------------------------------


def test_replay_to_db_puts_a_restored_row_back_with_one_audit_row(home, db):
    rotate(home, db, "e-1", "s-1", "s-2")
    change = change_id(home, "e-1", "s-1", "s-2")
    restore_backup(db, "e-1", "s-1", change)  # the dump was taken between the two

    report = replay_to_db(home, db)
    assert (report["rows_restored"], report["audit_rows_inserted"]) == (1, 1), report
    assert session_of(db, "e-1") == "s-2"
    assert pairs(db, "e-1")[-1] == (change, "s-1", "s-2")
    assert [p for p in pairs(db, "e-1") if p[1:] == ("s-1", "s-2")] == [(change, "s-1", "s-2")]
    human = cli("replay", "--to-db", home=home, url=db)
    assert "restored:" in human.stdout.decode() and "0 rows" in human.stdout.decode()
    assert replay_to_db(home, db)["rows_restored"] == 0  # nothing left to put back
    assert cli("verify", "--db", home=home, url=db).returncode == 0

    # The documented way to make a hook ask again: it now confirms, audits nothing.
    assert cli("forget", "executor:e-1", home=home, url=db).returncode == 0
    rotate(home, db, "e-1", "s-2")
    assert journal.load(home)["executor:e-1"].type == "session.confirmed"
    assert [p[1:] for p in pairs(db, "e-1")] == [("s-old", "s-1"), ("s-1", "s-2")]


def test_forget_and_a_hook_before_replay_to_db_still_audit_the_change_once(home, db):
    """The other order: the operator forgets the key first, a hook settles s-1 -> s-2
    again under a new event id, then replay --to-db finds the journal's first change of
    that pair missing by id: the change is audited already, so it is not inserted."""
    rotate(home, db, "e-1", "s-1", "s-2")
    restore_backup(db, "e-1", "s-1", change_id(home, "e-1", "s-1", "s-2"))
    assert cli("forget", "executor:e-1", home=home, url=db).returncode == 0
    rotate(home, db, "e-1", "s-2")
    assert session_of(db, "e-1") == "s-2"

    report = replay_to_db(home, db)
    assert (report["rows_restored"], report["audit_rows_inserted"]) == (0, 0), report
    assert [p[1:] for p in pairs(db, "e-1")] == [("s-old", "s-1"), ("s-1", "s-2")]
    assert cli("verify", "--db", home=home, url=db).returncode == 0


def test_replay_to_db_leaves_alone_what_the_journal_does_not_explain(home, db):
    seed(
        db,
        [],
        [
            ("e-3", None, "s-old", "running"),  # the orchestrator writes an id of its own
            ("e-4", None, "s-old", "running"),  # ended by the orchestrator: an anchor
            ("e-5", None, "s-old", "running"),  # NULL, a value the journal never saw
            ("e-6", None, None, "running"),  # NULL, a value the journal saw: a restore
        ],
    )
    for executor in ("e-3", "e-4", "e-5", "e-6"):
        rotate(home, db, executor, f"{executor}-a", f"{executor}-b")
    query(
        db, "UPDATE executors SET claude_session_id = 'orchestrator' WHERE id = 'e-3' RETURNING id"
    )
    query(
        db,
        "UPDATE executors SET claude_session_id = 'e-4-a', state = 'done' "
        "WHERE id = 'e-4' RETURNING id",
    )
    query(
        db, "UPDATE executors SET claude_session_id = NULL WHERE id IN ('e-5', 'e-6') RETURNING id"
    )
    before = audit_rows(db)

    report = replay_to_db(home, db)
    assert (report["rows_restored"], report["rows_left_alone"]) == (1, 3), report
    assert report["audit_rows_inserted"] == 0
    assert [session_of(db, e) for e in ("e-3", "e-4", "e-5", "e-6")] == [
        "orchestrator",
        "e-4-a",
        None,
        "e-6-b",
    ]
    assert audit_rows(db) == before  # the restored change's audit row was there: not again
    human = cli("replay", "--to-db", home=home, url=db).stdout.decode()
    assert "left alone:" in human and "3 rows" in human


def test_a_row_a_late_settlement_wrote_is_not_taken_for_an_older_one(home, db):
    """A settlement of an earlier observation (agent-keyed, delayed: a busy row) that ran
    after the latest-stamped change: it is journaled before that change, but it changed
    the row from that change's session. The row's value came after, not before."""
    rotate(home, db, "e-1", "s-1", "s-2")
    first = change_id(home, "e-1", "s-old", "s-1")
    with journal.Writer(home) as writer:  # what the late reconciler journaled
        writer.append(
            "agent-name:core/alice",
            {"executor_id": "e-1", "old_session_id": "s-2", "new_session_id": "s-late"},
            "session.reconciled",
            event_id=journal.event_id_next_to(first),
        )
    query(db, "UPDATE executors SET claude_session_id = 's-late' WHERE id = 'e-1' RETURNING id")
    report = replay_to_db(home, db)
    assert (report["rows_restored"], report["rows_left_alone"]) == (0, 1), report
    assert session_of(db, "e-1") == "s-late"


def test_a_divergence_anchor_is_never_restored_over(home, db):
    """e-2 is finished and holds its anchor: the hook's session is a preserved
    divergence. Whatever the row holds later is not the journal's to change."""
    rotate(home, db, "e-2", "s-live")
    assert journal.load(home)["executor:e-2"].type == "session.divergence_preserved"
    query(db, "UPDATE executors SET claude_session_id = 's-live' WHERE id = 'e-2' RETURNING id")
    report = replay_to_db(home, db)
    assert report["rows_restored"] == 0 and session_of(db, "e-2") == "s-live"


# -- verify --db checks the audit rows ------------------------------------------------------


def test_verify_db_reports_audit_rows_the_journal_says_were_written(home, db):
    rotate(home, db, "e-1", "s-1")
    rotate(home, db, "e-2", "s-live")  # a preserved divergence, audited
    assert cli("verify", "--db", home=home, url=db).returncode == 0
    query(db, "DELETE FROM audit_events RETURNING id")

    done = cli("verify", "--db", home=home, url=db)
    out = done.stdout.decode()
    assert done.returncode == 1, out
    assert "2 differences" in out and "replay --to-db" in out
    assert "session.reconciled of e-1: s-old -> s-1" in out, out
    assert "session.divergence_preserved of e-2: anchor -> s-live" in out, out
    report = json.loads(cli("verify", "--db", "--json", home=home, url=db).stdout)
    missing = [d for d in report["differences"] if d["kind"] == "audit_missing"]
    ids = {r.id for r in journal.history(home) if r.type != "session.observed"}
    assert {d["expected"] for d in missing} == ids and not report["ok"]
    assert cli("verify", home=home, url=db).returncode == 0  # without --db: not compared

    assert replay_to_db(home, db)["audit_rows_inserted"] == 2
    assert cli("verify", "--db", home=home, url=db).returncode == 0


def test_verify_db_checks_only_the_audit_rows_of_retained_history(home, db):
    rotate(home, db, "e-1", "s-1")
    assert journal.compact(home, wait=True).files_archived >= 1
    shutil.rmtree(home / "archive")  # what archive retention prunes
    (home / "archive").mkdir(mode=0o700)
    rotate(home, db, "e-1", "s-2")
    query(db, "DELETE FROM audit_events RETURNING id")

    report = json.loads(cli("verify", "--db", "--json", home=home, url=db).stdout)
    missing = [d for d in report["differences"] if d["kind"] == "audit_missing"]
    assert [d["expected"] for d in missing] == [change_id(home, "e-1", "s-1", "s-2")], report


# -- verify --at: the same check as of an instant -------------------------------------------


def test_verify_at_checks_the_audit_rows_up_to_the_instant(home, db):
    rotate(home, db, "e-1", "s-1", "s-2")
    first = change_id(home, "e-1", "s-old", "s-1")
    at = next(r.ts for r in journal.history(home) if r.id == first)
    query(
        db,
        "DELETE FROM audit_events WHERE event_id = %s RETURNING id",
        (change_id(home, "e-1", "s-1", "s-2"),),
    )
    assert cli("verify", "--db", home=home, url=db).returncode == 1
    done = cli("verify", "--db", "--at", at, home=home, url=db)
    assert done.returncode == 0, done.stdout  # the row missing is of a later change
    assert f"history up to {at}" in done.stdout.decode()
    assert cli("verify", "--at", at, home=home, url=db).returncode == 0

    query(db, "DELETE FROM audit_events WHERE event_id = %s RETURNING id", (first,))
    report = json.loads(cli("verify", "--db", "--at", at, "--json", home=home, url=db).stdout)
    assert [(d["kind"], d["expected"]) for d in report["differences"]] == [
        ("audit_missing", first)
    ], report

    before = cli("verify", "--db", "--at", "2000-01-01", home=home, url=db)
    assert before.returncode == 0 and b"before the oldest retained record" in before.stderr
    misuse = cli("verify", "--transcripts", "--at", at, home=home, url=db)
    assert misuse.returncode == 2 and b"--at" in misuse.stderr
