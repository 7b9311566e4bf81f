"""What ``reconcile db migrate`` costs an orchestrator writing to a large ``audit_events``.

Two databases with the same rows (the orchestrator's shape, no ``event_id`` yet), the
same writers on each: one inserting an audit row per transaction as fast as it can, one
keeping its transactions open 1.5 s whenever a migration lock request waits (a busy
writer). On one, the migration this tool ships (lock timeout 100 ms with retries,
unique index built concurrently); on the other, the naive one it replaced (one
transaction: ``ALTER TABLE`` + ``CREATE UNIQUE INDEX``, waiting as long as it takes).
Printed: the fast writer's insert latency before and during each (ratios to the
baseline measured in the same run) and the longest lock wait the server showed for it
(sampled from ``pg_locks.waitstart``).

    python -m benchmarks.migrate_bench [--rows N] [--database-url ADMIN_URL]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

import reconcile
from benchmarks._harness import fresh_database, percentile

SCHEMA = """
CREATE TABLE agents (id text PRIMARY KEY, custom_name text, team text,
                     current_executor_id text, started_at timestamptz NOT NULL);
CREATE TABLE executors (id text PRIMARY KEY, agent_id text NOT NULL, claude_session_id text,
                        state text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE audit_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, entity_type text NOT NULL,
    entity_id text NOT NULL, event_type text NOT NULL, actor text,
    details jsonb DEFAULT '{}', created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX idx_audit_entity ON audit_events (entity_type, entity_id);
"""
LOAD = """
INSERT INTO audit_events (entity_type, entity_id, event_type, actor, details)
SELECT 'executor', 'e-' || (g %% 5000), 'state.changed', 'orchestrator',
       jsonb_build_object('n', g)
FROM generate_series(1, %s) AS g
"""
INSERT = (
    "INSERT INTO audit_events (entity_type, entity_id, event_type, actor) "
    "VALUES ('executor', 'e-live', 'state.changed', 'orchestrator')"
)
NAIVE = """
BEGIN;
SET LOCAL lock_timeout = 0;
ALTER TABLE audit_events ADD COLUMN event_id uuid;
CREATE UNIQUE INDEX audit_events_event_id ON audit_events (event_id);
COMMIT;
"""
WAITING = """
SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE NOT l.granted AND a.application_name = 'migration'
"""


class Writers:
    """The fast writer, the busy one, and a sampler of the fast one's lock waits."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies_s: list[tuple[float, float]] = []  # (start, duration)
        self.max_wait_s = 0.0
        self.stop = threading.Event()
        self.pid = 0
        self.ready = threading.Event()
        self.threads = [
            threading.Thread(target=target, daemon=True)
            for target in (self._fast, self._busy, self._sample)
        ]

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        self.ready.wait(60)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _fast(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            self.pid = conn.info.backend_pid
            self.ready.set()
            while not self.stop.is_set():
                started = time.perf_counter()
                conn.execute(INSERT)
                self.latencies_s.append((started, time.perf_counter() - started))

    def _busy(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                with conn.transaction():
                    conn.execute(INSERT)
                    begun = time.monotonic()
                    while not self.stop.is_set() and time.monotonic() - begun < 1.5:
                        if conn.execute(WAITING).fetchone()[0]:  # type: ignore[index]
                            time.sleep(1.5)
                            break
                        time.sleep(0.01)
                self.stop.wait(1.0)

    def _sample(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            self.ready.wait(60)
            while not self.stop.is_set():
                row = conn.execute(
                    "SELECT COALESCE(max(extract(epoch FROM clock_timestamp() - waitstart)), 0)"
                    " FROM pg_locks WHERE pid = %s AND NOT granted",
                    (self.pid,),
                ).fetchone()
                self.max_wait_s = max(self.max_wait_s, float(row[0]) if row else 0.0)
                time.sleep(0.005)

    def between(self, start: float, end: float) -> list[float]:
        return [d for s, d in self.latencies_s if start <= s <= end]


def database(admin: str, name: str, rows: int) -> str:
    url = fresh_database(admin, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute(LOAD, (rows,))
        conn.execute("VACUUM ANALYZE audit_events")
    return url


def measure(url: str, migration: str) -> dict[str, float]:
    with Writers(url) as writers:
        time.sleep(3.0)  # the baseline: the same writers, no migration
        started = time.perf_counter()
        with psycopg.connect(url, autocommit=True, application_name="migration") as conn:
            if migration == "naive":
                conn.execute(NAIVE)
            else:
                reconcile.migrate(conn)
        ended = time.perf_counter()
        time.sleep(0.5)
    before = writers.between(0, started)
    during = writers.between(started, ended)
    return {
        "migration_s": ended - started,
        "baseline_p50_ms": percentile(before, 50) * 1000,
        "during_p50_ms": percentile(during, 50) * 1000,
        "during_max_ms": max(during) * 1000,
        "max_ratio": max(during) / percentile(before, 50),
        "lock_wait_max_ms": writers.max_wait_s * 1000,
        "inserts_during": len(during),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--database-url", help="an admin URL (default: a server of its own)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        admin = args.database_url
        if admin is None:
            from reconcile import _server

            admin = make_conninfo(_server.up(Path(tmp) / "server"), dbname="postgres")
        try:
            results = {
                name: measure(database(admin, f"reconcile_migrate_{name}", args.rows), name)
                for name in ("naive", "shipped")
            }
        finally:
            if args.database_url is None:
                _server.remove(Path(tmp) / "server")  # under root, data lives elsewhere
    print(f"audit_events of {args.rows:,} rows, a fast and a busy writer inserting meanwhile")
    columns = list(results["shipped"])
    print(f"{'':10}" + "".join(f"{c:>18}" for c in columns))
    for name, found in results.items():
        print(f"{name:10}" + "".join(f"{found[c]:>18.2f}" for c in columns))


if __name__ == "__main__":
    main()
