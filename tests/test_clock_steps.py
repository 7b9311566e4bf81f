"""Real processes whose wall clock steps: a laptop that slept, NTP stepping the clock.

Each process runs under libfaketime (the ``libfaketime`` package's library, preloaded:
``LD_PRELOAD`` on Linux, ``DYLD_INSERT_LIBRARIES`` on macOS, which the package chooses),
its wall clock offset from the machine's; the monotonic clock is left real
(``DONT_FAKE_MONOTONIC``), so every deadline and timeout still measures real time. Every
test first checks that the offset took (the records carry it), so none passes vacuously.
docs/architecture.md, "Time", states the rules tested here.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import libfaketime
import psycopg
import pytest
from reconcile_helpers import (
    clean_env,
    cli,
    run_hook,
    seed,
    session_of,
    wait_idle,
    wait_settled,
)

import journal
import reconcile
from reconcile import migrate

HOUR_US = 3600 * 1_000_000
DEADLINE_S = 180.0  # generous: a loaded CI machine; a pass takes a second or two


def clock(offset: str | None = None, *, file: Path | None = None) -> dict[str, str]:
    """The environment that runs a process with its wall clock at ``offset`` ("+1h",
    "-1h"), or at what ``file`` says, read again at every clock call, so the test (or the
    process itself) can step it while it runs."""
    _, env = libfaketime.get_reload_information()
    env = {name: str(value) for name, value in env.items()}
    env["DONT_FAKE_MONOTONIC"] = "1"
    if file is not None:
        env["FAKETIME_TIMESTAMP_FILE"] = str(file)
        env["FAKETIME_NO_CACHE"] = "1"
    else:
        env["FAKETIME"] = offset or "+0"
    return env


def now_us() -> int:
    return time.time_ns() // 1000


def snapshot_floor(home: Path) -> list[str] | None:
    """The eviction floor in the snapshot's header (docs/formats.md)."""
    header = json.loads((home / "snapshot").read_bytes().split(b"\n", 1)[0])
    return header["floor"]


@pytest.fixture
def db(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn, create_tables=True)
    return database_url


def test_a_no_executor_answer_from_an_hour_ahead_is_not_trusted_for_an_hour(
    tmp_path: Path, db: str
):
    home = tmp_path / "home"
    identity = {"RECONCILE_AGENT_ID": "nobody", "RECONCILE_NEGATIVE_TTL": "1"}
    # The hook, and the reconciler it starts, run an hour ahead: the database has no
    # executor for this agent, and the answer is journaled with the clock ahead.
    run_hook(home, db, {"session_id": "s"}, **identity, **clock("+1h"))
    wait_settled(home)
    [_, unresolved] = journal.history(home)
    assert unresolved.type == "session.unresolved"
    assert journal.event_time_us(unresolved.id) - now_us() > HOUR_US * 5 // 6  # it took

    # The clock steps back. An answer is trusted for RECONCILE_NEGATIVE_TTL (1 s) at most:
    # the hook asks again within seconds, not once the hour has passed.
    give_up = time.monotonic() + DEADLINE_S
    while sum(r.type == "session.observed" for r in journal.history(home)) == 1:
        assert time.monotonic() < give_up, (
            f"the hook still trusts an answer from {unresolved.ts} after {DEADLINE_S} s "
            "with a 1 s negative TTL"
        )
        run_hook(home, db, {"session_id": "s"}, **identity)
        wait_settled(home)


def test_an_agent_keyed_hit_from_an_hour_ahead_is_revalidated(tmp_path: Path, db: str):
    seed(db, [("a-1", "alice", "core", "e-1")], [("e-1", "a-1", "old", "running")])
    home = tmp_path / "home"
    identity = {"RECONCILE_AGENT_ID": "a-1", "RECONCILE_AGENT_MAX_AGE": "1"}
    run_hook(home, db, {"session_id": "s"}, **identity, **clock("+1h"))
    wait_settled(home)
    assert session_of(db, "e-1") == "s"
    [_, reconciled] = journal.history(home)
    assert journal.event_time_us(reconciled.id) - now_us() > HOUR_US * 5 // 6

    give_up = time.monotonic() + DEADLINE_S
    while len(list(journal.history(home))) == 2:  # until the hook observes again
        assert time.monotonic() < give_up, (
            f"the hook still trusts an agent-keyed hit from {reconciled.ts} after "
            f"{DEADLINE_S} s with a 1 s maximum age"
        )
        run_hook(home, db, {"session_id": "s"}, **identity)
        wait_settled(home)
    assert journal.load(home)["agent:a-1"].type == "session.confirmed"


