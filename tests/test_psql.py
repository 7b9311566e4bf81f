"""``reconcile db psql``: a real psql on the embedded (or a configured) database, the
connection in libpq's environment variables, the password in its file, never on a
command line; an older psql, which cannot make the server prove itself, refused.

The older psql is the distribution's (Debian 12: psql 15; ``.ci/run`` installs
``postgresql-client`` when no psql is on PATH).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from reconcile_helpers import clean_env, reconcile_command

import reconcile

# Shell lines psql runs with `\!`: its own environment and command line. $PPID is psql.
SHOW_ENV = r"\! env"
SHOW_CMDLINE = r"\! echo pid=$PPID; tr '\0' ' ' < /proc/$PPID/cmdline; echo"


@pytest.fixture
def home() -> Iterator[Path]:
    # Outside pytest's temporary root: as root, the server's user must traverse it.
    base = Path(tempfile.mkdtemp(prefix="reconcile-test-psql-"))
    home = base / "state"
    done = run("db", "up", home=home)
    assert done.returncode == 0, done.stderr
    yield home
    run("db", "remove", "--yes", home=home)
    shutil.rmtree(base, ignore_errors=True)


def run(*args: str, home: Path, stdin: bytes = b"", **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*reconcile_command(), *args],
        input=stdin,
        capture_output=True,
        env=clean_env(RECONCILE_HOME=str(home), **env),
        timeout=300,
    )


def password_of(home: Path) -> str:
    return (home / "pg" / "passfile").read_text().strip().split(":")[-1]


def bundled_psql() -> Path:
    return reconcile.server_binaries() / "psql"


def major(psql: str) -> int:
    out = subprocess.run([psql, "--version"], capture_output=True, text=True, timeout=120).stdout
    found = re.search(r"\b(\d+)(?:\.\d+)+", out)
    assert found, out
    return int(found.group(1))


def older_psql() -> str:
    """A psql older than 16 (the distribution's), or skip saying how to get one."""
    candidates = [shutil.which("psql", path="/usr/local/bin:/usr/bin:/bin")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"))
    for psql in candidates:
        if psql and major(psql) < 16:
            return psql
    pytest.skip("no psql older than 16 here: .ci/run installs postgresql-client (Debian 12: 15)")


def test_the_packages_psql_runs_in_place_of_reconcile_with_the_password_in_its_file(home):
    """The package's psql, exec'd (the same process), connected by environment
    variables: PGPASSFILE and PGREQUIREAUTH, the password in no argument or variable."""
    words = ["db", "psql", "-X", "-tA", "-c", "SELECT current_user", "-c", SHOW_ENV]
    process = subprocess.Popen(
        [*reconcile_command(), *words, "-c", SHOW_CMDLINE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(RECONCILE_HOME=str(home), PGHOST="elsewhere", PGSERVICE="other"),
    )
    out, err = process.communicate(timeout=300)
    text = out.decode()
    assert process.returncode == 0, err
    assert text.startswith("postgres\n")
    env = dict(line.split("=", 1) for line in text.splitlines() if re.match(r"[A-Z_]+=", line))
    assert env["PGPASSFILE"] == str(home / "pg" / "passfile")
    assert env["PGREQUIREAUTH"] == "scram-sha-256"
    assert (env["PGHOST"], env["PGUSER"], env["PGDATABASE"]) == (
        "127.0.0.1",
        "postgres",
        "reconcile",
    )
    assert "PGPASSWORD" not in env and "PGSERVICE" not in env  # the caller's PG* dropped
    assert password_of(home) not in text
    assert f"pid={process.pid}\n" in text  # exec: psql is the process reconcile was
    assert f"{bundled_psql()} -X -tA" in text  # the package's own psql, given the ARGS


def test_psqls_exit_status_and_errors_are_its_own(home):
    done = run("db", "psql", "-X", "-v", "ON_ERROR_STOP=1", home=home, stdin=b"SELECT 1/0;\n")
    assert done.returncode == 3  # psql's status for an error in a script
    assert b"division by zero" in done.stderr and b"reconcile:" not in done.stderr
    assert run("db", "down", home=home).returncode == 0
    done = run("db", "psql", "-c", "SELECT 1", home=home)
    assert done.returncode == 3
    assert done.stderr.decode().endswith("not running; run: reconcile db up\n")


def test_a_configured_url_is_given_part_by_part_its_password_in_no_argument(home):
    port = run("db", "status", "--json", home=home).stdout.decode()
    port = re.search(r'"port": (\d+)', port).group(1)
    url = f"postgresql://postgres:{password_of(home)}@127.0.0.1:{port}/reconcile"
    done = run("--database-url", url, "db", "psql", "-X", "-tA", "-c", "SELECT 42",
               "-c", SHOW_CMDLINE, home=home)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"42\n")
    assert password_of(home).encode() not in done.stdout  # not on psql's command line

    done = run("--database-url", "not-a-url", "db", "psql", home=home)
    assert done.returncode == 3
    assert "--database-url is not a valid PostgreSQL URL" in done.stderr.decode()


def test_an_older_psql_is_refused_unless_told_then_warned(home):
    old = older_psql()
    done = run("db", "psql", "--psql", old, "-X", "-tA", "-c", "SELECT 1", home=home)
    assert (done.returncode, done.stdout) == (3, b"")
    error = done.stderr.decode()
    assert "older than 16" in error and "--unverified-server" in error

    done = run("db", "psql", "--psql", old, "--unverified-server", "-X", "-tA", "-c", "SELECT 1",
               home=home)  # fmt: skip
    assert (done.returncode, done.stdout) == (0, b"1\n"), done.stderr
    assert b"warning" in done.stderr and b"cannot make the embedded server prove" in done.stderr


def test_with_its_environment_the_packages_psql_refuses_a_squatter_an_older_one_would_not(home):
    """Why an older psql is refused: with the server down, a program on its port asks
    for the password in clear. The environment of `db psql` makes the package's psql
    refuse (require_auth); psql 15 ignores PGREQUIREAUTH and sends the password."""
    environment = reconcile.server_client_environment(home)
    assert environment is not None
    assert run("db", "down", home=home).returncode == 0

    def squat(psql: str) -> bytes:
        received: list[bytes] = []

        def serve(listener: socket.socket) -> None:
            conn, _ = listener.accept()
            with conn:
                while True:
                    size = int.from_bytes(conn.recv(4, socket.MSG_WAITALL), "big")
                    body = conn.recv(size - 4, socket.MSG_WAITALL)
                    if body[:4] in (b"\x04\xd2\x16\x2f", b"\x04\xd2\x16\x30"):  # SSL, GSS
                        conn.sendall(b"N")
                        continue
                    break
                cleartext = b"R" + (8).to_bytes(4, "big") + (3).to_bytes(4, "big")
                conn.sendall(cleartext)
                conn.settimeout(60)
                try:
                    while chunk := conn.recv(4096):
                        received.append(chunk)
                except OSError:
                    pass

        with socket.socket() as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", int(environment["PGPORT"])))
            listener.listen()
            thread = threading.Thread(target=serve, args=(listener,), daemon=True)
            thread.start()
            env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
            subprocess.run(
                [psql, "-X", "-w", "-c", "SELECT 1"],
                env={**env, **environment},
                capture_output=True,
                timeout=300,
            )
            thread.join(timeout=120)
        return b"".join(received)

    password = password_of(home).encode()
    assert password not in squat(str(bundled_psql()))
    assert password in squat(older_psql())


def test_db_url_says_which_clients_it_is_for():
    done = subprocess.run([*reconcile_command(), "db", "--help"], capture_output=True, timeout=120)
    text = " ".join(done.stdout.decode().split())
    assert "libpq 16 or later" in text and "db psql" in text
