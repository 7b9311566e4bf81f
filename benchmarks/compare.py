"""Old one-JSON-file cache against the journal design: real processes, one PostgreSQL.

Each function measures one thing of issue "benchmarks/ and docs" and returns plain
rows; ``benchmarks/__main__.py`` runs them all, prints them and writes the docs.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import journal
from journal._fold import trim
from reconcile._store import database_activity, migrate

OLD_HOOK = Path(__file__).with_name("old_hook.py")
COMPACT_THRESHOLD = 64  # RECONCILE_COMPACT_THRESHOLD's default


def new_hook() -> list[str]:
    script = Path(sys.executable).with_name("reconcile")
    return [str(script), "hook"] if script.exists() else [sys.executable, "-m", "cli", "hook"]


def old_hook() -> list[str]:
    return [sys.executable, str(OLD_HOOK)]


class Bench:
    """A benchmark run: one server, scratch space, databases made on demand."""

    def __init__(self, admin_url: str, tmp: Path) -> None:
        self.admin_url = admin_url
        self.tmp = tmp
        root = str(Path(__file__).resolve().parent.parent)
        self.base_env = {**os.environ, "PYTHONPATH": root}
        for name in list(self.base_env):
            if name.startswith(("RECONCILE_", "GENIE_")):
                del self.base_env[name]

    def database(self, name: str, agents: int) -> str:
        """A fresh database with ``agents`` agents a-i, each running executor e-i."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {name}")
        url = make_conninfo(self.admin_url, dbname=name)
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn)
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO agents VALUES (%s, %s, 'bench', %s)",
                    [(f"a-{i}", f"agent-{i}", f"e-{i}") for i in range(agents)],
                )
                cur.executemany(
                    "INSERT INTO executors (id, agent_id, state) VALUES (%s, %s, 'running')",
                    [(f"e-{i}", f"a-{i}") for i in range(agents)],
                )
        return url

    def env(self, url: str, home: Path, cache: Path, agent: int) -> dict[str, str]:
        return {
            **self.base_env,
            "RECONCILE_HOME": str(home),
            "RECONCILE_DATABASE_URL": url,
            "RECONCILE_EXECUTOR_ID": f"e-{agent}",  # the new hook's key
            "RECONCILE_AGENT_ID": f"a-{agent}",  # the old hook's lookup
            "OLD_CACHE_FILE": str(cache),
        }

    def start(self, argv: list[str], env: dict[str, str], session: str) -> subprocess.Popen:
        payload = json.dumps({"session_id": session, "hook_event_name": "PreToolUse"})
        with tempfile.TemporaryFile() as stdin:
            stdin.write(payload.encode())
            stdin.seek(0)
            return subprocess.Popen(argv, stdin=stdin, stdout=subprocess.DEVNULL, env=env)

    def run(self, argv: list[str], env: dict[str, str], session: str) -> float:
        started = time.perf_counter()
        if self.start(argv, env, session).wait() != 0:
            raise RuntimeError(f"{argv} failed")
        return time.perf_counter() - started


def lost_entries(bench: Bench, sizes: list[int]) -> list[dict[str, Any]]:
    """N forks at once, each reconciling its own executor: entries left in each cache."""
    rows = []
    for n in sizes:
        row: dict[str, Any] = {"forks": n}
        for design, argv in (("old", old_hook()), ("new", new_hook())):
            url = bench.database(f"bench_lost_{design}_{n}", n)
            home = bench.tmp / f"lost-{design}-{n}"
            home.mkdir()
            cache = home / "cache.json"
            procs = [
                bench.start(argv, bench.env(url, home, cache, i), f"live-{i}") for i in range(n)
            ]
            if any(p.wait() != 0 for p in procs):
                raise RuntimeError(f"a {design} hook failed")
            if design == "old":
                kept = len(json.loads(cache.read_text()))
            else:
                journal.compact(home, wait=True)
                kept = len(journal.load(home))
            with psycopg.connect(url) as conn:
                (rows_ok,) = conn.execute(
                    "SELECT count(*) FROM executors WHERE claude_session_id = 'live-' || "
                    "substr(id, 3)"
                ).fetchone()
            row[f"{design}_lost"] = n - kept
            row[f"{design}_db_rows"] = rows_ok
        rows.append(row)
    return rows


def hit_latency(bench: Bench, runs: int) -> dict[str, list[float]]:
    """Wall time of hit forks, interleaved with ``python -c pass``: milliseconds."""
    url = bench.database("bench_hits", 1)
    home = bench.tmp / "hits"
    home.mkdir()
    env = bench.env(url, home, home / "cache.json", 0)
    bench.run(new_hook(), env, "s-1")  # the misses that fill both caches
    bench.run(old_hook(), env, "s-1")
    times: dict[str, list[float]] = {"python -c pass": [], "new hook": [], "old hook": []}
    for _ in range(runs):
        times["python -c pass"].append(bench.run([sys.executable, "-c", "pass"], env, ""))
        times["new hook"].append(bench.run(new_hook(), env, "s-1"))
        times["old hook"].append(bench.run(old_hook(), env, "s-1"))
    if sum(1 for _ in journal.history(home)) != 1:
        raise RuntimeError("a new-hook fork that should have hit missed")
    return {name: [t * 1000 for t in values] for name, values in times.items()}


