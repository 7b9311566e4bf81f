"""``reconcile show --at T``: the state as of an instant is the fold of ``replay --until
T``, whatever compactions and evictions did in between (docs/operations.md, "State as
of an instant")."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

import journal
from tests.reconcile_helpers import cli


def fold_of_replay(home: Path, at: str) -> dict[str, str]:
    """key -> event id of the latest record up to ``at``, tombstones dropped, folded here
    from what ``replay --until`` prints."""
    done = cli("replay", "--until", at, home=home)
    assert done.returncode == 0, done.stderr
    latest: dict[str, dict] = {}
    for line in done.stdout.splitlines():
        record = json.loads(line)
        held = latest.get(record["key"])
        if held is None or (record["ts"], record["id"]) > (held["ts"], held["id"]):
            latest[record["key"]] = record
    return {key: r["id"] for key, r in latest.items() if r["data"] is not None}


def shown_at(home: Path, at: str) -> dict[str, str]:
    done = cli("show", "--at", at, "--json", home=home)
    assert done.returncode == 0, done.stderr
    return {entry["key"]: entry["event_id"] for entry in json.loads(done.stdout)}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_show_at_is_the_fold_of_replay_until(tmp_path: Path):
    rng = random.Random(int.from_bytes(journal.new_event_id()[-8:].encode(), "big"))
    home = tmp_path / "state"
    instants: list[str] = []  # around each write, compaction and eviction
    keys = [f"executor:e-{i}" for i in range(12)]
    for round_ in range(6):
        with journal.Writer(home, fsync=False) as writer:
            for _ in range(rng.randint(3, 10)):
                key = rng.choice(keys)
                if rng.random() < 0.15:
                    writer.forget(key)
                else:
                    writer.append(key, {"session_id": f"s-{round_}"}, "session.reconciled")
        instants.append(now())
        # A small bound: compactions evict, and archive the journals.
        journal.compact(home, max_entries=rng.randint(2, 6))
        instants.append(now())
    history = [record.ts for record in journal.history(home)]
    candidates = [*instants, *history, "2000-01-01T00:00:00.000000Z", "2999-01-01T00:00:00.000000Z"]
    for at in rng.sample(candidates, min(25, len(candidates))):
        assert shown_at(home, at) == fold_of_replay(home, at), at
