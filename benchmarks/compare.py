"""The one-JSON-file cache (``old_hook.py``) against the journals: the measurements.

Each function measures one figure and returns plain rows (JSON-serialisable), so that
``benchmarks/__main__.py`` can print them, write the docs and draw the charts. Hooks run
as real processes against one PostgreSQL; a fresh database per measurement keeps the
server's counters of one design apart from the other's.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

import journal
from benchmarks._harness import fresh_database, interleaved, machine, percentile, run_child
from journal._codec import Clock, encode
from journal._fold import apply, trim
from reconcile import database_activity, migrate

__all__ = [
    "COMPACT_THRESHOLD",
    "Bench",
    "bytes_per_miss",
    "cold_read",
    "compaction",
    "hit_latency",
    "hit_rate",
    "lost_entries",
    "machine",
    "round_trips",
    "summary",
]

OLD_HOOK = Path(__file__).with_name("old_hook.py")
COMPACT_THRESHOLD = 64  # RECONCILE_COMPACT_THRESHOLD's default
MAX_ENTRIES = 1000  # both designs' cache bound
DESIGNS = ("old", "new")


def hook_argv(design: str) -> list[str]:
    """The command of one hook fork: the installed ``reconcile hook``, or the old script."""
    if design == "old":
        return [sys.executable, str(OLD_HOOK)]
    script = Path(sys.executable).with_name("reconcile")
    return [str(script), "hook"] if script.exists() else [sys.executable, "-m", "cli", "hook"]


class Bench:
    """One run: the server, scratch space, and how to start hook forks."""

    def __init__(self, admin_url: str, tmp: Path) -> None:
        self.admin_url = make_conninfo(admin_url, dbname="postgres")
        self.tmp = tmp
        root = str(Path(__file__).resolve().parent.parent)
        self.base_env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("RECONCILE_", "GENIE_"))
        }
        self.base_env["PYTHONPATH"] = root
        self.counter = StatementCounter(self.admin_url)

    def database(self, name: str, executors: int) -> str:
        """A fresh database: agents a-i, each running executor e-i (no session yet)."""
        url = fresh_database(self.admin_url, name)
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn, create_tables=True)
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO agents VALUES (%s, %s, 'bench', %s)",
                    [(f"a-{i}", f"agent-{i}", f"e-{i}") for i in range(executors)],
                )
                cur.executemany(
                    "INSERT INTO executors (id, agent_id, state) VALUES (%s, %s, 'running')",
                    [(f"e-{i}", f"a-{i}") for i in range(executors)],
                )
        return url

    def env(self, url: str, home: Path, executor: int) -> dict[str, str]:
        """Both designs' environment for executor e-``executor``."""
        return {
            **self.base_env,
            "RECONCILE_HOME": str(home),
            "RECONCILE_DATABASE_URL": url,
            "RECONCILE_EXECUTOR_ID": f"e-{executor}",
            "OLD_CACHE_FILE": str(home / "cache.json"),
        }

    def start(self, design: str, env: dict[str, str], session: str) -> subprocess.Popen[bytes]:
        payload = {"session_id": session, "hook_event_name": "PreToolUse", "tool_name": "Bash"}
        with tempfile.TemporaryFile() as stdin:  # a file, not a pipe: no writer thread
            stdin.write(json.dumps(payload).encode())
            stdin.seek(0)
            return subprocess.Popen(
                hook_argv(design), stdin=stdin, stdout=subprocess.DEVNULL, env=env
            )

    def run(self, design: str, env: dict[str, str], session: str) -> None:
        if self.start(design, env, session).wait() != 0:
            raise RuntimeError(f"the {design} hook failed")


class StatementCounter:
    """Statements the server ran for one database, counted by the server itself.

    With ``pg_stat_statements`` loaded (the dedicated server preloads it): ``sum(calls)``
    for the database. Otherwise (a ``--database-url`` without it): ``pg_stat_database``'s
    ``xact_commit - sessions``, equal in autocommit, where every statement is a
    transaction. The probe connects to ``postgres``, so its own queries are not counted.
    """

    def __init__(self, admin_url: str) -> None:
        self.probe = psycopg.connect(admin_url, autocommit=True)
        try:
            self.probe.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            self.probe.execute("SELECT count(*) FROM pg_stat_statements").fetchone()
            self.method = "pg_stat_statements"
        except psycopg.Error:
            self.method = "pg_stat_database (xact_commit - sessions)"

    def reset(self) -> None:
        if self.method == "pg_stat_statements":
            self.probe.execute("SELECT pg_stat_statements_reset()")

    def read(self, database: str) -> tuple[int, int]:
        """(statements, connections) so far; statements since the last :meth:`reset`."""
        xacts, sessions = database_activity(self.probe, database)  # waits for them to settle
        if self.method != "pg_stat_statements":
            return xacts, sessions
        row = self.probe.execute(
            "SELECT coalesce(sum(s.calls), 0) FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s",
            (database,),
        ).fetchone()
        return int(row[0]) if row else 0, sessions


