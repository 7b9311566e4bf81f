"""``reconcile demo``, the README's main job, end to end on its own embedded server.

The demo must never touch state it did not create: not the user's state directory, not
the user's database, not a directory it is given that holds anything.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from reconcile_helpers import (
    audit_rows,
    clean_env,
    query,
    reconcile_command,
    run_hook,
    seed,
    wait_settled,
)

import journal

# The hooks' database timeouts, generous: on a loaded machine the demo's verdict must not
# depend on how fast the database answers.
PATIENT = {"RECONCILE_CONNECT_TIMEOUT": "30", "RECONCILE_STATEMENT_TIMEOUT": "30"}


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory outside pytest's temporary root: as root, the demo's server runs as
    another user who must traverse every parent, and pytest resets its root to 0700.
    The kept demo's server is removed afterwards (as root, its data lives outside)."""
    path = Path(tempfile.mkdtemp(prefix="reconcile-test-demo-"))
    yield path
    remove = [*reconcile_command(), "--home", str(path / "kept"), "db", "remove", "--yes"]
    subprocess.run(remove, env=clean_env(), capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


def demo(*args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*reconcile_command(), *args],
        capture_output=True,
        env=clean_env(**PATIENT, **env),
        timeout=600,
    )


def snapshot_of(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def test_demo_reports_no_loss_and_leaves_the_users_state_alone(scratch, tmp_path, database_url):
    # The user's own state directory and database, with something in each.
    real_home = tmp_path / "real"
    assert demo("--database-url", database_url, "db", "migrate", "--create-tables").returncode == 0
    seed(database_url, [], [("e-1", None, "s-old", "running")])
    run_hook(real_home, database_url, {"session_id": "s-1"}, RECONCILE_EXECUTOR_ID="e-1")
    wait_settled(real_home)
    before = snapshot_of(real_home)
    temporary = scratch / "tmp"
    temporary.mkdir()

    done = demo(
        "demo",
        "--agents",
        "10",
        "--forks",
        "60",
        "--json",
        RECONCILE_HOME=str(real_home),
        RECONCILE_DATABASE_URL=database_url,
        TMPDIR=str(temporary),
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()  # says what was lost
    report = json.loads(done.stdout)
    assert report["forks"] == 60
    assert report["hits"] + report["misses"] == 60
    assert report["lost"] == 0 and report["verified"] is True
    assert report["hits"] > 0 and report["misses"] >= 8  # every agent missed at least once
    assert report["replayed"] == 0  # patient timeouts: the reconcilers settled everything
    settled = report["reconciled"] + report["divergence_preserved"] + report["confirmed"]
    assert report["db_transactions"] == settled <= report["misses"]  # one per settlement
    assert 1 <= report["db_connections"] <= report["misses"]  # none by the hooks
    assert report["audit_rows"] == report["reconciled"] + report["divergence_preserved"]
    assert 0 < report["p50_ms"] <= report["p99_ms"]
    assert report["home"] is None

    assert snapshot_of(real_home) == before  # the user's state: untouched
    assert query(database_url, "SELECT id FROM executors") == [("e-1",)]
    assert len(audit_rows(database_url)) == 1
    assert list(temporary.iterdir()) == []  # its own state: removed


def test_demo_home_is_kept_consistent_and_never_reused(scratch):
    kept = scratch / "kept"
    never = scratch / "never"  # the user's state directory, not created yet
    done = demo(
        "demo", "--agents", "4", "--forks", "20", "--home", str(kept), RECONCILE_HOME=str(never)
    )
    assert done.returncode == 0, done.stderr
    assert not never.exists()
    text = done.stdout.decode()
    for part in ("What ran", "What happened", "What it proves", "verified", str(kept)):
        assert part in text
    assert not [r for r in ("None", "True", "{'", "Traceback") if r in text]
    assert len(text.splitlines()) <= 24  # one screen

    status = demo("--home", str(kept), "db", "status", "--json")
    assert json.loads(status.stdout)["server"]["running"] is False  # stopped afterwards
    records = len(list(journal.history(kept)))
    again = demo("--home", str(kept), "demo")  # the global --home means the same
    assert again.returncode == 2 and b"not empty" in again.stderr
    assert again.stderr.count(b"\n") == 1
    assert len(list(journal.history(kept))) == records

    # What it left is a state directory like any other: its database agrees with it.
    assert demo("--home", str(kept), "db", "up").returncode == 0
    verified = demo("--home", str(kept), "verify", "--db")
    assert verified.returncode == 0, verified.stdout
