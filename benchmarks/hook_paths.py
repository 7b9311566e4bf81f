"""What one tool use costs on each path of the hook, against ``python -c pass``.

Every path is a real ``reconcile hook`` process fed a real payload, timed from the
outside (wall) and by the kernel (user + system CPU of the hook process, from
``wait4``), interleaved with ``python -c pass`` so that both see the same machine:

- hit: the entry settled this session id;
- hit, typed: the same hit, run as ``reconcile hook`` typed in a shell (the script's
  shell line first); every other path runs the hook as ``install-hooks`` writes it,
  ``<env>/bin/python -S <env>/bin/reconcile hook``;
- first miss: a new session id while the database answers (the hook journals it and
  starts the reconciler, which it does not wait for);
- database refusing: nothing listens on the port;
- database silent: a local listener accepts and never answers;
- no executor: an identity the database does not know.

A round is one session of ``--uses`` tool uses in a fresh state directory, as a user
sees it: the first use misses, the others find the observation (or its outcome).
Then three end-to-end figures: 200 tool uses of one session with the database refusing
(CPU, journal lines, reconciler attempts), 64 concurrent hooks on 64 executors
(connections, time until every row is right), and an outage that ends while tool uses
go on once a second (time until the row is right, no operator command).

    python -m benchmarks.hook_paths [--rounds N] [--uses N] [--outage-s S] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import reconcile
from benchmarks._harness import fresh_database, hook_argv, typed_hook_argv

DATABASE = "reconcile_bench_paths"


def timed(argv: list[str], env: dict[str, str], stdin: bytes | None) -> tuple[float, float]:
    """Run one process to completion: (wall seconds, CPU seconds of that process)."""
    read, write = os.pipe()
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=read if stdin is not None else None, env=env)
    os.close(read)
    if stdin is not None:
        os.write(write, stdin)
    os.close(write)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


class Proxy:
    """A TCP port that is refused (closed), silent (accepts, never answers) or forwards to
    the real server: the database going away and coming back under one URL."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None

    def refuse(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def forward(self) -> None:
        self.refuse()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def prepare(admin_url: str, executors: int) -> str:
    url = fresh_database(admin_url, DATABASE)
    with psycopg.connect(url, autocommit=True) as conn:
        reconcile.migrate(conn, create_tables=True)
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO executors (id, state) VALUES (%s, 'running')",
                [(f"e-{i}",) for i in range(executors)],
            )
    return url


def wait_idle(home: Path, deadline_s: float = 120) -> None:
    """Until no reconciler runs in ``home`` (so that rounds do not overlap)."""
    give_up = time.monotonic() + deadline_s
    while reconcile.reconciler_running(home) and time.monotonic() < give_up:
        time.sleep(0.02)


