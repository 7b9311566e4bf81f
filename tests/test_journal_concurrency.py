"""256 real processes appending at once, alone and with a compactor looping beside them:
after a final compaction every one of the 5,120 appends is in the folded state."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from journal_helpers import drain, fork, reap

import journal

PROCESSES = 256
APPENDS = 20
MAX_ENTRIES = 10_000


def _writer(home: Path, index: int, go: tuple[int, int]) -> None:
    os.close(go[1])
    os.read(go[0], 1)  # every writer starts when the parent closes the pipe: contention
    with journal.Writer(home, fsync=index % 8 == 0) as writer:
        for j in range(APPENDS):
            writer.append(f"w{index}-{j}", {"w": index, "j": j}, "t")


def _compactor(home: Path, stop: Path, out: int) -> None:
    runs = archived = 0
    while not stop.exists():
        report = journal.compact(home, max_entries=MAX_ENTRIES)
        runs += not report.busy
        archived += report.files_archived
    os.write(out, f"{runs} {archived}\n".encode())


@pytest.mark.parametrize("compacting", [False, True], ids=["writers-alone", "with-compactor"])
def test_256_writers_lose_no_append(tmp_path, compacting):
    home, stop = tmp_path / "home", tmp_path / "stop"
    compactor = out_r = None
    if compacting:
        out_r, out_w = os.pipe()
        compactor = fork(lambda: _compactor(home, stop, out_w))
        os.close(out_w)
    go = os.pipe()
    writers = [fork(lambda i=i: _writer(home, i, go)) for i in range(PROCESSES)]
    os.close(go[0])
    os.close(go[1])
    assert reap(writers) == [0] * PROCESSES
    if compactor is not None:
        stop.touch()
        assert reap([compactor]) == [0]
        runs, archived = map(int, drain(out_r).split())
        assert runs >= 1  # it really compacted while writers ran (or right after)
        assert 0 <= archived <= PROCESSES

    report = journal.compact(home, max_entries=MAX_ENTRIES)
    assert not report.busy and report.live_files == 0 and report.evicted == 0
    state = journal.load(home)
    expected = {f"w{i}-{j}" for i in range(PROCESSES) for j in range(APPENDS)}
    assert len(expected) == 5120
    assert set(state) == expected
    assert all(state[f"w{i}-{j}"].data == {"w": i, "j": j} for i, j in [(0, 0), (255, 19)])
    assert state.skipped.total == 0 and state.snapshot_intact
    assert report.entries == 5120
    assert os.listdir(home / "journal") == []  # every finished journal archived
    assert len(os.listdir(home / "archive")) == PROCESSES  # one journal per process
    assert sum(1 for _ in journal.history(home)) == 5120
    assert journal.latest(home, "w128-10")["data"] == {"w": 128, "j": 10}
