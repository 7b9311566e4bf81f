"""The ``reconcile`` command as a user runs it: real processes, exit codes, stdout, stderr."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest
from reconcile_helpers import (
    audit_rows,
    clean_env,
    cli,
    command_line_database,
    query,
    reconcile_command,
    run_hook,
    seed,
    session_of,
    wait_idle,
    wait_settled,
)

import journal


@pytest.fixture
def db(database_url: str, tmp_path: Path) -> str:
    return command_line_database(database_url, tmp_path)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


# -- hook -------------------------------------------------------------------------------


# -- operator commands ------------------------------------------------------------------


def test_forget_never_discards_an_unsettled_observation(home, db):
    """A tombstone after an observation the database never saw made it superseded: pending
    0, replay --to-db with nothing to do, the row never told the session id."""
    down = "postgresql://x@127.0.0.1:9/d"
    run_hook(home, down, {"session_id": "s-new"}, RECONCILE_EXECUTOR_ID="e-1")
    wait_idle(home)
    refused = cli("forget", "executor:e-1", home=home)
    assert refused.returncode == 1 and refused.stdout == b""
    assert b"not settled yet" in refused.stderr and b"reconcile replay --to-db" in refused.stderr
    assert [r.type for r in journal.history(home)] == ["session.observed"]  # nothing written
    assert json.loads(cli("status", "--json", home=home, url=db).stdout)["pending"] == 1

    replayed = cli("replay", "--to-db", home=home, url=db)  # the way the message names
    assert replayed.returncode == 0, replayed.stderr
    assert session_of(db, "e-1") == "s-new"
    assert cli("forget", "executor:e-1", home=home).returncode == 0  # settled: forgettable


def test_status_show_forget_compact(home, db):
    run_hook(home, db, {"session_id": "s-new"}, RECONCILE_EXECUTOR_ID="e-1")
    wait_settled(home)
    run_hook(
        home,
        "postgresql://x@127.0.0.1:9/d",
        {"session_id": "s-p"},
        RECONCILE_EXECUTOR_ID="e-7",
        RECONCILE_RETRY_HORIZON="0",  # its reconciler gives up at once, leaving a backoff
    )
    wait_idle(home)
    status = json.loads(cli("status", "--json", home=home, url=db).stdout)
    assert status["entries"] == 2 and status["pending"] == 1
    assert status["journals"] == 3 and status["database"]["reachable"] is True
    outbox = status["outbox"]  # e-7's reconciler met the dead URL: a backoff, its error
    assert outbox["unsettled"] == 1 and outbox["backoff"]["failures"] == 1
    assert "127.0.0.1" in outbox["last_error"]
    human = cli("status", home=home, url=db)
    assert human.returncode == 0
    assert re.search(rb"\ncache: +2 entries", human.stdout)
    assert re.search(rb"\nlast database error: +\S", human.stdout)

    shown = json.loads(cli("show", "executor:e-1", "--json", home=home).stdout)
    assert (shown["type"], shown["session_id"]) == ("session.reconciled", "s-new")
    table = cli("show", home=home).stdout.decode()
    assert "executor:e-1" in table and "executor:e-7" in table
    missing = cli("show", "executor:nope", home=home)
    assert missing.returncode == 1 and b"no cache entry" in missing.stderr

    forgotten = cli("forget", "executor:e-1", "--json", home=home)
    assert forgotten.returncode == 0
    assert json.loads(forgotten.stdout)["key"] == "executor:e-1"
    assert b"executor:e-1" not in cli("show", home=home).stdout

    compacted = json.loads(cli("compact", "--json", home=home).stdout)
    assert compacted["busy"] is False and compacted["entries"] == 1
    assert compacted["files_archived"] == 4
    assert json.loads(cli("status", "--json", home=home, url=db).stdout)["journals"] == 0


def test_status_with_unreachable_database_redacts_the_password(home):
    done = cli("status", "--json", home=home, url="postgresql://u:s3cret@127.0.0.1:9/d")
    assert done.returncode == 0
    data = json.loads(done.stdout)
    assert data["database"]["reachable"] is False
    assert b"s3cret" not in done.stdout + done.stderr


def test_replay_filters_and_to_db(home, db):
    down = "postgresql://x@127.0.0.1:9/d"
    run_hook(home, db, {"session_id": "s-new"}, RECONCILE_EXECUTOR_ID="e-1")
    wait_settled(home)
    no_retry = {"RECONCILE_RETRY_HORIZON": "0"}  # reconcilers give up at once, as before
    run_hook(home, down, {"session_id": "s-next"}, RECONCILE_EXECUTOR_ID="e-1", **no_retry)
    wait_idle(home)
    run_hook(home, db, {"session_id": "s-live"}, RECONCILE_EXECUTOR_ID="e-2", **no_retry)
    wait_idle(home)  # in backoff: the observation of e-2 waits too
    lines = cli("replay", home=home).stdout.decode().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["type"] for e in events] == [
        "session.observed",
        "session.reconciled",
        "session.observed",
        "session.observed",
    ]
    assert set(events[0]) >= {"id", "ts", "type", "key", "data"}
    only = cli("replay", "--executor", "e-2", home=home).stdout.decode().splitlines()
    assert [json.loads(x)["key"] for x in only] == ["executor:e-2"]
    typed = cli("replay", "--type", "session.reconciled", "--since", "1h", home=home).stdout
    assert len(typed.splitlines()) == 1
    assert cli("replay", "--until", "2000-01-01", home=home).stdout == b""
    bad = cli("replay", "--since", "yesterday-ish", home=home)
    assert bad.returncode == 2 and b"invalid time" in bad.stderr

    applied = json.loads(cli("replay", "--to-db", "--json", home=home, url=db).stdout)
    assert applied["outcomes"] == {"reconciled": 1, "divergence_preserved": 1}
    assert session_of(db, "e-1") == "s-next"
    again = json.loads(cli("replay", "--to-db", "--json", home=home, url=db).stdout)
    assert again["outcomes"] == {} and again["audit_rows_inserted"] == 0
    down_replay = cli("replay", "--to-db", home=home, url=down)
    assert down_replay.returncode == 3 and down_replay.stderr.count(b"\n") == 1


def test_verify_exit_codes(home, db):
    run_hook(home, db, {"session_id": "s-new"}, RECONCILE_EXECUTOR_ID="e-1")
    wait_settled(home)  # the reconciler must not settle after the row changes below
    assert cli("verify", "--db", home=home, url=db).returncode == 0
    from reconcile_helpers import query

    query(db, "UPDATE executors SET claude_session_id = 'changed' WHERE id = 'e-1' RETURNING id")
    done = cli("verify", "--db", home=home, url=db)
    assert done.returncode == 1
    assert b"database_differs" in done.stdout and b"changed" in done.stdout
    assert cli("verify", home=home).returncode == 0  # the cache agrees with history
    unreachable = cli("verify", "--db", home=home, url="postgresql://x@127.0.0.1:9/d")
    assert unreachable.returncode == 3


def test_usage_errors_exit_2_in_one_line(home):
    for args in (("compact", "--max-entries", "0"), ("no-such-command",), (), ("status", "-x")):
        done = cli(*args, home=home)
        assert done.returncode == 2, args
        assert done.stderr.startswith(b"reconcile") and done.stderr.count(b"\n") == 1, done.stderr
        assert b"--help" in done.stderr  # where to look next
    # A command that acts refuses a malformed variable (status and doctor name it and go
    # on: test_hook.py); the error says what to do.
    bad_env = cli("verify", home=home, RECONCILE_STATEMENT_TIMEOUT="soon")
    assert bad_env.returncode == 2
    assert bad_env.stderr.startswith(b"reconcile: error: RECONCILE_STATEMENT_TIMEOUT='soon'")
    assert b"unset it for the default" in bad_env.stderr
    version = cli("--version", home=home)
    assert version.returncode == 0 and version.stdout.startswith(b"reconcile ")


def test_db_url_and_migrate_with_a_configured_database(home, db):
    assert cli("db", "url", home=home, url=db).stdout.decode().strip() == db
    again = cli("db", "migrate", "--json", home=home, url=db)
    assert json.loads(again.stdout) == {"applied": []}
    refused = cli("db", "up", home=home, url=db)
    assert refused.returncode == 2 and b"embedded" in refused.stderr


# -- what a newcomer trips over ---------------------------------------------------------


REPRS = ("None", "True", "False", "{'", "['", "Traceback")


@pytest.fixture
def own_home() -> Path:
    """A state directory for an embedded server of its own, outside pytest's temporary
    root (as root the server's user must traverse every parent, and each pytest session
    resets that root to 0700); its server is removed afterwards (as root, outside it)."""
    path = Path(tempfile.mkdtemp(prefix="reconcile-test-cli-")) / "home"
    yield path
    cli("db", "remove", "--yes", home=path)
    shutil.rmtree(path.parent, ignore_errors=True)


def test_db_up_creates_the_tables_so_the_first_miss_settles(own_home):
    up = cli("db", "up", home=own_home)
    assert up.returncode == 0, up.stderr
    url = up.stdout.decode().strip()
    assert url.startswith("postgresql://") and up.stdout.count(b"\n") == 1  # the URL alone
    assert b"created table executors" in up.stderr
    assert not any(r in up.stderr.decode() for r in REPRS)
    again = cli("db", "up", "--json", home=own_home)
    assert json.loads(again.stdout) == {"url": url, "started": False, "applied": []}
    status = cli("status", home=own_home)
    assert re.search(rb"\nschema: +current\n", status.stdout) and b"next step" not in status.stdout

    seed(url, [], [("e-1", None, "s-old", "running")])
    run_hook(own_home, None, {"session_id": "s-new"}, RECONCILE_EXECUTOR_ID="e-1")
    wait_settled(own_home)
    assert session_of(url, "e-1") == "s-new"
    assert len(audit_rows(url, "e-1")) == 1

    down = cli("db", "down", home=own_home)
    assert down.stdout == b"stopped the embedded PostgreSQL\n"
    stopped = cli("db", "status", home=own_home)
    assert stopped.returncode == 3 and b"next step: reconcile db up" in stopped.stdout


def test_a_schema_to_fix_names_the_next_step(home, database_url, tmp_path):
    orchestrators = "run the orchestrator's migrations"  # an empty database: not yet
    human = cli("status", home=home, url=database_url)
    assert human.returncode == 0
    assert re.search(rb"\nschema: +missing tables: agents, executors, audit_events", human.stdout)
    assert re.search(rb"\nnext step: +" + re.escape(orchestrators.encode()), human.stdout)
    data = json.loads(cli("status", "--json", home=home, url=database_url).stdout)
    assert data["database"]["schema"]["state"] == "missing_tables"
    assert data["next_step"].startswith(orchestrators) and "--create-tables" in data["next_step"]

    run_hook(home, database_url, {"session_id": "s-1"}, RECONCILE_EXECUTOR_ID="e-1")
    # Its reconciler met the missing tables and backed off; the observation waits.
    for args in (("verify", "--db"), ("replay", "--to-db")):
        done = cli(*args, home=home, url=database_url)
        assert done.returncode == 3, args
        assert done.stderr.count(b"\n") == 1 and b"run: reconcile db migrate" in done.stderr
    settings = str(tmp_path / "s.json")
    doctor = cli("doctor", "--json", "--settings", settings, home=home, url=database_url)
    assert doctor.returncode == 3
    assert json.loads(doctor.stdout)["next_step"] == data["next_step"]

    created = cli("db", "migrate", "--create-tables", home=home, url=database_url)
    assert created.returncode == 0 and b"created table executors" in created.stdout
    data = json.loads(cli("status", "--json", home=home, url=database_url).stdout)
    assert (data["database"]["schema"]["state"], data["next_step"]) == ("current", None)
    again = cli("db", "migrate", home=home, url=database_url)
    assert again.stdout == b"the schema is current\n"

    # A dump restored from before this tool: the column is gone, migrate puts it back.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE audit_events DROP COLUMN event_id")
    drifted = cli("status", home=home, url=database_url).stdout
    assert b"drifted: column audit_events.event_id is missing" in drifted
    assert re.search(rb"\nnext step: +reconcile db migrate\n", drifted)
    doctor = cli("doctor", "--json", "--settings", settings, home=home, url=database_url)
    assert json.loads(doctor.stdout)["next_step"] == "reconcile db migrate"


def _blocked_home(tmp_path: Path, kind: str) -> Path:
    target = tmp_path / "target"
    target.mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    if kind == "file":
        return blocker
    if kind == "below-a-file":
        return blocker / "home"
    link = tmp_path / "link"
    link.symlink_to(target)
    return link


@pytest.mark.parametrize("kind", ["file", "below-a-file", "symlink"])
@pytest.mark.parametrize(
    "command",
    [("status",), ("show",), ("replay",), ("verify",), ("compact",), ("forget", "executor:e-1")],
    ids=lambda c: c[0],
)
def test_commands_refuse_an_unusable_home(tmp_path, kind, command):
    home = _blocked_home(tmp_path, kind)
    done = cli(*command, home=home)
    assert done.returncode == 3, done.stdout
    assert done.stderr.count(b"\n") == 1 and done.stdout == b""
    assert b"RECONCILE_HOME" in done.stderr  # says what to do
    assert (tmp_path / "file").read_text() == "not a directory"
    assert list((tmp_path / "target").iterdir()) == []


@pytest.mark.parametrize(
    "command",
    [("replay",), ("status",), ("db", "status"), ("show",), ("verify",), ("doctor",)],
    ids=" ".join,
)
def test_a_closed_pipe_ends_quietly_with_the_commands_own_exit_code(home, db, command):
    run_hook(home, db, {"session_id": "s-new"}, RECONCILE_EXECUTOR_ID="e-1")
    wait_settled(home)
    env = clean_env(RECONCILE_HOME=str(home), RECONCILE_DATABASE_URL=db)
    read = subprocess.run([*reconcile_command(), *command], capture_output=True, env=env)
    assert read.stdout  # something to write, so the write meets the closed pipe
    read_end, write = os.pipe()
    os.close(read_end)  # nobody will read: the first write fails with EPIPE
    try:
        done = subprocess.run(
            [*reconcile_command(), *command], stdout=write, stderr=subprocess.PIPE, env=env
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (read.returncode, b"")


def test_human_output_is_words_not_python_reprs(home, db):
    run_hook(home, db, {"session_id": "s-new"}, RECONCILE_EXECUTOR_ID="e-1")
    wait_settled(home)
    commands = [
        ("status",),
        ("db", "status"),
        ("db", "migrate"),
        ("db", "url"),
        ("show",),
        ("verify", "--db"),
        ("compact",),
        ("replay", "--to-db"),
    ]
    for args in commands:
        done = cli(*args, home=home, url=db)
        assert done.returncode == 0, (args, done.stderr)
        text = done.stdout.decode()
        assert not [r for r in REPRS if r in text], (args, text)
        assert " 1 entries" not in text and " 1 records" not in text, text


def test_typos_get_a_hint_and_change_nothing(home, db):
    run_hook(home, db, {"session_id": "s-new"}, RECONCILE_EXECUTOR_ID="e-1")
    wait_settled(home)
    before = len(list(journal.history(home)))

    shown = cli("show", "e-1", home=home)
    assert shown.returncode == 1 and b"did you mean 'executor:e-1'?" in shown.stderr
    for key in ("e-1", "no:such:key"):
        forgotten = cli("forget", key, home=home)
        assert forgotten.returncode == 1 and b"nothing forgotten" in forgotten.stderr
    assert b"did you mean 'executor:e-1'?" in cli("forget", "e-1", home=home).stderr
    assert len(list(journal.history(home))) == before  # no tombstone written

    typed = cli("replay", "--type", "reconciled", home=home)
    assert typed.returncode == 2 and typed.stderr.count(b"\n") == 1
    assert b"did you mean session.reconciled?" in typed.stderr
    keyless = cli("replay", "--key", "e-1", home=home)
    assert keyless.returncode == 0 and keyless.stdout == b""
    assert b"did you mean 'executor:e-1'?" in keyless.stderr  # the hint show gives


def test_the_hook_exits_0_whatever_its_arguments(home, db):
    env = clean_env(
        RECONCILE_HOME=str(home), RECONCILE_DATABASE_URL=db, RECONCILE_EXECUTOR_ID="e-1"
    )
    for argv in (["hook", "-v"], ["--home", str(home), "hook", "--no-such-flag", "x"]):
        done = subprocess.run(
            [*reconcile_command(), *argv],
            input=b'{"session_id": "s-args"}',
            capture_output=True,
            env=env,
            timeout=120,
        )
        assert (done.returncode, done.stdout, done.stderr) == (0, b"", b""), argv
    wait_settled(home)
    assert session_of(db, "e-1") == "s-args"  # and it did its work


def test_verify_words_its_differences(home, db):
    run_hook(home, db, {"session_id": "s-new"}, RECONCILE_EXECUTOR_ID="e-1")
    wait_settled(home)
    assert session_of(db, "e-1") == "s-new"
    query(db, "UPDATE executors SET claude_session_id = 'changed' WHERE id = 'e-1' RETURNING id")
    done = cli("verify", "--db", home=home, url=db)
    assert done.returncode == 1
    assert b"1 difference between history, cache and database" in done.stdout
    assert b"the database holds session 'changed'; the journal says 's-new'" in done.stdout

    query(db, "DELETE FROM executors WHERE id = 'e-1' RETURNING id")
    done = cli("verify", "--db", home=home, url=db)
    assert b"the database has no executor 'e-1'" in done.stdout
    [difference] = json.loads(cli("verify", "--db", "--json", home=home, url=db).stdout)[
        "differences"
    ]
    assert (difference["kind"], difference["expected"]) == ("executor_missing", "e-1")


def hooks_check(report: dict) -> dict:
    return next(c for c in report["checks"] if c["name"] == "claude hooks")


def test_doctor_names_the_first_thing_wrong_until_all_is_well(tmp_path, database_url):
    home = tmp_path / "home"
    settings = tmp_path / "claude" / "settings.json"

    def doctor(url: str | None = database_url) -> tuple[int, dict]:
        done = cli("doctor", "--json", "--settings", str(settings), home=home, url=url)
        assert done.stderr == b""
        return done.returncode, json.loads(done.stdout)

    home.write_text("not a directory")
    code, report = doctor()
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert (code, statuses["settings"], statuses["state directory"]) == (3, "ok", "FAILED")
    assert "RECONCILE_HOME" in report["next_step"]
    home.unlink()

    code, report = doctor(url=None)  # the embedded default, not started
    assert (code, report["next_step"]) == (3, "reconcile db up")
    assert not home.exists()  # looking creates nothing
    code, report = doctor(url="postgresql://x:pw@127.0.0.1:9/d")
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert (statuses["reachable"], statuses["schema"]) == ("FAILED", "not checked")
    assert "RECONCILE_DATABASE_URL" in report["next_step"] and "pw" not in json.dumps(report)

    code, report = doctor()  # an empty database: no tables yet
    assert code == 3 and "reconcile db migrate --create-tables" in report["next_step"]
    created = cli("db", "migrate", "--create-tables", home=home, url=database_url)
    assert created.returncode == 0
    code, report = doctor()
    assert report["next_step"] == f"reconcile install-hooks --settings {settings}"

    absent = "/nonexistent/bin/reconcile hook"
    assert (
        cli("install-hooks", "--settings", str(settings), "--command", absent, home=home).returncode
        == 0
    )
    code, report = doctor()
    assert code == 3 and report["next_step"].endswith(f"install-hooks --settings {settings}")
    assert "is not on PATH" in hooks_check(report)["detail"]
    fix = subprocess.run(
        shlex.split(report["next_step"]),
        capture_output=True,
        env=clean_env(RECONCILE_HOME=str(home)),
        timeout=120,
    )
    assert fix.returncode == 0, fix.stderr
    code, report = doctor()
    assert hooks_check(report)["status"] == "ok", report  # the next step fixed it

    script = Path(reconcile_command()[0])
    assert script.name == "reconcile", "the tests run against the installed script"
    group = {"matcher": "*", "hooks": [{"type": "command", "command": f"{script} hook"}]}
    settings.write_text(json.dumps({"hooks": {"PreToolUse": [group]}}))
    code, report = doctor()
    assert (code, report["ok"], report["next_step"]) == (0, True, None)
    human = cli("doctor", "--settings", str(settings), home=home, url=database_url)
    assert human.returncode == 0 and b"all is well" in human.stdout
    assert not [r for r in REPRS if r in human.stdout.decode()]


def test_replay_executor_includes_agent_keyed_observations_and_outcomes(home, db):
    """Hooks that name an agent (not an executor) journal agent-keyed observations; the
    outcome names the executor the database resolved: replay --executor shows both."""
    agent = {"GENIE_AGENT_NAME": "alice", "GENIE_TEAM": "core"}
    run_hook(home, db, {"session_id": "s-new"}, **agent)
    wait_settled(home)
    run_hook(home, db, {"session_id": "s-other"}, RECONCILE_EXECUTOR_ID="e-2")
    wait_settled(home)
    every = [json.loads(x) for x in cli("replay", home=home).stdout.splitlines()]
    assert [(e["type"], e["key"]) for e in every][:2] == [
        ("session.observed", "agent-name:core/alice"),
        ("session.reconciled", "agent-name:core/alice"),
    ]
    only = [
        json.loads(x) for x in cli("replay", "--executor", "e-1", home=home).stdout.splitlines()
    ]
    assert [(e["type"], e["key"]) for e in only] == [
        ("session.observed", "agent-name:core/alice"),
        ("session.reconciled", "agent-name:core/alice"),
    ]
    assert [e["id"] for e in only] == [e["id"] for e in every[:2]]
    typed = cli("replay", "--executor", "e-1", "--type", "session.observed", home=home)
    assert [json.loads(x)["id"] for x in typed.stdout.splitlines()] == [every[0]["id"]]
    others = [
        json.loads(x)["key"]
        for x in cli("replay", "--executor", "e-2", home=home).stdout.splitlines()
    ]
    assert set(others) == {"executor:e-2"}