def session_rounds(args: argparse.Namespace, url: str, tmp: Path) -> None:
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("RECONCILE_", "GENIE_"))}
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    refused_url = f"postgresql://postgres@127.0.0.1:{refused.getsockname()[1]}/x"
    refused.close()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1024)
    silent_url = f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/x"
    paths: dict[str, tuple[str, dict[str, str]]] = {
        "hit": (url, {"RECONCILE_EXECUTOR_ID": "e-0"}),
        "hit, typed": (url, {"RECONCILE_EXECUTOR_ID": "e-0"}),
        "first miss": (url, {"RECONCILE_EXECUTOR_ID": "e-1"}),
        "database refusing": (refused_url, {"RECONCILE_EXECUTOR_ID": "e-2"}),
        "database silent": (silent_url, {"RECONCILE_EXECUTOR_ID": "e-3"}),
        "no executor": (url, {"RECONCILE_AGENT_ID": "00000000-0000-4000-8000-00000000dead"}),
    }
    wall: dict[str, list[float]] = {"python -c pass": []} | {name: [] for name in paths}
    cpu: dict[str, list[float]] = {name: [] for name in wall}
    hit_home = tmp / "hit"
    subprocess_env = {**base_env, "RECONCILE_HOME": str(hit_home), "RECONCILE_DATABASE_URL": url}
    run_hook(subprocess_env | {"RECONCILE_EXECUTOR_ID": "e-0"}, "s-hit")
    wait_idle(hit_home)
    for round_ in range(args.rounds):
        for name, (db, identity) in paths.items():
            hit = name.startswith("hit")
            home = hit_home if hit else tmp / f"{name}-{round_}"
            env = {
                **base_env,
                "RECONCILE_HOME": str(home),
                "RECONCILE_DATABASE_URL": db,
                **identity,
            }
            session = "s-hit" if hit else f"s-{round_}"
            argv = typed_hook_argv() if name == "hit, typed" else hook_argv()
            payload = json.dumps(  # as Claude Code sends it, the transcript's place included
                {
                    "session_id": session,
                    "hook_event_name": "PreToolUse",
                    "transcript_path": f"/home/u/.claude/projects/-w/{session}.jsonl",
                    "cwd": "/w",
                }
            ).encode()
            for _ in range(args.uses):
                w, c = timed([sys.executable, "-c", "pass"], base_env, None)
                wall["python -c pass"].append(w)
                cpu["python -c pass"].append(c)
                w, c = timed(argv, env, payload)
                wall[name].append(w)
                cpu[name].append(c)
            wait_idle(home)
    silent.close()
    base_wall = statistics.median(wall["python -c pass"])
    base_cpu = statistics.mean(cpu["python -c pass"])
    print(f"{args.rounds} sessions of {args.uses} tool uses per path, interleaved")
    print(f"{'':22}{'wall ms':>9}{'ratio':>7}{'p99 ms':>8}{'CPU ms':>8}{'ratio':>7}")
    for name in wall:
        median = statistics.median(wall[name])
        p99 = sorted(wall[name])[int(len(wall[name]) * 0.99) - 1]
        mean_cpu = statistics.mean(cpu[name])
        print(
            f"{name:22}{median * 1000:>9.2f}{median / base_wall:>7.2f}{p99 * 1000:>8.2f}"
            f"{mean_cpu * 1000:>8.2f}{mean_cpu / base_cpu:>7.2f}"
        )
    print("(wall: median per tool use; CPU: mean user+sys of the hook process itself)")


def run_hook(env: dict[str, str], session: str) -> tuple[float, float]:
    payload = json.dumps({"session_id": session}).encode()
    return timed(hook_argv(), env, payload)


def outage_costs(url: str, tmp: Path, uses: int) -> None:
    """``uses`` tool uses of one session with the database refusing."""
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("RECONCILE_", "GENIE_"))}
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    refused_url = f"postgresql://postgres@127.0.0.1:{probe.getsockname()[1]}/x"
    probe.close()
    home = tmp / "outage"
    env = {
        **base_env,
        "RECONCILE_HOME": str(home),
        "RECONCILE_DATABASE_URL": refused_url,
        "RECONCILE_EXECUTOR_ID": "e-4",
    }
    hook_cpu: list[float] = []
    base_cpu: list[float] = []
    started = time.monotonic()
    for _ in range(uses):
        base_cpu.append(timed([sys.executable, "-c", "pass"], base_env, None)[1])
        hook_cpu.append(run_hook(env, "s-outage")[1])
    elapsed = time.monotonic() - started
    wait_idle(home)
    lines = sum(1 for _ in reconcile.events(reconcile.Settings.from_env({}, home=home)))
    log = (home / "log" / "reconcile.log").read_text() if (home / "log").exists() else ""
    attempts = log.count('"reconciler.backoff"')
    ratio = statistics.mean(hook_cpu) / statistics.mean(base_cpu)
    print(
        f"\n{uses} tool uses of one session, database refusing ({elapsed:.1f} s): "
        f"hook CPU {statistics.mean(hook_cpu) * 1000:.2f} ms mean per tool use = "
        f"{ratio:.2f}x python -c pass; journal lines {lines}; reconciler attempts {attempts} "
        "(each one connection attempt, in a detached process)"
    )


