"""``reconcile explain``: the hook's steps in words, for every verdict and skip reason.

Real processes: ``reconcile explain`` and ``reconcile hook`` run as a user runs them, on
real state directories. Each case also checks that explain wrote nothing (a listing of
the state directory before and after; a state directory that does not exist stays so),
and where the hook leaves a trace (a log line, a journal record) that the real hook
came to what explain said.
"""

from __future__ import annotations

import ast
import json
import os
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from reconcile_helpers import (
    ROOT,
    audit_rows,
    cli,
    command_line_database,
    query,
    run_hook,
    seed,
    session_of,
    wait_idle,
    wait_settled,
)

import journal
import reconcile

UUID = "123e4567-e89b-12d3-a456-426614174000"
DEAD_URL = "postgresql://nobody@127.0.0.1:9/none"  # nothing listens: a reconciler fails

# One input per skip reason of the hook: (payload bytes, environment).
SKIPS: dict[str, tuple[bytes, dict[str, str]]] = {
    "payload_too_large": (b'{"session_id": "' + b"x" * (2 << 20) + b'"}', {}),
    "payload_not_json": (b"", {"RECONCILE_EXECUTOR_ID": "e-1"}),
    "payload_not_object": (b"[1, 2]", {"RECONCILE_EXECUTOR_ID": "e-1"}),
    "missing_session_id": (b'{"cwd": "/"}', {"RECONCILE_EXECUTOR_ID": "e-1"}),
    "invalid_session_id": (b'{"session_id": 7}', {"RECONCILE_EXECUTOR_ID": "e-1"}),
    "invalid_executor_id": (b'{"session_id": "s-1"}', {"RECONCILE_EXECUTOR_ID": "e\t1"}),
    "invalid_agent_id": (b'{"session_id": "s-1"}', {"RECONCILE_AGENT_ID": "x" * 300}),
    "invalid_agent_name": (
        b'{"session_id": "s-1", "teammate_name": ["alice"]}',
        {"GENIE_TEAM": "core"},
    ),
    "invalid_team": (
        b'{"session_id": "s-1", "team_name": "c\\u00f6re"}',
        {"GENIE_AGENT_NAME": "a"},
    ),
    "missing_identity": (b'{"session_id": "s-1"}', {}),
    "untrusted_home": (b'{"session_id": "s-1"}', {"RECONCILE_EXECUTOR_ID": "e-1"}),
}


def listing(home: Path) -> dict[str, tuple[int, int, int]] | None:
    """Every path under ``home`` with its mode, size and mtime; None if ``home`` is absent."""
    if not os.path.lexists(home):
        return None
    found = {}
    for path in [home, *sorted(home.rglob("*"))]:
        st = path.lstat()
        found[str(path.relative_to(home))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return found


def explain(home: Path, stdin: bytes, *args: str, **env: str) -> dict[str, Any]:
    """``reconcile explain --json`` in a real process; asserts it wrote nothing."""
    before = listing(home)
    done = cli("explain", "--json", *args, home=home, stdin=stdin, **env)
    assert done.returncode == 0, done.stderr
    assert listing(home) == before, "explain wrote in the state directory"
    return json.loads(done.stdout)


def explain_text(home: Path, stdin: bytes, **env: str) -> str:
    before = listing(home)
    done = cli("explain", home=home, stdin=stdin, **env)
    assert done.returncode == 0, done.stderr
    assert listing(home) == before
    return done.stdout.decode()


# -- every skip reason has a case and words ------------------------------------------


def returned_reasons() -> tuple[set[str], set[str]]:
    """The reason strings the hook's functions return, read from their source: (string
    literals, prefixes of f-strings)."""
    literals: set[str] = set()
    prefixes: set[str] = set()
    for module, names in (
        ("_fast.py", {"observe", "parse_payload"}),
        ("_hook.py", {"handle"}),
    ):
        tree = ast.parse((ROOT / "reconcile" / module).read_text())
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef) or function.name not in names:
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Return):
                    values = [node.value]
                elif isinstance(node, ast.IfExp):
                    values = [node.body, node.orelse]
                else:
                    continue
                for value in values:
                    if isinstance(value, ast.Constant) and isinstance(value.value, str):
                        literals.add(value.value)
                    elif isinstance(value, ast.JoinedStr):
                        prefixes.add(value.values[0].value)  # type: ignore[attr-defined]
                    elif isinstance(value, ast.Name) and value.id.isupper():
                        literals.add(getattr(reconcile, value.id))
    return literals, prefixes


