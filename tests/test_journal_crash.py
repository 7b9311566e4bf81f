"""Real SIGKILLs at random instants, to writers and to the compactor (docs/architecture.md,
"The compactor": a crash at any instant leaves a state from which the next run loses nothing).

Each trial takes milliseconds: a forked child appends and reports every event id its
append returned on a pipe, or compacts, and is killed after a random short delay, or
kills itself at a chosen step of a compaction. Then ``load``, ``compact``, ``load``:
every reported record is in the history, and the folded state is the latest record per
key of that history. 360 trials in all.
"""

from __future__ import annotations

import os
import posix
import random
import signal
import time
from pathlib import Path

import pytest
from journal_helpers import (
    drain,
    fork,
    history_ids,
    kill,
    latest_per_key,
    reap,
    reported_ids,
)

import journal
import journal._compact

MAX_ENTRIES = 10_000  # no eviction here: every key's latest record must stay


def _appender(home: Path, report: int, fsync: bool, salt: int) -> None:
    writer = journal.Writer(home, fsync=fsync)
    for j in range(100_000):
        key = f"k{(j * 7 + salt) % 23}"
        if j % 11 == 10:
            event_id = writer.forget(key)
        else:
            event_id = writer.append(key, {"j": j, "pad": "x" * (j * 37 % 900)}, "t")
        os.write(report, event_id.encode() + b"\n")  # only once the append returned


def _compacting(home: Path, rounds: int) -> None:
    for _ in range(rounds):
        journal.compact(home, max_entries=MAX_ENTRIES, wait=True)


def _seed(home: Path, rng: random.Random) -> list[str]:
    """Finished journals (their writers closed), some already compacted into a snapshot."""
    ids = []
    for p in range(rng.randint(1, 8)):
        with journal.Writer(home, fsync=False) as writer:
            for j in range(rng.randint(1, 25)):
                key = f"k{rng.randrange(30)}"
                if rng.random() < 0.1:
                    ids.append(writer.forget(key))
                else:
                    ids.append(writer.append(key, {"p": p, "j": j}, "t"))
        if rng.random() < 0.3:
            journal.compact(home, max_entries=MAX_ENTRIES)
    return ids


def _check(home: Path, reported: list[str]) -> None:
    """Nothing whose append returned is lost, before and after a compaction."""
    before = journal.load(home)
    ids = history_ids(home)
    assert set(reported) <= ids
    expected = latest_per_key(home)
    assert {k: r.id for k, r in before.items()} == {k: r.id for k, r in expected.items()}
    report = journal.compact(home, max_entries=MAX_ENTRIES)
    assert not report.busy and report.live_files == 0
    after = journal.load(home)
    assert after.snapshot_intact
    assert history_ids(home) >= ids
    assert {k: r.id for k, r in after.items()} == {k: r.id for k, r in expected.items()}
    for key in ("k0", "k5", "k22"):
        found = journal.latest(home, key)
        assert (found and found["id"]) == (expected[key].id if key in expected else None)
    assert os.listdir(home / "journal") == [] or all(
        n.endswith(".new") for n in os.listdir(home / "journal")
    )


def test_sigkill_writers_at_random_instants(tmp_path):
    """Even trials: killed at a random instant from the start (creating the state
    directory and the journal included). Odd trials: killed at a random instant after a
    random number of appends returned, so that half the kills land mid-stream whatever
    the machine's speed."""
    rng = random.Random(1124)
    appended = []
    for trial in range(120):
        home = tmp_path / f"w{trial}"
        r, w = os.pipe()
        pid = fork(lambda h=home, w=w, t=trial: _appender(h, w, t % 3 == 0, t))
        os.close(w)
        early = _read_lines(r, rng.randint(1, 30)) if trial % 2 else b""
        time.sleep(rng.uniform(0, 0.015))
        assert kill(pid) == -signal.SIGKILL
        reported = reported_ids(early + drain(r))
        _check(home, reported)
        appended.append(len(reported))
    assert sum(n > 0 for n in appended) >= 60


def _read_lines(fd: int, count: int) -> bytes:
    """Read from ``fd`` until ``count`` lines arrived; return what was read."""
    data = b""
    while data.count(b"\n") < count:
        chunk = os.read(fd, 4096)
        assert chunk, "the writer ended before appending"
        data += chunk
    return data


