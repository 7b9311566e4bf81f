"""``reconcile demo``: the whole design at work on an embedded PostgreSQL, for a newcomer.

It starts the embedded server in a fresh state directory (or ``--home``), seeds agents
and executors (some terminal), runs real ``reconcile hook`` processes, concurrently,
with realistic payloads and session rotations, compacts, verifies against the database,
and reports what happened. Forks of one agent run in order (one Claude Code session does
one tool call at a time), several agents at once, and now and then two forks of one
agent race with the same payload (parallel tool calls).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs

import journal
import reconcile
from cli._output import emit_json, emit_pairs, progress_bar
from reconcile._fast import DIVERGENCE_PRESERVED, PENDING, RECONCILED
from reconcile._settings import Settings

TERMINAL = ("done", "error", "terminated")
TEAM = "demo"
ROTATION_RATE = 0.08  # share of forks that see a freshly rotated session id


@attrs.frozen
class Fork:
    agent: int
    session_id: str
    env: dict[str, str]
    payload: bytes


def run(args: Any, settings: Settings) -> int:
    temporary = args.home is None
    home = Path(tempfile.mkdtemp(prefix="reconcile-demo-")) if temporary else settings.home
    from reconcile import _server

    say = _narrator(args.json)
    try:
        say(f"starting the embedded PostgreSQL in {home / 'pg'}")
        url = _demo_database(_server.up(home))
        settings = attrs.evolve(settings, home=home, database_url=url)
        agents = _seed(settings, args.agents)
        rounds, live = _workload(args.agents, args.forks, home, url)
        say(
            f"{args.agents} agents seeded; running {args.forks} hook forks, "
            f"{args.concurrency} at a time"
        )
        before = _transactions(url)
        latencies = _run_forks(rounds, args.concurrency)
        transactions = _transactions(url) - before
        journal.compact(home, max_entries=settings.max_entries, wait=True)
        report = _report(settings, agents, live, latencies, transactions)
        report["concurrency"] = args.concurrency
    finally:
        if temporary:
            _server.down(home)
            shutil.rmtree(home, ignore_errors=True)
    if args.json:
        emit_json(report)
    else:
        emit_pairs(report.items())
    return 0 if report["lost"] == 0 and report["verified"] else 1


def _narrator(quiet: bool) -> Any:
    def say(message: str) -> None:
        if not quiet:
            print(f"• {message}", file=sys.stderr)

    return say


def _demo_database(server_url: str) -> str:
    import psycopg
    from psycopg.conninfo import make_conninfo

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS reconcile_demo WITH (FORCE)")
        conn.execute("CREATE DATABASE reconcile_demo")
    return make_conninfo(server_url, dbname="reconcile_demo")


def _seed(settings: Settings, count: int) -> dict[int, tuple[str, str | None]]:
    """Agents with executors; every fifth one terminal, holding a recovery anchor.
    Returns agent -> (state, stored session id)."""
    from reconcile._store import connect

    seeded: dict[int, tuple[str, str | None]] = {}
    with connect(settings) as conn:
        reconcile.migrate(conn, create_tables=True)
        with conn.transaction():
            for i in range(count):
                terminal = i % 5 == 4
                state = TERMINAL[i % 3] if terminal else "running"
                stored = f"anchor-{i:03d}" if terminal else (None if i % 2 else f"stale-{i:03d}")
                conn.execute(
                    "INSERT INTO agents (id, custom_name, team, current_executor_id) "
                    "VALUES (%s, %s, %s, %s)",
                    (f"agent-{i:03d}", f"worker-{i:03d}", TEAM, f"exec-{i:03d}"),
                )
                conn.execute(
                    "INSERT INTO executors (id, agent_id, claude_session_id, state) "
                    "VALUES (%s, %s, %s, %s)",
                    (f"exec-{i:03d}", f"agent-{i:03d}", stored, state),
                )
                seeded[i] = (state, stored)
    return seeded


def _workload(
    agents: int, forks: int, home: Path, url: str
) -> tuple[list[list[Fork]], dict[int, str]]:
    """Rounds of forks (at most one agent's sequence position per round) and each
    agent's last live session id."""
    rng = random.Random(7)
    generation = dict.fromkeys(range(agents), 0)
    per_agent: dict[int, list[Fork]] = {i: [] for i in range(agents)}
    weights = [1.0 / (1 + i % 7) for i in range(agents)]  # some agents far busier
    made = 0
    while made < forks:
        i = rng.choices(range(agents), weights)[0]
        if per_agent[i] and rng.random() < ROTATION_RATE:
            generation[i] += 1  # resume or compaction: a new session id
        fork = _fork(i, f"sess-{i:03d}-{generation[i]}", home, url, rng)
        per_agent[i].append(fork)
        made += 1
        if made < forks and rng.random() < 0.05:  # a parallel tool call: same payload
            per_agent[i].append(fork)
            made += 1
    rounds: list[list[Fork]] = []
    for sequence in per_agent.values():
        for position, fork in enumerate(sequence):
            while len(rounds) <= position:
                rounds.append([])
            rounds[position].append(fork)
    last = {i: seq[-1].session_id for i, seq in per_agent.items() if seq}
    return rounds, last


def _fork(i: int, session_id: str, home: Path, url: str, rng: random.Random) -> Fork:
    env = {**os.environ, "RECONCILE_HOME": str(home), "RECONCILE_DATABASE_URL": url}
    for name in list(env):
        if name.startswith(("RECONCILE_EXECUTOR", "RECONCILE_AGENT", "RECONCILE_TEAM", "GENIE_")):
            del env[name]
    payload: dict[str, Any] = {
        "session_id": session_id,
        "transcript_path": f"/home/dev/.claude/projects/demo/{session_id}.jsonl",
        "cwd": f"/work/agent-{i:03d}",
        "hook_event_name": rng.choice(["PreToolUse", "PreToolUse", "UserPromptSubmit"]),
    }
    if payload["hook_event_name"] == "PreToolUse":
        payload["tool_name"] = rng.choice(["Bash", "Read", "Edit", "Grep"])
        payload["tool_input"] = {"command": "pytest -q"} if payload["tool_name"] == "Bash" else {}
    else:
        payload["prompt"] = "continue with the next step"
    mode = i % 3  # how the orchestrator names the agent: three ways seen in the wild
    if mode == 0:
        env["RECONCILE_EXECUTOR_ID"] = f"exec-{i:03d}"
    elif mode == 1:
        env["GENIE_AGENT_NAME"], env["GENIE_TEAM"] = f"worker-{i:03d}", TEAM
    else:
        payload["teammate_name"], payload["team_name"] = f"worker-{i:03d}", TEAM
    return Fork(i, session_id, env, json.dumps(payload).encode())


def _hook_command() -> list[str]:
    script = Path(sys.executable).with_name("reconcile")
    if script.exists():
        return [str(script), "hook"]
    found = shutil.which("reconcile")
    return [found, "hook"] if found else [sys.executable, "-m", "cli", "hook"]


def _run_forks(rounds: list[list[Fork]], concurrency: int) -> list[float]:
    command = _hook_command()

    def one(fork: Fork) -> float:
        started = time.perf_counter()
        done = subprocess.run(command, input=fork.payload, env=fork.env, capture_output=True)
        elapsed = time.perf_counter() - started
        if done.returncode != 0 or done.stdout:
            raise reconcile.ReconcileError(
                f"a hook broke its contract: exit {done.returncode}, stdout {done.stdout!r:.80}"
            )
        return elapsed

    latencies: list[float] = []
    total = sum(len(r) for r in rounds)
    with ThreadPoolExecutor(concurrency) as pool, progress_bar("forks", "fork") as advance:
        for forks in rounds:
            for elapsed in pool.map(one, forks):
                latencies.append(elapsed)
                advance(len(latencies), total)
    return latencies


def _transactions(url: str) -> int:
    """Statements the server committed for the demo database's clients."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from reconcile._store import database_activity

    with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True) as probe:
        return database_activity(probe, conninfo_to_dict(url)["dbname"])[0]


def _report(
    settings: Settings,
    agents: dict[int, tuple[str, str | None]],
    live: dict[int, str],
    latencies: list[float],
    transactions: int,
) -> dict[str, Any]:
    from reconcile._store import connect

    events = list(journal.history(settings.home))
    audited = {e.id for e in events if e.type in (RECONCILED, DIVERGENCE_PRESERVED)}
    with connect(settings) as conn:
        rows = {str(r[0]) for r in conn.execute("SELECT event_id FROM audit_events")}
        stored = dict(conn.execute("SELECT id, claude_session_id FROM executors").fetchall())
    wrong = 0
    for i, session in live.items():
        state, anchor = agents[i]
        expected = anchor if state in TERMINAL and anchor is not None else session
        wrong += stored[f"exec-{i:03d}"] != expected
    verified = reconcile.verify(settings, db=True)
    ms = sorted(t * 1000 for t in latencies)
    forks = len(ms)
    misses = len(events)
    return {
        "forks": forks,
        "hits": forks - misses,
        "misses": misses,
        "pending": sum(e.type == PENDING for e in events),
        "rotations": sum(int(s.rsplit("-", 1)[1]) for s in live.values()),
        "db_transactions": transactions,
        "audit_rows": len(rows),
        "lost": len(audited - rows) + wrong,
        "verified": verified.ok,
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[min(forks - 1, int(forks * 0.99))], 2),
    }
