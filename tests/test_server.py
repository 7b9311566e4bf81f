"""The embedded PostgreSQL (reconcile._server): up, status, url, down, crashes, races,
and who may connect to it.

Each test runs its own server in its own state directory (the suite's shared server is
left alone), so each costs about a second. What other local users can and cannot do is
tested with real users in test_security.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from reconcile_helpers import ROOT, clean_env, reconcile_command

from reconcile import ServerError, _server


@pytest.fixture
def home():
    # A private (0700) directory, as a user's home is: nobody's mode is changed for the
    # server, whoever runs it. remove(): under root the server lives outside `base`.
    base = Path(tempfile.mkdtemp(prefix="reconcile-test-server-"))
    yield base / "state"
    _server.remove(base / "state")
    shutil.rmtree(base, ignore_errors=True)


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


def password_of(home: Path) -> str:
    line = (home / "pg" / "passfile").read_text()
    assert re.fullmatch(r"127\.0\.0\.1:\*:\*:postgres:[A-Za-z0-9_-]{43}\n", line), line
    return line.strip().split(":")[-1]


def without_passfile(url: str) -> str:
    return re.sub(r"passfile=[^&]*&?", "", url)


def postmasters(home: Path) -> list[int]:
    """Pids of the postmasters serving ``home``'s data directory, from /proc."""
    data = _server.status(home).data_dir.encode()
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
    status = _server.status(home)
    assert status == _server.ServerStatus(
        initialized=False,
        running=False,
        pid=None,
        port=None,
        url=None,
        data_dir=status.data_dir,
    )
    if os.geteuid() != 0:
        assert status.data_dir == str(home / "pg" / "data")
    assert _server.url(home) is None
    assert _server.down(home) is False
    assert _server.remove(home) is False
    assert not home.exists()
    assert not Path(status.data_dir).parent.exists()


def test_up_status_down_up_and_the_data_survives(home):
    url = _server.up(home)
    port = port_of(url)
    passfile = home.absolute() / "pg" / "passfile"
    assert url == (
        f"postgresql://postgres@127.0.0.1:{port}/reconcile"
        f"?passfile={passfile}&require_auth=scram-sha-256"
    )
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

    assert _server.up(home) == url  # idempotent: the same server, nothing started
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


def modes(paths: list[Path]) -> dict[Path, tuple[int, int, int]]:
    return {p: (p.stat().st_mode, p.stat().st_uid, p.stat().st_gid) for p in paths}


def test_files_and_modes(home):
    """Ours 0700/0600; under root, the server's directory apart, and nothing of anyone
    else's changes mode: the parents of the state directory and of the wheel."""
    wheel = Path(_server.binaries())
    before = modes([*home.absolute().parents, *wheel.parents])
    _server.up(home)
    pg = home / "pg"
    for directory in (home, pg):
        st = directory.lstat()
        assert (st.st_uid, st.st_mode & 0o777) == (os.geteuid(), 0o700)
    for name in ("lock", "port", "passfile"):
        st = (pg / name).lstat()
        assert (st.st_uid, st.st_mode & 0o777) == (os.geteuid(), 0o600)
    assert (pg / "port").read_text() == f"{_server.status(home).port}\n"
    assert not [name for name in os.listdir(pg) if name.endswith(".tmp")]  # no temp left
    status = _server.status(home)
    data = Path(status.data_dir)
    assert data.stat().st_mode & 0o777 == 0o700
    server = data.parent
    assert (server / "server.log").stat().st_mode & 0o077 == 0
    owner = data.stat().st_uid
    uid_line = Path(f"/proc/{status.pid}/status").read_text().split("Uid:")[1]
    if os.geteuid() == 0:  # root: reconcile-pg's server, from a directory of its own
        service = pwd.getpwnam(_server.SERVICE_USER)
        assert owner == service.pw_uid == int(uid_line.split()[0])
        assert not (pg / "data").exists()
        for directory in (server.parent, server):
            st = directory.stat()
            assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, service.pw_gid, 0o710)
        copy = server / "pginstall"
        st = copy.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, service.pw_gid, 0o750)
        programs = Path(f"/proc/{status.pid}/exe").resolve()
        assert programs.is_relative_to(copy)
    else:
        assert server == pg
        assert owner == os.geteuid() == int(uid_line.split()[0])
    assert modes(list(before)) == before
    _server.down(home)
    assert modes(list(before)) == before


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
    assert (Path(_server.status(home).data_dir) / "postmaster.pid").exists()  # stale
    assert _server.url(home) is None

    assert _server.up(home) == url
    assert _server.status(home).pid not in (None, old)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT v FROM committed").fetchone() == (42,)