def settled(home: Path, deadline_s: float = 300.0) -> None:
    """Wait until the new design's background reconciler has settled every observation
    of ``home`` and exited (the hook itself never waits on the database)."""
    import reconcile

    give_up = time.monotonic() + deadline_s
    while time.monotonic() < give_up:
        if not reconcile.reconciler_running(home) and not reconcile.unsettled(str(home)):
            return
        time.sleep(0.05)
    raise RuntimeError(f"observations in {home} still unsettled after {deadline_s} s")


def lost_entries(bench: Bench, sizes: list[int]) -> list[dict[str, Any]]:
    """N forks started at once, each reconciling its own executor: entries each cache
    kept, and the database rows each design left right."""
    rows = []
    for n in sizes:
        row: dict[str, Any] = {"forks": n}
        for design in DESIGNS:
            url = bench.database(f"bench_lost_{design}_{n}", n)
            home = bench.tmp / f"lost-{design}-{n}"
            home.mkdir()
            envs = [bench.env(url, home, i) for i in range(n)]
            procs = [bench.start(design, env, f"live-{i}") for i, env in enumerate(envs)]
            if any(p.wait() != 0 for p in procs):
                raise RuntimeError(f"a {design} hook failed")
            if design == "old":
                kept = len(json.loads((home / "cache.json").read_text()))
            else:  # settled, and after any background compaction the hooks started
                settled(home)
                journal.compact(home, wait=True)
                kept = len(journal.load(home))
            with psycopg.connect(url) as conn:
                right = conn.execute(
                    "SELECT count(*) FROM executors"
                    " WHERE claude_session_id = 'live-' || substr(id, 3)"
                ).fetchone()
            row[f"{design}_lost"] = n - kept
            row[f"{design}_db_rows"] = right[0] if right else 0
        rows.append(row)
    return rows


def hit_latency(bench: Bench, runs: int) -> dict[str, list[float]]:
    """Wall time (ms) of hit forks, interleaved with ``python -c pass``, from ``Popen``
    to exit."""
    url = bench.database("bench_hits", 1)
    home = bench.tmp / "hits"
    home.mkdir()
    env = bench.env(url, home, 0)
    for design in DESIGNS:
        bench.run(design, env, "s-1")  # the misses that fill both caches
    settled(home)
    recorded = sum(1 for _ in journal.history(home))  # the observation and its outcome
    baseline = [sys.executable, "-c", "pass"]
    calls = {
        "python -c pass": lambda: subprocess.run(baseline, env=env, check=True),
        "new hook (hit)": lambda: bench.run("new", env, "s-1"),
        "old hook (hit)": lambda: bench.run("old", env, "s-1"),
    }
    samples = interleaved(calls, runs)
    if sum(1 for _ in journal.history(home)) != recorded:
        raise RuntimeError("a new-hook fork that should have hit missed")
    return {name: [s * 1000 for s in values] for name, values in samples.items()}


def round_trips(bench: Bench, forks: int) -> list[dict[str, Any]]:
    """Statements and connections per miss and per hit, as the server counted them."""
    rows = []
    for design in DESIGNS:
        name = f"bench_trips_{design}"
        url = bench.database(name, 1)
        home = bench.tmp / f"trips-{design}"
        home.mkdir()
        env = bench.env(url, home, 0)
        bench.counter.reset()
        start = bench.counter.read(name)
        for i in range(forks):
            bench.run(design, env, f"rotated-{i}")  # a new session id each time: misses
        if design == "new":
            settled(home)
        misses = bench.counter.read(name)
        for _ in range(forks):
            bench.run(design, env, f"rotated-{forks - 1}")  # the same one again: hits
        hits = bench.counter.read(name)
        rows.append(
            {
                "design": design,
                "miss_statements": (misses[0] - start[0]) / forks,
                "miss_connections": (misses[1] - start[1]) / forks,
                "hit_statements": (hits[0] - misses[0]) / forks,
                "hit_connections": (hits[1] - misses[1]) / forks,
                "method": bench.counter.method,
            }
        )
    return rows


