"""Shared helpers of the reconcile and CLI tests: seeding the database, running hooks."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent


def reconcile_command() -> list[str]:
    """The installed ``reconcile`` script beside this interpreter, else ``python -m cli``."""
    script = Path(sys.executable).with_name("reconcile")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli"]


def default_hook() -> list[str]:
    """The hook command ``install-hooks`` writes by default here (docs/hook.md): this
    interpreter without ``site`` on the script beside it, else ``reconcile hook``."""
    script = Path(sys.executable).with_name("reconcile")
    if not script.is_file():
        return ["reconcile", "hook"]
    return [sys.executable, "-S", str(script), "hook"]


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any identity or RECONCILE_ variable of
    its own (but a retry horizon of five minutes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECONCILE_", "GENIE_"))}
    # A reconciler whose database never comes back (a test's dead URL) retries for five
    # minutes, not the default day: nothing of a test run lingers on the machine.
    env["RECONCILE_RETRY_HORIZON"] = "300"
    env.update(extra)
    return env


def hook_process(
    home: Path, url: str | None, payload: Any, **identity: str
) -> subprocess.Popen[bytes]:
    """Start one real ``reconcile hook`` process (payload: dict, or raw bytes)."""
    env = clean_env(RECONCILE_HOME=str(home), **identity)
    if url is not None:
        env["RECONCILE_DATABASE_URL"] = url
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    with tempfile.TemporaryFile() as stdin:  # the whole payload, ready before the start
        stdin.write(raw)
        stdin.seek(0)
        return subprocess.Popen(
            [*reconcile_command(), "hook"],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )


def run_hook(home: Path, url: str | None, payload: Any, **identity: str) -> None:
    """Run one hook process to completion; assert its contract (exit 0, empty stdout)."""
    proc = hook_process(home, url, payload, **identity)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out == b"", out


def wait_settled(home: Path, deadline_s: float = 180.0) -> None:
    """Wait until no observation in ``home`` is unsettled and no reconciler runs.

    The hook leaves the database work to a detached reconciler: a test waits for the
    condition (with a deadline generous enough for a loaded machine), never for a time.
    """
    import time

    import reconcile

    give_up = time.monotonic() + deadline_s
    while True:
        if not reconcile.unsettled(str(home)) and not reconcile.reconciler_running(home):
            return
        if time.monotonic() > give_up:
            raise AssertionError(f"observations in {home} still unsettled after {deadline_s} s")
        time.sleep(0.05)


def wait_idle(home: Path, deadline_s: float = 180.0) -> None:
    """Wait until no reconciler runs (with the database away, one that gives up
    (``RECONCILE_RETRY_HORIZON=0``) leaves a backoff and the observations in place)."""
    import time

    import reconcile

    give_up = time.monotonic() + deadline_s
    while reconcile.reconciler_running(home):
        if time.monotonic() > give_up:
            raise AssertionError(f"a reconciler of {home} ran for over {deadline_s} s")
        time.sleep(0.05)


def seed(
    url: str,
    agents: list[tuple[str, str | None, str | None, str | None]] = (),  # type: ignore[assignment]
    executors: list[tuple[str, str | None, str | None, str]] = (),  # type: ignore[assignment]
) -> None:
    """Insert agents (id, name, team, current executor) and executors
    (id, agent, session, state)."""
    with psycopg.connect(url, autocommit=True) as conn:
        for row in agents:
            conn.execute(
                "INSERT INTO agents (id, custom_name, team, current_executor_id) "
                "VALUES (%s, %s, %s, %s)",
                row,
            )
        for row in executors:
            conn.execute(
                "INSERT INTO executors (id, agent_id, claude_session_id, state) "
                "VALUES (%s, %s, %s, %s)",
                row,
            )


def query(url: str, sql: str, params: Mapping[str, Any] | tuple[Any, ...] = ()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params or None).fetchall()


def audit_rows(url: str, executor: str | None = None) -> list[tuple]:
    """(event_id, event_type, actor, details) of the audit rows, oldest first."""
    sql = "SELECT event_id::text, event_type, actor, details FROM audit_events"
    if executor is not None:
        return query(url, sql + " WHERE entity_id = %s ORDER BY id", (executor,))
    return query(url, sql + " ORDER BY id")


def session_of(url: str, executor: str) -> str | None:
    rows = query(url, "SELECT claude_session_id FROM executors WHERE id = %s", (executor,))
    return rows[0][0]


def cli(*args: str, home: Path, url: str | None = None, stdin: bytes = b"", **env: str):
    """Run ``reconcile ARGS`` as a user would, in ``home`` (and against ``url``)."""
    environment = clean_env(RECONCILE_HOME=str(home), **env)
    if url is not None:
        environment["RECONCILE_DATABASE_URL"] = url
    return subprocess.run(
        [*reconcile_command(), *args],
        input=stdin,
        capture_output=True,
        env=environment,
        timeout=300,
    )


def command_line_database(database_url: str, scratch: Path) -> str:
    """``database_url`` migrated by the command line, with two executors: e-1 running
    (agent alice of team core, session s-old), e-2 finished (anchor)."""
    done = cli("db", "migrate", "--create-tables", home=scratch / "migrate", url=database_url)
    assert done.returncode == 0, done.stderr
    seed(
        database_url,
        [("a-1", "alice", "core", "e-1")],
        [("e-1", "a-1", "s-old", "running"), ("e-2", None, "anchor", "done")],
    )
    return database_url


# Modules a project may hold: ours, our dependencies', the standard library's (those the
# hook, the reconciler and the compactor import), and the interpreter's start-up hooks.
PACKAGES = ("reconcile", "journal", "cli", "psycopg", "attrs", "logging", "email", "encodings")
MODULES = (
    "structlog",
    "json",
    "uuid",
    "selectors",
    "socket",
    "signal",
    "threading",
    "fcntl",
    "hashlib",
    "base64",
    "datetime",
    "tempfile",
    "typing",
    "sitecustomize",
    "usercustomize",
)


def hostile_project(project: Path, traces: Path) -> None:
    """Fill ``project`` with modules that each leave a file in ``traces`` when imported
    (named after the module and the importing process), then fail the import: ours, our
    dependencies', the standard library's, and the interpreter's start-up hooks."""
    project.mkdir(exist_ok=True)
    traces.mkdir()
    trace = (
        "import os as _os\n"
        f"open(_os.path.join({str(traces)!r}, __name__ + '.' + str(_os.getpid())), 'w').close()\n"
        "raise ImportError('a module of the project directory was imported')\n"
    )
    for name in PACKAGES:
        (project / name).mkdir()
        (project / name / "__init__.py").write_text(trace)
    for name in MODULES:
        (project / f"{name}.py").write_text(trace)
    (project / "evil.py").write_text(trace)
    (project / "evil.pth").write_text("import evil\n")  # read only if site scans here


class Outage:
    """A port in front of the test database that refuses connections while down and
    forwards them while up, on the same port: a database that goes away and comes back,
    as the reconciler sees it (its URL never changes). Starts down."""

    def __init__(self, url: str) -> None:
        import socket

        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        target = conninfo_to_dict(url)
        self._upstream = (str(target.get("host") or "127.0.0.1"), int(target.get("port") or 5432))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = make_conninfo(url, host="127.0.0.1", port=str(self.port))
        self._listener: Any = None
        self._open: list[Any] = []

    def up(self) -> None:
        import socket
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and cut the open ones."""
        import socket

        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._open.clear()

    def __enter__(self) -> Outage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def _accept(self, listener: Any) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # down
            try:
                server = socket.create_connection(self._upstream, timeout=30)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            self._open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()


def _pump(source: Any, sink: Any) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(1)  # SHUT_WR
