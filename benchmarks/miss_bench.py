"""The miss path against the earlier handler's, on the same server, in the same run.

A miss costs the new design one connection and one statement (resolve, lock, decide,
update, audit in one transaction), then one journal append. The earlier handler made
three round trips in autocommit: the agent lookup, the executor update, the audit
insert. Both connect afresh per miss, as a hook process does. Timings interleave the
two so that the machine's noise falls on both alike; round trips are counted by the
server (``pg_stat_database.xact_commit``: one per autocommit statement).

    python -m benchmarks.miss_bench [--misses N] [--database-url URL]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import attrs
import psycopg
from psycopg.types.json import Jsonb

import journal
from benchmarks._harness import fresh_database
from reconcile import Settings, configure_logging, database_activity, migrate, observe, settle

DATABASE = "reconcile_miss_bench"


def old_miss(url: str, agent_id: str, session_id: str) -> None:
    """The earlier handler's miss: three statements, each its own transaction."""
    with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
        (executor,) = conn.execute(
            "SELECT current_executor_id FROM agents WHERE id = %s", (agent_id,)
        ).fetchone()
        (old,) = conn.execute(
            "UPDATE executors e SET claude_session_id = %s, updated_at = now() "
            "FROM executors o WHERE e.id = o.id AND e.id = %s RETURNING o.claude_session_id",
            (session_id, executor),
        ).fetchone()
        conn.execute(
            "INSERT INTO audit_events (entity_type, entity_id, event_type, actor, details) "
            "VALUES ('executor', %s, 'session.reconciled', %s, %s)",
            (executor, agent_id, Jsonb({"old_session_id": old, "new_session_id": session_id})),
        )


def prepare(admin_url: str) -> str:
    url = fresh_database(admin_url, DATABASE)
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn, create_tables=True)
        conn.execute("INSERT INTO agents VALUES ('a-new', 'new', 'bench', 'e-new')")
        conn.execute("INSERT INTO agents VALUES ('a-old', 'old', 'bench', 'e-old')")
        conn.execute(
            "INSERT INTO executors (id, agent_id, state) VALUES ('e-new', 'a-new', 'running')"
        )
        conn.execute(
            "INSERT INTO executors (id, agent_id, state) VALUES ('e-old', 'a-old', 'running')"
        )
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--misses", type=int, default=200)
    parser.add_argument("--database-url", default=os.environ.get("RECONCILE_DATABASE_URL"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:  # compactions may run on
        home = Path(tmp)
        admin = args.database_url
        if admin is None:
            from reconcile import _server

            admin = _server.up(home / "server")
        try:
            run(prepare(admin), home, args.misses)
        finally:
            if args.database_url is None:
                _server.remove(home / "server")  # under root, data lives elsewhere


def run(url: str, home: Path, misses: int) -> None:
    durable = Settings.from_env({}, home=home / "fsync", database_url=url)
    relaxed = attrs.evolve(durable, home=home / "nofsync", fsync=False)
    configure_logging(durable)  # logs to the state directory, not to this output
    times: dict[str, list[float]] = {"new": [], "new, no fsync": [], "earlier": []}
    trips: dict[str, int] = {}
    from psycopg.conninfo import make_conninfo

    with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True) as probe:
        for i in range(misses):
            count = i == 0  # round trips: counted on the first miss of each
            for name, call in (
                ("new", lambda s=f"s-{i}": _new(durable, s)),
                ("new, no fsync", lambda s=f"n-{i}": _new(relaxed, s)),
                ("earlier", lambda s=f"s-{i}": old_miss(url, "a-old", s)),
            ):
                before = database_activity(probe, DATABASE)[0] if count else 0
                started = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - started)
                if count:
                    trips[name] = database_activity(probe, DATABASE)[0] - before
    baseline = statistics.median(times["earlier"])
    print(f"{misses} misses each, interleaved, a fresh connection per miss")
    print(f"{'':16}{'median ms':>10}{'p99 ms':>9}{'ratio':>7}{'round trips':>13}")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"{name:16}{median * 1000:>10.2f}{_p99(values) * 1000:>9.2f}"
            f"{median / baseline:>7.2f}{trips[name]:>13}"
        )
    recorded = sum(1 for _ in journal.history(durable.home))
    print(f"journal records (fsync run): {recorded} of {misses}")


def _new(settings: Settings, session_id: str) -> None:
    observation = observe({"RECONCILE_AGENT_ID": "a-new"}, {"session_id": session_id})
    assert not isinstance(observation, str)
    outcome = settle(settings, observation)
    assert outcome.kind == "reconciled", outcome


def _p99(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * 0.99))]


if __name__ == "__main__":
    main()