def round_trips(bench: Bench, forks: int) -> list[dict[str, Any]]:
    """Statements and connections per hit and per miss, counted by the server."""
    rows = []
    for design, argv in (("old", old_hook()), ("new", new_hook())):
        name = f"bench_trips_{design}"
        url = bench.database(name, 1)
        home = bench.tmp / f"trips-{design}"
        home.mkdir()
        env = bench.env(url, home, home / "cache.json", 0)
        other = make_conninfo(url, dbname="postgres")  # the probe's own queries: elsewhere
        with psycopg.connect(other, autocommit=True) as probe:
            start = database_activity(probe, name)
            for i in range(forks):
                bench.run(argv, env, f"rotated-{i}")  # each a new session id: misses
            misses = database_activity(probe, name)
            for _ in range(forks):
                bench.run(argv, env, f"rotated-{forks - 1}")  # the same one again: hits
            hits = database_activity(probe, name)
        rows.append(
            {
                "design": design,
                "miss_statements": (misses[0] - start[0]) / forks,
                "miss_connections": (misses[1] - start[1]) / forks,
                "hit_statements": (hits[0] - misses[0]) / forks,
                "hit_connections": (hits[1] - misses[1]) / forks,
            }
        )
    return rows


def bytes_per_miss(bench: Bench, sizes: list[int]) -> list[dict[str, Any]]:
    """Bytes one miss writes when the cache holds N entries."""
    url = bench.database("bench_bytes", 1)
    rows = []
    for n in sizes:
        home = bench.tmp / f"bytes-{n}"
        (home / "journal").mkdir(parents=True)
        cache = home / "cache.json"
        others = {f"e-{uuid.uuid4()}": str(uuid.uuid4()) for _ in range(n - 1)}
        cache.write_text(json.dumps(others))
        for key, session in others.items():  # the same N-1 entries, journal side
            writer = journal.Writer(home, fsync=False)
            writer.append(
                f"executor:{key}", {"executor_id": key, "session_id": session}, "session.confirmed"
            )
            writer.close()
        journal.compact(home)
        env = bench.env(url, home, cache, 0)
        session = str(uuid.uuid4())
        bench.run(old_hook(), env, session)
        old = cache.stat().st_size  # the whole file, rewritten
        bench.run(new_hook(), env, session)
        appended = sum(p.stat().st_size for p in (home / "journal").glob("*.jnl"))
        snapshot = (home / "snapshot").stat().st_size
        rows.append(
            {
                "entries": n,
                "old_bytes": old,
                "new_append_bytes": appended,
                "new_snapshot_bytes": snapshot,
                "new_amortized_bytes": appended + snapshot / COMPACT_THRESHOLD,
            }
        )
    return rows


def hit_rate(agents: int, uses: int, max_entries: int, seed: int = 1) -> dict[str, float]:
    """Eviction policies under a skewed workload: a simulation of the policy only.

    ``agents`` agents with Zipf-like popularity make ``uses`` tool uses; each use rotates
    the agent's session with a small probability. Old: a dict in insertion order (an
    updated key keeps its place), trimmed on every miss. New: the journal's own
    ``trim`` (least recently reconciled first), run every ``COMPACT_THRESHOLD`` misses
    as the hooks' background compaction would.
    """
    rng = random.Random(seed)
    weights = [1 / (rank + 1) ** 1.1 for rank in range(agents)]
    picks = rng.choices(range(agents), weights, k=uses)
    session = [0] * agents
    old: dict[int, int] = {}
    new: dict[str, dict[str, Any]] = {}
    hits = {"old": 0, "new": 0}
    misses_since_compaction = 0
    for tick, agent in enumerate(picks):
        if rng.random() < 0.002:
            session[agent] += 1
        live = session[agent]
        if old.get(agent) == live:
            hits["old"] += 1
        else:
            old[agent] = live
            while len(old) > max_entries:
                del old[next(iter(old))]
        entry = new.get(str(agent))
        if entry is not None and entry["data"] == live:
            hits["new"] += 1
        else:
            new[str(agent)] = {"key": str(agent), "ts": f"{tick:012d}", "id": "", "data": live}
            misses_since_compaction += 1
            if misses_since_compaction >= COMPACT_THRESHOLD:
                trim(new, max_entries)
                misses_since_compaction = 0
    return {"old": hits["old"] / uses, "new": hits["new"] / uses}


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
    }


def database_name(url: str) -> str:
    return conninfo_to_dict(url).get("dbname") or "postgres"