def bytes_per_miss(bench: Bench, sizes: list[int]) -> list[dict[str, Any]]:
    """Bytes one more miss writes once each cache holds N entries.

    Old: the file it rewrites. New: the line it appends to its journal, plus the snapshot
    that a compaction rewrites once per ``COMPACT_THRESHOLD`` journals, shared among
    them (each miss is one fork, one journal). The hook's log line is reported apart.
    """
    url = bench.database("bench_bytes", 1)
    rows = []
    for n in sizes:
        home = bench.tmp / f"bytes-{n}"
        entries = {f"e-{uuid.uuid4()}": str(uuid.uuid4()) for _ in range(n)}
        home.mkdir()
        (home / "cache.json").write_text(json.dumps(entries))
        _write_journal(home, [(f"executor:{e}", {"executor_id": e, "session_id": s})
                              for e, s in entries.items()])  # fmt: skip
        journal.compact(home)  # the same N entries, in the snapshot
        env = bench.env(url, home, 0)
        session = f"grow-{n}"
        bench.run("old", env, session)
        old = (home / "cache.json").stat().st_size
        log_before = _size(home / "log")
        bench.run("new", env, session)
        settled(home)  # the observation, and the reconciler's outcome
        appended = _size(home / "journal")
        log = _size(home / "log") - log_before
        journal.compact(home)  # the snapshot the next compaction writes
        snapshot = (home / "snapshot").stat().st_size
        rows.append(
            {
                "entries": n,
                "old_bytes": old,
                "new_append_bytes": appended,
                "new_snapshot_bytes": snapshot,
                "new_amortized_bytes": appended + snapshot / COMPACT_THRESHOLD,
                "new_log_bytes": log,
            }
        )
    return rows


def cold_read(bench: Bench, journal_counts: list[int], runs: int) -> list[dict[str, Any]]:
    """In-process, interleaved: the old design's whole read (``json.load`` of its
    1,000-entry file) against the hit path's ``journal.latest`` with a 1,000-entry
    snapshot and 0 / 32 / 256 journals (3 records each, for other keys)."""
    home = bench.tmp / "cold"
    home.mkdir()
    entries = {f"e-{uuid.uuid4()}": str(uuid.uuid4()) for _ in range(MAX_ENTRIES)}
    old_file = home / "cache.json"
    old_file.write_text(json.dumps(entries))
    _write_journal(home, [(f"executor:{e}", {"executor_id": e, "session_id": s})
                          for e, s in entries.items()])  # fmt: skip
    journal.compact(home)
    key = f"executor:{next(iter(entries))}"

    def old_read() -> object:
        with open(old_file) as stream:
            return json.load(stream)

    rows, written = [], 0
    for count in journal_counts:
        while written < count:
            _write_journal(home, [(f"executor:other-{written}-{i}", {"session_id": "x"})
                                  for i in range(3)])  # fmt: skip
            written += 1
        if journal.latest(home, key) is None:
            raise RuntimeError("the cold-read key is missing from the cache")
        samples = interleaved(
            {"old": old_read, "new": lambda: journal.latest(home, key)}, runs, warmup=5
        )
        rows.append({"journals": count, **_compare(samples["new"], samples["old"])})
    return rows


# The compactor in a fresh interpreter: its own wall time and peak RSS, nothing of ours.
_COMPACT = """
import sys, time
import journal
started = time.perf_counter()
report = journal.compact(sys.argv[1], max_entries=int(sys.argv[2]))
RESULT = {"seconds": time.perf_counter() - started, "records": report.records}
"""

# The baseline: read the same files and parse each line, no more.
_PARSE = """
import json, os, sys, time
started = time.perf_counter()
directory = os.path.join(sys.argv[1], "journal")
records = 0
for name in os.listdir(directory):
    with open(os.path.join(directory, name), "rb") as stream:
        for line in stream:
            json.loads(line)
            records += 1
RESULT = {"seconds": time.perf_counter() - started, "records": records}
"""

COMPACTION_KEYS = 5000  # distinct keys, recurring: the fold table stays small
RECORDS_PER_JOURNAL = 20


