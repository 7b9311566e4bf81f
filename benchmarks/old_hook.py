"""The earlier design, rebuilt from its description as the baseline of ``python -m benchmarks``.

One JSON file maps ``executor_id -> session_id``. Every hook process loads it whole,
looks the agent up in the database (even when the cache already has the answer), and
on a miss updates the executor and writes the audit row (three round trips in all,
each statement in autocommit), then sets the entry, trims the map to 1,000 entries in
insertion order, and rewrites the file whole (temp file + rename). Concurrent processes
each rewrite the file from what they read: the last rename wins.

Run as a plain script, like a hook: ``python benchmarks/old_hook.py`` with the payload on
stdin, ``OLD_CACHE_FILE``, ``RECONCILE_DATABASE_URL`` and ``RECONCILE_AGENT_ID`` set.
"""

import json
import os
import sys
import tempfile

import psycopg
from psycopg.types.json import Jsonb

MAX_ENTRIES = 1000


def main() -> None:
    payload = json.loads(sys.stdin.buffer.read() or b"{}")
    session_id = payload.get("session_id")
    agent_id = os.environ.get("RECONCILE_AGENT_ID")
    if not isinstance(session_id, str) or not agent_id:
        return
    path = os.environ["OLD_CACHE_FILE"]
    with psycopg.connect(os.environ["RECONCILE_DATABASE_URL"], autocommit=True) as conn:
        row = conn.execute(  # round trip 1, on every fork
            "SELECT current_executor_id FROM agents WHERE id = %s", (agent_id,)
        ).fetchone()
        if row is None or row[0] is None:
            return
        executor = row[0]
        cache = _load(path)
        if cache.get(executor) == session_id:
            return  # a hit, after one database call
        updated = conn.execute(  # round trip 2
            "UPDATE executors e SET claude_session_id = %s, updated_at = now() "
            "FROM executors o WHERE e.id = o.id AND e.id = %s "
            "AND (o.state NOT IN ('done', 'error', 'terminated') OR o.claude_session_id IS NULL) "
            "RETURNING o.claude_session_id",
            (session_id, executor),
        ).fetchone()
        if updated is not None and updated[0] != session_id:
            conn.execute(  # round trip 3
                "INSERT INTO audit_events (entity_type, entity_id, event_type, actor, details) "
                "VALUES ('executor', %s, 'session.reconciled', %s, %s)",
                (
                    executor,
                    agent_id,
                    Jsonb({"old_session_id": updated[0], "new_session_id": session_id}),
                ),
            )
    cache[executor] = session_id  # an existing key keeps its place: insertion order
    while len(cache) > MAX_ENTRIES:
        del cache[next(iter(cache))]
    _save(path, cache)


def _load(path: str) -> dict[str, str]:
    try:
        with open(path) as stream:
            data = json.load(stream)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save(path: str, cache: dict[str, str]) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".cache.", suffix=".tmp")
    with os.fdopen(fd, "w") as stream:
        json.dump(cache, stream)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
