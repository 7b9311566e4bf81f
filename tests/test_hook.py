"""``reconcile hook`` as Claude Code runs it: a real process, its exit code, its pipes.

The hook answers from the journal or journals what it saw; a detached reconciler updates
the database, so tests that look at the database wait for it (``wait_settled``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from reconcile_helpers import (
    audit_rows,
    clean_env,
    cli,
    command_line_database,
    default_hook,
    reconcile_command,
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


def wait_for_log(home: Path, text: str, deadline_s: float = 180.0) -> str:
    log = home / "log" / "reconcile.log"
    give_up = time.monotonic() + deadline_s
    while True:
        content = log.read_text() if log.exists() else ""
        if text in content:
            return content
        assert time.monotonic() < give_up, f"{text!r} never logged"
        time.sleep(0.05)


@pytest.mark.parametrize(
    "stdin",
    [
        b"",
        b"{not json",
        b"\x00\xff\xfe garbage \x89PNG\r\n",
        b"[1, 2, 3]",
        b"null",
        b'{"session_id": null}',
        b"[" * 100_000,
        b'{"session_id": "' + b"x" * (5 << 20) + b'"}',  # 5 MB: over the 1 MiB read
    ],
    ids=["empty", "invalid", "binary", "array", "null", "null-session", "deep", "5MB"],
)
def test_hook_on_bad_input_exits_0_silently_and_changes_nothing(home, db, stdin):
    done = cli("hook", home=home, url=db, stdin=stdin, RECONCILE_EXECUTOR_ID="e-1")
    assert (done.returncode, done.stdout) == (0, b"")
    assert session_of(db, "e-1") == "s-old"
    assert list(journal.history(home)) == []
    log = (home / "log" / "reconcile.log").read_text()
    assert '"hook.skipped"' in log


def test_hook_without_identity_is_a_silent_no_op(home, db):
    done = cli("hook", home=home, url=db, stdin=b'{"session_id": "s-new"}')
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    assert session_of(db, "e-1") == "s-old"
    assert not home.exists()  # not even a log line: sessions nobody named cost nothing


def test_hook_reconciles_then_hits(home, db):
    payload = b'{"session_id": "s-new", "teammate_name": "alice", "team_name": "core"}'
    done = cli("hook", home=home, url=db, stdin=payload)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    wait_settled(home)
    done = cli("hook", home=home, url=db, stdin=payload)  # a hit: writes nothing
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    assert session_of(db, "e-1") == "s-new"
    assert len(audit_rows(db)) == 1
    types = [r.type for r in journal.history(home)]
    assert types == ["session.observed", "session.reconciled"]


def test_hook_with_unreachable_database_keeps_the_observation(home):
    done = cli(
        "hook",
        home=home,
        url="postgresql://x:pw@127.0.0.1:9/d",
        stdin=b'{"session_id": "s-1"}',
        RECONCILE_EXECUTOR_ID="e-1",
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    [record] = journal.history(home)
    assert record.type == "session.observed"
    log = wait_for_log(home, "reconciler.backoff")
    assert "pw@" not in log


def test_a_malformed_setting_takes_its_default_and_is_named(home, db, tmp_path):
    """The hook and its detached reconciler read the same variables: one that cannot be
    used takes its default in both (it used to stop every reconciler, and the row never
    settled), is logged once per reconciler run, and ``status``/``doctor`` name it."""
    bad = {"RECONCILE_STATEMENT_TIMEOUT": "abc"}
    done = cli(
        "hook",
        home=home,
        url=db,
        stdin=b'{"session_id": "s-1"}',
        RECONCILE_EXECUTOR_ID="e-1",
        **bad,
    )
    assert (done.returncode, done.stdout) == (0, b"")
    wait_settled(home)
    assert session_of(db, "e-1") == "s-1"
    lines = [json.loads(line) for line in (home / "log" / "reconcile.log").read_text().splitlines()]
    ignored = [line for line in lines if line["event"] == "settings.ignored"]
    assert [(i["variable"], i["value"], i["default"]) for i in ignored] == [
        ("RECONCILE_STATEMENT_TIMEOUT", "abc", 2.0)
    ]
    assert not [line for line in lines if line["event"] == "reconciler.failed"]

    status = cli("status", "--json", home=home, url=db, **bad)
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert [i["variable"] for i in data["settings_ignored"]] == ["RECONCILE_STATEMENT_TIMEOUT"]
    assert data["pending"] == 0
    assert "RECONCILE_STATEMENT_TIMEOUT" in data["next_step"]
    words = cli("status", home=home, url=db, **bad)
    assert b"RECONCILE_STATEMENT_TIMEOUT='abc'" in words.stdout

    settings = tmp_path / "settings.json"
    settings.write_text("{}")
    doctor = cli("doctor", "--json", "--settings", str(settings), home=home, url=db, **bad)
    assert doctor.returncode == 3  # a setting to correct is a finding
    report = json.loads(doctor.stdout)
    [check] = [c for c in report["checks"] if c["name"] == "settings"]
    assert check["status"] == "FAILED" and "RECONCILE_STATEMENT_TIMEOUT" in check["detail"]
    assert "RECONCILE_STATEMENT_TIMEOUT" in report["next_step"]

    # A command that acts refuses, naming the variable and what to do.
    compact = cli("compact", home=home, url=db, RECONCILE_MAX_ENTRIES="0")
    assert compact.returncode == 2
    assert b"RECONCILE_MAX_ENTRIES='0': must be positive" in compact.stderr
    assert b"unset it for the default (1000)" in compact.stderr


def test_hook_with_unusable_home_changes_nothing_until_it_is_usable(tmp_path, db):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    args = {"url": db, "stdin": b'{"session_id": "s-9"}', "RECONCILE_EXECUTOR_ID": "e-1"}
    done = cli("hook", home=blocker / "home", **args)
    assert (done.returncode, done.stdout) == (0, b"")
    assert session_of(db, "e-1") == "s-old"  # nowhere to journal: the next hook retries
    blocker.unlink()
    blocker.mkdir()
    done = cli("hook", home=blocker / "home", **args)
    assert (done.returncode, done.stdout) == (0, b"")
    wait_settled(blocker / "home")
    assert session_of(db, "e-1") == "s-9"


def test_hook_refuses_a_symlinked_home(tmp_path, db):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    done = cli(
        "hook", home=link, url=db, stdin=b'{"session_id": "s-9"}', RECONCILE_EXECUTOR_ID="e-1"
    )
    assert (done.returncode, done.stdout) == (0, b"")
    assert list(real.rglob("*.jnl")) == []
    status = cli("compact", home=link)
    assert status.returncode == 3
    assert b"symlink" in status.stderr and b"Traceback" not in status.stderr


def test_global_flags_reach_the_hook(tmp_path, db):
    home = tmp_path / "flagged"
    done = subprocess.run(
        [*reconcile_command(), "--home", str(home), "--database-url", db, "hook"],
        input=b'{"session_id": "s-flag"}',
        capture_output=True,
        env=clean_env(RECONCILE_EXECUTOR_ID="e-1"),
    )
    assert (done.returncode, done.stdout) == (0, b"")
    wait_settled(home)
    assert session_of(db, "e-1") == "s-flag"
    assert len(list(journal.history(home))) == 2


def test_hooks_start_a_background_compaction_past_the_threshold(tmp_path, database_url):
    from reconcile_helpers import query

    done = cli("db", "migrate", "--create-tables", home=tmp_path / "m", url=database_url)
    assert done.returncode == 0
    seed(database_url, [], [(f"x-{i}", None, None, "running") for i in range(5)])
    home = tmp_path / "home"
    for i in range(5):  # each miss leaves finished journals behind
        done = cli(
            "hook",
            home=home,
            url=database_url,
            stdin=b'{"session_id": "s"}',
            RECONCILE_EXECUTOR_ID=f"x-{i}",
            RECONCILE_COMPACT_THRESHOLD="2",
        )
        assert (done.returncode, done.stdout) == (0, b"")
        wait_settled(home)
    deadline = time.monotonic() + 180
    while not (home / "snapshot").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (home / "snapshot").exists()  # a detached compactor ran
    wait_idle(home)
    assert len(journal.load(home)) == 5  # and lost nothing
    assert all(r.type == "session.reconciled" for r in journal.load(home).values())
    assert query(database_url, "SELECT count(*) FROM executors WHERE claude_session_id = 's'")[
        0
    ] == (5,)


@pytest.mark.skipif(
    shutil.which("strace") is None, reason="strace is not installed (.ci/run installs it)"
)
def test_hook_that_cannot_open_dev_null_still_exits_0_and_says_why(home, db):
    """The hook silences its stdout by opening /dev/null; a system where that open fails
    (EACCES injected by strace into every open of that path) still gets exit 0 and
    nothing on stdout or stderr from the hook, and the reason in the log."""
    strace = ["strace", "-f", "-qq", "-o", "/dev/null", "-P", "/dev/null", "-e", "trace=openat"]
    done = subprocess.run(
        [*strace, "-e", "inject=openat:error=EACCES", *default_hook()],
        input=b'{"session_id": "s-1"}',
        capture_output=True,
        env=clean_env(
            RECONCILE_HOME=str(home), RECONCILE_DATABASE_URL=db, RECONCILE_EXECUTOR_ID="e-1"
        ),
        timeout=120,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    assert "PermissionError" in wait_for_log(home, "hook.failed")
