"""``reconcile demo``: the whole design at work, for a newcomer, on state it makes itself.

By default it creates a temporary state directory with an embedded PostgreSQL of its
own, and stops and removes both at the end: the user's state directory and database
(``RECONCILE_HOME``, ``RECONCILE_DATABASE_URL``) are never read or written. With
``--home DIR`` the state stays in DIR to look at afterwards (the server is stopped;
``reconcile --home DIR db up`` restarts it); DIR must be new or empty, so the demo never
mixes its records with anything else.

It seeds agents and executors (every fifth one finished, holding a recovery anchor), runs
real ``reconcile hook`` processes with realistic payloads and session rotations, waits
until every observation is settled (whoever settles it: the hook itself, or a reconciler
it started), compacts, checks journals, cache and database against each other, and prints
one screen saying what ran and what it proves. Forks of one agent run in order (a Claude
Code session makes one tool call at a time), several agents at once, and now and then two
forks of one agent race with the same payload (parallel tool calls).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs

import journal
import reconcile
from cli._commands import UsageError
from cli._output import emit_json, progress_bar, yes_no

TERMINAL = ("done", "error", "terminated")
TEAM = "demo"
ROTATION_RATE = 0.08  # share of forks that see a freshly rotated session id
PARALLEL_RATE = 0.05  # share of tool calls made twice at once
SETTLE_DEADLINE_S = 120.0  # generous: a loaded machine may take its time
# Identity variables a hook reads: the demo sets its own per fork.
_IDENTITY = ("RECONCILE_EXECUTOR", "RECONCILE_AGENT", "RECONCILE_TEAM", "GENIE_")
# The user's RECONCILE_* settings the demo honours: how long to wait for a database,
# which changes how long it may take on a slow machine, never what it shows.
HONOURED = ("RECONCILE_CONNECT_TIMEOUT", "RECONCILE_STATEMENT_TIMEOUT")
RETRY_HORIZON_S = 120  # its reconcilers' (the default is a day)


@attrs.frozen
class Fork:
    agent: int
    session_id: str
    env: dict[str, str]
    payload: bytes


class _Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwind, cleaning up as for Ctrl-C, then exit 128+N."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Signals:
    """SIGTERM and SIGHUP handled as Ctrl-C is (the clean-up runs), but never in the
    middle of the clean-up itself: one arriving then is acted on after it."""

    def __init__(self) -> None:
        self.caught: int | None = None
        self.cleaning = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.caught is None:
            self.caught = signum
            if not self.cleaning:
                raise _Terminated(signum)


def run(args: Any, settings: reconcile.Settings) -> int:
    """The demo; a SIGTERM or SIGHUP (a `timeout`, a cancelled CI job, a closed
    terminal) cleans up as Ctrl-C does, and exits 128 + the signal's number."""
    signals = _Signals()
    previous = {sig: signal.signal(sig, signals) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        home, keep = _home(args.demo_home or args.home)
        try:
            code = _demo(args, settings, home, keep, signals)
        except BaseException:
            if not keep:  # before the server started: nothing else to remove
                shutil.rmtree(home, ignore_errors=True)
            raise
    except _Terminated:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if signals.caught is not None:
        print(f"reconcile: demo stopped by signal {signals.caught}; cleaned up", file=sys.stderr)
        return 128 + signals.caught
    return code


def demo_env(environ: Mapping[str, str], home: Path) -> dict[str, str]:
    """The environment of the demo and its hooks: the user's, without any identity
    variable and without any ``RECONCILE_*`` setting but the database timeouts (the
    demo runs on its own defaults: a user's ``RECONCILE_MAX_ENTRIES=3`` would evict what
    it checks), and with a retry horizon of its own: its reconcilers give up within
    minutes once its server is gone (it is removed at the end, or on a signal)."""
    env = {
        name: value
        for name, value in environ.items()
        if not name.startswith(_IDENTITY)
        and (not name.startswith("RECONCILE_") or name in HONOURED)
    }
    env["RECONCILE_HOME"] = str(home)
    env["RECONCILE_RETRY_HORIZON"] = str(RETRY_HORIZON_S)
    return env


def _demo(
    args: Any, settings: reconcile.Settings, home: Path, keep: bool, signals: _Signals
) -> int:
    say = _narrator(args.json)
    if settings.database_url:
        say("RECONCILE_DATABASE_URL is left alone: the demo uses a database of its own")
    ignored = sorted(n for n in os.environ if n.startswith("RECONCILE_") and n not in HONOURED)
    tuning = [n for n in ignored if n not in ("RECONCILE_HOME", "RECONCILE_DATABASE_URL")]
    if tuning:
        say(f"{', '.join(tuning)} left alone: the demo runs on its own defaults")
    env = demo_env(os.environ, home)
    demo = reconcile.Settings.from_env(env)
    reconcile.configure_logging(demo, verbose=args.verbose)
    try:
        say(f"starting a PostgreSQL of its own in {home / 'pg'}")
        url = reconcile.server_up(home)
        with reconcile.migration_connection(demo) as conn:  # the demo's own database
            reconcile.migrate(conn, create_tables=True)
        with reconcile.connect(demo, application="reconcile-demo") as conn:
            agents = _seed(conn, args.agents)
        rounds, live = _workload(args.agents, args.forks, env)
        say(
            f"{args.agents} agents seeded; running {args.forks} hook processes, "
            f"{args.concurrency} at a time"
        )
        before = _activity(url)
        runs = _run_forks(rounds, args.concurrency)
        replayed = _settle(demo, len(live), say)
        statements, connections = (a - b for a, b in zip(_activity(url), before, strict=True))
        journal.compact(
            home, max_entries=demo.max_entries, wait=True, pinned_types=reconcile.UNSETTLED
        )
        report = _report(demo, agents, live, runs, statements, connections)
    finally:
        signals.cleaning = True  # a signal now waits for the clean-up's end
        if keep:
            reconcile.server_down(home)
        else:  # under root the server's data lives outside home: remove deletes both
            reconcile.server_remove(home)
            shutil.rmtree(home, ignore_errors=True)
    report.update(
        agents=args.agents,
        concurrency=args.concurrency,
        replayed=replayed,
        home=str(home) if keep else None,
        max_entries=demo.max_entries,
    )
    if args.json:
        emit_json(report)
    else:
        _print(report)
    return 0 if report["lost"] == 0 and report["verified"] else 1


def _home(given: str | None) -> tuple[Path, bool]:
    """The demo's state directory, and whether to keep it: a new temporary one, or
    ``given`` if it is new or empty (anything in it would mix with the demo's records)."""
    if given is None:
        return Path(tempfile.mkdtemp(prefix="reconcile-demo-")), False
    home = Path(given).expanduser()
    try:
        entries = os.listdir(home)
    except FileNotFoundError:
        try:
            home.mkdir(mode=0o700)
        except OSError as exc:
            raise UsageError(f"--home {home}: cannot create it ({exc.strerror})") from None
        return home, True
    except OSError as exc:
        raise UsageError(f"--home {home}: {exc.strerror}; give a new or empty directory") from None
    if entries:
        raise UsageError(
            f"--home {home} is not empty; the demo runs only in a new or empty directory, "
            "so that it never mixes with other state"
        )
    return home, True


def _narrator(quiet: bool) -> Any:
    def say(message: str) -> None:
        if not quiet:
            print(f"• {message}", file=sys.stderr)

    return say


def _seed(conn: Any, count: int) -> dict[int, tuple[str, str | None]]:
    """Agents with executors; every fifth one terminal, holding a recovery anchor.
    Returns agent -> (state, stored session id)."""
    seeded: dict[int, tuple[str, str | None]] = {}
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
    agents: int, forks: int, env: dict[str, str]
) -> tuple[list[list[Fork]], dict[int, str]]:
    """Rounds of forks (each agent's steps in order, one step per round; a step is one
    fork, or two racing with the same payload) and each agent's last live session id."""
    rng = random.Random(7)
    generation = dict.fromkeys(range(agents), 0)
    steps: dict[int, list[list[Fork]]] = {i: [] for i in range(agents)}
    weights = [1.0 / (1 + i % 7) for i in range(agents)]  # some agents far busier
    made = 0
    while made < forks:
        i = rng.choices(range(agents), weights)[0]
        if steps[i] and rng.random() < ROTATION_RATE:
            generation[i] += 1  # resume or compaction: a new session id
        fork = _fork(i, f"sess-{i:03d}-{generation[i]}", env, rng)
        step = [fork]
        made += 1
        if made < forks and rng.random() < PARALLEL_RATE:  # a parallel tool call
            step.append(fork)
            made += 1
        steps[i].append(step)
    rounds: list[list[Fork]] = []
    for sequence in steps.values():
        for position, step in enumerate(sequence):
            while len(rounds) <= position:
                rounds.append([])
            rounds[position].extend(step)
    last = {i: sequence[-1][0].session_id for i, sequence in steps.items() if sequence}
    return rounds, last


