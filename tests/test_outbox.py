"""The journal as an outbox: hooks never wait on the database, one reconciler settles.

Real hook processes, real reconcilers (detached, as Claude Code would leave them), a
real PostgreSQL, real SIGKILLs. No verdict depends on how fast the machine is: where a
reconciler must be kept from starting, the test holds ``reconcile.lock`` itself.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import structlog
from journal_helpers import raw_line
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from reconcile_helpers import (
    Outage,
    audit_rows,
    clean_env,
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
import reconcile
from reconcile import Settings, database_activity, migrate


@pytest.fixture
def db(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn, create_tables=True)
    return database_url


def executors(db: str, n: int) -> None:
    seed(db, [], [(f"e-{i}", None, f"old-{i}", "running") for i in range(n)])


def hold_lock(home: Path) -> int:
    """Hold ``reconcile.lock`` as a reconciler would (waiting for one that runs): hooks
    start none meanwhile. Release it with :func:`reconcile.release_lock`."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    give_up = time.monotonic() + 180
    while (fd := reconcile.take_lock(str(home))) is None:
        assert time.monotonic() < give_up, "a reconciler held reconcile.lock for 3 minutes"
        time.sleep(0.05)
    return fd


def connections(db: str) -> int:
    name = conninfo_to_dict(db)["dbname"]
    with psycopg.connect(make_conninfo(db, dbname="postgres"), autocommit=True) as probe:
        return database_activity(probe, name)[1]


