"""``reconcile replay --key`` and ``--executor``: lines that cannot match are passed over
without being decoded, yet what is printed, and every cursor, is what the unfiltered
replay prints, filtered (docs/operations.md, "Replay")."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

import journal
from tests.reconcile_helpers import cli

OBSERVED = ("session.observed", "session.pending")
AGENTS = ("agent-name:core/alice", "agent-name:core/al", "agent:7f1c")
EXECUTORS = ("e-1", "e-10", "e-2")


def observation(executor: str | None, agent: str | None, session: str) -> dict:
    identity = {"executor_id": executor, "agent_name": agent, "team": "core"}
    return {"identity": identity, "session_id": session, "hook": "PostToolUse"}


def build(home: Path, seed: int) -> None:
    """Journals written by several writers (some archived by a compaction): executors
    whose ids are substrings of others, agent-keyed observations settled for one executor
    or another, late, or never; then corrupt lines everywhere."""
    rng = random.Random(seed)
    writers = [journal.Writer(home, fsync=False) for _ in range(4)]
    settler = journal.Writer(home, fsync=False)
    for i in range(300):
        w = rng.choice(writers)
        roll = rng.random()
        if roll < 0.5:
            e = rng.choice(EXECUTORS)
            w.append(f"executor:{e}", observation(e, None, f"s-{i}"), rng.choice(OBSERVED))
        elif roll < 0.65:
            e = rng.choice(EXECUTORS)
            data = {"executor_id": e, "old_session_id": "s-0", "new_session_id": f"s-{i}"}
            w.append(f"executor:{e}", data, "session.reconciled")
        else:
            key = rng.choice(AGENTS)
            seen = w.append(key, observation(None, key.rpartition("/")[2], f"s-{i}"), OBSERVED[0])
            fate = rng.random()
            answer = journal.event_id_next_to(seen)
            if fate < 0.6:  # settled: the outcome names an executor
                e = rng.choice(EXECUTORS)
                data = {"executor_id": e, "old_session_id": "s-0", "new_session_id": f"s-{i}"}
                settler.append(key, data, "session.reconciled", event_id=answer)
            elif fate < 0.75:  # the database knows no executor for it
                data = {"identity": {"agent_name": "x"}, "session_id": f"s-{i}"}
                settler.append(key, data, "session.unresolved", event_id=answer)
            # else: never settled
        if i == 150:
            for x in writers:
                x.close()
            journal.compact(home, max_entries=100_000)
            writers = [journal.Writer(home, fsync=False) for _ in range(4)]
        if rng.random() < 0.05:  # a record that mentions an executor in another key's data
            w.append("executor:e-2", {"note": '"executor_id":"e-1"', "key": "executor:e-1"}, "x")
    for x in [*writers, settler]:
        x.close()
    # In the order of their first records, not of their names (a journal's name holds a
    # random nonce): then the same lines are damaged in every run with this seed.
    paths = [*(home / "journal").glob("*.jnl"), *(home / "archive").glob("*.jnl")]
    for path in sorted(paths, key=first_event_id):
        lines = path.read_bytes().splitlines(keepends=True)
        damaged = []
        for line in lines:
            roll = rng.random()
            if roll < 0.06:  # a flipped byte in the record: the checksum fails
                at = 30 + int(rng.random() * (len(line) - 33))  # one draw, whatever the length
                damaged.append(line[:at] + bytes([line[at] ^ 0x04]) + line[at + 1 :])
            elif roll < 0.09:  # another key's bytes: the needle is there, the checksum fails
                damaged.append(line.replace(b"e-10", b"e-1").replace(b"/alice", b"/al"))
            elif roll < 0.1:
                damaged.append(b"not a record at all\n")
                damaged.append(line)
            else:
                damaged.append(line)
        if rng.random() < 0.3:
            damaged.append(b'{"crc":"00000000","rec":{"v":1,"id":"torn')
        path.write_bytes(b"".join(damaged))
        # Written an hour ago: which journals a cursor names depends on how recently
        # they were written (docs/architecture.md); so every run here names the same.
        os.utime(path, (time.time() - 3600, time.time() - 3600))


def first_event_id(path: Path) -> str:
    with path.open("rb") as stream:
        return json.loads(stream.readline())["rec"]["id"]


def executor_of(raw: dict) -> str | None:
    data = raw["data"] or {}
    if "executor_id" in data:
        return data["executor_id"] if isinstance(data["executor_id"], str) else None
    identity = data.get("identity")
    return identity.get("executor_id") if isinstance(identity, dict) else None


def of_executor(every: list[dict], executor: str) -> list[dict]:
    """The oracle: what ``--executor`` prints, from the unfiltered replay."""
    chosen = []
    for n, raw in enumerate(every):
        if executor_of(raw) == executor:
            chosen.append(raw)
        elif raw["type"] in OBSERVED and raw["key"].startswith(("agent:", "agent-name:")):
            following = every[n + 1] if n + 1 < len(every) else None
            if (
                following is not None
                and following["key"] == raw["key"]
                and following["ts"] == raw["ts"]
                and following["type"] not in OBSERVED
                and executor_of(following) == executor
            ):
                chosen.append(raw)
    return chosen


def timeless(cursor: str) -> str:
    """A cursor without its file time (the start of each run's listing, less a margin):
    what two runs over the same files agree on."""
    version, _, rest = cursor.split(".", 2)
    return f"{version}.{rest}"


def before(record: dict) -> str:
    """The position just before ``record`` (where ``--cursor`` with its cursor starts):
    its own cursor with the journal it is in named at the offset where it starts."""
    version, _, rest = record["cursor"].partition(".")  # a cursor without its file time
    return timeless(journal.Cursor.parse(f"{version}.0.{rest}").inclusive().text())


def replay_whole(home: Path, *args: str) -> tuple[list[dict], str]:
    """The records printed and the end cursor, as printed."""
    done = cli("replay", "-o", "json", "--show-cursor", *args, home=home)
    assert done.returncode == 0, done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    [end] = [x for x in done.stderr.decode().splitlines() if x.startswith("-- cursor: ")]
    return printed, end.removeprefix("-- cursor: ")


def replay(home: Path, *args: str) -> tuple[list[dict], str]:
    """The records printed, each cursor without its file time; and the end cursor."""
    printed, end = replay_whole(home, *args)
    for record in printed:
        record["cursor"] = timeless(record["cursor"])
    return printed, timeless(end)


# Seed 21's history ends with an agent-keyed observation never settled.
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6, 21])
def test_filtered_replay_is_the_unfiltered_replay_filtered(tmp_path: Path, seed: int):
    home = tmp_path / "home"
    build(home, seed)
    every, end = replay(home)
    assert {r["key"] for r in every} >= {"executor:e-1", "executor:e-10", *AGENTS}
    settled_agents = of_executor(every, "e-1")
    assert any(r["key"] in AGENTS and r["type"] == "session.observed" for r in settled_agents)
    for key in ("executor:e-1", "executor:e-10", "agent-name:core/al", "executor:e-"):
        printed, cursor = replay(home, "--key", key)
        assert printed == [r for r in every if r["key"] == key], key
        assert cursor == end  # moved past what it hid
    # An agent-keyed observation last of all waits for its outcome: the cursor stays
    # before it, so that a later run prints it with its outcome if that names the executor.
    # Before it is the position its own cursor denotes inclusively (--cursor), not the
    # cursor of the record consumed before it: the same records consumed, another text
    # (it says the observation's event id, and names its journal).
    waiting = every[-1]["type"] in OBSERVED and every[-1]["key"] in AGENTS
    end_by_executor = before(every[-1]) if waiting else end
    for executor in ("e-1", "e-10", "e-"):
        printed, cursor = replay(home, "--executor", executor)
        assert printed == of_executor(every, executor), executor
        assert cursor == end_by_executor
    # Resumed from it, the unfiltered replay prints what it did not consume: the
    # waiting observation, or nothing.
    _, whole = replay_whole(home, "--executor", "e-1")
    rest, _ = replay(home, "--after-cursor", whole)
    assert rest == (every[-1:] if waiting else [])
    # With --key as well, only an observation of that key waits: one of another key is
    # never printed by such a run, and the cursor moves past it as past any other.
    for key in ("agent-name:core/al", "agent:7f1c"):
        both, cursor = replay(home, "--executor", "e-1", "--key", key)
        assert both == [r for r in of_executor(every, "e-1") if r["key"] == key]
        assert cursor == (end_by_executor if every[-1]["key"] == key else end), key
    typed, _ = replay(home, "--executor", "e-1", "--type", "session.observed")
    assert typed == [r for r in of_executor(every, "e-1") if r["type"] == "session.observed"]


def test_a_filtered_replay_resumes_from_its_cursors_exactly(tmp_path: Path):
    """Resumed after each record it printed, a filtered replay prints the rest: the
    cursor of a record is the same whether the records before it were decoded or not."""
    home = tmp_path / "home"
    build(home, 7)
    printed, _ = replay(home, "--executor", "e-10")
    done = cli("replay", "-o", "json", "--executor", "e-10", home=home)
    cursors = [json.loads(line)["cursor"] for line in done.stdout.splitlines()]
    assert len(printed) > 5
    for n in range(0, len(printed), max(1, len(printed) // 6)):
        rest, _ = replay(home, "--executor", "e-10", "--after-cursor", cursors[n])
        assert rest == printed[n + 1 :]


@pytest.mark.parametrize("finished", [True, False], ids=["finished", "being-written"])
@pytest.mark.parametrize("settled_for", ["e-1", "e-2"])
def test_the_cursor_stays_just_before_an_observation_waiting_for_its_outcome(
    tmp_path: Path, finished: bool, settled_for: str
):
    """The history ends with an agent-keyed observation not settled yet, read after a
    record ``--executor e-1`` hides. The end cursor is the position just before the
    observation: the one its own cursor denotes inclusively, which consumed what the
    previous record's cursor did but is not its text. Resumed from it once the outcome
    is written, nothing is lost or printed twice: the observation and its outcome if
    that names e-1, else nothing, and the cursor then moves past both."""
    home = tmp_path / "home"
    agent = "agent-name:core/alice"
    executors, agents, settler = (journal.Writer(home, fsync=False) for _ in range(3))
    executors.append("executor:e-1", observation("e-1", None, "s-1"), "session.observed")
    seen = agents.append(agent, observation(None, "alice", "s-2"), "session.observed")
    data = {"executor_id": "e-1", "old_session_id": "s-1", "new_session_id": "s-2"}
    answer = journal.event_id_next_to(seen)
    settler.append(agent, data, "session.reconciled", event_id=answer)
    executors.append("executor:e-2", observation("e-2", None, "s-3"), "session.observed")
    waiting = agents.append(agent, observation(None, "alice", "s-4"), "session.observed")
    if finished:
        for writer in (executors, agents, settler):
            writer.close()
    for path in (home / "journal").glob("*.jnl"):  # as in build()
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    try:
        every, _ = replay(home)
        assert [r["key"] for r in every] == [
            "executor:e-1",
            agent,
            agent,
            "executor:e-2",
            agent,
        ]
        assert every[-1]["id"] == waiting
        printed, cursor = replay(home, "--executor", "e-1")
        assert printed == every[:3]
        assert cursor == before(every[-1])
        assert cursor != every[-2]["cursor"]  # the same position, in another text
        _, whole = replay_whole(home, "--executor", "e-1")
        as_printed, _ = replay_whole(home)  # the cursors with their file time
        for start in (whole, as_printed[-2]["cursor"]):
            rest, _ = replay(home, "--after-cursor", start)
            assert rest == every[-1:]
        # Still unsettled: a run from it prints nothing and stays where it was.
        again, still = replay(home, "--executor", "e-1", "--after-cursor", whole)
        assert (again, still) == ([], cursor)
        # Now settled, for e-1 or for another executor.
        data = {"executor_id": settled_for, "old_session_id": "s-2", "new_session_id": "s-4"}
        late = journal.Writer(home, fsync=False) if finished else settler
        outcome = late.append(
            agent, data, "session.reconciled", event_id=journal.event_id_next_to(waiting)
        )
        late.close()
        rest, end = replay(home, "--after-cursor", whole)
        assert [r["id"] for r in rest] == [waiting, outcome]
        assert rest[0] == every[-1]  # with its own cursor
        printed, cursor = replay(home, "--executor", "e-1", "--after-cursor", whole)
        assert printed == (rest if settled_for == "e-1" else [])
        assert cursor == end  # past both, printed or hidden
    finally:
        for writer in (executors, agents, settler):
            writer.close()
