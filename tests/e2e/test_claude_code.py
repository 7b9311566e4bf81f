"""The hook under the real Claude Code: installed by ``reconcile install-hooks``, fired by
the native ``claude`` binary (``RECONCILE_E2E_CLAUDE``, fetched by ``tests/e2e/fetch-claude``),
offline against the fake Messages API, with a real PostgreSQL.

What is proven here and nowhere else: which hooks Claude Code really fires and with what,
how many hook processes a session costs, that the session id it reports is the one the
executor row ends up holding across a new session, a fork and a resume, and that the
identity reaches the hook through the environment Claude Code passes on.

Without the binary the tests skip and say how to fetch it; under CI (``CI`` set), or
with ``RECONCILE_E2E_CLAUDE`` naming something that is not an executable, they fail
instead, so a broken fetch cannot pass for a green run. The row is written by a
process the hook may start in the background, so every check of the database waits for
its condition (60 s) instead of expecting it when ``claude`` exits.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from claude_sandbox import CLAUDE_VARIABLE, Run, Sandbox, claude_binary, wait_for
from fake_api import FakeMessagesAPI
from reconcile_helpers import audit_rows, cli, default_hook, hostile_project, seed, session_of

from reconcile import migrate
from reconcile._transcript import project_dir_name

SESSION_SOURCES = "startup|resume|clear|compact|fork"


@pytest.fixture(scope="module")
def claude() -> Path:
    found = claude_binary()
    if isinstance(found, Path):
        return found
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"CI must run the end-to-end tests: {found}")
    if os.environ.get(CLAUDE_VARIABLE):
        pytest.fail(found)  # asked for, and broken: not a reason to skip
    pytest.skip(found)


@pytest.fixture(scope="module")
def api() -> Iterator[FakeMessagesAPI]:
    with FakeMessagesAPI() as server:
        yield server


@pytest.fixture
def db(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn, create_tables=True)
    seed(
        database_url,
        agents=[("a-1", "alice", "core", "e-1"), ("a-2", "bob", "core", "e-2")],
        executors=[
            ("e-1", "a-1", None, "spawning"),
            ("e-2", "a-2", None, "spawning"),
            ("e-3", None, None, "spawning"),
        ],
    )
    return database_url


@pytest.fixture
def sandbox(tmp_path: Path, claude: Path, api: FakeMessagesAPI, db: str) -> Sandbox:
    box = Sandbox(
        tmp_path,
        claude,
        api.url,
        RECONCILE_HOME=str(tmp_path / "state"),
        RECONCILE_DATABASE_URL=db,
    )
    box.allow_bash()
    return box


def assert_hooks_silent(run: Run, cancellable: frozenset[str] = frozenset()) -> list[str]:
    """Every hook that ran exited 0 and wrote nothing; returns their names in order.

    ``cancellable``: async hooks, which Claude Code cancels (exit code 1, outcome
    ``cancelled``) when a headless session ends while they run.
    """
    assert run.exit_code == 0, run.stderr
    responses = run.hook_events("hook_response")
    for response in responses:
        assert response["stdout"] == "" and response["stderr"] == "", response
        if response["outcome"] == "cancelled" and response["hook_name"] in cancellable:
            continue
        assert response["outcome"] == "success", json.dumps(response)
        assert response["exit_code"] == 0, json.dumps(response)
    assert len(responses) == len(run.hook_events("hook_started"))
    assert run.report["lingering"] == [], run.report
    return [response["hook_name"] for response in responses]


def wait_for_session(db: str, executor: str, session_id: str) -> None:
    wait_for(lambda: session_of(db, executor), lambda s: s == session_id, f"{session_id}")


@pytest.mark.parametrize(
    ("install_args", "form"),
    [((), "exec"), (("--claude-version", "2.1.100"), "shell")],  # detected; older
    ids=["exec-form", "shell-form"],
)
def test_ten_tool_uses_cost_two_hook_processes_and_a_new_session_one_audit_row(
    sandbox, db, install_args, form
):
    sandbox.install(*install_args)  # the counting wrapper as the command
    wrapper = str(sandbox.bin / "reconcile")
    entry = (
        {"command": wrapper, "args": ["hook"]} if form == "exec" else {"command": f"{wrapper} hook"}
    )
    written = json.loads(sandbox.settings.read_text())
    assert written["permissions"] == {"allow": ["Bash"]}
    for event in ("SessionStart", "UserPromptSubmit"):
        hook = written["hooks"][event][0]["hooks"][0]
        assert {key: hook.get(key) for key in entry} == entry

    run = sandbox.run("Run a step. tool uses: 10", RECONCILE_EXECUTOR_ID="e-1")

    assert run.result["subtype"] == "success" and run.tool_results() == 10
    assert assert_hooks_silent(run) == ["SessionStart:startup", "UserPromptSubmit"]
    processes = sandbox.hook_processes()
    assert len(processes) == 2 and all(line.endswith(" hook") for line in processes)
    wait_for_session(db, "e-1", run.session_id)
    rows = audit_rows(db, "e-1")
    assert [(r[1], r[3]["old_session_id"], r[3]["new_session_id"]) for r in rows] == [
        ("session.reconciled", None, run.session_id)
    ]


def test_the_default_install_runs_the_interpreter_itself(tmp_path, claude, api, db):
    """What ``install-hooks`` writes by default (this environment's ``python -S`` on its
    script, absolute paths) is what Claude Code runs: no shell, no ``PATH`` lookup."""
    box = Sandbox(
        tmp_path,
        claude,
        api.url,
        hook="direct",
        PATH="/usr/bin:/bin",  # not even the script's directory: nothing is looked up
        RECONCILE_HOME=str(tmp_path / "state"),
        RECONCILE_DATABASE_URL=db,
    )
    box.allow_bash()
    box.install("--claude-version", "2.1.332")
    argv = default_hook()
    for event in ("SessionStart", "UserPromptSubmit"):
        hook = json.loads(box.settings.read_text())["hooks"][event][0]["hooks"][0]
        assert [hook["command"], *hook["args"]] == argv

    run = box.run("Run a step. tool uses: 3", RECONCILE_EXECUTOR_ID="e-1")

    assert run.result["subtype"] == "success" and run.tool_results() == 3
    assert assert_hooks_silent(run) == ["SessionStart:startup", "UserPromptSubmit"]
    wait_for_session(db, "e-1", run.session_id)
    assert [r[3]["new_session_id"] for r in audit_rows(db, "e-1")] == [run.session_id]


def test_nothing_of_the_project_claude_code_runs_in_is_imported(tmp_path, claude, api, db):
    """Claude Code runs the hook in the user's project; here one that holds modules
    named like ours, our dependencies' and the standard library's, a ``sitecustomize``
    and a ``.pth`` file. The hook, its reconciler and a compaction run from it (issue
    18): the row settles and nothing of the project was imported."""
    box = Sandbox(
        tmp_path,
        claude,
        api.url,
        hook="direct",
        RECONCILE_HOME=str(tmp_path / "state"),
        RECONCILE_DATABASE_URL=db,
        RECONCILE_COMPACT_THRESHOLD="1",  # the second hook that writes starts a compaction
    )
    traces = tmp_path / "traces"
    hostile_project(box.work, traces)
    box.allow_bash()
    box.install("--claude-version", "2.1.332")
    first = box.run("Run a step. tool uses: 1", RECONCILE_EXECUTOR_ID="e-1")
    wait_for_session(db, "e-1", first.session_id)
    second = box.run("Run a step. tool uses: 1", RECONCILE_EXECUTOR_ID="e-1")
    wait_for_session(db, "e-1", second.session_id)
    wait_for(lambda: (tmp_path / "state" / "snapshot").exists(), bool, "a compaction")
    assert sorted(os.listdir(traces)) == []


def test_a_fork_rotates_the_session_and_a_resume_keeps_the_row_in_step(sandbox, db):
    sandbox.install()
    first = sandbox.run("Start. tool uses: 1", RECONCILE_EXECUTOR_ID="e-1")
    assert_hooks_silent(first)
    wait_for_session(db, "e-1", first.session_id)

    fork = sandbox.run(
        "Fork. tool uses: 1",
        "--resume",
        first.session_id,
        "--fork-session",
        RECONCILE_EXECUTOR_ID="e-1",
    )
    names = assert_hooks_silent(fork)
    assert fork.session_id != first.session_id
    assert names[0].startswith("SessionStart:")  # "fork" since 2.1.214, "resume" before
    wait_for_session(db, "e-1", fork.session_id)
    rows = audit_rows(db, "e-1")
    assert [(r[3]["old_session_id"], r[3]["new_session_id"]) for r in rows] == [
        (None, first.session_id),
        (first.session_id, fork.session_id),
    ]

    resumed = sandbox.run(
        "Resume. tool uses: 1", "--resume", fork.session_id, RECONCILE_EXECUTOR_ID="e-1"
    )
    assert assert_hooks_silent(resumed)[0] == "SessionStart:resume"
    wait_for_session(db, "e-1", resumed.session_id)
    # Claude Code 2.1.332 keeps the id on --resume (earlier versions minted a new one):
    # an unchanged id must not add an audit row, a new one must add exactly one.
    changed = resumed.session_id != fork.session_id
    assert len(audit_rows(db, "e-1")) == 2 + changed


def test_the_identity_comes_through_the_environment_claude_code_passes_on(sandbox, db):
    sandbox.install()
    # The orchestrator's own variable names, and an agent named by team and name: the
    # hook resolves its executor (e-2) through the agents table.
    named = sandbox.run("Hello. tool uses: 1", GENIE_AGENT_NAME="bob", GENIE_TEAM="core")
    assert_hooks_silent(named)
    wait_for_session(db, "e-2", named.session_id)
    assert [r[2] for r in audit_rows(db, "e-2")] == ["bob"]

    # No identity at all (a session the orchestrator did not spawn): the hooks still run,
    # exit 0 and stay silent, and nothing changes.
    anonymous = sandbox.run("Hello. tool uses: 1")
    assert assert_hooks_silent(anonymous) == ["SessionStart:startup", "UserPromptSubmit"]
    assert [session_of(db, e) for e in ("e-1", "e-3")] == [None, None]
    assert len(audit_rows(db)) == 1


def test_every_tool_use_is_an_async_pre_tool_use_hook(sandbox, db):
    done = sandbox.install("--every-tool-use")
    assert b"PreToolUse: every tool use, async" in done.stdout

    run = sandbox.run("Work. tool uses: 10", RECONCILE_EXECUTOR_ID="e-1")

    assert run.result["subtype"] == "success" and run.tool_results() == 10
    names = assert_hooks_silent(run, cancellable=frozenset({"PreToolUse:Bash"}))
    assert names == ["SessionStart:startup", "UserPromptSubmit"] + ["PreToolUse:Bash"] * 10
    assert len(sandbox.hook_processes()) == 12
    wait_for_session(db, "e-1", run.session_id)
    assert len(audit_rows(db, "e-1")) == 1


# -- verify --transcripts against the transcripts Claude Code writes ----------------------
# Sessions run with the hook installed, then one with it uninstalled in an executor's
# project directory (a rotation no hook saw), then another executor's transcript is
# deleted: verify reports exactly those two, ``--repair --apply`` settles the missed
# rotation with one audit row and leaves the other reported. The working directories
# hold spaces, dots and non-ASCII characters, so the directory names Claude Code chose
# are compared with the ones this tool derives (docs/transcripts.md).

WORK_DIRS = ("my project.v2", "café déjà ✓ 🚀")


def verify(box: Sandbox, state: Path, url: str, *args: str) -> tuple[int, dict]:
    done = cli(
        "verify",
        "--transcripts",
        "--json",
        *args,
        home=state,
        url=url,
        CLAUDE_CONFIG_DIR=str(box.home / ".claude"),
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def test_a_missed_rotation_and_a_deleted_transcript_are_found_and_one_repaired(
    tmp_path, claude, api, db
):
    state = tmp_path / "state"
    box = Sandbox(tmp_path, claude, api.url, RECONCILE_HOME=str(state), RECONCILE_DATABASE_URL=db)
    box.allow_bash()
    box.install()
    places = []
    for name in WORK_DIRS:
        place = box.root / "work" / name
        place.mkdir(parents=True)
        places.append(place)

    box.work = places[0]
    first = box.run("Start. tool uses: 1", RECONCILE_EXECUTOR_ID="e-1")
    wait_for_session(db, "e-1", first.session_id)
    box.work = places[1]
    other = box.run("Start. tool uses: 1", RECONCILE_EXECUTOR_ID="e-2")
    wait_for_session(db, "e-2", other.session_id)

    projects = box.home / ".claude" / "projects"
    for place, run in zip(places, (first, other), strict=True):  # Claude Code's naming, ours
        assert (projects / project_dir_name(str(place)) / f"{run.session_id}.jsonl").is_file()
    code, report = verify(box, state, db)
    assert code == 0, report
    assert {r["key"]: r["state"] for r in report["rows"]} == {
        "executor:e-1": "ok",
        "executor:e-2": "ok",
    }
    assert all(r["located_by"] == "transcript_path" for r in report["rows"])
    assert report["orphans"] == []

    box.install("--uninstall")  # a session the hooks never see, in e-1's directory
    box.work = places[0]
    missed = box.run("Again. tool uses: 1", RECONCILE_EXECUTOR_ID="e-1")
    assert missed.session_id != first.session_id
    assert session_of(db, "e-1") == first.session_id
    deleted = projects / project_dir_name(str(places[1])) / f"{other.session_id}.jsonl"
    deleted.unlink()

    code, report = verify(box, state, db)
    assert code == 1
    problems = {r["key"]: r["problems"] for r in report["rows"] if r["problems"]}
    assert problems == {"executor:e-1": ["newer_orphan"], "executor:e-2": ["missing"]}
    assert [o["session_id"] for o in report["orphans"]] == [missed.session_id]
    audits = len(audit_rows(db, "e-1"))

    code, report = verify(box, state, db, "--repair")  # a dry run
    assert [(r["key"], r["action"]) for r in report["repairs"]] == [("executor:e-1", "observe")]
    assert session_of(db, "e-1") == first.session_id

    code, report = verify(box, state, db, "--repair", "--apply")
    assert report["repairs"][0]["outcome"] == "session.reconciled"
    assert session_of(db, "e-1") == missed.session_id
    rows = audit_rows(db, "e-1")
    assert len(rows) == audits + 1
    assert (rows[-1][3]["old_session_id"], rows[-1][3]["new_session_id"]) == (
        first.session_id,
        missed.session_id,
    )

    code, report = verify(box, state, db)
    assert code == 1
    problems = {r["key"]: r["problems"] for r in report["rows"] if r["problems"]}
    assert problems == {"executor:e-2": ["missing"]}
    assert report["orphans"] == []


def test_a_long_working_directory_is_named_as_claude_code_names_it(sandbox, db):
    """Past 200 characters Claude Code cuts the directory's name and adds a hash of the
    whole path: the name derived here is the one it wrote, and the row checks out."""
    place = sandbox.root / "work"
    for part in ("a long project name with spaces", "and.dots.v2", "naïve ü", "x" * 60, "y" * 60):
        place = place / part
    place.mkdir(parents=True)
    assert len(project_dir_name(str(place))) > 200
    sandbox.install()
    sandbox.work = place
    run = sandbox.run("Start. tool uses: 1", RECONCILE_EXECUTOR_ID="e-3")
    wait_for_session(db, "e-3", run.session_id)
    projects = sandbox.home / ".claude" / "projects"
    assert (projects / project_dir_name(str(place)) / f"{run.session_id}.jsonl").is_file()
    code, report = verify(sandbox, sandbox.root / "state", db)
    assert code == 0 and [r["state"] for r in report["rows"]] == ["ok"], report
