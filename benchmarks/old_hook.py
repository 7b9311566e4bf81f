"""The earlier design, rebuilt from its description as the baseline of ``python -m benchmarks``.

One JSON file maps ``executor_id -> session_id``. Every hook process looks the agent up
in the database (even when the cache already has the answer: round trip 1), loads the
file whole, and on a miss updates the executor (round trip 2) and writes the audit row
(round trip 3), each statement in autocommit as the earlier handler did; then it sets the
entry, trims the map to 1,000 entries in insertion order, and rewrites the file whole
(temp file + rename). Concurrent processes each rewrite the file from what they read:
the last rename wins, and every entry the others added in between is lost.

Run as a plain script, like a hook: ``python benchmarks/old_hook.py`` with the payload on
stdin and ``RECONCILE_EXECUTOR_ID``, ``RECONCILE_DATABASE_URL`` and ``OLD_CACHE_FILE``
(the JSON file) in the environment. Exits 0 on anything but a benchmark setup error.
"""

import json
import os
import sys
import tempfile

import psycopg
from psycopg.types.json import Jsonb

MAX_ENTRIES = 1000

AGENT_SQL = """
SELECT a.id, a.current_executor_id
FROM executors e JOIN agents a ON a.id = e.agent_id
WHERE e.id = %s
"""

# Reads the stored session id (the old value, for the audit row) and updates the row in
# one statement; a terminal executor holding a session id is left alone.
UPDATE_SQL = """
UPDATE executors e SET claude_session_id = %s, updated_at = now()
FROM (SELECT id, claude_session_id FROM executors WHERE id = %s FOR UPDATE) o
WHERE e.id = o.id
  AND (e.state NOT IN ('done', 'error', 'terminated') OR e.claude_session_id IS NULL)
RETURNING o.claude_session_id
"""

AUDIT_SQL = """
INSERT INTO audit_events (entity_type, entity_id, event_type, actor, details)
VALUES ('executor', %s, 'session.reconciled', %s, %s)
"""


def main() -> None:
    payload = json.loads(sys.stdin.buffer.read() or b"{}")
    session_id = payload.get("session_id")
    executor_id = os.environ.get("RECONCILE_EXECUTOR_ID")
    if not isinstance(session_id, str) or not executor_id:
        return
    path = os.environ["OLD_CACHE_FILE"]
    with psycopg.connect(os.environ["RECONCILE_DATABASE_URL"], autocommit=True) as conn:
        agent = conn.execute(AGENT_SQL, (executor_id,)).fetchone()  # on every fork
        if agent is None or agent[1] is None:
            return
        agent_id, executor = agent
        cache = _load(path)
        if cache.get(executor) == session_id:
            return  # a hit, after one database call
        updated = conn.execute(UPDATE_SQL, (session_id, executor)).fetchone()
        if updated is not None and updated[0] != session_id:
            details = {"old_session_id": updated[0], "new_session_id": session_id}
            conn.execute(AUDIT_SQL, (executor, agent_id, Jsonb(details)))
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