def _fork(i: int, session_id: str, env: dict[str, str], rng: random.Random) -> Fork:
    env = dict(env)
    payload: dict[str, Any] = {
        "session_id": session_id,
        "transcript_path": f"/home/dev/.claude/projects/demo/{session_id}.jsonl",
        "cwd": f"/work/agent-{i:03d}",
        # the events the default install runs on: a prompt, now and then a session start
        "hook_event_name": rng.choice(["UserPromptSubmit", "UserPromptSubmit", "SessionStart"]),
    }
    if payload["hook_event_name"] == "SessionStart":
        payload["source"] = rng.choice(["startup", "resume", "compact"])
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


def _run_forks(rounds: list[list[Fork]], concurrency: int) -> list[tuple[int, float]]:
    """Run every fork; (pid, seconds from start to exit) of each."""
    command = _hook_command()

    def one(fork: Fork) -> tuple[int, float]:
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=fork.env,
        )
        out, _ = process.communicate(fork.payload)
        elapsed = time.perf_counter() - started
        if process.returncode != 0 or out:
            raise reconcile.ReconcileError(
                f"a hook broke its contract: exit {process.returncode}, stdout {out[:80]!r}"
            )
        return process.pid, elapsed

    runs: list[tuple[int, float]] = []
    total = sum(len(r) for r in rounds)
    with ThreadPoolExecutor(concurrency) as pool, progress_bar("hooks", "hook") as advance:
        for forks in rounds:
            for result in pool.map(one, forks):
                runs.append(result)
                advance(len(runs), total)
    return runs