def test_sigkill_writers_and_compactor_together(tmp_path):
    """Two writers and a looping compactor, all killed at independent random instants."""
    rng = random.Random(2026)
    lost_windows = 0
    for trial in range(60):
        home = tmp_path / f"c{trial}"
        _seed(home, rng)
        r, w = os.pipe()
        writers = [
            fork(lambda h=home, w=w, s=s: _appender(h, w, False, s)) for s in (trial, trial + 5)
        ]
        os.close(w)
        compactor = fork(lambda h=home: _compacting(h, 10_000))
        deadlines = sorted((rng.uniform(0, 0.02), pid) for pid in [*writers, compactor])
        t0 = time.monotonic()
        for deadline, pid in deadlines:
            time.sleep(max(0.0, deadline - (time.monotonic() - t0)))
            lost_windows += kill(pid) == -signal.SIGKILL
        reported = reported_ids(drain(r))
        _check(home, reported)
    assert lost_windows == 180  # every kill landed on a process still running


def test_sigkill_compactor_at_random_instants(tmp_path):
    rng = random.Random(77)
    for trial in range(60):
        home = tmp_path / f"k{trial}"
        ids = _seed(home, rng)
        pid = fork(lambda h=home: _compacting(h, 100))
        time.sleep(rng.uniform(0, 0.008))
        kill(pid)
        _check(home, ids)


def _die_at(module: object, name: str, after: int) -> None:
    """Replace ``module.name`` (in this child only) by itself, killed on call ``after``+1.
    For ``os``, its ``posix`` twin too, with one count: the journal calls either."""
    original = getattr(module, name)
    calls = [0]

    def dying(*args: object, **kwargs: object) -> object:
        if calls[0] >= after:
            os.kill(os.getpid(), signal.SIGKILL)
        calls[0] += 1
        return original(*args, **kwargs)

    setattr(module, name, dying)
    if module is os and hasattr(posix, name):
        setattr(posix, name, dying)


def _compact_dying(home: Path, module: object, name: str, after: int) -> None:
    _die_at(module, name, after)
    journal.compact(home, max_entries=MAX_ENTRIES)


STEPS = [
    # the snapshot renamed over the old one, no journal archived yet
    (journal._compact, "_archive", 0),
    # a quarantine file's temp written, not renamed (each trial quarantines one file)
    (os, "replace", 0),
    # the snapshot's temp file written and fsynced, not renamed
    (os, "replace", 1),
    # some journals linked into the archive, not all (the k-th link)
    (os, "link", 1),
    (os, "link", 3),
    # every journal linked into the archive (and archive/ synced), one unlinked from
    # journal/, not the others (calls 0 and 1 remove any stale temp file of the
    # quarantine file and of the snapshot before each is written)
    (os, "unlink", 3),
    # quarantine written, the snapshot not yet
    (journal._compact, "write_snapshot", 0),
    # between archiving and pruning the archive
    (journal._compact, "_prune_archive", 0),
]


@pytest.mark.parametrize(
    ("module", "name", "after"), STEPS, ids=[f"{name}-{after}" for _, name, after in STEPS]
)
def test_sigkill_at_each_step_of_a_compaction(tmp_path, module, name, after):
    rng = random.Random(f"{name}-{after}")
    died = 0
    for trial in range(15):
        home = tmp_path / f"s{trial}"
        ids = _seed(home, rng)
        for n in range(4):  # at least five journals to archive, whatever the seed compacted
            with journal.Writer(home, fsync=False) as writer:
                ids.append(writer.append(f"k{n}", {"n": n, "trial": trial}, "t"))
        (home / "journal" / f"{trial}-torn.jnl").write_bytes(b"garbage\n")  # quarantined
        journals = sorted(os.listdir(home / "journal"))
        pid = fork(lambda h=home: _compact_dying(h, module, name, after))
        code = reap([pid])[0]
        died += code == -signal.SIGKILL
        if name == "_archive" and code == -signal.SIGKILL:
            assert (home / "snapshot").exists()
            assert sorted(os.listdir(home / "journal")) == journals  # none archived yet
        _check(home, ids)
        assert set(journals) <= set(os.listdir(home / "archive"))  # all archived, once
        assert (home / "quarantine" / f"{trial}-torn.jnl.jsonl").exists()
        assert journal.load(home).skipped.json == 0  # the garbage line is archived now
    assert died == 15  # the step was reached every time, and the child died there
