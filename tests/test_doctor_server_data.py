"""``doctor`` says where the embedded server keeps its data and what deletes it (nothing
but ``reconcile db remove``); under root, that it lives under ``/var/lib/reconcile-pg``,
run by a system user, and outlives the state directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from reconcile_helpers import clean_env, cli, reconcile_command


@pytest.fixture
def private_home() -> Iterator[Path]:
    # Outside pytest's temporary root: as root, the server's user must traverse it.
    base = Path(tempfile.mkdtemp(prefix="reconcile-test-doctor-"))
    yield base / "state"
    subprocess.run(
        [*reconcile_command(), "db", "remove", "--yes"],
        env=clean_env(RECONCILE_HOME=str(base / "state")),
        capture_output=True,
        timeout=300,
    )
    shutil.rmtree(base, ignore_errors=True)


def server_data_check(home: Path) -> dict:
    done = cli("doctor", "--json", "--settings", str(home.parent / "settings.json"), home=home)
    report = json.loads(done.stdout)
    return next(check for check in report["checks"] if check["name"] == "server data")


def test_doctor_says_where_the_servers_data_lives_and_what_deletes_it(private_home):
    root = os.geteuid() == 0
    check = server_data_check(private_home)
    assert check["status"] == "ok" and check["detail"].startswith("none yet")
    if root:
        assert "/var/lib/reconcile-pg, run by the system user reconcile-pg" in check["detail"]
    else:
        assert str(private_home / "pg") in check["detail"]
    assert not private_home.exists()  # looking creates nothing

    assert cli("db", "up", home=private_home).returncode == 0
    status = json.loads(cli("db", "status", "--json", home=private_home).stdout)
    data_dir = status["server"]["data_dir"]
    check = server_data_check(private_home)
    assert check["status"] == "ok"
    assert check["detail"].startswith(f"{data_dir}: kept by `reconcile db down`")
    assert "deleted only by `reconcile db remove`" in check["detail"]
    if root:
        assert data_dir.startswith("/var/lib/reconcile-pg/")
        assert "deleting the state directory leaves it" in check["detail"]
    else:
        assert data_dir == str(private_home / "pg" / "data")

    url = cli("db", "url", home=private_home).stdout.decode().strip()
    configured = cli("doctor", "--json", home=private_home, url=url)
    names = [check["name"] for check in json.loads(configured.stdout)["checks"]]
    assert "server data" not in names  # a configured database is not this tool's to keep