def _settle(settings: reconcile.Settings, keys: int, say: Any) -> int:
    """Wait until every key's observation is settled and no reconciler runs any more (a
    hook leaves the database work to a detached reconciler, which may linger for more);
    then settle in the foreground, as ``reconcile replay --to-db`` does, whatever is left
    (nothing, unless the database did not answer in time). Returns how many that was."""
    deadline = time.monotonic() + SETTLE_DEADLINE_S
    while time.monotonic() < deadline:
        state = journal.load(settings.home)  # folded once, for both questions
        outbox = reconcile.outbox_status(settings, state)
        settled = len(state) >= keys and not outbox["unsettled"]
        if settled and not outbox["reconciler_running"]:
            return 0
        time.sleep(0.1)
    say("settling what the database did not answer in time (reconcile replay --to-db)")
    return reconcile.replay_to_db(settings).pending


def _activity(url: str) -> tuple[int, int]:
    """(statements, connections) the server counted for the demo database's clients."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True) as probe:
        return reconcile.database_activity(probe, str(conninfo_to_dict(url)["dbname"]))


def _report(
    settings: reconcile.Settings,
    agents: dict[int, tuple[str, str | None]],
    live: dict[int, str],
    runs: list[tuple[int, float]],
    statements: int,
    connections: int,
) -> dict[str, Any]:
    events = list(journal.history(settings.home))
    audited = {
        e.id
        for e in events
        if e.type in (reconcile.RECONCILED, reconcile.DIVERGENCE_PRESERVED)
        and (e.data or {}).get("audited", True) is not False  # a repeated divergence has none
    }
    with reconcile.connect(settings, application="reconcile-demo") as conn:
        rows = {str(r[0]) for r in conn.execute("SELECT event_id FROM audit_events")}
        stored = dict(conn.execute("SELECT id, claude_session_id FROM executors").fetchall())
    wrong = 0
    for i, session in live.items():
        state, anchor = agents[i]
        expected = anchor if state in TERMINAL and anchor is not None else session
        wrong += stored[f"exec-{i:03d}"] != expected
    verified = reconcile.verify(settings, db=True)
    writers = {e.pid for e in events}  # a hook that missed journaled under its own pid
    misses = sum(1 for pid, _ in runs if pid in writers)
    ms = sorted(seconds * 1000 for _, seconds in runs)
    forks = len(ms)

    def count(kind: str) -> int:
        return sum(e.type == kind for e in events)

    return {
        "finished_agents": sum(1 for state, _ in agents.values() if state in TERMINAL),
        "forks": forks,
        "hits": forks - misses,
        "misses": misses,
        "rotations": sum(int(s.rsplit("-", 1)[1]) for s in live.values()),
        "reconciled": count(reconcile.RECONCILED),
        "divergence_preserved": count(reconcile.DIVERGENCE_PRESERVED),
        "confirmed": count(reconcile.CONFIRMED),
        "db_transactions": statements,
        "db_connections": connections,
        "audit_rows": len(rows),
        "lost": len(audited - rows) + wrong,
        "verified": verified.ok,
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[min(forks - 1, int(forks * 0.99))], 2),
    }


def _print(r: dict[str, Any]) -> None:
    """The report on one screen: each figure with what it means."""
    settled = r["reconciled"] + r["divergence_preserved"] + r["confirmed"]
    one_each = r["db_transactions"] == settled
    sections: list[tuple[str, list[tuple[str, Any, str]]]] = [
        (
            "What ran",
            [
                (
                    "agents",
                    r["agents"],
                    f"orchestrator agents, a Claude Code session each ({r['finished_agents']} "
                    "finished)",
                ),
                (
                    "hook runs",
                    r["forks"],
                    f"`reconcile hook` processes, one per prompt or session start (as "
                    f"installed), {r['concurrency']} at a time",
                ),
                ("session changes", r["rotations"], "resumes or compactions: a new session id"),
            ],
        ),
        (
            "What happened",
            [
                ("answered from cache", r["hits"], "hits: no database call, nothing written"),
                ("observed", r["misses"], "misses: a new session id, journaled for the database"),
                ("ids updated", r["reconciled"], "executors.claude_session_id set, audited"),
                (
                    "anchors kept",
                    r["divergence_preserved"],
                    "finished executors' ids kept, audited",
                ),
                ("already right", r["confirmed"], "the database already held the live id"),
                (
                    "database statements",
                    r["db_transactions"],
                    "counted by PostgreSQL: "
                    + ("one per settlement, " if one_each else "")
                    + "none per hit",
                ),
                (
                    "database connections",
                    r["db_connections"],
                    "by the reconcilers the hooks started; the hooks open none",
                ),
                (
                    "hook time, median",
                    f"{r['p50_ms']:.1f} ms",
                    "one hook process, start to exit: never waits for the database",
                ),
                ("hook time, 99th pct", f"{r['p99_ms']:.1f} ms", "the slowest 1%, mostly misses"),
            ],
        ),
        (
            "What it proves",
            [
                ("lost", r["lost"], "updates or audit rows missing in the database"),
                (
                    "verified",
                    yes_no(r["verified"]),
                    "journals, cache and database agree (verify --db)",
                ),
            ],
        ),
    ]
    if r["replayed"]:
        sections[1][1].append(
            ("late answers", r["replayed"], "the database was too slow; settled afterwards")
        )
    label = max(len(name) for _, rows in sections for name, _, _ in rows)
    value = max(len(str(v)) for _, rows in sections for _, v, _ in rows)
    for title, rows in sections:
        print(title)
        for name, figure, meaning in rows:
            print(f"  {name:<{label}}  {figure!s:>{value}}  {meaning}")
        print()
    if r["home"]:
        print(f"Its state is kept in {r['home']} (its PostgreSQL stopped). To look:")
        print(f"  reconcile --home {r['home']} db up; reconcile --home {r['home']} show")
        print(f"To delete its database: reconcile --home {r['home']} db remove --yes")
    else:
        print("Its state directory and database were temporary: gone (--home DIR keeps them).")
    print("The real set-up: README.md, First run.")