def refused_url() -> str:
    """A URL whose port nothing listens on: connections are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/gone"


def lines(home: Path) -> list[journal.Record]:
    return list(journal.history(home))


def test_a_burst_of_misses_is_settled_over_one_connection(tmp_path: Path, db: str):
    n = 64
    executors(db, n)
    home = tmp_path / "home"
    before = connections(db)
    lock = hold_lock(home)  # a reconciler "runs": the hooks only journal
    procs = [
        hook_process(home, db, {"session_id": f"new-{i}"}, RECONCILE_EXECUTOR_ID=f"e-{i}")
        for i in range(n)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert (proc.returncode, out, err) == (0, b"", b"")
    assert connections(db) == before  # no hook touched the database
    assert [r.type for r in lines(home)] == ["session.observed"] * n
    reconcile.release_lock(lock)  # it "died" without settling: the next hook starts one
    run_hook(home, db, {"session_id": "new-0"}, RECONCILE_EXECUTOR_ID="e-0")
    wait_settled(home)
    assert connections(db) - before == 1
    assert query(db, "SELECT count(*) FROM executors WHERE claude_session_id LIKE 'new-%'") == [
        (n,)
    ]
    assert len(audit_rows(db)) == n
    assert reconcile.verify(Settings.from_env({}, home=home, database_url=db), db=True).ok


def test_32_racing_hooks_on_one_executor_write_one_audit_row(tmp_path: Path, db: str):
    executors(db, 1)
    home = tmp_path / "home"
    procs = [
        hook_process(home, db, {"session_id": "s-new"}, RECONCILE_EXECUTOR_ID="e-0")
        for _ in range(32)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert (proc.returncode, out, err) == (0, b"", b"")
    wait_settled(home)
    assert [row[1] for row in audit_rows(db)] == ["session.reconciled"]
    assert session_of(db, "e-0") == "s-new"


def test_after_an_outage_the_row_settles_with_no_hook_after_it(tmp_path: Path, db: str):
    """The database refuses connections while 30 tool uses see a new session: one journal
    line, and one reconciler that keeps trying on its own (a shared backoff, which
    `status` shows with its next attempt). The database comes back and no hook runs
    again: the row is right all the same. Fails before 'reconciler: wait out the
    backoff and try again': the reconciler exited at its first failure and the
    observation waited for the next hook (with per-prompt hooks, for hours)."""
    executors(db, 1)
    home = tmp_path / "home"
    identity = {"RECONCILE_EXECUTOR_ID": "e-0", "RECONCILE_BACKOFF_MAX": "1"}
    settings = Settings.from_env({}, home=home, database_url=db)
    with Outage(db) as outage:
        for _ in range(30):
            run_hook(home, outage.url, {"session_id": "s-new"}, **identity)
        # One journal line for the (key, session) however many tool uses saw it.
        assert [r.type for r in lines(home)] == ["session.observed"]
        wait_for(
            lambda: reconcile.outbox_status(settings)["backoff"]["failures"] >= 3,
            "the reconciler never tried again on its own",
        )
        status = reconcile.outbox_status(settings)
        assert status["unsettled"] == 1 and status["backoff"]["next_attempt_at"]
        assert "refused" in (status["last_error"] or "").lower()
        assert session_of(db, "e-0") == "old-0"

        outage.up()  # and no hook from now on
        wait_settled(home)
    assert session_of(db, "e-0") == "s-new"
    assert [row[1] for row in audit_rows(db)] == ["session.reconciled"]
    after = reconcile.outbox_status(settings)
    assert (after["unsettled"], after["backoff"]["in_force"]) == (0, False)
    assert after["last_error"] == status["last_error"]  # still shown, for the operator


def test_silent_database_never_holds_the_hook_or_its_pipes(tmp_path: Path, db: str):
    executors(db, 1)
    home = tmp_path / "home"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts TCP, never answers the PostgreSQL handshake
    silent = f"postgresql://postgres@127.0.0.1:{listener.getsockname()[1]}/d"
    try:
        env = clean_env(
            RECONCILE_HOME=str(home),
            RECONCILE_DATABASE_URL=silent,
            RECONCILE_EXECUTOR_ID="e-0",
            RECONCILE_CONNECT_TIMEOUT="600",  # the reconciler waits "forever"
            RECONCILE_RETRY_HORIZON="0",  # and gives up when the connection fails
        )
        proc = subprocess.Popen(
            [*reconcile_command(), "hook"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        # communicate() returns once every holder of stdout and stderr closed them.
        out, err = proc.communicate(json.dumps({"session_id": "s"}).encode(), timeout=300)
        assert (proc.returncode, out, err) == (0, b"", b"")
        # ... while the reconciler it started is still waiting for the database.
        wait_for(lambda: reconcile.reconciler_running(home), "no reconciler started")
        assert reconcile.reconciler_running(home)
    finally:
        listener.close()  # the reconciler's connection fails now, and it exits
    wait_idle(home)
    assert [r.type for r in lines(home)] == ["session.observed"]


def test_sigkilled_reconcilers_lose_nothing_and_duplicate_no_audit_row(tmp_path: Path, db: str):
    n = 150
    executors(db, n)
    home = tmp_path / "home"
    lock = hold_lock(home)
    for i in range(n):
        run_hook(home, db, {"session_id": f"new-{i}"}, RECONCILE_EXECUTOR_ID=f"e-{i}")
    reconcile.release_lock(lock)
    rng = random.Random(1234)
    env = clean_env(RECONCILE_HOME=str(home), RECONCILE_DATABASE_URL=db)
    code = "import reconcile; reconcile.settle_pending(reconcile.Settings.from_env(), wait_s=60)"
    killed = 0
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", code], env=env)
        try:
            proc.wait(timeout=rng.uniform(0.05, 1.5))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed += 1
    settings = Settings.from_env({}, home=home, database_url=db)
    reconcile.settle_pending(settings, wait_s=60)  # the next one takes over
    assert reconcile.unsettled(str(home)) == []
    assert query(db, "SELECT count(*) FROM executors WHERE claude_session_id LIKE 'new-%'") == [
        (n,)
    ]
    rows = audit_rows(db)
    assert sorted(r[3]["new_session_id"] for r in rows) == sorted(f"new-{i}" for i in range(n))
    assert all(r[1] == "session.reconciled" for r in rows)
    print(f"{killed} of 12 reconcilers killed mid-run")


def test_sync_mode_updates_the_row_before_the_hook_exits(tmp_path: Path, db: str):
    executors(db, 1)
    home = tmp_path / "home"
    run_hook(home, db, {"session_id": "s-now"}, RECONCILE_EXECUTOR_ID="e-0", RECONCILE_SYNC="1")
    assert session_of(db, "e-0") == "s-now"
    assert [r.type for r in lines(home)] == ["session.observed", "session.reconciled"]


def test_a_bad_old_pending_record_does_not_block_the_rest(tmp_path: Path, db: str):
    executors(db, 2)
    home = tmp_path / "home"
    identity = {"executor_id": "e-0", "agent_id": None, "agent_name": None, "team": None}
    with journal.Writer(home) as writer:  # as 0.1 journaled an outage, and a damaged one
        writer.append(
            "executor:bad",
            {"identity": {**identity, "executor_id": "e\x00"}, "session_id": "s"},
            "session.pending",
        )
        writer.append(
            "executor:e-0", {"identity": identity, "session_id": "s-0"}, "session.pending"
        )
        writer.append(
            "executor:e-1",
            {"identity": {**identity, "executor_id": "e-1"}, "session_id": "s-1"},
            "session.pending",
        )
    settings = Settings.from_env({}, home=home, database_url=db)
    report = reconcile.replay_to_db(settings)
    assert report.outcomes == {"rejected": 1, "reconciled": 2}
    assert (session_of(db, "e-0"), session_of(db, "e-1")) == ("s-0", "s-1")
    assert reconcile.replay_to_db(settings).outcomes == {}
    assert journal.load(home)["executor:bad"].type == "session.rejected"


def test_no_identity_the_database_knows_is_asked_once_per_ttl(tmp_path: Path, db: str):
    home = tmp_path / "home"
    before = connections(db)
    for _ in range(5):  # a TTL no loaded machine outlasts (the default 60 s could be)
        run_hook(
            home,
            db,
            {"session_id": "s"},
            RECONCILE_AGENT_ID="nobody",
            RECONCILE_NEGATIVE_TTL="3600",
        )
        wait_settled(home)
    assert connections(db) - before == 1
    assert [r.type for r in lines(home)] == ["session.observed", "session.unresolved"]


def test_compaction_never_evicts_an_unsettled_observation(tmp_path: Path, db: str):
    settled, observed, bound = 3, 8, 4
    executors(db, settled + observed)
    home = tmp_path / "home"
    for i in range(settled):
        run_hook(home, db, {"session_id": f"new-{i}"}, RECONCILE_EXECUTOR_ID=f"e-{i}")
    wait_settled(home)
    lock = hold_lock(home)  # the database is "away": observations wait
    for i in range(settled, settled + observed):
        run_hook(home, db, {"session_id": f"new-{i}"}, RECONCILE_EXECUTOR_ID=f"e-{i}")
    waiting = {f"executor:e-{i}" for i in range(settled, settled + observed)}

    done = cli("compact", "--max-entries", str(bound), "--json", home=home, url=db)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    # The settled entries go first; the observations alone exceed the bound: all stay.
    assert (report["evicted"], report["pinned"], report["entries"]) == (settled, observed, observed)
    assert report["over_bound"] == observed - bound
    assert not list((home / "journal").glob("*.jnl"))  # all archived: the snapshot holds them
    assert {r.key for r in reconcile.unsettled(str(home))} == waiting

    reconcile.release_lock(
        lock
    )  # the database answers again: the next tool use starts a reconciler
    run_hook(home, db, {"session_id": f"new-{settled}"}, RECONCILE_EXECUTOR_ID=f"e-{settled}")
    wait_settled(home)
    for i in range(settled + observed):
        assert session_of(db, f"e-{i}") == f"new-{i}"
    rows = audit_rows(db)
    assert sorted(r[3]["new_session_id"] for r in rows) == sorted(
        f"new-{i}" for i in range(settled + observed)
    )
    # Settled, they are ordinary entries again: the bound holds.
    again = cli("compact", "--max-entries", str(bound), "--json", home=home, url=db)
    assert json.loads(again.stdout)["entries"] == bound
    assert json.loads(again.stdout)["over_bound"] == 0


def test_the_compaction_a_hook_starts_never_evicts_an_unsettled_observation(
    tmp_path: Path, db: str
):
    n, bound = 6, 2
    executors(db, n)
    home = tmp_path / "home"
    env = {"RECONCILE_COMPACT_THRESHOLD": "0", "RECONCILE_MAX_ENTRIES": str(bound)}
    lock = hold_lock(home)
    try:
        for i in range(n):  # each hook starts a compaction, unless one runs
            run_hook(home, db, {"session_id": f"new-{i}"}, RECONCILE_EXECUTOR_ID=f"e-{i}", **env)
        # Until every journal is archived, the next tool use (a waiting one: it writes
        # nothing) starts another compaction.
        give_up = time.monotonic() + 180
        while list((home / "journal").glob("*.jnl")):
            assert time.monotonic() < give_up, "the hooks' compactions never archived all"
            run_hook(home, db, {"session_id": "new-0"}, RECONCILE_EXECUTOR_ID="e-0", **env)
            time.sleep(0.2)
        keys = {r.key for r in reconcile.unsettled(str(home))}
        assert keys == {f"executor:e-{i}" for i in range(n)}
    finally:
        reconcile.release_lock(lock)


def test_the_reconciler_logs_what_it_could_not_read_once_and_settles_the_rest(
    tmp_path: Path, db: str
):
    executors(db, 3)
    # A state directory so deep that one journal's path exceeds PATH_MAX: listed, but
    # opening it fails (ENAMETOOLONG), for root too. A real I/O error, no fault injected.
    home = tmp_path
    while len(str(home)) < 3800:
        home = home / ("d" * 200)
    home.mkdir(parents=True, mode=0o700)
    identity = {"executor_id": None, "agent_id": None, "agent_name": None, "team": None}

    def observation(i: int) -> dict:
        return {"identity": {**identity, "executor_id": f"e-{i}"}, "session_id": f"new-{i}"}

    with journal.Writer(home) as writer:
        writer.append("executor:e-0", observation(0), "session.observed")
    directory = os.open(home / "journal", os.O_RDONLY | os.O_DIRECTORY)
    try:
        unreadable = "x" * (4096 - len(str(home / "journal")) + 8) + ".jnl"
        assert len(unreadable) < 255 and len(str(home / "journal" / unreadable)) > 4096
        fd = os.open(unreadable, os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=directory)
        os.write(fd, raw_line("executor:e-1", observation(1), type="session.observed"))
        os.close(fd)
        corrupt = os.open("1-corrupt.jnl", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=directory)
        os.write(corrupt, b"not a record\n")
        os.write(corrupt, raw_line("executor:e-2", observation(2), type="session.observed"))
        os.close(corrupt)
    finally:
        os.close(directory)
    settings = Settings.from_env({}, home=home, database_url=db)
    with structlog.testing.capture_logs() as logs:
        report = reconcile.settle_pending(settings)
    assert report.error is None and report.outcomes == {"reconciled": 2}
    assert (session_of(db, "e-0"), session_of(db, "e-1"), session_of(db, "e-2")) == (
        "new-0",
        "old-1",
        "new-2",
    )
    problems = [e for e in logs if e["event"] in ("reconciler.unreadable", "reconciler.skipped")]
    assert [(e["event"], e["log_level"]) for e in problems] == [
        ("reconciler.unreadable", "warning"),
        ("reconciler.skipped", "warning"),
    ]  # once each, though the run read the journal more than once
    assert len(problems[0]["errors"]) == 1 and unreadable in problems[0]["errors"][0]
    assert problems[1]["skipped"] == {"json": 1}
    # Never taken for absence: the observation waits in its file for a later run.
    assert unreadable in os.listdir(home / "journal")


def test_outbox_status_reads_the_state_it_is_given(tmp_path: Path):
    observed, empty = tmp_path / "observed", tmp_path / "empty"
    with journal.Writer(observed) as writer:
        writer.append("executor:e-0", {"session_id": "s"}, "session.observed")
    state = journal.load(observed)
    # `reconcile status` folds the journal once and hands the state over: given one,
    # outbox_status counts from it, not from a second fold of the directory.
    given = reconcile.outbox_status(Settings.from_env({}, home=empty), state)
    assert given["unsettled"] == 1 and given["oldest_unsettled"] == state["executor:e-0"].ts
    assert reconcile.outbox_status(Settings.from_env({}, home=observed))["unsettled"] == 1


# -- helpers ---------------------------------------------------------------------------


def reconcile_command() -> list[str]:
    from reconcile_helpers import reconcile_command as command

    return command()


def wait_for(condition: object, message: str, deadline_s: float = 180.0) -> None:
    give_up = time.monotonic() + deadline_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < give_up, message
        time.sleep(0.05)


def test_an_observation_journaled_while_the_reconciler_works_is_settled_too(tmp_path, db):
    """A reconciler settles the observations it read one after the other. A newer session
    of a key it has not reached yet, observed meanwhile, must stay the latest record of
    that key: the older one's outcome sorts right after the older one, not at the time it
    was settled, or it would shadow the newer for good (the row left on the older
    session). Found by the demo under load; here the window is held open by locking the
    first executor's row, so the order is forced, not hoped for."""
    executors(db, 3)
    home = tmp_path / "home"
    lock = hold_lock(home)  # the first observations are journaled, not yet settled
    run_hook(home, db, {"session_id": "a-0"}, RECONCILE_EXECUTOR_ID="e-0")
    run_hook(home, db, {"session_id": "a-1"}, RECONCILE_EXECUTOR_ID="e-1")
    with psycopg.connect(db) as blocker:
        blocker.execute("SELECT 1 FROM executors WHERE id = 'e-0' FOR UPDATE")
        reconcile.release_lock(lock)
        run_hook(home, db, {"session_id": "a-2"}, RECONCILE_EXECUTOR_ID="e-2")  # starts one
        give_up = time.monotonic() + 180
        while not query(
            db,
            "SELECT 1 FROM pg_stat_activity WHERE application_name = 'reconcile-reconciler' "
            "AND wait_event_type = 'Lock'",
        ):  # it read a-0, a-1 and a-2, and waits on e-0's row
            assert time.monotonic() < give_up, "the reconciler never reached e-0's row"
            time.sleep(0.05)
        run_hook(home, db, {"session_id": "b-1"}, RECONCILE_EXECUTOR_ID="e-1")  # newer
        blocker.rollback()
    wait_settled(home)
    assert [session_of(db, f"e-{i}") for i in range(3)] == ["a-0", "b-1", "a-2"]
    assert [r[3]["new_session_id"] for r in audit_rows(db, "e-1")][-1] == "b-1"


