"""The embedded PostgreSQL through ``reconcile db``: up, status, url, down, crash recovery.

Each test runs its own server in its own state directory (the suite's shared server is
left alone), so these take a few seconds each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from reconcile_helpers import clean_env, reconcile_command


@pytest.fixture
def home():
    path = Path(tempfile.mkdtemp(prefix="reconcile-test-server-"))
    yield path / "state"
    subprocess.run(
        [*reconcile_command(), "--home", str(path / "state"), "db", "down"],
        capture_output=True,
        env=clean_env(),
    )
    subprocess.run(["rm", "-rf", str(path)])


def db(home: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*reconcile_command(), "--home", str(home), "db", *args],
        capture_output=True,
        env=clean_env(),
        timeout=120,
    )


def test_up_status_url_down_and_data_survives(home):
    before = json.loads(db(home, "status", "--json").stdout)
    assert before["embedded"]["initialized"] is False and before["reachable"] is False
    assert db(home, "status").returncode == 3  # no database to reach

    up = db(home, "up", "--json")
    assert up.returncode == 0, up.stderr
    url = json.loads(up.stdout)["url"]
    assert url.startswith("postgresql://postgres@127.0.0.1:")
    assert db(home, "url").stdout.decode().strip() == url
    status = json.loads(db(home, "status", "--json").stdout)
    assert status["reachable"] is True and status["embedded"]["running"] is True
    assert db(home, "migrate", "--json").returncode == 0
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO agents (id) VALUES ('kept')")

    started = time.monotonic()
    assert json.loads(db(home, "up", "--json").stdout)["url"] == url  # idempotent
    assert time.monotonic() - started < 5

    assert json.loads(db(home, "down", "--json").stdout) == {"stopped": True}
    assert json.loads(db(home, "down", "--json").stdout) == {"stopped": False}
    assert db(home, "url").returncode == 3
    assert json.loads(db(home, "up", "--json").stdout)["url"] == url  # same port again
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT id FROM agents").fetchall() == [("kept",)]
    assert oct(os.stat(home).st_mode & 0o077) in ("0o0", "0o1")  # at most traverse


def test_concurrent_up_starts_one_server(home):
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: db(home, "up", "--json"), range(4)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert len({json.loads(r.stdout)["url"] for r in results}) == 1
    postmasters = subprocess.run(["pgrep", "-f", "--", f"-D {home}/pg/data"], capture_output=True)
    assert len(postmasters.stdout.split()) == 1


def test_up_recovers_after_the_server_was_killed(home):
    url = json.loads(db(home, "up", "--json").stdout)["url"]
    pid = json.loads(db(home, "status", "--json").stdout)["embedded"]["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    again = db(home, "up", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["url"] == url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
