"""Which server a state directory has, and what deletes one (issue 18).

Under root the server lives outside the state directory, in
``/var/lib/reconcile-pg/<server id>``, the id kept in the state directory's
``pg/server-id``: a moved state directory keeps its database, a copied one is refused
rather than given the same database, and nothing is deleted but by ``reconcile db
remove`` (``--orphans`` for servers whose state directory is gone), which lists first and
deletes only with ``--yes``. Everything here runs the real command line and real
servers; each test costs a few seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
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


def remove(home: Path, *flags: str) -> tuple[int, dict]:
    done = cli("db", "remove", "--json", *flags, home=home)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


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
    refused = cli("db", "remove", "--yes", home=copy)
    assert refused.returncode == 3
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


def test_db_remove_lists_first_and_removes_only_with_yes(base):
    home = base / "home"
    url = up(home)
    seed(url, [("a-1", "alice", "core", None)])
    server = server_of(home)
    expected = [str(home / "pg")] + ([str(server)] if os.geteuid() == 0 else [])

    listed = cli("db", "remove", home=home)
    assert listed.returncode == 1, listed.stderr
    text = listed.stdout.decode()
    assert all(f"  {path}\n" in text for path in expected), text
    assert "holds a database" in text and "rerun with --yes" in text
    code, plan = remove(home)
    assert code == 1
    assert plan == {
        "paths": expected,
        "data_dir": str(server / "data"),
        "database": True,
        "running": True,
        "removed": False,
    }
    assert agents(url) == [("a-1", "alice")]  # nothing removed, nothing stopped

    code, done = remove(home, "--yes")
    assert (code, done["removed"], done["paths"]) == (0, True, expected)
    assert not any(Path(path).exists() for path in expected)
    assert _server.url(home) is None
    nothing = cli("db", "remove", "--yes", home=home)
    assert nothing.returncode == 0
    assert nothing.stdout.decode().startswith("nothing to remove")


@as_root
def test_orphans_are_the_servers_seen_gone_and_go_only_with_yes(base):
    """Only a server whose state directory is seen to be gone is an orphan: not one on a
    file system that is not mounted, not one still running; and no `up` deletes any."""
    gone = base / "gone" / "home"
    up(gone)
    assert cli("db", "down", home=gone).returncode == 0
    servers = {"gone": server_of(gone)}
    shutil.rmtree(gone.parent)

    mount = base / "mount"
    mount.mkdir()
    options = ["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)]
    subprocess.run(["mount", *options], check=True, capture_output=True)
    try:
        up(mount / "home")
        servers["unmounted"] = server_of(mount / "home")
        assert cli("db", "down", home=mount / "home").returncode == 0
    finally:
        subprocess.run(["umount", str(mount)], check=True, capture_output=True)

    running = base / "running" / "home"
    up(running)
    servers["running"] = server_of(running)
    postmaster = _server.status(running).pid
    assert postmaster is not None
    shutil.rmtree(running.parent)  # while its server runs
    try:
        kept = base / "kept"
        up(kept)
        assert all(server.is_dir() for server in servers.values())  # no `up` deletes

        def orphans(*flags: str) -> tuple[int, set[str], dict]:
            code, found = remove(kept, "--orphans", *flags)
            return code, {o["server"] for o in found["orphans"]}, found

        code, listed, found = orphans()
        assert code == 1 and found["removed"] is False
        assert str(servers["gone"]) in listed
        assert not listed & {str(servers["unmounted"]), str(servers["running"]), str(kept)}
        assert servers["gone"].is_dir()  # listed only

        os.kill(postmaster, signal.SIGINT)  # stopped: now it is an orphan too
        deadline = time.monotonic() + 60
        while (servers["running"] / "data" / "postmaster.pid").exists():
            assert time.monotonic() < deadline, "the server did not stop"
            time.sleep(0.05)
        code, removed, found = orphans("--yes")
        assert code == 0 and found["removed"] is True
        assert {str(servers["gone"]), str(servers["running"])} <= removed
        assert not servers["gone"].exists() and not servers["running"].exists()
        assert servers["unmounted"].is_dir() and server_of(kept).is_dir()
        assert _server.status(kept).running
    finally:
        for server in servers.values():
            shutil.rmtree(server, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="an unprivileged user's server is in its home")
def test_orphans_of_an_unprivileged_user_are_none(base):
    done = cli("db", "remove", "--orphans", "--yes", home=base / "home")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().startswith("nothing to do: only root's servers")
    assert not (base / "home" / "pg").exists()