def test_a_stale_pid_naming_another_live_process_is_not_the_server(home):
    url = _server.up(home)
    pidfile = Path(_server.status(home).data_dir) / "postmaster.pid"
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
    port = port_of(url)
    with socket.socket() as squatter:
        # As any server would: the stopped server's closed connections may linger in
        # TIME_WAIT on this port, longer on a busy machine, and must not stop the bind.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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

    assert json.loads(db("status", "--json").stdout)["server"]["initialized"] is False
    up = db("up", "--json")
    assert up.returncode == 0, up.stderr
    url = json.loads(up.stdout)["url"]
    assert db("url").stdout.decode().strip() == url
    assert json.loads(db("status", "--json").stdout)["server"]["running"] is True
    secret = password_of(home)
    assert secret not in db("url").stdout.decode()  # a path to the password, not it
    shown = db("url", "--show-password")
    assert shown.returncode == 0, shown.stderr
    revealed = shown.stdout.decode().strip()
    assert revealed.startswith(f"postgresql://postgres:{secret}@127.0.0.1:{port_of(url)}/")
    assert "passfile" not in revealed
    with psycopg.connect(revealed) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("reconcile",)
    assert json.loads(db("down", "--json").stdout) == {"stopped": True}
    assert json.loads(db("down", "--json").stdout) == {"stopped": False}
    assert db("url").returncode == 3  # nothing to reach


# -- who may connect ----------------------------------------------------------------------


def refused(conninfo: str) -> str:
    """The error a connection with ``conninfo`` fails with (it must fail)."""
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(conninfo, connect_timeout=10).close()
    return str(caught.value)


def write_as_server(path: Path, text: str) -> None:
    """Write a file of the data directory as its owner (reconcile-pg under root) has it."""
    owner = path.parent.stat()
    path.write_text(text)
    os.chown(path, owner.st_uid, owner.st_gid)


def test_only_the_password_in_the_passfile_admits(home):
    url = _server.up(home)
    data = Path(_server.status(home).data_dir)
    hba = [line.split() for line in (data / "pg_hba.conf").read_text().splitlines()]
    rules = [line for line in hba if line and not line[0].startswith("#")]
    assert rules == [["host", "all", "postgres", "127.0.0.1/32", "scram-sha-256"]]
    with psycopg.connect(url) as conn:
        assert conn.execute("SHOW unix_socket_directories").fetchone() == ("",)
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
    assert "no password supplied" in refused(without_passfile(url))
    wrong = without_passfile(url).replace("postgres@", "postgres:guess@")
    assert "password authentication failed" in refused(wrong)
    other_role = url.replace("postgres@", "reconcile@")
    assert "no pg_hba.conf entry" in refused(other_role)  # only the one role, at all


