"""Through PgBouncer in transaction pooling mode, as many hosts share one PostgreSQL.

A PgBouncer started for this module (Debian's ``pgbouncer``; .ci/run installs it) sits
in front of the suite's server: config in a temporary directory, password
authentication, ``pool_mode = transaction``, four server connections for every client,
listening on 127.0.0.1 on a free port, stopped at the end. Consecutive transactions of
one client may run on different server sessions, so anything that relied on session
state (a SET, a prepared statement, a startup option) would fail or leak here.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from orchestrator_helpers import orchestrator_migrate, rows, spawn_team_lead, spawn_worker
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from reconcile_helpers import clean_env, reconcile_command

import journal
import reconcile
from reconcile import Decision, Settings

POOL_SIZE = 4
_SERVER_AUTH = ("passfile", "require_auth")  # how the suite's server is logged in to
CLIENTS = 64


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _binary() -> str:
    found = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.access(found, os.X_OK):
        pytest.fail("pgbouncer is not installed: apt-get install pgbouncer (.ci/run does)")
    return found


def _from_passfile(server: dict[str, Any]) -> str | None:
    """The password libpq would read for ``server`` from its ``passfile`` (the embedded
    server's URL names one: docs/operations.md), for PgBouncer to log in with."""
    if not server.get("passfile"):
        return None
    for line in Path(server["passfile"]).read_text().splitlines():
        _, port, _, user, password = line.split(":", 4)
        if user in ("*", server.get("user")) and port in ("*", str(server.get("port"))):
            return password
    return None


@pytest.fixture(scope="module")
def bouncer(admin_url: str) -> Iterator[dict[str, Any]]:
    """A running PgBouncer in front of the suite's server; yields what URLs need."""
    server = conninfo_to_dict(admin_url)
    user = str(server.get("user") or pwd.getpwuid(os.getuid()).pw_name)
    password = str(server.get("password") or _from_passfile(server) or secrets.token_hex(16))
    port = _free_port()
    directory = Path(tempfile.mkdtemp(prefix="reconcile-test-pgbouncer-"))
    (directory / "userlist.txt").write_text(f'"{user}" "{password}"\n')
    lines = [
        "[databases]",
        f"* = host={server.get('host') or '127.0.0.1'} port={server.get('port') or 5432}",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {port}",
        "unix_socket_dir =",
        "auth_type = md5",
        f"auth_file = {directory / 'userlist.txt'}",
        "pool_mode = transaction",
        f"default_pool_size = {POOL_SIZE}",
        "max_client_conn = 256",
    ]
    if os.getuid() == 0:  # it refuses to run as root: it drops to this user once started
        lines.append("user = nobody")
    (directory / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
    log = open(directory / "pgbouncer.log", "wb")  # noqa: SIM115 - closed in teardown
    process = subprocess.Popen(
        [_binary(), str(directory / "pgbouncer.ini")], stdout=log, stderr=subprocess.STDOUT
    )
    found = {"host": "127.0.0.1", "port": port, "user": user, "password": password}
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (directory / "pgbouncer.log").read_text()
            try:
                with psycopg.connect(**found, dbname="postgres", connect_timeout=5):
                    break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, (directory / "pgbouncer.log").read_text()
                time.sleep(0.1)
        yield found
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        log.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def direct(database_url: str, tmp_path: Path) -> str:
    """An orchestrator's database, migrated by this tool over a direct connection."""
    orchestrator_migrate(database_url)
    done = run_cli("db", "migrate", url=database_url, home=tmp_path / "migrate")
    assert done.returncode == 0, done.stderr
    return database_url


@pytest.fixture
def pooled(direct: str, bouncer: dict[str, Any]) -> str:
    """The same database through PgBouncer (with its password: not the embedded server's
    password file, nor its demand of SCRAM, which PgBouncer answers with md5)."""
    kept = {k: v for k, v in conninfo_to_dict(direct).items() if k not in _SERVER_AUTH}
    return make_conninfo(**{**kept, **bouncer})


def run_cli(*args: str, url: str, home: Path) -> subprocess.CompletedProcess[bytes]:
    environment = clean_env(RECONCILE_HOME=str(home), RECONCILE_DATABASE_URL=url)
    return subprocess.run(
        [*reconcile_command(), *args], capture_output=True, env=environment, timeout=300
    )


def test_64_concurrent_settlements_through_transaction_pooling(direct, pooled, tmp_path):
    workers = [spawn_worker(direct, f"w{i}", "core", session_id="s-old") for i in range(16)]
    anchors = [
        spawn_worker(direct, f"t{i}", "core", session_id=f"anchor-{i}", state="done")
        for i in range(8)
    ]
    lead_executor, lead = spawn_team_lead(
        direct, "lead", "core", session_id="lead-anchor", state="terminated"
    )
    # (label, environment, live session id): 64 settlements, each its own host.
    plan: list[tuple[str, dict[str, str], str]] = []
    for i, env in enumerate(workers):  # two hosts race on each rotation
        plan += [(f"worker-{i}", env, f"s-new-{i}")] * 2
    for i, env in enumerate(anchors):  # two hosts see each terminal executor diverge
        plan += [(f"anchor-{i}", env, f"s-live-{i}")] * 2
    plan += [("lead", lead, "lead-live")] * 8  # the team lead, keyed by name, everywhere
    plan += [(f"ghost-{i}", {"GENIE_EXECUTOR_ID": f"ghost-{i}"}, "s") for i in range(8)]
    assert len(plan) == CLIENTS

    barrier = threading.Barrier(CLIENTS)
    results: dict[int, tuple[str, str, Decision]] = {}
    failures: list[BaseException] = []

    def settle(n: int, label: str, env: dict[str, str], session_id: str) -> None:
        try:
            settings = Settings(
                home=tmp_path / f"host-{n}",
                database_url=pooled,
                connect_timeout_s=60,
                statement_timeout_s=60,
            )
            observation = reconcile.observe(env, {"session_id": session_id})
            assert not isinstance(observation, str), observation
            event_id = journal.new_event_id()
            with reconcile.connect(settings, application="reconcile-test") as conn:
                barrier.wait(timeout=300)
                decision = reconcile.decide(
                    conn,
                    session_id=session_id,
                    event_id=event_id,
                    deadline_s=settings.statement_timeout_s,
                    **observation.identity(),
                )
            results[n] = (label, event_id, decision)
        except BaseException as exc:
            failures.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=settle, args=(n, *entry)) for n, entry in enumerate(plan)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert failures == [] and len(results) == CLIENTS

    by_label: dict[str, list[Decision]] = {}
    for label, _, decision in results.values():
        by_label.setdefault(label, []).append(decision)
    for i in range(16):
        outcomes = sorted(d.outcome for d in by_label[f"worker-{i}"])
        assert outcomes == ["confirmed", "reconciled"], i
    for i in range(8):
        found = by_label[f"anchor-{i}"]
        assert [d.outcome for d in found] == ["divergence_preserved"] * 2
        assert sorted(d.audited for d in found) == [False, True]
        assert by_label[f"ghost-{i}"] == [Decision("no_executor")]
    assert Counter(d.audited for d in by_label["lead"]) == {True: 1, False: 7}

    # The database: exactly the right rows and audit rows.
    stored = dict(rows(direct, "SELECT id, claude_session_id FROM executors"))
    for i, env in enumerate(workers):
        assert stored[env["GENIE_EXECUTOR_ID"]] == f"s-new-{i}"
    for i, env in enumerate(anchors):
        assert stored[env["GENIE_EXECUTOR_ID"]] == f"anchor-{i}"
    assert stored[lead_executor] == "lead-anchor"
    audited = {event_id for _, event_id, d in results.values() if d.audited}
    written = rows(direct, "SELECT event_id::text, event_type FROM audit_events")
    assert {event_id for event_id, _ in written} == audited
    assert Counter(kind for _, kind in written) == {
        "session.reconciled": 16,
        "session.divergence_preserved": 9,
    }
    assert rows(direct, "SELECT count(*) FROM audit_feed") == [(25,)]  # its trigger fired

    # Sixty-four clients shared at most four server sessions, and left nothing in them.
    database = conninfo_to_dict(direct)["dbname"]
    with psycopg.connect(direct, autocommit=True) as probe:
        backends = probe.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchone()
    assert backends is not None and backends[0] <= POOL_SIZE
    for _ in range(2 * POOL_SIZE):
        with psycopg.connect(pooled, autocommit=True, prepare_threshold=None) as conn:
            left = conn.execute(
                "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), "
                "COALESCE(current_setting('reconcile.executor_id', true), '')"
            ).fetchone()
        assert left == ("0", "0", "")


def test_status_works_and_migrations_refuse_to_run_through_it(pooled, tmp_path):
    status = run_cli("status", "--json", url=pooled, home=tmp_path)
    assert status.returncode == 0, status.stderr
    database = json.loads(status.stdout)["database"]
    assert database["reachable"] is True and database["schema"]["state"] == "current"
    assert conninfo_to_dict(pooled)["password"] not in status.stdout.decode()

    migrate = run_cli("db", "migrate", url=pooled, home=tmp_path)
    assert migrate.returncode == 3
    message = migrate.stderr.decode()
    assert "direct connection to PostgreSQL" in message and message.count("\n") == 1
    assert conninfo_to_dict(pooled)["password"] not in message