def burst(url: str, tmp: Path, n: int = 64) -> None:
    """``n`` concurrent hooks on ``n`` executors, each a new session."""
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("RECONCILE_", "GENIE_"))}
    home = tmp / "burst"
    name = conninfo_to_dict(url)["dbname"]
    admin = make_conninfo(url, dbname="postgres")
    with (
        psycopg.connect(admin, autocommit=True) as probe,
        psycopg.connect(url, autocommit=True) as watch,  # counted before, not during
    ):
        before = reconcile.database_activity(probe, name)[1]
        started = time.monotonic()
        procs = []
        for i in range(n):
            env = {
                **base_env,
                "RECONCILE_HOME": str(home),
                "RECONCILE_DATABASE_URL": url,
                "RECONCILE_EXECUTOR_ID": f"e-{100 + i}",
            }
            proc = subprocess.Popen(hook_argv(), stdin=subprocess.PIPE, env=env)
            procs.append(proc)
        for i, proc in enumerate(procs):
            proc.communicate(json.dumps({"session_id": f"burst-{i}"}).encode())
        hooks_done = time.monotonic() - started
        right = _until(
            lambda: (
                _count(
                    watch, "SELECT count(*) FROM executors WHERE claude_session_id LIKE 'burst-%%'"
                )
                == n
                and _count(
                    watch,
                    "SELECT count(*) FROM audit_events "
                    "WHERE details->>'new_session_id' LIKE 'burst-%%'",
                )
                == n
            ),
            120,
        )
        wait_idle(home)
        connections = reconcile.database_activity(probe, name)[1] - before
    print(
        f"\n{n} concurrent hooks on {n} executors: all hooks exited after {hooks_done:.2f} s; "
        f"every row and audit row right after {right:.2f} s; "
        f"{connections} server-counted connections"
    )


def recovery(url: str, tmp: Path, outage_s: float) -> None:
    """The database refuses for ``outage_s``, then answers; tool uses go on once a second."""
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("RECONCILE_", "GENIE_"))}
    port = int(conninfo_to_dict(url).get("port") or 5432)
    proxy = Proxy(port)
    proxied = make_conninfo(url, port=str(proxy.port), host="127.0.0.1")
    home = tmp / "recovery"
    env = {
        **base_env,
        "RECONCILE_HOME": str(home),
        "RECONCILE_DATABASE_URL": proxied,
        "RECONCILE_EXECUTOR_ID": "e-5",
    }
    proxy.refuse()
    started = time.monotonic()
    while time.monotonic() - started < outage_s:
        run_hook(env, "s-recovered")
        time.sleep(1)
    proxy.forward()
    back = time.monotonic()
    while (
        _count(url, "SELECT count(*) FROM executors WHERE claude_session_id = 's-recovered'") != 1
    ):
        if time.monotonic() - back > 300:
            raise RuntimeError("the row was never reconciled after the outage")
        run_hook(env, "s-recovered")
        time.sleep(1)
    print(
        f"\ndatabase refusing for {outage_s:.0f} s, then back, tool uses once a second: "
        f"row right {time.monotonic() - back:.1f} s after it came back (no operator command)"
    )
    wait_idle(home)
    proxy.refuse()


def _count(where: str | psycopg.Connection, sql: str) -> int:
    if isinstance(where, str):
        with psycopg.connect(where, autocommit=True) as conn:
            return _count(conn, sql)
    row = where.execute(sql).fetchone()
    return int(row[0]) if row else 0


def _until(condition: Callable[[], bool], deadline_s: float) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > deadline_s:
            raise RuntimeError("condition never met")
        time.sleep(0.02)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--uses", type=int, default=20)
    parser.add_argument("--outage-uses", type=int, default=200)
    parser.add_argument("--outage-s", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="small sizes (CI)")
    parser.add_argument("--database-url", default=os.environ.get("RECONCILE_DATABASE_URL"))
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.uses, args.outage_uses, args.outage_s = 1, 5, 20, 3.0
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as directory:
        tmp = Path(directory)
        admin = args.database_url or reconcile.server_up(tmp / "server")
        try:
            url = prepare(admin, 200)
            session_rounds(args, url, tmp)
            outage_costs(url, tmp, args.outage_uses)
            burst(url, tmp)
            recovery(url, tmp, args.outage_s)
        finally:
            if args.database_url is None:
                reconcile.server_remove(tmp / "server")  # under root, data lives elsewhere


if __name__ == "__main__":
    main()