def test_the_password_is_on_no_command_line_and_in_no_log(home):
    command = [*reconcile_command(), "--home", str(home), "db", "up"]
    done = subprocess.run(command, capture_output=True, env=clean_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    secret = password_of(home).encode()
    assert secret not in done.stdout + done.stderr
    for proc in Path("/proc").iterdir():
        for name in ("cmdline", "environ"):
            with contextlib.suppress(OSError):
                assert secret not in (proc / name).read_bytes(), f"{proc / name}"
    server_log = Path(_server.status(home).data_dir).parent / "server.log"
    for log in [server_log, *home.glob("log/*")]:
        assert secret not in log.read_bytes(), log


def test_a_trust_cluster_is_secured_by_the_next_up_stopped_or_running(home):
    """As an older version left it: trust in pg_hba.conf, no password file."""
    url = _server.up(home)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept AS SELECT 'from before' AS v")
    data = Path(_server.status(home).data_dir)
    old_trust = "host all all 127.0.0.1/32 trust\n"
    port = port_of(url)
    bare = f"host=127.0.0.1 port={port} user=postgres dbname=reconcile"

    _server.down(home)  # stopped
    write_as_server(data / "pg_hba.conf", old_trust)
    (home / "pg" / "passfile").unlink()
    assert port_of(_server.up(home)) == port
    assert "no password supplied" in refused(bare)

    # Running with trust, as an older version's server does: `up` must not leave it so.
    write_as_server(data / "pg_hba.conf", old_trust)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 60
    while True:  # the reload is asynchronous
        with contextlib.suppress(psycopg.OperationalError):
            psycopg.connect(bare, connect_timeout=10).close()
            break
        assert time.monotonic() < deadline, "the server never reloaded its pg_hba.conf"
        time.sleep(0.05)
    (home / "pg" / "passfile").unlink()
    old_pid = _server.status(home).pid
    url = _server.up(home)
    assert _server.status(home).pid != old_pid  # restarted, with passwords
    assert "no password supplied" in refused(bare)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT v FROM kept").fetchone() == ("from before",)


def test_a_changed_password_file_says_how_to_recover(home):
    url = _server.up(home)
    _server.down(home)
    passfile = home / "pg" / "passfile"
    passfile.write_text(passfile.read_text().replace(password_of(home), "x" * 43))
    with pytest.raises(ServerError, match=r"refuses the password in .*passfile: delete"):
        _server.up(home)
    passfile.unlink()
    assert _server.up(home) == url


def test_a_program_squatting_on_the_port_cannot_pose_as_the_server(home):
    """With the server down, another user may listen on its port. A client using the
    URL demands SCRAM and the server's proof: a squatter that just says "welcome" is
    refused before the client sends anything."""
    url = _server.up(home)
    _server.down(home)
    requests: list[bytes] = []

    def welcome(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with conn:
            while True:
                size = int.from_bytes(conn.recv(4, socket.MSG_WAITALL), "big")
                body = conn.recv(size - 4, socket.MSG_WAITALL)
                requests.append(body)
                if body[:4] in (b"\x04\xd2\x16\x2f", b"\x04\xd2\x16\x30"):  # SSL, GSS
                    conn.sendall(b"N")
                    continue
                break
            ok = b"R" + (8).to_bytes(4, "big") + (0).to_bytes(4, "big")
            conn.sendall(ok + b"Z" + (5).to_bytes(4, "big") + b"I")
            conn.recv(1024)

    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port_of(url)))
        listener.listen()
        squatter = threading.Thread(target=welcome, args=(listener,), daemon=True)
        squatter.start()
        assert "server did not complete authentication" in refused(url)
        squatter.join(timeout=60)
    assert any(b"user\0postgres" in body for body in requests)  # it was asked, and failed


@pytest.mark.skipif(os.geteuid() != 0, reason="servers live under /var/lib/reconcile-pg as root")
def test_a_server_directory_without_its_record_yet_is_no_orphan(home):
    """A server directory whose record is not written yet (another state directory's
    `db up` is making it) is left alone by every `up`, and is not an orphan: `db remove
    --orphans` neither lists nor removes it (the collector raised UnboundLocalError on one
    when two test sessions shared the machine)."""
    from reconcile import _server_root

    _server_root.SERVER_ROOT.mkdir(parents=True, exist_ok=True)
    newborn = Path(tempfile.mkdtemp(prefix="newborn-", dir=_server_root.SERVER_ROOT))
    try:
        assert _server.up(home)
        assert newborn.is_dir()
        assert str(newborn) not in {o.server for o in _server_root.orphans()}
        assert str(newborn) not in {o.server for o in _server_root.remove_orphans()}
        assert newborn.is_dir()
    finally:
        shutil.rmtree(newborn, ignore_errors=True)
        _server.remove(home)
