"""Small things a newcomer trips over, each as a user meets it: real processes, a real
PostgreSQL, real pipes and signals, real files."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from reconcile_helpers import (
    clean_env,
    cli,
    command_line_database,
    reconcile_command,
    run_hook,
    wait_idle,
    wait_settled,
)

import journal
import reconcile


@pytest.fixture
def db(database_url: str, tmp_path: Path) -> str:
    return command_line_database(database_url, tmp_path)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


# -- replay --to-db counts what it did, and says the same the second time ------------------


def test_replay_to_db_counts_no_settled_history_as_superseded(home, db):
    run_hook(home, db, {"session_id": "s-1"}, RECONCILE_EXECUTOR_ID="e-1")
    wait_settled(home)
    run_hook(home, db, {"session_id": "s-2"}, RECONCILE_EXECUTOR_ID="e-1")
    wait_settled(home)
    reports = []
    for _ in range(3):
        done = cli("replay", "--to-db", "--json", home=home, url=db)
        assert done.returncode == 0, done.stderr
        reports.append(json.loads(done.stdout))
    assert reports[0]["pending"] == 0 and reports[0]["superseded"] == 0, reports[0]
    assert reports[1] == reports[2] == {**reports[0], "audit_rows_inserted": 0}
    human = cli("replay", "--to-db", home=home, url=db).stdout.decode()
    assert "superseded:" not in human or "superseded: 0" in human.replace("  ", " ")


def test_replay_to_db_counts_an_observation_a_later_one_replaced(home, db):
    down = "postgresql://x@127.0.0.1:9/d"
    no_retry = {"RECONCILE_RETRY_HORIZON": "0"}
    for session in ("s-a", "s-b"):  # two observations the database never saw
        run_hook(home, down, {"session_id": session}, RECONCILE_EXECUTOR_ID="e-1", **no_retry)
        wait_idle(home)
    done = cli("replay", "--to-db", "--json", home=home, url=db)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["pending"], report["superseded"]) == (1, 1), report
    again = json.loads(cli("replay", "--to-db", "--json", home=home, url=db).stdout)
    assert (again["pending"], again["superseded"]) == (0, 0), again


# -- a reader that goes away early changes no exit code ---------------------------------------


@pytest.mark.parametrize(("command", "code"), [("doctor", 3), ("status", 0)])
def test_head_1_sees_the_commands_own_exit_code_every_time(tmp_path, command, code):
    """`reconcile doctor | head -1` under pipefail: doctor's 3 (no hook installed), never
    masked by the closed pipe, however the race between the writer and `head` goes."""
    home = tmp_path / "home"
    env = clean_env(RECONCILE_HOME=str(home))
    script = (
        "set -o pipefail; for i in $(seq 20); do "
        f'{shlex.join(reconcile_command())} {command} --settings "$1" 2>/dev/null | head -1 '
        '>/dev/null; echo "$?"; done'
    )
    if command != "doctor":
        script = script.replace(' --settings "$1"', "")
    done = subprocess.run(
        ["bash", "-c", script, "bash", str(tmp_path / "settings.json")],
        capture_output=True,
        env=env,
        timeout=600,
    )
    assert done.stdout.decode().split() == [str(code)] * 20, done.stderr


# -- commands that only look create nothing ---------------------------------------------------

READ_ONLY = [
    ("status",),
    ("status", "--json"),
    ("show",),
    ("show", "executor:e-1"),
    ("replay",),
    ("replay", "--key", "executor:e-1"),
    ("verify",),
    ("verify", "--db"),
    ("explain", "--session-id", "s-1"),
    ("doctor",),
    ("db", "status"),
    ("db", "url"),
]


@pytest.mark.parametrize("command", READ_ONLY, ids=" ".join)
def test_a_read_only_command_creates_no_state_directory(tmp_path, command):
    typo = tmp_path / "typo"
    done = cli(*command, home=typo / "deeper")
    assert done.returncode in (0, 1, 3), done.stderr
    assert not typo.exists(), sorted(p for p in typo.rglob("*"))
    assert list(tmp_path.iterdir()) == []
    if command[0] == "status" and done.returncode == 0 and "--json" not in command:
        assert b"none yet: the first hook or `reconcile db up` creates it" in done.stdout
    elif done.returncode == 0 and command[0] in ("show", "replay", "verify"):
        assert b"no state directory at " in done.stderr, done.stderr


@pytest.mark.parametrize("command", READ_ONLY, ids=" ".join)
def test_a_read_only_command_creates_nothing_in_an_empty_home(tmp_path, command):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    done = cli(*command, home=home)
    assert done.returncode in (0, 1, 3), done.stderr
    assert list(home.iterdir()) == []
    assert b"no state directory" not in done.stderr


# -- install-hooks then --uninstall leave things as they were ----------------------------------


def _install_hooks(home: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = clean_env(HOME=str(home), RECONCILE_HOME=str(home / "state"))
    done = subprocess.run(
        [*reconcile_command(), "install-hooks", "--claude-version", "2.1.200", *args],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done


def test_install_then_uninstall_in_an_empty_home_leaves_no_file(tmp_path):
    home = tmp_path / "user"
    home.mkdir()
    _install_hooks(home)
    settings = home / ".claude" / "settings.json"
    assert "UserPromptSubmit" in json.loads(settings.read_text())["hooks"]
    done = _install_hooks(home, "--uninstall")
    assert b"file removed" in done.stdout
    assert [p for p in home.rglob("*") if not p.is_dir()] == []  # no settings.json, no .bak
    assert b"nothing to remove" in _install_hooks(home, "--uninstall").stdout


@pytest.mark.parametrize("content", ["", "{}\n"])
def test_a_settings_file_holding_nothing_gets_no_backup(tmp_path, content):
    home = tmp_path / "user"
    (home / ".claude").mkdir(parents=True)
    settings = home / ".claude" / "settings.json"
    settings.write_text(content)
    done = _install_hooks(home)
    assert b"what was there before" not in done.stdout
    assert sorted(os.listdir(home / ".claude")) == ["settings.json"]


def test_uninstall_through_a_link_keeps_the_link(tmp_path):
    """A settings.json kept as a link (dotfiles) stays a link, its file holding ``{}``."""
    home = tmp_path / "user"
    dotfiles = tmp_path / "dotfiles"
    (home / ".claude").mkdir(parents=True)
    dotfiles.mkdir()
    (dotfiles / "settings.json").write_text("{}\n")
    link = home / ".claude" / "settings.json"
    link.symlink_to(dotfiles / "settings.json")
    _install_hooks(home)
    _install_hooks(home, "--uninstall")
    assert link.is_symlink() and json.loads(link.read_text()) == {}
    assert os.listdir(dotfiles) == ["settings.json"]


# -- the demo: cleaned up on SIGTERM and SIGHUP, on its own settings ---------------------------


@pytest.fixture
def scratch() -> Iterator[Path]:
    """Outside pytest's 0700 root (as root, the demo's server runs as another user)."""
    path = Path(tempfile.mkdtemp(prefix="reconcile-test-papercuts-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_the_demo_cleans_up_when_terminated(scratch, sig):
    env = clean_env(TMPDIR=str(scratch))
    proc = subprocess.Popen(
        [*reconcile_command(), "demo", "--forks", "1000000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    lines: list[bytes] = []
    assert proc.stderr is not None
    for line in proc.stderr:  # its narration, until its server is up and seeded
        lines.append(line)
        if b"agents seeded" in line:
            break
    else:
        raise AssertionError(b"".join(lines))
    [home] = list(scratch.iterdir())
    server = reconcile.server_status(home)
    assert server.running and server.pid, server
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 128 + sig, err
    assert b"Traceback" not in err and b"cleaned up" in err
    assert list(scratch.iterdir()) == []  # its temporary state directory: gone
    give_up = time.monotonic() + 300
    while _alive(server.pid):  # stopped by the demo; reaped by init
        assert time.monotonic() < give_up, f"postgres {server.pid} still runs"
        time.sleep(0.1)


def test_the_demo_runs_on_its_own_settings(scratch):
    env = clean_env(
        TMPDIR=str(scratch), RECONCILE_MAX_ENTRIES="3", RECONCILE_COMPACT_THRESHOLD="nope"
    )
    done = subprocess.run(
        [*reconcile_command(), "demo", "--agents", "6", "--forks", "30", "--json"],
        capture_output=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["max_entries"] == 1000  # the default, not the user's 3
    assert report["lost"] == 0 and report["verified"] is True
    assert list(scratch.iterdir()) == []


# -- one way of saying each thing ---------------------------------------------------------------


def _words(value: object) -> str:
    return " ".join(value) if isinstance(value, tuple) else str(value)


@pytest.mark.parametrize(
    ("inside", "mode"), [("", 0o770), ("journal", 0o777), ("snapshot", 0o622)], ids=str
)
def test_modes_and_their_fix_are_worded_one_way(tmp_path, inside, mode):
    home = tmp_path / "home"
    run_hook(home, "postgresql://x@127.0.0.1:9/d", {"session_id": "s"}, RECONCILE_RETRY_HORIZON="0")
    assert cli("compact", home=home).returncode == 0
    path = home / inside if inside else home
    path.chmod(mode)
    try:
        done = cli("status", home=home)
        doctor = json.loads(cli("doctor", "--json", home=home).stdout)
    finally:
        path.chmod(0o700 if path.is_dir() else 0o600)
    assert done.returncode == 3
    expected = (
        f"reconcile: error: {path} is writable by group or others (mode {mode:04o}): "
        f"check what it holds, then chmod go-w {path}\n"
    )
    assert done.stderr.decode() == expected
    [check] = [c for c in doctor["checks"] if c["name"] == "state directory"]
    assert f"(mode {mode:04o})" in check["detail"]
    assert check["next_step"] == f"check what it holds, then chmod go-w {path}"


def test_show_of_a_missing_key_is_an_error_and_replay_a_filter_with_the_same_hint(home, db):
    run_hook(home, db, {"session_id": "s-new"}, RECONCILE_EXECUTOR_ID="e-1")
    wait_settled(home)
    shown = cli("show", "e-1", home=home)
    assert shown.returncode == 1 and shown.stdout == b""
    hint = b"did you mean 'executor:e-1'?"
    assert shown.stderr == b"reconcile: error: no cache entry for 'e-1'; " + hint + b"\n"
    replayed = cli("replay", "--key", "e-1", home=home)
    assert replayed.returncode == 0 and replayed.stdout == b""
    assert replayed.stderr == b"reconcile: note: no events for 'e-1'; " + hint + b"\n"


def test_forget_twice_is_harmless(home, db):
    run_hook(home, db, {"session_id": "s-new"}, RECONCILE_EXECUTOR_ID="e-1")
    wait_settled(home)
    first = cli("forget", "executor:e-1", home=home)
    assert first.returncode == 0, first.stderr
    records = len(list(journal.history(home)))
    again = cli("forget", "executor:e-1", home=home)
    assert again.returncode == 0, again.stderr
    assert b"executor:e-1 was already forgotten" in again.stdout
    assert len(list(journal.history(home))) == records  # nothing written
    as_json = json.loads(cli("forget", "executor:e-1", "--json", home=home).stdout)
    assert as_json["event_id"] is None and as_json["already_forgotten"]
    never = cli("forget", "executor:e-9", home=home)
    assert never.returncode == 1 and never.stderr.startswith(b"reconcile: error: no cache entry")


@pytest.mark.parametrize(
    ("argv", "meant", "help_of"),
    [
        (("stauts",), "status", "reconcile"),
        (("install-hook",), "install-hooks", "reconcile"),
        (("db", "upp"), "up", "reconcile db"),
        (("db", "stauts"), "status", "reconcile db"),
    ],
    ids=_words,
)
def test_a_mistyped_command_gets_the_one_meant(tmp_path, argv, meant, help_of):
    done = cli(*argv, home=tmp_path / "home")
    assert done.returncode == 2 and done.stdout == b""
    message = done.stderr.decode()
    assert message.count("\n") == 1, message
    assert f"did you mean {meant!r}?" in message and f"(see: {help_of} --help)" in message
    assert "choose from" not in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "help_of"),
    [
        (("show", "--jsno"), "reconcile show"),
        (("status", "--verbose-ish"), "reconcile status"),
        (("db", "status", "--nope"), "reconcile db"),
    ],
    ids=_words,
)
def test_an_unknown_option_points_to_its_commands_help(tmp_path, argv, help_of):
    done = cli(*argv, home=tmp_path / "home")
    assert done.returncode == 2
    assert done.stderr.decode().endswith(f"(see: {help_of} --help)\n"), done.stderr


@pytest.mark.parametrize(
    ("argv", "belongs"),
    [
        (("db", "up", "--create-tables"), "db migrate"),
        (("db", "status", "--show-password"), "db url"),
        (("db", "url", "--create-tables"), "db migrate"),
        (("db", "migrate", "--yes"), "db remove"),
        (("db", "down", "--orphans"), "db remove"),
    ],
    ids=_words,
)
def test_an_option_of_another_db_action_is_refused(tmp_path, argv, belongs):
    done = cli(*argv, home=tmp_path / "home")
    assert done.returncode == 2 and done.stdout == b""
    message = done.stderr.decode()
    assert message.count("\n") == 1 and f"goes with `{belongs}`" in message, message
    assert list(tmp_path.iterdir()) == []  # refused before anything was done


def test_the_demo_report_counts_hook_runs_as_installed(scratch):
    done = subprocess.run(
        [*reconcile_command(), "demo", "--agents", "4", "--forks", "12"],
        capture_output=True,
        env=clean_env(TMPDIR=str(scratch)),
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    assert "one per tool use" not in text
    assert "one per prompt or session start" in text