def test_a_locked_row_delays_its_key_alone(tmp_path, db):
    """An orchestrator's transaction holds e-0's row (idle in transaction). Its key
    waits, on a delay of its own; e-1, observed after it, is settled while the row is
    still locked, and no shared backoff is recorded. Once the lock goes, e-0 settles
    with no hook after it. Fails before 'reconciler: a row's failure delays its key
    alone': the lock timeout counted as the database failing, the shared backoff grew,
    and e-1 waited behind e-0 for the next hook."""
    executors(db, 2)
    home = tmp_path / "home"
    settings = Settings.from_env({}, home=home, database_url=db)
    timeouts = {"RECONCILE_STATEMENT_TIMEOUT": "0.3", "RECONCILE_BACKOFF_MAX": "2"}
    with psycopg.connect(db) as orchestrator:
        orchestrator.execute("SELECT 1 FROM executors WHERE id = 'e-0' FOR UPDATE")
        run_hook(home, db, {"session_id": "new-0"}, RECONCILE_EXECUTOR_ID="e-0", **timeouts)
        run_hook(home, db, {"session_id": "new-1"}, RECONCILE_EXECUTOR_ID="e-1", **timeouts)
        wait_for(lambda: session_of(db, "e-1") == "new-1", "e-1 waited behind the locked row")
        assert session_of(db, "e-0") == "old-0"
        wait_for(
            lambda: any(e.get("event") == "reconciler.row_busy" for e in log_events(home)),
            "the locked row was never tried",
        )
        status = reconcile.outbox_status(settings)
        assert status["backoff"]["failures"] == 0 and status["unsettled"] == 1
        orchestrator.rollback()  # and no hook from now on
    wait_settled(home)
    assert [session_of(db, f"e-{i}") for i in range(2)] == ["new-0", "new-1"]
    assert sorted(r[1] for r in audit_rows(db)) == ["session.reconciled"] * 2


def log_events(home: Path) -> list[dict]:
    path = home / "log" / "reconcile.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