def test_every_reason_the_hook_returns_is_listed_explained_and_tested():
    literals, prefixes = returned_reasons()
    skips = set(reconcile.SKIP_REASONS)
    assert {"missing_identity", "payload_not_json"} <= literals  # the extraction works
    assert literals - skips == {"hit"}, literals - skips  # the only verdict returned as is
    for prefix in prefixes:  # f"invalid_{field}": each field's reason is listed
        assert any(reason.startswith(prefix) for reason in skips), prefix
    assert "untrusted_home" in skips
    from reconcile._explain import REASONS  # the words, per reason

    assert set(REASONS) == skips
    assert set(SKIPS) == skips  # and a case below for each


@pytest.mark.parametrize("reason", sorted(SKIPS))
def test_each_skip_reason_is_explained_and_is_what_the_hook_does(tmp_path, reason):
    stdin, env = SKIPS[reason]
    home = tmp_path / "home"
    if reason == "untrusted_home":
        home.mkdir()
        home.chmod(0o777)
    found = explain(home, stdin, **env)
    assert (found["verdict"], found["outcome"], found["skipped"]) == (reason, reason, True)
    assert found["why"] and found["action"].startswith("nothing")
    assert found["key"] is None or reason == "untrusted_home"
    if reason == "untrusted_home":
        assert "writable by group or others" in found["home_refusal"]
        assert found["key"] == "executor:e-1"
    else:
        assert not home.exists()  # looking created nothing
    # The real hook, on the same input: it skips for this very reason.
    run_hook(home, DEAD_URL, stdin, **env)
    log = home / "log" / "reconcile.log"
    if reason in ("missing_identity", "untrusted_home"):
        assert not log.exists()  # the silent ones: hence explain
    else:
        records = [json.loads(line) for line in log.read_text().splitlines()]
        assert [r.get("reason") for r in records if r["event"] == "hook.skipped"] == [reason]
    assert list(home.rglob("*.jnl")) == []


# -- the two examples of issue 21, in words ---------------------------------------------


def test_a_genie_agent_id_that_is_not_a_uuid_is_named_as_ignored(tmp_path):
    home = tmp_path / "home"
    text = explain_text(home, b'{"session_id": "s-1"}', GENIE_AGENT_ID="a-1")
    assert "verdict: missing_identity" in text
    assert "GENIE_AGENT_ID='a-1' is ignored: it is not a UUID" in text
    assert "RECONCILE_AGENT_ID" in text  # what to set instead
    assert not home.exists()
    # A UUID is used, and the same variable then makes a key.
    found = explain(home, b'{"session_id": "s-1"}', GENIE_AGENT_ID=UUID)
    assert (found["key"], found["verdict"]) == (f"agent:{UUID}", "miss")
    ignored = [v for v in found["variables"] if v["source"] == "GENIE_AGENT_ID"]
    assert ignored[0]["used"] is True and ignored[0]["note"] is None


def test_an_agent_name_without_a_team_says_to_set_the_team(tmp_path):
    home = tmp_path / "home"
    text = explain_text(home, b'{"session_id": "s-1"}', GENIE_AGENT_NAME="alice")
    assert "verdict: missing_identity" in text
    assert "an agent name (GENIE_AGENT_NAME='alice') counts only with a team" in text
    assert "RECONCILE_TEAM (or GENIE_TEAM" in text
    assert "counts for nothing without a team" in text  # on GENIE_AGENT_NAME's line
    found = explain(home, b'{"session_id": "s-1"}', GENIE_AGENT_NAME="alice", GENIE_TEAM="core")
    assert (found["key"], found["verdict"]) == ("agent-name:core/alice", "miss")


def test_nothing_set_at_all_says_so(tmp_path):
    found = explain(tmp_path / "home", b'{"session_id": "s-1"}')
    assert "no identity variable is set at all" in found["why"]


# -- the verdicts ---------------------------------------------------------------------


def test_miss_on_an_absent_home_says_the_hook_would_journal_and_start_one(tmp_path):
    home = tmp_path / "absent" / "home"
    found = explain(home, b"", "--session-id", "s-1", RECONCILE_EXECUTOR_ID="e-1")
    assert (found["verdict"], found["outcome"], found["home_exists"]) == (
        "miss",
        "miss:started",
        False,
    )
    assert (
        "journal a session.observed" in found["action"] and "start a reconciler" in found["action"]
    )
    assert not (tmp_path / "absent").exists()
    assert (
        explain(home, b"", "--session-id", "s-1", "--sync", RECONCILE_EXECUTOR_ID="e-1")["outcome"]
        == "miss:settled"
    )
    # What the real hook then does: journal the observation explain announced.
    run_hook(home, DEAD_URL, {"session_id": "s-1"}, RECONCILE_EXECUTOR_ID="e-1")
    assert journal.latest(home, "executor:e-1")["type"] == "session.observed"