def compaction(bench: Bench, sizes: list[int]) -> list[dict[str, Any]]:
    """``journal.compact`` of N records in finished journals, in a child process: wall
    time and peak RSS, against a child that only reads and parses the same lines."""
    rows = []
    for records in sizes:
        home = bench.tmp / f"compaction-{records}"
        home.mkdir()
        clock = Clock()
        for start in range(0, records, RECORDS_PER_JOURNAL):
            batch = range(start, min(start + RECORDS_PER_JOURNAL, records))
            _write_journal(home, [_recurring(i) for i in batch], clock)
        parsed = run_child(_PARSE, str(home))  # first: the compactor archives the files
        done = run_child(_COMPACT, str(home), str(MAX_ENTRIES))
        if done["result"]["records"] != records:
            raise RuntimeError(f"compaction folded {done['result']['records']} of {records}")
        seconds = done["result"]["seconds"]
        rows.append(
            {
                "records": records,
                "journals": -(-records // RECORDS_PER_JOURNAL),
                "seconds": seconds,
                "records_per_s": records / seconds,
                "peak_rss_mb": done["peak_rss_kb"] / 1024,
                "baseline_seconds": parsed["result"]["seconds"],
                "baseline_rss_mb": parsed["peak_rss_kb"] / 1024,
                "entries": len(journal.load(home)),
            }
        )
    return rows


def _recurring(i: int) -> tuple[str, dict[str, Any]]:
    """Record ``i`` of a compaction backlog: one of ``COMPACTION_KEYS`` executors, each
    seeing a new session id every time it recurs."""
    executor = f"e-{i % COMPACTION_KEYS}"
    return f"executor:{executor}", {"executor_id": executor, "session_id": f"s-{i}"}


def hit_rate(
    *,
    agents: int = 3000,
    uses: int = 200_000,
    rotation: float = 0.002,
    skew: float = 1.1,
    seed: int = 1,
) -> dict[str, Any]:
    """The two eviction policies under a skewed workload: a simulation of the policy only.

    ``agents`` with Zipf-like popularity (weight 1/rank^``skew``) make ``uses`` tool
    uses; each use rotates the agent's session with probability ``rotation``. Old: a dict
    in insertion order (re-assigning a key keeps its place), trimmed to 1,000 on every
    miss. New: every miss is one record folded by the journal's own ``apply``, and every
    ``COMPACT_THRESHOLD`` misses the compactor's own ``trim`` (least recently reconciled
    first), as the hooks' background compaction does. For scale, neither design's:
    least recently *used* (a hit would have to write to keep that order), and unbounded,
    the ceiling, where only first uses and rotations miss.
    """
    rng = random.Random(seed)
    weights = [1 / (rank + 1) ** skew for rank in range(agents)]
    picks = rng.choices(range(agents), weights, k=uses)
    session = [0] * agents
    old: dict[int, int] = {}
    new: dict[str, dict[str, Any]] = {}
    floor = None
    seen: dict[int, int] = {}
    used: OrderedDict[int, int] = OrderedDict()
    hits = {"old": 0, "new": 0, "lru": 0, "unbounded": 0}
    pending = 0
    for tick, agent in enumerate(picks):
        if rng.random() < rotation:
            session[agent] += 1
        live = session[agent]
        hits["unbounded"] += seen.get(agent) == live
        seen[agent] = live
        hits["lru"] += used.get(agent) == live
        used[agent] = live
        used.move_to_end(agent)
        if len(used) > MAX_ENTRIES:
            used.popitem(last=False)
        if old.get(agent) == live:
            hits["old"] += 1
        else:
            old[agent] = live
            while len(old) > MAX_ENTRIES:
                del old[next(iter(old))]
        key = str(agent)
        entry = new.get(key)
        if entry is not None and entry["data"]["session"] == live:
            hits["new"] += 1
        else:
            apply(
                new, {"key": key, "ts": f"{tick:012d}", "id": "", "data": {"session": live}}, floor
            )
            pending += 1
            if pending >= COMPACT_THRESHOLD:
                _, floor = trim(new, MAX_ENTRIES, floor)
                pending = 0
    return {
        "agents": agents,
        "uses": uses,
        "rotation": rotation,
        "skew": skew,
        **{name: count / uses for name, count in hits.items()},
    }


def summary(values: list[float]) -> dict[str, float]:
    """p50 and p99 (nearest rank) of a sample."""
    return {"p50": percentile(values, 50), "p99": percentile(values, 99)}


def _compare(candidate: list[float], baseline: list[float]) -> dict[str, float]:
    new, old = summary(candidate), summary(baseline)
    return {
        "new_p50_us": new["p50"] * 1e6,
        "new_p99_us": new["p99"] * 1e6,
        "old_p50_us": old["p50"] * 1e6,
        "old_p99_us": old["p99"] * 1e6,
        "ratio": new["p50"] / old["p50"],
    }


def _write_journal(
    home: Path, records: list[tuple[str, dict[str, Any]]], clock: Clock | None = None
) -> None:
    """One finished journal, as a hook that exited leaves it: ``<pid>-<16 hex>.jnl``."""
    clock = clock or Clock()
    directory = home / "journal"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    pid = random.randrange(1 << 22)
    lines = [
        encode(event_id=clock.next(), pid=pid, type="session.confirmed", key=key, data=data)
        for key, data in records
    ]
    path = directory / f"{pid}-{os.urandom(8).hex()}.jnl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as stream:
        stream.write(b"".join(lines))


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*") if p.is_file())