def test_a_backoff_written_an_hour_ahead_delays_settlement_by_its_cap_at_most(
    tmp_path: Path, db: str
):
    seed(db, [], [("e-1", None, "old", "running")])
    home = tmp_path / "home"
    # An hour ahead, the database refuses: the reconciler records a backoff (doubling
    # from 1 s, capped at RECONCILE_BACKOFF_MAX, 1 s here) in that hour's wall time, and
    # gives up at once (no retry horizon), leaving the observation waiting.
    run_hook(
        home,
        "postgresql://x@127.0.0.1:9/d",
        {"session_id": "s-new"},
        RECONCILE_EXECUTOR_ID="e-1",
        RECONCILE_BACKOFF_MAX="1",
        RECONCILE_RETRY_HORIZON="0",
        **clock("+1h"),
    )
    wait_idle(home)
    record = json.loads((home / "backoff").read_bytes())
    assert record["until"] - time.time() > 3600 * 5 / 6  # it took
    assert reconcile.unsettled(str(home))

    # The clock steps back and the database answers. The record's own cap bounds it from
    # now: the next hook that asks a second or two later starts a reconciler, which
    # settles the row (before: the backoff held for the hour).
    give_up = time.monotonic() + DEADLINE_S
    while session_of(db, "e-1") != "s-new":
        assert time.monotonic() < give_up, (
            f"a backoff written an hour ahead still held after {DEADLINE_S} s, its cap 1 s"
        )
        run_hook(home, db, {"session_id": "s-new"}, RECONCILE_EXECUTOR_ID="e-1")
        time.sleep(0.5)
    wait_settled(home)
    assert journal.latest(home, "executor:e-1")["type"] == "session.reconciled"


def test_records_written_after_a_compaction_an_hour_ahead_are_seen(tmp_path: Path, db: str):
    seed(db, [], [(f"e-{i}", None, "old", "running") for i in range(4)])
    home = tmp_path / "home"
    ahead = clock("+1h")
    for i in range(3):
        run_hook(home, db, {"session_id": f"s-{i}"}, RECONCILE_EXECUTOR_ID=f"e-{i}", **ahead)
    wait_settled(home)
    done = cli("compact", "--max-entries", "1", "--json", home=home, url=db, **ahead)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["evicted"] == 2  # the floor is now an hour ahead
    floor = snapshot_floor(home)
    assert floor is not None and journal.event_time_us(floor[1]) - now_us() > HOUR_US * 5 // 6

    # The clock steps back. A new key's records now sort below that floor; they count.
    run_hook(home, db, {"session_id": "s-3"}, RECONCILE_EXECUTOR_ID="e-3")
    give_up = time.monotonic() + DEADLINE_S
    while session_of(db, "e-3") != "s-3":
        assert time.monotonic() < give_up, (
            f"an observation below a floor from the future was not settled in {DEADLINE_S} s"
        )
        time.sleep(0.05)
    wait_settled(home)
    assert journal.latest(home, "executor:e-3")["type"] == "session.reconciled"

    # A compaction at the right time keeps it, and drops the floor from the future (it
    # evicts nothing: e-2 and e-3 fit the bound).
    done = cli("compact", "--max-entries", "2", "--json", home=home, url=db)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["evicted"] == 0
    assert snapshot_floor(home) is None
    assert journal.latest(home, "executor:e-3")["type"] == "session.reconciled"
    assert journal.load(home)["executor:e-3"].type == "session.reconciled"


# One process: it appends, steps its own clock (through the file libfaketime reads at
# every call), appends again; it prints each id with the wall clock it read.
_STEPPING_WRITER = """
import sys, time
import journal
step, home = sys.argv[1], sys.argv[2]
with journal.Writer(home, fsync=False) as writer:
    for n, offset in enumerate(["+0", "+1h", "-1h", "-1h", "+0"]):
        with open(step, "w") as f:
            f.write(offset + "\\n")
        print(writer.append("k", {"n": n}, "t"), time.time_ns() // 1000, flush=True)
"""


def test_one_process_issues_ordered_ids_across_clock_steps(tmp_path: Path):
    step = tmp_path / "faketime"
    step.write_text("+0\n")
    done = subprocess.run(
        [sys.executable, "-c", _STEPPING_WRITER, str(step), str(tmp_path / "home")],
        env={**clean_env(), **clock(file=step)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    ids, clocks = [r[0] for r in rows], [int(r[1]) for r in rows]
    assert clocks[1] - clocks[0] > HOUR_US * 5 // 6 and clocks[1] - clocks[2] > HOUR_US  # took
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    times = [journal.event_time_us(i) for i in ids]
    assert all(b > a for a, b in itertools.pairwise(times))
    assert journal.load(tmp_path / "home")["k"].data == {"n": 4}  # the last one written
    assert [r.data["n"] for r in journal.history(tmp_path / "home")] == [0, 1, 2, 3, 4]
