"""The rows against Claude Code's own transcripts: what the hook keeps of the payload, what
the outcome carries on, ``verify --transcripts`` and its ``--repair``, on real files and a
real PostgreSQL (docs/transcripts.md). The real Claude Code's side is in
tests/e2e/test_claude_code.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reconcile_helpers import audit_rows, clean_env, cli, reconcile_command, seed, session_of

import journal
from reconcile import (
    Settings,
    handle,
    migrate,
    reconcile_session,
    repair_transcripts,
    replay_to_db,
    verify_transcripts,
)
from reconcile._transcript import MAX_PATH_BYTES, project_dir_name, transcript_fields

# -- what the hook keeps -------------------------------------------------------------------


def test_the_hook_keeps_the_transcript_path_and_cwd_of_a_miss(tmp_path: Path):
    env = {"RECONCILE_HOME": str(tmp_path), "RECONCILE_EXECUTOR_ID": "e-1", "RECONCILE_FSYNC": "0"}
    env["RECONCILE_RETRY_HORIZON"] = "0"
    env["RECONCILE_DATABASE_URL"] = "postgresql://127.0.0.1:1/none"  # refused: stays observed
    payload = {"session_id": "s-1", "transcript_path": "/p/x y/s-1.jsonl", "cwd": "/w/x y"}
    handle(env, json.dumps(payload).encode())
    [record] = [r for r in journal.history(tmp_path) if r.type == "session.observed"]
    assert record.data["transcript_path"] == "/p/x y/s-1.jsonl"
    assert record.data["cwd"] == "/w/x y"
    assert "dropped" not in record.data


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("relative/s.jsonl", "not an absolute path"),
        ("/a\x00b", "contains NUL"),
        ("/" + "a" * MAX_PATH_BYTES, f"longer than {MAX_PATH_BYTES} bytes"),
        ("/\ud800", "not UTF-8"),
        (42, "not a string"),
    ],
)
def test_a_path_the_hook_cannot_keep_is_dropped_and_noted(value: object, why: str):
    fields = transcript_fields({"transcript_path": value, "cwd": "/w"})
    assert fields == {"cwd": "/w", "dropped": {"transcript_path": why}}


def test_paths_that_would_overflow_the_line_are_dropped_and_the_observation_kept(tmp_path):
    env = {"RECONCILE_HOME": str(tmp_path), "RECONCILE_FSYNC": "0", "RECONCILE_RETRY_HORIZON": "0"}
    env["RECONCILE_EXECUTOR_ID"] = "e" * 256
    env["RECONCILE_AGENT_NAME"], env["RECONCILE_TEAM"] = "n" * 256, "t" * 256
    env["RECONCILE_DATABASE_URL"] = "postgresql://127.0.0.1:1/none"
    wide = "/" + "é" * 300  # 601 bytes of UTF-8, 1,801 once escaped in the record
    payload = {"session_id": "s" * 256, "transcript_path": wide, "cwd": wide}
    handle(env, json.dumps(payload).encode())
    [record] = [r for r in journal.history(tmp_path) if r.type == "session.observed"]
    assert record.data["session_id"] == "s" * 256
    assert record.data["dropped"] == {
        "transcript_path": "record too long",
        "cwd": "record too long",
    }
    assert "transcript_path" not in record.data and "cwd" not in record.data


# -- the project directory's name, as Claude Code writes it ------------------------------


@pytest.mark.parametrize(
    ("cwd", "name"),
    [
        ("/home/u/my project", "-home-u-my-project"),
        ("/srv/app.v2/src", "-srv-app-v2-src"),
        ("/tmp/café", "-tmp-caf-"),
        ("/tmp/🚀x", "-tmp---x"),  # outside the BMP: two UTF-16 units, two dashes
    ],
)
def test_the_project_directory_name(cwd: str, name: str):
    assert project_dir_name(cwd) == name


def test_a_long_project_directory_name_is_cut_and_hashed_as_claude_code_does():
    cwd = "/" + "a" * 250
    # String.hashCode of cwd, as JavaScript computes it (Math.abs, base 36)
    h = 0
    for char in cwd:
        h = (h * 31 + ord(char)) & 0xFFFFFFFF
    h = abs(h - (1 << 32) if h >= 1 << 31 else h)
    digits = ""
    while h:
        h, r = divmod(h, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + digits
    assert project_dir_name(cwd) == "-" + "a" * 199 + "-" + digits


@given(st.text(min_size=1, max_size=300))
def test_a_project_directory_name_is_ascii_letters_digits_and_dashes(cwd: str):
    name = project_dir_name(cwd)
    assert all(c == "-" or (c.isascii() and c.isalnum()) for c in name)
    units = len(cwd.encode("utf-16-le", "surrogatepass")) // 2
    assert len(name) == units if units <= 200 else name[:200] == project_dir_name(cwd[:200])[:200]


# -- on a real database ------------------------------------------------------------------


@pytest.fixture
def db(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn, create_tables=True)
    seed(
        database_url,
        agents=[("a-1", "alice", "core", "e-1"), ("a-2", "bob", "core", "e-2")],
        executors=[
            ("e-1", "a-1", None, "running"),
            ("e-2", "a-2", None, "running"),
            ("e-3", None, None, "running"),
        ],
    )
    return database_url


@pytest.fixture
def settings(tmp_path: Path, db: str) -> Settings:
    return Settings.from_env({}, home=tmp_path / "home", database_url=db, fsync=False)


@pytest.fixture
def claude_dir(tmp_path: Path) -> Path:
    return tmp_path / "claude"


def project(claude_dir: Path, cwd: str) -> Path:
    directory = claude_dir / "projects" / project_dir_name(cwd)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def transcript(directory: Path, session: str, mtime: float | None = None) -> Path:
    path = directory / f"{session}.jsonl"
    path.write_text(json.dumps({"type": "user", "sessionId": session}) + "\n")
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def run(settings: Settings, executor: str, session: str, path: Path | None, cwd: str) -> None:
    payload: dict[str, str] = {"session_id": session, "cwd": cwd}
    if path is not None:
        payload["transcript_path"] = str(path)
    outcome = reconcile_session(settings, {"RECONCILE_EXECUTOR_ID": executor}, payload)
    assert outcome.kind in ("reconciled", "confirmed"), outcome


def new_id() -> str:
    return str(uuid.uuid4())


def test_the_outcome_carries_the_paths_on(settings, claude_dir):
    directory = project(claude_dir, "/w/one")
    session = new_id()
    path = transcript(directory, session)
    run(settings, "e-1", session, path, "/w/one")
    record = journal.load(settings.home)["executor:e-1"]
    assert record.type == "session.reconciled"
    assert record.data["transcript_path"] == str(path) and record.data["cwd"] == "/w/one"


def test_a_resumable_row_and_no_orphan_is_consistent(settings, claude_dir):
    directory = project(claude_dir, "/w/one")
    session = new_id()
    run(settings, "e-1", session, transcript(directory, session), "/w/one")
    env = {"CLAUDE_CONFIG_DIR": str(claude_dir)}
    report = verify_transcripts(settings, env)
    [row] = report.rows
    assert (row.state, row.problems, row.newest, report.ok) == ("ok", [], True, True)
    assert report.orphans == []


def test_a_deleted_transcript_cannot_be_resumed(settings, claude_dir):
    directory = project(claude_dir, "/w/one")
    session = new_id()
    path = transcript(directory, session)
    run(settings, "e-1", session, path, "/w/one")
    path.unlink()
    report = verify_transcripts(settings, {"CLAUDE_CONFIG_DIR": str(claude_dir)})
    assert [row.problems for row in report.rows] == [["missing"]] and not report.ok


def test_rows_on_another_host_or_from_older_hooks_are_named_not_counted_good(settings, claude_dir):
    session = new_id()
    run(settings, "e-1", session, Path(f"/nowhere/here/{session}.jsonl"), "/nowhere")
    with journal.Writer(settings.home) as writer:  # an outcome journaled before the paths
        writer.append(
            "executor:e-3", {"executor_id": "e-3", "session_id": new_id()}, "session.confirmed"
        )
    report = verify_transcripts(settings, {"CLAUDE_CONFIG_DIR": str(claude_dir)})
    states = {row.key: row.state for row in report.rows}
    assert states == {"executor:e-1": "elsewhere", "executor:e-3": "no_location"}
    assert report.ok and len(report.unchecked) == 2


def test_without_the_observed_path_the_directory_comes_from_cwd(settings, claude_dir):
    cwd = "/w/a dir.with dots/é"
    directory = project(claude_dir, cwd)
    session = new_id()
    transcript(directory, session)
    run(settings, "e-1", session, None, cwd)
    [row] = verify_transcripts(settings, {"CLAUDE_CONFIG_DIR": str(claude_dir)}).rows
    assert (row.state, row.located_by) == ("ok", "cwd")
    assert row.transcript == str(directory / f"{session}.jsonl")


def test_a_newer_orphan_is_a_missed_rotation_and_repair_observes_it(settings, claude_dir):
    directory = project(claude_dir, "/w/one")
    first = new_id()
    old = transcript(directory, first)
    run(settings, "e-1", first, old, "/w/one")
    os.utime(old, (old.stat().st_mtime - 60,) * 2)  # the old session, last written before
    older_orphan = transcript(directory, new_id(), mtime=old.stat().st_mtime - 3600)
    missed = new_id()
    transcript(directory, missed, mtime=journal_now() + 30)  # written after the hooks saw it
    env = {"CLAUDE_CONFIG_DIR": str(claude_dir)}
    report = verify_transcripts(settings, env)
    [row] = report.rows
    assert row.problems == ["newer_orphan"] and row.newer_orphans == (missed,)
    assert {o.session_id for o in report.orphans} == {missed, older_orphan.stem}
    assert not report.ok
    audits = len(audit_rows(settings.database_url))

    dry = repair_transcripts(settings, env)
    [plan] = dry.repairs
    assert (plan.action, plan.session_id, dry.applied) == ("observe", missed, False)
    assert session_of(settings.database_url, "e-1") == first  # a dry run writes nothing
    assert journal.load(settings.home)["executor:e-1"].type == "session.reconciled"

    done = repair_transcripts(settings, env, apply=True)
    [applied] = done.repairs
    assert applied.outcome == "session.reconciled"
    assert session_of(settings.database_url, "e-1") == missed
    assert len(audit_rows(settings.database_url)) == audits + 1
    observed = [r for r in journal.history(settings.home) if r.type == "session.observed"]
    assert observed[-1].data["source"] == "transcript"
    assert verify_transcripts(settings, env).ok
    again = repair_transcripts(settings, env, apply=True)
    assert again.repairs == [] and len(audit_rows(settings.database_url)) == audits + 1


def journal_now() -> float:
    import time

    return time.time()


def test_repair_leaves_a_directory_two_executors_share(settings, claude_dir):
    directory = project(claude_dir, "/w/shared")
    one, two = new_id(), new_id()
    run(settings, "e-1", one, transcript(directory, one, mtime=journal_now() - 100), "/w/shared")
    run(settings, "e-2", two, transcript(directory, two, mtime=journal_now() - 100), "/w/shared")
    transcript(directory, new_id(), mtime=journal_now() + 30)
    report = repair_transcripts(settings, {"CLAUDE_CONFIG_DIR": str(claude_dir)}, apply=True)
    assert {r.action for r in report.repairs} == {"skip"}
    assert all("other executors use this project directory" in r.reason for r in report.repairs)
    assert session_of(settings.database_url, "e-1") == one
    assert session_of(settings.database_url, "e-2") == two


def test_repair_never_touches_a_row_the_hooks_saw_change_after_the_transcript(settings, claude_dir):
    directory = project(claude_dir, "/w/one")
    first = new_id()
    run(settings, "e-1", first, transcript(directory, first, mtime=journal_now() - 200), "/w/one")
    # an orphan last written before the hooks' latest word on this row
    orphan = transcript(directory, new_id(), mtime=journal_now() - 100)
    report = repair_transcripts(settings, {"CLAUDE_CONFIG_DIR": str(claude_dir)}, apply=True)
    [skip] = report.repairs
    assert skip.action == "skip" and skip.session_id == orphan.stem
    assert "the hooks saw this row change after" in skip.reason
    assert session_of(settings.database_url, "e-1") == first


def test_the_command_exits_1_on_a_missing_transcript_and_says_so(settings, claude_dir, db):
    directory = project(claude_dir, "/w/one")
    session = new_id()
    path = transcript(directory, session)
    run(settings, "e-1", session, path, "/w/one")
    args = ("verify", "--transcripts")
    ok = cli(*args, home=settings.home, url=db, CLAUDE_CONFIG_DIR=str(claude_dir))
    assert ok.returncode == 0, ok.stderr
    assert b"consistent" in ok.stdout
    path.unlink()
    bad = cli(*args, "--json", home=settings.home, url=db, CLAUDE_CONFIG_DIR=str(claude_dir))
    assert bad.returncode == 1, bad.stderr
    assert json.loads(bad.stdout)["rows"][0]["problems"] == ["missing"]
    text = cli(
        *args,
        "--key",
        "executor:e-1",
        home=settings.home,
        url=db,
        CLAUDE_CONFIG_DIR=str(claude_dir),
    )
    assert text.returncode == 1 and b"cannot be resumed" in text.stdout
    usage = cli("verify", "--repair", home=settings.home, url=db)
    assert usage.returncode == 2 and b"--transcripts" in usage.stderr


def test_a_terminal_executor_repaired_keeps_its_anchor(settings, claude_dir, db):
    anchor = new_id()
    seed(db, executors=[("e-done", None, anchor, "done")])
    directory = project(claude_dir, "/w/done")
    transcript(directory, anchor, mtime=journal_now() - 300)
    live = new_id()
    payload = {"session_id": live, "cwd": "/w/done"}
    payload["transcript_path"] = str(transcript(directory, live, mtime=journal_now() - 200))
    outcome = reconcile_session(settings, {"RECONCILE_EXECUTOR_ID": "e-done"}, payload)
    assert outcome.kind == "divergence_preserved"
    [row] = verify_transcripts(settings, {"CLAUDE_CONFIG_DIR": str(claude_dir)}).rows
    assert (row.session_id, row.state) == (anchor, "ok")  # the row holds the anchor
    missed = transcript(directory, new_id(), mtime=journal_now() + 30).stem
    audits = len(audit_rows(db, "e-done"))
    report = repair_transcripts(settings, {"CLAUDE_CONFIG_DIR": str(claude_dir)}, apply=True)
    assert [(r.session_id, r.outcome) for r in report.repairs] == [
        (missed, "session.divergence_preserved")
    ]
    assert session_of(db, "e-done") == anchor
    assert len(audit_rows(db, "e-done")) == audits + 1  # the new pair, audited once


def test_an_outcome_too_long_for_its_line_drops_the_paths_last(tmp_path):
    from reconcile._outcome import append_fitted

    wide = "/" + "x" * 1023
    data = {  # an executor id is never cut: with it, the paths cannot fit
        "executor_id": "e" * 2100,
        "old_session_id": "o" * 2000,
        "new_session_id": "s-1",
        "agent": "a" * 2000,
        "team": "t",
        "transcript_path": wide,
        "cwd": wide,
    }
    with journal.Writer(tmp_path) as writer:
        append_fitted(writer, "executor:e-1", data, "session.reconciled")
    [record] = journal.history(tmp_path)
    assert record.data["new_session_id"] == "s-1"
    assert record.data["truncated"] == ["agent", "old_session_id"]  # cut first, then
    assert "transcript_path" not in record.data  # the paths dropped whole
    too_long = "record too long"
    assert record.data["dropped"] == {"transcript_path": too_long, "cwd": too_long}
    shorter = dict(data, executor_id="e-1")  # cuts alone make it fit: the paths stay
    with journal.Writer(tmp_path) as writer:
        append_fitted(writer, "executor:e-1", shorter, "session.reconciled")
    kept = journal.load(tmp_path)["executor:e-1"].data
    assert kept["transcript_path"] == wide and "dropped" not in kept


def test_repair_with_the_database_away_leaves_the_observation_for_the_reconciler(
    settings, claude_dir, tmp_path
):
    directory = project(claude_dir, "/w/one")
    first = new_id()
    run(settings, "e-1", first, transcript(directory, first, mtime=journal_now() - 100), "/w/one")
    missed = transcript(directory, new_id(), mtime=journal_now() + 30).stem
    away = Settings.from_env(
        {}, home=settings.home, database_url="postgresql://127.0.0.1:1/none", fsync=False
    )
    report = repair_transcripts(away, {"CLAUDE_CONFIG_DIR": str(claude_dir)}, apply=True)
    [repair] = report.repairs
    assert (repair.action, repair.outcome) == ("observe", None)
    latest = journal.load(settings.home)["executor:e-1"]
    assert latest.type == "session.observed" and latest.data["session_id"] == missed
    assert latest.data["source"] == "transcript"
    assert session_of(settings.database_url, "e-1") == first
    assert repair_transcripts(settings, {"CLAUDE_CONFIG_DIR": str(claude_dir)}).repairs == []
    replay_to_db(settings)  # as any waiting observation: the next reconciler settles it
    assert session_of(settings.database_url, "e-1") == missed


# -- an error is never evidence of absence: strace fails the real command's calls --------

STRACE = shutil.which("strace")
needs_strace = pytest.mark.skipif(
    STRACE is None, reason="strace is not installed (.ci/run installs it with apt-get)"
)
VERIFY = ("verify", "--transcripts", "--json")


def traced(log: Path, fault: Path, inject: str, *args: str, home: Path, url: str, **env: str):
    """``reconcile ARGS`` under strace, which fails the calls ``inject`` names
    (``SYSCALLS:error=ERR[:when=N]``) that touch ``fault`` and nothing else (``-P``),
    and logs those calls to ``log`` (the injected ones end with ``(INJECTED)``)."""
    syscalls = inject.split(":")[0]
    strace = [STRACE or "strace", "-f", "-qq", "-o", str(log), "-P", str(fault)]
    strace += ["-e", f"trace={syscalls}", "-e", f"inject={inject}"]
    environment = clean_env(RECONCILE_HOME=str(home), RECONCILE_DATABASE_URL=url, **env)
    return subprocess.run(
        [*strace, *reconcile_command(), *args], capture_output=True, env=environment, timeout=300
    )


def injected(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.endswith("(INJECTED)")]


def only_row(done: subprocess.CompletedProcess[bytes]) -> dict:
    [row] = json.loads(done.stdout)["rows"]
    return row


# The listing of the project directory stats each transcript without following links
# (the first stat of its path); the row's own stat of its transcript is the second. A stat
# is newfstatat or statx, as the C library chooses: %%stat is every call of the family.
ROW_STAT_FAILS = "%%stat:error=EIO:when=2"
LISTING_FAILS = "openat:error=EACCES"


@needs_strace
def test_a_transcript_that_cannot_be_stat_is_unreadable_not_missing_nor_good(
    settings, claude_dir, db, tmp_path
):
    directory = project(claude_dir, "/w/one")
    session = new_id()
    path = transcript(directory, session)
    run(settings, "e-1", session, path, "/w/one")
    env = {"CLAUDE_CONFIG_DIR": str(claude_dir)}
    clean = cli(*VERIFY, home=settings.home, url=db, **env)
    assert clean.returncode == 0, clean.stderr
    assert only_row(clean)["state"] == "ok"  # without the fault, the row is good

    log = tmp_path / "strace.log"
    done = traced(log, path, ROW_STAT_FAILS, *VERIFY, home=settings.home, url=db, **env)
    [call] = injected(log)  # the row's own stat, and only it: the listing read the file
    assert str(path) in call and "AT_SYMLINK_NOFOLLOW" not in call, log.read_text()
    assert done.returncode == 0, done.stderr  # a row not checked alone is no exit 1
    report, row = json.loads(done.stdout), only_row(done)
    assert (row["state"], row["problems"]) == ("unreadable", [])
    assert row["detail"] == f"Input/output error: {path}"
    assert (report["problems"], report["unchecked"]) == (0, 1)

    text = traced(
        log, path, ROW_STAT_FAILS, "verify", "--transcripts", home=settings.home, url=db, **env
    )
    assert len(injected(log)) == 1 and text.returncode == 0, text.stderr
    assert b"0 of 1 settled executor checked" in text.stdout  # not counted as good
    assert b"not checked (unreadable): Input/output error" in text.stdout


@needs_strace
@pytest.mark.parametrize(
    ("fault", "inject", "error"),
    [
        ("directory", LISTING_FAILS, "Permission denied"),
        # another session's transcript there cannot be examined: the listing is incomplete
        ("other", "%%stat:error=EIO", "Input/output error"),
    ],
)
def test_a_project_directory_that_cannot_be_listed_makes_its_rows_unreadable(
    settings, claude_dir, db, tmp_path, fault, inject, error
):
    directory = project(claude_dir, "/w/one")
    session = new_id()
    path = transcript(directory, session)
    run(settings, "e-1", session, path, "/w/one")
    other = transcript(directory, new_id(), mtime=journal_now() - 3600)  # an older orphan
    env = {"CLAUDE_CONFIG_DIR": str(claude_dir)}
    clean = cli(*VERIFY, home=settings.home, url=db, **env)
    assert clean.returncode == 0, clean.stderr
    assert only_row(clean)["state"] == "ok"
    assert [o["path"] for o in json.loads(clean.stdout)["orphans"]] == [str(other)]

    log = tmp_path / "strace.log"
    target = {"directory": directory, "other": other}[fault]
    done = traced(log, target, inject, *VERIFY, home=settings.home, url=db, **env)
    [call] = injected(log)
    assert str(target) in call, log.read_text()
    assert done.returncode == 0, done.stderr
    report, row = json.loads(done.stdout), only_row(done)
    assert (row["state"], row["problems"]) == ("unreadable", [])
    assert row["detail"] == f"its directory could not be listed ({error}): {directory}"
    assert row["size"] == path.stat().st_size  # the transcript itself could be read
    assert (report["problems"], report["unchecked"], report["orphans"]) == (0, 1, [])


@needs_strace
@pytest.mark.parametrize(
    ("fault", "inject", "left_alone"),
    [
        # the row's transcript, or its directory: the row is unreadable, nothing to repair
        ("row", ROW_STAT_FAILS, None),
        ("directory", LISTING_FAILS, None),
        # the row was read; its directory listed again before writing was not
        (
            "directory",
            "openat:error=EACCES:when=2",
            "the project directory could not be listed again (Permission denied)",
        ),
        # the orphan's stat just before writing (the third: two listings came first)
        ("orphan", "%%stat:error=EIO:when=3", "the transcript: Input/output error"),
    ],
)
def test_repair_journals_nothing_for_a_row_it_could_not_read(
    settings, claude_dir, db, tmp_path, fault, inject, left_alone
):
    directory = project(claude_dir, "/w/one")
    first = new_id()
    old = transcript(directory, first, mtime=journal_now() - 100)
    run(settings, "e-1", first, old, "/w/one")
    missed = transcript(directory, new_id(), mtime=journal_now() + 30)
    env = {"CLAUDE_CONFIG_DIR": str(claude_dir)}
    repair = ("verify", "--transcripts", "--repair", "--json")
    dry = cli(*repair, home=settings.home, url=db, **env)
    assert dry.returncode == 1, dry.stderr
    [plan] = json.loads(dry.stdout)["repairs"]  # without the fault, it would observe
    assert (plan["action"], plan["session_id"]) == ("observe", missed.stem)
    before = [r.id for r in journal.history(settings.home)]
    latest = journal.load(settings.home)["executor:e-1"].id

    log = tmp_path / "strace.log"
    target = {"row": old, "directory": directory, "orphan": missed}[fault]
    done = traced(log, target, inject, *repair, "--apply", home=settings.home, url=db, **env)
    [call] = injected(log)
    assert str(target) in call and "AT_SYMLINK_NOFOLLOW" not in call, log.read_text()
    report = json.loads(done.stdout)
    if left_alone is None:
        assert done.returncode == 0, done.stderr
        assert report["repairs"] == [] and only_row(done)["state"] == "unreadable"
    else:  # the row is left alone, and says why
        assert done.returncode == 1, done.stderr
        [skip] = report["repairs"]
        assert (skip["action"], skip["reason"], skip["outcome"]) == ("skip", left_alone, None)
    assert [r.id for r in journal.history(settings.home)] == before  # nothing journaled
    assert journal.load(settings.home)["executor:e-1"].id == latest
    assert session_of(db, "e-1") == first

    applied = cli(*repair, "--apply", home=settings.home, url=db, **env)  # the fault gone
    assert json.loads(applied.stdout)["repairs"][0]["outcome"] == "session.reconciled"
    assert session_of(db, "e-1") == missed.stem