def hold_backoff(home: Path) -> None:
    """A backoff in force for an hour, as a failing reconciler leaves it."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    until = time.time() + 3600
    (home / "backoff").write_text(json.dumps({"failures": 3, "until": until, "cap_s": 3600}))


def test_waiting_and_backoff(tmp_path):
    home = tmp_path / "home"
    hold_backoff(home)
    env = {"RECONCILE_EXECUTOR_ID": "e-1"}
    found = explain(home, b'{"session_id": "s-1"}', **env)
    assert (found["verdict"], found["outcome"]) == ("miss", "miss:backoff")
    assert found["backoff_until"] > time.time() and "backoff" in found["action"]
    run_hook(home, DEAD_URL, {"session_id": "s-1"}, **env)  # journals, starts nothing
    assert not reconcile.reconciler_running(home)
    found = explain(home, b'{"session_id": "s-1"}', **env)
    assert (found["verdict"], found["outcome"]) == ("waiting", "waiting:backoff")
    assert found["record"]["type"] == "session.observed"
    assert "journal" not in found["action"]  # waiting: nothing new to journal
    # Another session id for the same executor is a miss again.
    assert explain(home, b'{"session_id": "s-2"}', **env)["verdict"] == "miss"


def test_a_running_reconciler_is_seen_through_the_lock_probe(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    fd = reconcile.take_lock(home)
    assert fd is not None
    try:
        found = explain(home, b'{"session_id": "s-1"}', RECONCILE_EXECUTOR_ID="e-1")
        assert (found["outcome"], found["reconciler_running"]) == ("miss:running", True)
        assert "one already runs" in found["action"]
    finally:
        reconcile.release_lock(fd)
    found = explain(home, b'{"session_id": "s-1"}', RECONCILE_EXECUTOR_ID="e-1")
    assert found["outcome"] == "miss:started"


def test_hit_after_the_reconciler_settled(tmp_path, database_url):
    url = command_line_database(database_url, tmp_path)
    home = tmp_path / "home"
    run_hook(home, url, {"session_id": "s-new"}, RECONCILE_EXECUTOR_ID="e-1")
    wait_settled(home)
    found = explain(home, b'{"session_id": "s-new"}', RECONCILE_EXECUTOR_ID="e-1")
    assert (found["verdict"], found["outcome"]) == ("hit", "hit")
    assert found["record"]["type"] == "session.reconciled"
    assert "nothing" in found["action"]
    text = explain_text(home, b'{"session_id": "s-new"}', RECONCILE_EXECUTOR_ID="e-1")
    assert "verdict: hit" in text and "cache record: session.reconciled" in text


# -- the command line ---------------------------------------------------------------------


def test_payload_flags(tmp_path):
    home = tmp_path / "home"
    found = explain(home, b"", "--payload", '{"session_id": "s-9"}', RECONCILE_EXECUTOR_ID="e-1")
    assert (found["session_id"], found["verdict"]) == ("s-9", "miss")
    both = cli("explain", "--payload", "{}", "--session-id", "s", home=home)
    assert both.returncode == 2 and b"not both" in both.stderr


def test_doctor_checks_the_identity_here_and_points_to_explain(tmp_path):
    home = tmp_path / "home"
    settings = tmp_path / "settings.json"

    def identity(**env: str) -> dict[str, Any]:
        done = cli("doctor", "--json", "--settings", str(settings), home=home, **env)
        checks = json.loads(done.stdout)["checks"]
        return next(c for c in checks if c["name"] == "identity")

    assert identity()["status"] == "ok"  # none set: not an agent session
    bad = identity(GENIE_AGENT_ID="a-1")
    assert bad["status"] == "FAILED" and "not a UUID" in bad["detail"]
    assert bad["next_step"].startswith("reconcile explain")
    good = identity(RECONCILE_EXECUTOR_ID="e-1")
    assert good["status"] == "ok" and "executor:e-1" in good["detail"]
    assert not home.exists()


def test_the_global_home_flag_names_the_state_directory(tmp_path):
    other = tmp_path / "other"
    hold_backoff(other)
    before = listing(other)
    done = cli(
        "--home", str(other), "explain", "--json", "--session-id", "s-1",
        home=tmp_path / "unused", RECONCILE_EXECUTOR_ID="e-1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert (found["home"], found["outcome"]) == (str(other), "miss:backoff")
    assert listing(other) == before and not (tmp_path / "unused").exists()


# -- what the database would decide, asked read-only ------------------------------------


def test_the_database_says_what_the_settlement_would_decide_and_nothing_changes(
    tmp_path, database_url
):
    url = command_line_database(database_url, tmp_path)
    home = tmp_path / "home"

    def decided(session: str, **env: str) -> dict[str, Any]:
        found = explain(home, b"", "--session-id", session, RECONCILE_DATABASE_URL=url, **env)
        assert found["database"]["answered"] is True, found["database"]
        return found["database"]

    new = decided("s-new", RECONCILE_EXECUTOR_ID="e-1")
    assert (new["outcome"], new["executor_id"], new["audited"]) == ("reconciled", "e-1", True)
    assert (new["stored_session_id"], new["executor_state"]) == ("s-old", "running")
    assert decided("s-old", RECONCILE_EXECUTOR_ID="e-1")["outcome"] == "confirmed"
    by_name = decided("s-new", RECONCILE_AGENT_NAME="alice", RECONCILE_TEAM="core")
    assert (by_name["outcome"], by_name["executor_id"]) == ("reconciled", "e-1")
    anchor = decided("s-new", RECONCILE_EXECUTOR_ID="e-2")
    assert (anchor["outcome"], anchor["audited"]) == ("divergence_preserved", True)
    assert decided("s-new", RECONCILE_EXECUTOR_ID="e-9")["outcome"] == "no_executor"
    # Read-only: the row, the audit trail and the state directory are as they were.
    assert session_of(url, "e-1") == "s-old" and audit_rows(url) == []

    text = explain_text(home, b'{"session_id": "s-new"}', RECONCILE_EXECUTOR_ID="e-1",
                        RECONCILE_DATABASE_URL=url)  # fmt: skip
    assert "decision: reconciled" in text and "executor: e-1 (running, session s-old)" in text

    # The real hook then does what explain said.
    run_hook(home, url, {"session_id": "s-new"}, RECONCILE_EXECUTOR_ID="e-1")
    wait_settled(home)
    assert session_of(url, "e-1") == "s-new" and len(audit_rows(url)) == 1
    run_hook(home, url, {"session_id": "s-new"}, RECONCILE_EXECUTOR_ID="e-2")
    wait_settled(home)
    found = explain(home, b"", "--session-id", "s-new", RECONCILE_DATABASE_URL=url,
                    RECONCILE_EXECUTOR_ID="e-2")  # fmt: skip
    assert found["verdict"] == "hit"
    assert (found["database"]["outcome"], found["database"]["audited"]) == (
        "divergence_preserved",
        False,
    )
    assert "audited already" in found["database"]["why"]


def test_a_pending_observation_is_judged_at_its_own_time(tmp_path, database_url):
    """Observed by agent identity while the database was away; the agent respawned since:
    explain's preview judges the observation's time, as the settlement will (stale)."""
    url = command_line_database(database_url, tmp_path)
    home = tmp_path / "home"
    env = {"GENIE_AGENT_NAME": "alice", "GENIE_TEAM": "core"}
    run_hook(home, DEAD_URL, {"session_id": "s-1"}, RECONCILE_RETRY_HORIZON="0", **env)
    wait_idle(home)
    [observed] = journal.history(home)
    past = "SELECT now() > to_timestamp(%s / 1e6)"
    while not query(url, past, (journal.event_time_us(observed.id),))[0][0]:
        time.sleep(0.01)  # the database's clock is past the observation (one machine)
    seed(url, [], [("e-3", "a-1", None, "running")])  # the respawn, after the observation
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE agents SET current_executor_id = 'e-3' WHERE id = 'a-1'")
    found = explain(home, b"", "--session-id", "s-1", RECONCILE_DATABASE_URL=url, **env)
    assert found["verdict"] == "waiting"
    assert (found["database"]["outcome"], found["database"]["executor_id"]) == ("stale", "e-3")
    # A session id seen now is the new executor's own.
    fresh = explain(home, b"", "--session-id", "s-2", RECONCILE_DATABASE_URL=url, **env)
    assert (fresh["verdict"], fresh["database"]["outcome"]) == ("miss", "reconciled")


def test_a_database_that_does_not_answer_is_said_and_is_no_failure(tmp_path):
    home = tmp_path / "home"
    found = explain(home, b"", "--session-id", "s-1", RECONCILE_EXECUTOR_ID="e-1",
                    RECONCILE_DATABASE_URL=DEAD_URL)  # fmt: skip
    database = found["database"]
    assert database["answered"] is False and database["outcome"] is None
    assert "127.0.0.1" in database["error"] and "did not answer" in database["why"]
    skipped = explain(home, b"", "--session-id", "s-1", RECONCILE_DATABASE_URL=DEAD_URL)
    assert skipped["database"] is None  # no identity: nothing to ask
    quiet = explain(home, b"", "--session-id", "s-1", "--no-db", RECONCILE_EXECUTOR_ID="e-1",
                    RECONCILE_DATABASE_URL=DEAD_URL)  # fmt: skip
    assert quiet["database"] is None
