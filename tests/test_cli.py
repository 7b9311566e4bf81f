"""The ``reconcile`` command as a user runs it: real processes, exit codes, stdout, stderr."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from reconcile_helpers import (
    clean_env,
    reconcile_command,
    run_hook,
    seed,
    session_of,
    wait_idle,
    wait_settled,
)


def cli(*args: str, home: Path, url: str | None = None, stdin: bytes = b"", **env: str):
    environment = clean_env(RECONCILE_HOME=str(home), **env)
    if url is not None:
        environment["RECONCILE_DATABASE_URL"] = url
    return subprocess.run(
        [*reconcile_command(), *args],
        input=stdin,
        capture_output=True,
        env=environment,
        timeout=120,
    )


@pytest.fixture
def db(database_url: str, tmp_path: Path) -> str:
    done = cli("db", "migrate", "--create-tables", home=tmp_path / "migrate", url=database_url)
    assert done.returncode == 0, done.stderr
    seed(
        database_url,
        [("a-1", "alice", "core", "e-1")],
        [("e-1", "a-1", "s-old", "running"), ("e-2", None, "anchor", "done")],
    )
    return database_url


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


# -- hook -------------------------------------------------------------------------------


# -- operator commands ------------------------------------------------------------------


def test_status_show_forget_compact(home, db):
    run_hook(home, db, {"session_id": "s-new"}, RECONCILE_EXECUTOR_ID="e-1")
    wait_settled(home)
    run_hook(
        home, "postgresql://x@127.0.0.1:9/d", {"session_id": "s-p"}, RECONCILE_EXECUTOR_ID="e-7"
    )
    wait_idle(home)
    status = json.loads(cli("status", "--json", home=home, url=db).stdout)
    assert status["entries"] == 2 and status["pending"] == 1
    assert status["journals"] == 3 and status["database"]["reachable"] is True
    human = cli("status", home=home, url=db)
    assert human.returncode == 0 and b"entries:" in human.stdout

    shown = json.loads(cli("show", "executor:e-1", "--json", home=home).stdout)
    assert (shown["type"], shown["session_id"]) == ("session.reconciled", "s-new")
    table = cli("show", home=home).stdout.decode()
    assert "executor:e-1" in table and "executor:e-7" in table
    missing = cli("show", "executor:nope", home=home)
    assert missing.returncode == 1 and b"no entry" in missing.stderr

    forgotten = cli("forget", "executor:e-1", home=home)
    assert forgotten.returncode == 0 and len(forgotten.stdout.strip()) == 36
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
    run_hook(home, down, {"session_id": "s-next"}, RECONCILE_EXECUTOR_ID="e-1")
    wait_idle(home)
    run_hook(home, db, {"session_id": "s-live"}, RECONCILE_EXECUTOR_ID="e-2")
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
    assert cli("verify", "--db", home=home, url=db).returncode == 0
    from reconcile_helpers import query

    query(db, "UPDATE executors SET claude_session_id = 'changed' WHERE id = 'e-1' RETURNING id")
    done = cli("verify", "--db", home=home, url=db)
    assert done.returncode == 1
    assert b"database_differs" in done.stdout and b"changed" in done.stdout
    assert cli("verify", home=home).returncode == 0  # the cache agrees with history
    unreachable = cli("verify", "--db", home=home, url="postgresql://x@127.0.0.1:9/d")
    assert unreachable.returncode == 3


def test_usage_errors_exit_2(home):
    assert cli("compact", "--max-entries", "0", home=home).returncode == 2
    assert cli("no-such-command", home=home).returncode == 2
    assert cli(home=home).returncode == 2
    bad_env = cli("status", home=home, RECONCILE_STATEMENT_TIMEOUT="soon")
    assert bad_env.returncode == 2
    assert bad_env.stderr.startswith(b"reconcile: error: RECONCILE_STATEMENT_TIMEOUT")
    version = cli("--version", home=home)
    assert version.returncode == 0 and version.stdout.startswith(b"reconcile ")


def test_db_url_and_migrate_with_a_configured_database(home, db):
    assert cli("db", "url", home=home, url=db).stdout.decode().strip() == db
    again = cli("db", "migrate", "--json", home=home, url=db)
    assert json.loads(again.stdout) == {"applied": []}
    refused = cli("db", "up", home=home, url=db)
    assert refused.returncode == 2 and b"embedded" in refused.stderr


# -- install-hooks ----------------------------------------------------------------------


def test_install_hooks_into_a_missing_file_then_idempotent(tmp_path, home):
    settings = tmp_path / "claude" / "settings.json"
    done = cli("install-hooks", "--settings", str(settings), home=home)
    assert done.returncode == 0
    data = json.loads(settings.read_text())
    assert data["hooks"]["PreToolUse"] == [
        {"matcher": "*", "hooks": [{"type": "command", "command": "reconcile hook"}]}
    ]
    assert data["hooks"]["UserPromptSubmit"] == [
        {"hooks": [{"type": "command", "command": "reconcile hook"}]}
    ]
    before = settings.read_bytes()
    again = cli("install-hooks", "--settings", str(settings), home=home)
    assert again.returncode == 0 and b"already" in again.stdout
    assert settings.read_bytes() == before


def test_install_hooks_keeps_other_keys_and_foreign_hooks(tmp_path, home):
    settings = tmp_path / "settings.json"
    original = {
        "model": "opus",
        "permissions": {"allow": ["Bash(ls)"]},
        "hooks": {
            "PreToolUse": [
                {"matcher": "Bash", "hooks": [{"type": "command", "command": "audit.sh"}]}
            ],
            "Stop": [{"hooks": [{"type": "command", "command": "notify"}]}],
        },
    }
    settings.write_text(json.dumps(original))
    assert cli("install-hooks", "--settings", str(settings), home=home).returncode == 0
    data = json.loads(settings.read_text())
    assert data["model"] == "opus" and data["permissions"] == original["permissions"]
    assert data["hooks"]["Stop"] == original["hooks"]["Stop"]
    assert data["hooks"]["PreToolUse"][0] == original["hooks"]["PreToolUse"][0]
    assert len(data["hooks"]["PreToolUse"]) == 2
    assert json.loads((tmp_path / "settings.json.bak").read_text()) == original

    dry = cli("install-hooks", "--settings", str(settings), "--uninstall", "--dry-run", home=home)
    assert json.loads(dry.stdout) == original
    assert json.loads(settings.read_text()) == data  # dry run wrote nothing
    assert (
        cli("install-hooks", "--settings", str(settings), "--uninstall", home=home).returncode == 0
    )
    assert json.loads(settings.read_text()) == original


def test_install_hooks_leaves_invalid_json_untouched(tmp_path, home):
    settings = tmp_path / "settings.json"
    settings.write_text('{"hooks": {,,}')
    done = cli("install-hooks", "--settings", str(settings), home=home)
    assert done.returncode == 3
    assert b"not valid JSON" in done.stderr and done.stderr.count(b"\n") == 1
    assert settings.read_text() == '{"hooks": {,,}'
    assert not (tmp_path / "settings.json.bak").exists()
    os.chmod(settings, 0o600)
