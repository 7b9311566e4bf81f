"""What commands say when the database is not there, or not what was meant: the next
step, with the URL named by where it came from (``--database-url``,
``RECONCILE_DATABASE_URL``, the embedded server).
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

from psycopg.conninfo import make_conninfo
from reconcile_helpers import cli

NOT_A_URL = "is not a valid PostgreSQL URL or connection string; write it as postgresql://"


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def flag(*args: str, url: str, home: Path) -> subprocess.CompletedProcess:
    """``reconcile --database-url URL ARGS``, with no RECONCILE_DATABASE_URL."""
    return cli("--database-url", url, *args, home=home)


def error_of(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 3, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reconcile: error: "), lines
    return lines[0]


def test_not_a_url_says_what_one_looks_like(tmp_path):
    home = tmp_path / "home"
    for args in (["db", "migrate"], ["verify", "--db"], ["replay", "--to-db"]):
        error = error_of(flag(*args, url="not-a-url", home=home))
        assert 'missing "=" after "not-a-url"' in error  # libpq's words, then the step
        assert f"--database-url {NOT_A_URL}" in error, error
    error = error_of(cli("db", "migrate", home=home, url="not-a-url"))
    assert f"RECONCILE_DATABASE_URL {NOT_A_URL}" in error
    report = json.loads(flag("status", "--json", url="not-a-url", home=home).stdout)
    assert report["next_step"].startswith(f"--database-url {NOT_A_URL}")


def test_a_refused_connection_says_to_start_the_database_the_url_came_from(tmp_path):
    home = tmp_path / "home"
    url = f"postgresql://someone:secret@127.0.0.1:{free_port()}/app"
    start = "start the database at {}, or correct that URL"
    for args in (["db", "migrate"], ["verify", "--db"]):
        error = error_of(flag(*args, url=url, home=home))
        assert "Connection refused" in error and error.endswith(start.format("--database-url"))
        assert "secret" not in error
        error = error_of(cli(*args, home=home, url=url))
        assert error.endswith(start.format("RECONCILE_DATABASE_URL"))

    report = json.loads(flag("status", "--json", url=url, home=home).stdout)
    assert report["next_step"] == start.format("--database-url")
    report = json.loads(cli("status", "--json", home=home, url=url).stdout)
    assert report["next_step"] == start.format("RECONCILE_DATABASE_URL")
    report = json.loads(cli("status", "--json", home=home).stdout)  # the embedded one
    assert report["next_step"] == "reconcile db up"
    shown = flag("status", url=url, home=home).stdout.decode()
    assert f"next step:       {start.format('--database-url')}\n" in shown
    doctor = json.loads(flag("doctor", "--json", url=url, home=home).stdout)
    assert doctor["next_step"] == start.format("--database-url")


def test_a_database_that_does_not_exist_is_told_apart(database_url, tmp_path):
    home = tmp_path / "home"
    missing = make_conninfo(database_url, dbname="reconcile_no_such_db")
    report = json.loads(flag("status", "--json", url=missing, home=home).stdout)
    step = report["next_step"]
    assert step.startswith("the server has no database reconcile_no_such_db: create it")
    assert "createdb reconcile_no_such_db" in step and "--create-tables" in step
    assert step.endswith("or correct --database-url")
    error = error_of(cli("db", "migrate", home=home, url=missing))
    assert error.endswith(step.replace("--database-url", "RECONCILE_DATABASE_URL"))
