"""The embedded PostgreSQL (reconcile._server): up, status, url, down, crashes, races.

Each test runs its own server in its own state directory (the suite's shared server is
left alone), so each costs about a second.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
from reconcile_helpers import ROOT, clean_env, reconcile_command

from reconcile import ServerError, _server


@pytest.fixture
def home():
    # Not tmp_path: a pytest session starting meanwhile would take the traverse bit off
    # /tmp/pytest-of-<user>, which the server needs under root (see conftest.py).
    base = Path(tempfile.mkdtemp(prefix="reconcile-test-server-"))
    yield base / "state"
    _server.down(base / "state")
    shutil.rmtree(base, ignore_errors=True)


def postmasters(home: Path) -> list[int]:
    """Pids of the postmasters serving ``home``'s data directory, from /proc."""
    data = str(home.absolute() / "pg" / "data").encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.path.basename(argv[0]) == b"postgres" and argv[1:3] == [b"-D", data]:
            found.append(int(entry.name))
    return found


def wait_gone(home: Path) -> None:
    deadline = time.monotonic() + 10
    while _server.status(home).running:
        assert time.monotonic() < deadline, "the killed server still counts as running"
        time.sleep(0.02)


def test_status_of_an_uninitialised_home_creates_nothing(tmp_path):
    home = tmp_path / "never"
    assert _server.status(home) == _server.ServerStatus(
        initialized=False,
        running=False,
        pid=None,
        port=None,
        url=None,
        data_dir=str(home / "pg" / "data"),
    )
    assert _server.url(home) is None
    assert _server.down(home) is False
    assert not home.exists()


def test_up_status_down_up_and_the_data_survives(home):
    url = _server.up(home)
    port = int(url.split(":")[-1].split("/")[0])
    assert url == f"postgresql://postgres@127.0.0.1:{port}/reconcile"
    assert _server.url(home) == url
    status = _server.status(home)
    assert (status.initialized, status.running, status.port, status.url) == (
        True,
        True,
        port,
        url,
    )
    assert postmasters(home) == [status.pid]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('before down')")

    assert _server.up(home) == url  # idempotent: the same server, not a new one
    assert _server.status(home).pid == status.pid

    assert _server.down(home) is True
    assert _server.down(home) is False
    assert postmasters(home) == []
    after = _server.status(home)
    assert (after.initialized, after.running, after.pid, after.url) == (True, False, None, None)
    assert _server.url(home) is None
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)

    assert _server.up(home) == url  # the same port again
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT v FROM kept").fetchall() == [("before down",)]


def test_files_and_modes(home):
    _server.up(home)
    pg = home / "pg"
    assert home.stat().st_mode & 0o077 in (0o000, 0o001)  # at most o+x, never a read bit
    for name in ("lock", "port"):
        st = (pg / name).lstat()
        assert (st.st_uid, st.st_mode & 0o777) == (os.geteuid(), 0o600)
    assert (pg / "data").stat().st_mode & 0o777 == 0o700
    assert (pg / "server.log").stat().st_mode & 0o077 == 0
    owner = (pg / "data").stat().st_uid
    uid_line = Path(f"/proc/{_server.status(home).pid}/status").read_text().split("Uid:")[1]
    if os.geteuid() == 0:  # root: the server is reconcile-pg's, pg/ itself stays ours
        service = pwd.getpwnam(_server.SERVICE_USER)
        assert owner == service.pw_uid
        assert int(uid_line.split()[0]) == service.pw_uid
        assert (pg.stat().st_uid, pg.stat().st_gid) == (0, service.pw_gid)
        assert pg.stat().st_mode & 0o777 == 0o710
        for parent in home.absolute().parents:
            assert parent.stat().st_mode & 0o001  # traversable by the service user
    else:
        assert owner == os.geteuid() == int(uid_line.split()[0])


def test_concurrent_up_from_four_processes_starts_one_server(home):
    code = "import sys; from pathlib import Path; from reconcile import _server; "
    code += "print(_server.up(Path(sys.argv[1])))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(home)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(),
            cwd=ROOT,
        )
        for _ in range(4)
    ]
    results = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, [err for _, err in results]
    assert len({out for out, _ in results}) == 1
    assert postmasters(home) == [_server.status(home).pid]


def test_up_recovers_after_the_postmaster_is_killed(home):
    url = _server.up(home)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE committed AS SELECT 42 AS v")
    old = _server.status(home).pid
    os.kill(old, signal.SIGKILL)
    wait_gone(home)
    assert (home / "pg" / "data" / "postmaster.pid").exists()  # stale, left behind
    assert _server.url(home) is None

    assert _server.up(home) == url
    assert _server.status(home).pid not in (None, old)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT v FROM committed").fetchone() == (42,)


def test_a_stale_pid_naming_another_live_process_is_not_the_server(home):
    url = _server.up(home)
    pidfile = home / "pg" / "data" / "postmaster.pid"
    lines = pidfile.read_text().split("\n")
    assert _server.down(home)
    # A killed server's file whose pid was reused: PostgreSQL itself would refuse to
    # start over it, as the process is alive and (under root, as reconcile-pg) its user's.
    user = pwd.getpwnam(_server.SERVICE_USER) if os.geteuid() == 0 else None
    sleeper = subprocess.Popen(
        ["sleep", "60"], user=user.pw_uid if user else None, group=user.pw_gid if user else None
    )
    try:
        pidfile.write_text("\n".join([str(sleeper.pid), *lines[1:]]))
        assert _server.status(home).running is False
        assert _server.url(home) is None
        assert _server.up(home) == url
        assert _server.status(home).pid != sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_taken_port_says_what_to_do(home):
    url = _server.up(home)
    _server.down(home)
    port = int(url.split(":")[-1].split("/")[0])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(ServerError, match=f"port {port} .* taken.* delete .*port"):
            _server.up(home)
    assert _server.up(home) == url


def test_reconcile_db_commands(home):
    """The CLI over these functions: JSON output and exit codes."""

    def db(*args: str) -> subprocess.CompletedProcess[bytes]:
        command = [*reconcile_command(), "--home", str(home), "db", *args]
        return subprocess.run(command, capture_output=True, env=clean_env(), timeout=120)

    assert json.loads(db("status", "--json").stdout)["embedded"]["initialized"] is False
    up = db("up", "--json")
    assert up.returncode == 0, up.stderr
    url = json.loads(up.stdout)["url"]
    assert db("url").stdout.decode().strip() == url
    assert json.loads(db("status", "--json").stdout)["embedded"]["running"] is True
    assert json.loads(db("down", "--json").stdout) == {"stopped": True}
    assert json.loads(db("down", "--json").stdout) == {"stopped": False}
    assert db("url").returncode == 3  # nothing to reach
