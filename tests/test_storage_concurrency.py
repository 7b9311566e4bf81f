"""Many real processes appending at once, with and without compactions beside them,
and real SIGKILLs at random instants: every append that returned survives."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
from storage_helpers import forked, wait_all

import journal
import journal._compact

PROCESSES = 256
APPENDS = 20


def writer_body(home: Path, index: int) -> None:
    with journal.Writer(home, fsync=False) as writer:
        for j in range(APPENDS):
            writer.append(f"p{index}-{j}", {"p": index, "j": j}, "t")


def compactor_loop(home: Path, stop: Path) -> None:
    while not stop.exists():
        journal.compact(home, max_entries=100_000, wait=True)


@pytest.mark.parametrize("with_compactor", [False, True], ids=["alone", "compacting"])
def test_256_processes_lose_no_append(tmp_path, with_compactor):
    home, stop = tmp_path / "home", tmp_path / "stop"
    compactor = forked(lambda: compactor_loop(home, stop)) if with_compactor else None
    pids = [forked(lambda i=i: writer_body(home, i)) for i in range(PROCESSES)]
    assert wait_all(pids) == [0] * PROCESSES
    if compactor is not None:
        stop.touch()
        assert wait_all([compactor]) == [0]
    report = journal.compact(home, max_entries=100_000, wait=True)
    state = journal.load(home)
    expected = {f"p{i}-{j}" for i in range(PROCESSES) for j in range(APPENDS)}
    assert set(state) == expected
    assert report.entries == len(expected) == 5120
    assert state.skipped.total == 0
    assert sum(1 for _ in journal.history(home)) == 5120
    assert list((home / "journal").iterdir()) == []  # every finished journal archived


def _appender(home: Path, write_fd: int, fsync: bool) -> None:
    writer = journal.Writer(home, fsync=fsync)
    for j in range(10_000):
        event_id = writer.append(f"key-{j % 50}", {"j": j, "pad": "x" * (j % 300)}, "t")
        os.write(write_fd, event_id.encode() + b"\n")  # reported only once append returned


def _reported(read_fd: int) -> list[str]:
    chunks = []
    while chunk := os.read(read_fd, 1 << 16):
        chunks.append(chunk)
    # A report torn by the kill is an append that returned but was not reported whole.
    return [x.decode() for x in b"".join(chunks).split(b"\n") if len(x) == 36]


def _check_nothing_lost(home: Path, ids: list[str]) -> None:
    """Every reported id is in the history, and the cache holds the newest record of each
    key it holds; a key it lacks was evicted: older than everything it kept."""
    newest: dict[str, tuple[str, str]] = {}
    history = set()
    for record in journal.history(home):
        newest[record.key] = (record.ts, record.id)
        history.add(record.id)
    assert set(ids) <= history
    for state in (journal.load(home), _compacted(home)):
        assert {k: r.id for k, r in state.items()} == {k: newest[k][1] for k in state}
        kept = min(((r.ts, r.id) for r in state.values()), default=None)
        for key, order in newest.items():
            assert key in state or (kept is not None and order < kept), key


def _compacted(home: Path) -> journal.State:
    journal.compact(home, max_entries=40, wait=True)
    return journal.load(home)


TRIALS = 120


def test_sigkill_writers_at_random_instants(tmp_path):
    rng = random.Random(20261124)
    for trial in range(TRIALS):
        home = tmp_path / f"h{trial}"
        read_fd, write_fd = os.pipe()
        fsync = trial % 2 == 0
        pid = forked(lambda h=home, w=write_fd, f=fsync: _appender(h, w, f))
        os.close(write_fd)
        time.sleep(rng.uniform(0, 0.02))
        os.kill(pid, signal.SIGKILL)
        wait_all([pid])
        ids = _reported(read_fd)
        os.close(read_fd)
        _check_nothing_lost(home, ids)


def _compactor_body(home: Path) -> None:
    for _ in range(1000):
        journal.compact(home, max_entries=40, wait=True)


def _seed_finished_journals(home: Path, rng: random.Random) -> list[str]:
    ids = []
    for p in range(rng.randint(1, 12)):
        with journal.Writer(home, fsync=False) as writer:
            for j in range(rng.randint(1, 30)):
                ids.append(writer.append(f"k{(p * 7 + j) % 60}", {"p": p, "j": j}, "t"))
    return ids


def test_sigkill_compactor_at_random_instants(tmp_path):
    rng = random.Random(7)
    for trial in range(60):
        home = tmp_path / f"h{trial}"
        ids = _seed_finished_journals(home, rng)
        pid = forked(lambda h=home: _compactor_body(h))
        time.sleep(rng.uniform(0, 0.01))
        os.kill(pid, signal.SIGKILL)
        wait_all([pid])
        _check_nothing_lost(home, ids)


def _die_before_archiving(home: Path) -> None:
    def killed(*_args: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    journal._compact._archive = killed  # the snapshot is renamed; the journals not yet moved
    journal.compact(home, max_entries=40)


def test_sigkill_between_snapshot_rename_and_archiving(tmp_path):
    rng = random.Random(11)
    for trial in range(30):
        home = tmp_path / f"h{trial}"
        ids = _seed_finished_journals(home, rng)
        before = sorted(p.name for p in (home / "journal").iterdir())
        pid = forked(lambda h=home: _die_before_archiving(h))
        assert wait_all([pid]) == [-signal.SIGKILL]
        assert (home / "snapshot").exists()
        assert sorted(p.name for p in (home / "journal").iterdir()) == before  # not archived
        _check_nothing_lost(home, ids)
        assert sorted(p.name for p in (home / "archive").iterdir()) == before


def test_a_child_after_fork_writes_its_own_journal(tmp_path):
    writer = journal.Writer(tmp_path, fsync=False)
    writer.append("parent", {"n": 1}, "t")
    parent_file = writer.path
    pid = forked(lambda: writer.append("child", {"n": 2}, "t"))
    assert wait_all([pid]) == [0]
    writer.append("parent-again", {"n": 3}, "t")
    files = sorted((tmp_path / "journal").iterdir())
    assert len(files) == 2
    assert parent_file is not None and parent_file.read_bytes().count(b"\n") == 2
    child_file = next(f for f in files if f != parent_file)
    assert b'"child"' in child_file.read_bytes() and b"parent" not in child_file.read_bytes()
    writer.close()


def test_a_live_journal_is_folded_but_not_archived(tmp_path):
    writer = journal.Writer(tmp_path, fsync=False)
    writer.append("live", {"n": 1}, "t")
    report = journal.compact(tmp_path)
    assert (report.live_files, report.files_archived, report.entries) == (1, 0, 1)
    assert writer.path is not None and writer.path.exists()
    writer.append("live", {"n": 2}, "t")  # still its writer's file
    writer.close()
    report = journal.compact(tmp_path)
    assert (report.live_files, report.files_archived) == (0, 1)
    assert journal.load(tmp_path)["live"].data == {"n": 2}


def test_busy_compaction_reports_or_waits(tmp_path):
    import fcntl

    journal.Writer(tmp_path).append("k", {}, "t")
    read_fd, write_fd = os.pipe()

    def hold_lock() -> None:
        fd = os.open(tmp_path / "compact.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(write_fd, b"locked")
        time.sleep(0.5)

    pid = forked(hold_lock)
    assert os.read(read_fd, 6) == b"locked"
    assert journal.compact(tmp_path).busy is True
    started = time.monotonic()
    report = journal.compact(tmp_path, wait=True)
    assert report.busy is False and time.monotonic() - started > 0.2
    assert wait_all([pid]) == [0]
