"""history(): every valid record of the archive and the journals, in (ts, id) order,
filtered by since/until, streamed with a handful of files open at a time."""

from __future__ import annotations

import contextlib
import os
import time

from journal_helpers import fork, live_writer, open_fds, raw_line, reap, write_journal

import journal
from journal._hit import decode


def _order(records: list[journal.Record]) -> list[tuple[str, str]]:
    return [(r.ts, r.id) for r in records]


def test_history_merges_archive_finished_and_live_journals_in_order(tmp_path):
    lines = [raw_line(f"k{n % 7}", None if n % 13 == 12 else {"n": n}) for n in range(90)]
    ids = [decode(line[:-1])[0]["id"] for line in lines]
    for f in range(3):  # round robin: every file overlaps every other in time
        write_journal(tmp_path, lines[f:30:3], name=f"a{f}.jnl")
    assert journal.compact(tmp_path).files_archived == 3
    for f in range(3):
        write_journal(tmp_path, lines[30 + f : 90 : 3], name=f"j{f}.jnl")
    with live_writer(tmp_path, keys=["live1", "live2"]):
        records = list(journal.history(tmp_path))
    assert _order(records) == sorted(_order(records))
    assert [r.id for r in records] == [*ids, *(r.id for r in records[90:])]
    assert [r.key for r in records[90:]] == ["live1", "live2"]
    assert sum(r.is_tombstone for r in records) == 6  # tombstones are history too
    assert all(isinstance(r, journal.Record) for r in records)


def test_since_and_until_are_inclusive_timestamps(tmp_path):
    lines = [raw_line("k", {"n": n}) for n in range(40)]
    write_journal(tmp_path, lines[::2], name="1.jnl")
    write_journal(tmp_path, lines[1::2], name="2.jnl")
    everything = list(journal.history(tmp_path))
    ts = [r.ts for r in everything]
    assert len(set(ts)) == 40
    window = list(journal.history(tmp_path, since=ts[10], until=ts[20]))
    assert [r.data["n"] for r in window] == list(range(10, 21))
    assert [r.data["n"] for r in journal.history(tmp_path, since=ts[35])] == list(range(35, 40))
    assert [r.data["n"] for r in journal.history(tmp_path, until=ts[2])] == [0, 1, 2]
    assert list(journal.history(tmp_path, since=ts[5], until=ts[4])) == []
    assert list(journal.history(tmp_path, since="9999")) == []


def test_history_skips_what_is_not_a_valid_record(tmp_path):
    write_journal(tmp_path, [raw_line("a", {"n": 1}), b"junk\n", raw_line("b", {"n": 2})])
    write_journal(tmp_path, b"\xff" * 100, name="2-binary.jnl")
    (tmp_path / "journal" / "3-dir.jnl").mkdir()
    outside = tmp_path.parent / f"{tmp_path.name}-outside.jnl"
    outside.write_bytes(raw_line("planted", {}))
    (tmp_path / "journal" / "4-link.jnl").symlink_to(outside)
    assert [r.key for r in journal.history(tmp_path)] == ["a", "b"]
    assert list(journal.history(tmp_path / "missing")) == []


def test_history_streams_two_thousand_files_with_few_open(tmp_path):
    files = 2000
    for n in range(files):  # in time order, as journals that follow one another are
        lines = [raw_line(f"k{n}", {"n": n, "i": i}) for i in range(3)]
        directory = "archive" if n % 2 else "journal"
        (tmp_path / directory).mkdir(exist_ok=True)
        (tmp_path / directory / f"{n:05d}-{os.urandom(4).hex()}.jnl").write_bytes(b"".join(lines))
    baseline = open_fds()
    most = 0
    count = 0
    previous = ("", "")
    for record in journal.history(tmp_path):
        most = max(most, open_fds())
        assert (record.ts, record.id) > previous
        previous = (record.ts, record.id)
        count += 1
    assert count == 3 * files
    assert most - baseline <= 3, most - baseline
    assert open_fds() == baseline  # nothing left open once done
    # Stopping early closes what was open too.
    stream = journal.history(tmp_path)
    next(stream)
    stream.close()
    assert open_fds() == baseline


def _looping_writer(home, index: int, report: int) -> None:
    """Journal after journal, three appends each, every id reported once it returned."""
    for j in range(30):
        with journal.Writer(home, fsync=False) as writer:
            for n in range(3):
                key = f"w{index}-{j}-{n}"
                event_id = writer.append(key, {"n": n}, "t")
                os.write(report, f"{key} {event_id}\n".encode())


def _looping_compactor(home, stop, report: int) -> None:
    while not stop.exists():
        archived = journal.compact(home, wait=True).files_archived
        os.write(report, b"%d\n" % archived)


def test_readers_under_a_looping_compactor_and_live_writers(tmp_path):
    """history() yields every record appended before the call exactly once, and load()
    holds every one, while journals move to the archive under them (the reading goes on
    until the compactor has archived all 90); latest() answers right or misses. No
    exception, no error."""
    home, stop = tmp_path / "home", tmp_path / "stop"
    acks_r, acks_w = os.pipe()
    writers = [fork(lambda i=i: _looping_writer(home, i, acks_w)) for i in range(3)]
    os.close(acks_w)  # before the compactor is forked: the pipe ends with the writers
    compactions_r, compactions_w = os.pipe()
    compactor = fork(lambda: _looping_compactor(home, stop, compactions_w))
    os.close(compactions_w)
    os.set_blocking(acks_r, False)
    os.set_blocking(compactions_r, False)
    acked: dict[str, str] = {}
    pending = b""
    archived_during = rounds = 0
    deadline = time.monotonic() + 300  # a condition, waited for generously
    while True:
        try:
            while chunk := os.read(acks_r, 1 << 16):
                pending += chunk
            writing = False  # every writer closed its end: all done
        except BlockingIOError:
            writing = True
        *lines, pending = pending.split(b"\n")
        acked.update(line.decode().split() for line in lines)
        history = journal.history(home)
        ids = [record.id for record in history]
        assert len(ids) == len(set(ids)), "a record yielded twice"
        assert set(acked.values()) <= set(ids), "a record appended before the call missed"
        assert history.errors == ()
        state = journal.load(home)
        assert {key: state[key].id for key in acked if key in state} == acked
        assert state.errors == ()
        for key in list(acked)[-3:]:
            found = journal.latest(home, key)
            assert found is None or found["id"] == acked[key]
        rounds += 1
        with contextlib.suppress(BlockingIOError):
            archived_during += sum(map(int, os.read(compactions_r, 1 << 16).split()))
        if not writing and archived_during == 3 * 30:  # every journal moved while we read
            break
        assert time.monotonic() < deadline, f"{archived_during} journals archived in 5 min"
    assert reap(writers) == [0, 0, 0]
    stop.touch()
    assert reap([compactor]) == [0]
    assert len(acked) == 3 * 30 * 3 and rounds >= 1
    journal.compact(home)
    assert {key: r.id for key, r in journal.load(home).items()} == acked
    print(f"{rounds} rounds, {archived_during} journals archived meanwhile")
