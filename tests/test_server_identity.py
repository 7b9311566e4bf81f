"""Which server a state directory has, and what deletes one (issue 18).

Under root the server lives outside the state directory, in
``/var/lib/reconcile-pg/<server id>``, the id kept in the state directory's
``pg/server-id``: a moved state directory keeps its database, a copied one is refused
rather than given the same database, and no ``up`` deletes any server. Everything here
runs the real command line and real servers; each test costs a few seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from reconcile_helpers import cli, query, seed

from reconcile import ServerError, _server, _server_root

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="root's servers live outside the home")


@pytest.fixture
def base() -> Iterator[Path]:
    """A private (0700) directory for the state directories of one test; their servers
    are removed afterwards (explicitly: nothing collects them)."""
    made = Path(tempfile.mkdtemp(prefix="reconcile-test-identity-"))
    try:
        yield made
    finally:
        for pg in [*made.glob("*/pg"), *made.glob("*/*/pg")]:
            try:
                _server.remove(pg.parent)
            except ServerError:  # a copy holding another's id: its pg/ alone
                shutil.rmtree(pg, ignore_errors=True)
        shutil.rmtree(made, ignore_errors=True)


def up(home: Path) -> str:
    done = cli("db", "up", home=home)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode().strip()


def server_of(home: Path) -> Path:
    return Path(_server.status(home).data_dir).parent


def agents(url: str) -> list[tuple]:
    return query(url, "SELECT id, custom_name FROM agents ORDER BY id")


@as_root
def test_a_moved_state_directory_keeps_its_database(base):
    """The issue's reproduction: a row, `db down`, the state directory renamed, `db up` of
    an unrelated one, `db up` from the moved one: the row is there. (Before, servers were
    named by their state directory's path, and every `up` deleted those whose path was
    gone: the moved one got a new, empty database.)"""
    home = base / "home"
    url = up(home)
    seed(url, [("a-1", "alice", "core", "e-1")], [("e-1", "a-1", "s-1", "running")])
    server = server_of(home)
    assert cli("db", "down", home=home).returncode == 0
    moved = base / "moved"
    os.rename(home, moved)

    up(base / "unrelated")
    assert (server / "data" / "PG_VERSION").exists()

    again = up(moved)
    assert again == url.replace(str(home), str(moved))  # the same port, its passfile
    assert agents(again) == [("a-1", "alice")]
    assert server_of(moved) == server
    record = (server / "home").read_text().split("\n")
    assert record[:2] == [str(moved), str(moved.stat().st_dev)]  # rewritten by the up


@as_root
def test_a_copied_state_directory_is_refused_not_given_the_same_database(base):
    """`cp -a` copies pg/server-id too. Every command that would use the server refuses
    the copy, saying what to do; done, the copy gets a server of its own."""
    home = base / "home"
    url = up(home)
    seed(url, [("a-1", "alice", "core", None)])
    copy = base / "copy"
    subprocess.run(["cp", "-a", str(home), str(copy)], check=True)

    for command in (["db", "up"], ["db", "url"], ["db", "status"], ["db", "down"]):
        done = cli(*command, home=copy)
        assert done.returncode == 3, (command, done.stdout)
        assert f"{copy} holds the server id of {home}" in done.stderr.decode(), command
        assert f"delete {copy}/pg/server-id and {copy}/pg/port" in done.stderr.decode()
    assert _server.status(home).running and agents(url) == [("a-1", "alice")]

    (copy / "pg" / "server-id").unlink()
    (copy / "pg" / "port").unlink()
    own = up(copy)
    assert server_of(copy) != server_of(home)
    assert agents(own) == []
    assert agents(url) == [("a-1", "alice")]


@as_root
def test_of_two_copies_of_a_moved_state_directory_the_second_is_refused(base):
    """The server's record names a path that is gone: whichever holder runs `up` first
    takes the server (it moved there); the other is then a copy, and refused."""
    home = base / "home"
    url = up(home)
    seed(url, [("a-1", "alice", "core", None)])
    assert cli("db", "down", home=home).returncode == 0
    moved, copy = base / "moved", base / "copy"
    os.rename(home, moved)
    subprocess.run(["cp", "-a", str(moved), str(copy)], check=True)

    assert agents(up(copy)) == [("a-1", "alice")]
    refused = cli("db", "up", home=moved)
    assert refused.returncode == 3
    assert f"{moved} holds the server id of {copy}" in refused.stderr.decode()


@as_root
def test_an_older_versions_server_is_adopted_by_its_state_directory(base):
    """An older version named the server by a hash of the state directory's path and kept
    no id: the first `up` takes that name as the id, data intact; nothing is renamed."""
    home = base / "home"
    url = up(home)
    seed(url, [("a-1", "alice", "core", None)])
    assert cli("db", "down", home=home).returncode == 0
    legacy = _server_root.SERVER_ROOT / _server_root._path_name(home)
    os.rename(server_of(home), legacy)  # as the older version had it
    (home / "pg" / "server-id").unlink()
    assert server_of(home) == legacy  # read only, before the up: nothing written
    assert not (home / "pg" / "server-id").exists()

    assert agents(up(home)) == [("a-1", "alice")]
    assert (home / "pg" / "server-id").read_text() == f"{legacy.name}\n"
    assert server_of(home) == legacy
