"""The Writer's rules (docs/formats.md, docs/architecture.md): one journal per process
created on first append, 0600 files in 0700 directories, unique names, refused records,
live journals and the compaction lock. The conformance class runs with fsync on and off."""

from __future__ import annotations

import fcntl
import math
import os
import posix
import re
import stat
import threading
import time
from pathlib import Path

import pytest
from journal_helpers import drain, fork, live_writer, reap

import journal
import journal._platform
from journal._codec import _uuid7
from journal._hit import MAX_KEY, MAX_LINE


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(params=[True, False], ids=["fsync", "no-fsync"])
def fsync(request, monkeypatch) -> dict[str, int | bool]:
    """The fsync setting, and a count of the data syncs the writer really made."""
    calls = {"fsync": request.param, "syncs": 0}
    original = journal._platform.data_sync

    def counting(fd: int) -> None:
        calls["syncs"] += 1
        original(fd)

    monkeypatch.setattr(journal._platform, "data_sync", counting)  # what the writer calls
    return calls


class TestWriterConformance:
    """Every rule, with fsync on and with it off."""

    def test_nothing_is_created_before_the_first_append(self, tmp_path, fsync):
        home = tmp_path / "home"
        writer = journal.Writer(home, fsync=fsync["fsync"])
        assert writer.path is None and not home.exists()
        with pytest.raises(journal.InvalidRecordError):
            writer.append("", {"n": 1}, "t")
        assert not home.exists()  # a refused record creates nothing either
        event_id = writer.append("k", {"n": 1}, "t")
        assert writer.path is not None and writer.path.parent == home / "journal"
        assert os.listdir(home / "journal") == [writer.path.name]
        assert journal.load(home)["k"].id == event_id
        writer.close()

    def test_modes_are_0600_and_0700_whatever_the_umask(self, tmp_path, fsync):
        home = tmp_path / "home"
        old = os.umask(0)
        try:
            with journal.Writer(home, fsync=fsync["fsync"]) as writer:
                writer.append("k", {"n": 1}, "t")
                path = writer.path
            (home / "journal" / "9-bad.jnl").write_bytes(b"junk\n")
            journal.compact(home)
        finally:
            os.umask(old)
        assert path is not None and _mode(path.parent.parent / "archive" / path.name) == 0o600
        for directory in ("", "journal", "archive", "quarantine", "log"):
            assert _mode(home / directory) == 0o700, directory
        for name in ("snapshot", "compact.lock", "quarantine/9-bad.jnl.jsonl"):
            assert _mode(home / name) == 0o600, name

    def test_journal_name_is_pid_and_nonce(self, tmp_path, fsync):
        names = set()
        for _ in range(20):
            with journal.Writer(tmp_path, fsync=fsync["fsync"]) as writer:
                writer.append("k", {}, "t")
                assert writer.path is not None
                assert re.fullmatch(rf"{os.getpid()}-[0-9a-f]{{16}}\.jnl", writer.path.name)
                names.add(writer.path.name)
        assert len(names) == 20  # same pid, twenty distinct journals
        assert sorted(os.listdir(tmp_path / "journal")) == sorted(names)

    def test_an_existing_name_is_never_reused(self, tmp_path, fsync, monkeypatch):
        monkeypatch.setattr(posix, "urandom", lambda n: b"\x01" * n)  # the same nonce each time
        taken = tmp_path / "journal" / f"{os.getpid()}-{'01' * 8}.jnl.new"
        taken.parent.mkdir(parents=True)
        taken.write_bytes(b"someone else's\n")
        writer = journal.Writer(tmp_path, fsync=fsync["fsync"])
        with pytest.raises(journal.JournalError, match="cannot create a journal"):
            writer.append("k", {"n": 1}, "t")
        assert taken.read_bytes() == b"someone else's\n"  # O_EXCL: not opened, not appended

    def test_records_round_trip_and_syncs_follow_the_setting(self, tmp_path, fsync):
        with journal.Writer(tmp_path, fsync=fsync["fsync"]) as writer:
            ids = [writer.append(f"k{n}", {"n": n, "s": "é"}, "some.type") for n in range(5)]
        assert fsync["syncs"] == (5 if fsync["fsync"] else 0)
        assert ids == sorted(ids) and len(set(ids)) == 5
        state = journal.load(tmp_path)
        record = state["k3"]
        assert (record.id, record.data, record.type, record.pid) == (
            ids[3],
            {"n": 3, "s": "é"},
            "some.type",
            os.getpid(),
        )
        assert record.v == 1 and record.ts == journal._codec.timestamp(ids[3])
        assert journal.latest(tmp_path, "k3") == record.to_dict()

    @pytest.mark.parametrize(
        ("key", "data", "type_", "error"),
        [
            ("", {}, "t", journal.InvalidRecordError),
            ("k" * (MAX_KEY + 1), {}, "t", journal.InvalidRecordError),
            (None, {}, "t", journal.InvalidRecordError),
            ("k", {"s": {1, 2}}, "t", journal.InvalidRecordError),
            ("k", {"x": math.nan}, "t", journal.InvalidRecordError),
            ("k", {"x": math.inf}, "t", journal.InvalidRecordError),
            ("k", {"o": object()}, "t", journal.InvalidRecordError),
            ("k", [1, 2], "t", journal.InvalidRecordError),
            ("k", "text", "t", journal.InvalidRecordError),
            ("k", None, "t", journal.InvalidRecordError),
            ("k", {}, "", journal.InvalidRecordError),
            ("k", {}, "x" * 65, journal.InvalidRecordError),
            ("k", {}, "tab\there", journal.InvalidRecordError),
            ("k", {"pad": "x" * MAX_LINE}, "t", journal.RecordTooLargeError),
        ],
        ids=[
            "empty-key",
            "long-key",
            "key-not-str",
            "set",
            "nan",
            "inf",
            "object",
            "list-data",
            "str-data",
            "none-data",
            "empty-type",
            "long-type",
            "type-not-printable",
            "over-4096-bytes",
        ],
    )
    def test_refused_records(self, tmp_path, fsync, key, data, type_, error):
        writer = journal.Writer(tmp_path, fsync=fsync["fsync"])
        with pytest.raises(error) as raised:
            writer.append(key, data, type_)
        assert isinstance(raised.value, journal.JournalError)
        assert isinstance(raised.value, ValueError)
        assert str(raised.value)  # says what to fix
        assert writer.path is None and not (tmp_path / "journal").exists()
        writer.append("fine", {"n": 1}, "t")  # the writer is still usable
        assert list(journal.load(tmp_path)) == ["fine"]

    def test_limits_are_inclusive(self, tmp_path, fsync):
        with journal.Writer(tmp_path, fsync=fsync["fsync"]) as writer:
            writer.append("k" * MAX_KEY, {}, "t")
            writer.append("x" * 64, {}, "x" * 64)
            size = 0
            pad = 3900
            while True:  # the largest record that fits: exactly MAX_LINE bytes
                try:
                    writer.append("big", {"pad": "x" * pad}, "t")
                    pad += 1
                except journal.RecordTooLargeError:
                    break
            assert writer.path is not None
            size = max(len(line) + 1 for line in writer.path.read_bytes().split(b"\n")[:-1])
        assert size == MAX_LINE
        assert len(journal.load(tmp_path)["big"].data["pad"]) == pad - 1

    def test_forget_removes_the_key(self, tmp_path, fsync):
        with journal.Writer(tmp_path, fsync=fsync["fsync"]) as writer:
            writer.append("gone", {"n": 1}, "t")
            writer.append("kept", {"n": 2}, "t")
            tombstone = writer.forget("gone")
            assert "gone" not in journal.load(tmp_path)
            assert journal.latest(tmp_path, "gone") is None
            journal.compact(tmp_path)
            assert "gone" not in journal.load(tmp_path) and "kept" in journal.load(tmp_path)
            assert journal.latest(tmp_path, "gone") is None
            history = [r for r in journal.history(tmp_path) if r.key == "gone"]
            assert [r.is_tombstone for r in history] == [False, True]
            assert history[-1].id == tombstone and history[-1].type == "forgotten"
            writer.append("gone", {"n": 3}, "t")  # and it can come back, newer
        assert journal.load(tmp_path)["gone"].data == {"n": 3}
        assert journal.latest(tmp_path, "gone")["data"] == {"n": 3}

    def test_a_given_event_id_is_used_and_later_ids_follow_it(self, tmp_path, fsync):
        chosen = journal.new_event_id()
        with journal.Writer(tmp_path, fsync=fsync["fsync"]) as writer:
            assert writer.append("k", {}, "t", event_id=chosen) == chosen
            after = writer.append("k2", {}, "t")
            with pytest.raises(journal.InvalidRecordError):
                writer.append("k3", {}, "t", event_id="not-a-uuid")
        assert after > chosen
        assert journal.load(tmp_path)["k"].id == chosen

    def test_an_id_issued_after_another_follows_it(self, tmp_path, fsync):
        # Ids of events this one answers, stamped by clocks ahead of ours (an hour, a ms).
        hour = _uuid7(time.time_ns() // 1000 + 3600 * 10**6)
        ms = _uuid7(time.time_ns() // 1000 + 1000)
        writer = journal.Writer(tmp_path, fsync=fsync["fsync"])
        for given, after in ((journal.new_event_id(), hour), (None, "not-a-uuid")):
            with pytest.raises(journal.InvalidRecordError):
                writer.append("k", {}, "t", event_id=given, after=after)
        assert not (tmp_path / "journal").exists()  # refused before any file existed
        with writer:
            first = writer.append("k", {}, "t", after=ms)  # a new journal
            second = writer.append("k2", {}, "t", after=hour)  # the open one
            third = writer.append("k3", {}, "t", after=ms)  # never before its own ids
        assert ms < first < hour < second < third
        assert journal.load(tmp_path)["k"].id == first

    def test_a_new_journals_first_id_is_issued_once_the_journal_exists(
        self, tmp_path, fsync, monkeypatch
    ):
        """A compaction evicts nothing issued after it began and folds every journal it
        lists: so the first id of a new journal comes after the journal is in journal/
        (docs/architecture.md, "The compactor"). The real creation, timed from outside."""
        created_us: list[int] = []
        create = journal.Writer._create

        def timed(writer: journal.Writer, pid: int) -> tuple[int, str]:
            fd, path = create(writer, pid)
            assert os.path.exists(path)
            created_us.append(time.time_ns() // 1000)
            return fd, path

        monkeypatch.setattr(journal.Writer, "_create", timed)
        given = journal.new_event_id()
        with journal.Writer(tmp_path, fsync=fsync["fsync"]) as writer:
            first = writer.append("k", {}, "t")
            writer.close()
            second = writer.append("k", {}, "t", after=first)
            writer.close()
            assert writer.append("k", {}, "t", event_id=given) == given  # as given
        assert len(created_us) == 3
        assert journal.event_time_us(first) >= created_us[0]
        assert journal.event_time_us(second) >= created_us[1]
        assert journal.load(tmp_path)["k"].id == second

    def test_close_releases_and_a_later_append_opens_a_new_journal(self, tmp_path, fsync):
        writer = journal.Writer(tmp_path, fsync=fsync["fsync"])
        writer.append("a", {}, "t")
        first = writer.path
        writer.close()
        assert writer.path is None
        writer.append("b", {}, "t")
        assert writer.path is not None and writer.path != first
        report = journal.compact(tmp_path)
        assert (report.files_archived, report.live_files) == (1, 1)
        writer.close()
        assert set(journal.load(tmp_path)) == {"a", "b"}


def test_a_forked_child_appends_to_its_own_new_journal(tmp_path):
    writer = journal.Writer(tmp_path, fsync=False)
    writer.append("parent", {"n": 1}, "t")
    parent_file = writer.path
    r, w = os.pipe()

    def child() -> None:
        assert writer.path is None  # the inherited journal is not the child's
        writer.append("child", {"n": 2}, "t")
        writer.append("child2", {"n": 3}, "t")
        os.write(w, str(writer.path).encode())
        os.close(w)

    pid = fork(child)
    os.close(w)
    assert reap([pid]) == [0]
    child_file = Path(drain(r).decode())
    writer.append("parent2", {"n": 4}, "t")
    assert writer.path == parent_file and child_file != parent_file
    assert child_file.name.startswith(f"{pid}-")
    assert sorted(os.listdir(tmp_path / "journal")) == sorted([parent_file.name, child_file.name])
    assert parent_file.read_bytes().count(b"\n") == 2 and b"child" not in parent_file.read_bytes()
    assert child_file.read_bytes().count(b"\n") == 2 and b"parent" not in child_file.read_bytes()
    # The parent's lock survived the child's exit: its journal is still live.
    report = journal.compact(tmp_path)
    assert (report.live_files, report.files_archived) == (1, 1)
    writer.close()
    assert set(journal.load(tmp_path)) == {"parent", "child", "child2", "parent2"}


def test_a_live_journal_is_folded_but_not_archived(tmp_path):
    with live_writer(tmp_path, keys=["x", "y"]) as (pid, path):
        assert path.name.startswith(f"{pid}-")
        report = journal.compact(tmp_path)
        assert (report.live_files, report.files_archived, report.entries) == (1, 0, 2)
        assert path.exists() and os.listdir(tmp_path / "archive") == []
        assert set(journal.load(tmp_path)) == {"x", "y"}
        assert journal.inventory(tmp_path).live_writers == 1
        report = journal.compact(tmp_path)  # folded again: nothing doubles
        assert report.entries == 2 and report.live_files == 1
    report = journal.compact(tmp_path)
    assert (report.live_files, report.files_archived) == (0, 1)
    assert not path.exists() and (tmp_path / "archive" / path.name).exists()
    assert set(journal.load(tmp_path)) == {"x", "y"}


def test_a_busy_compaction_reports_busy_or_waits(tmp_path):
    journal.Writer(tmp_path, fsync=False).append("k", {"n": 1}, "t")
    journal.compact(tmp_path)  # creates compact.lock
    held_r, held_w = os.pipe()
    release_r, release_w = os.pipe()

    def holder() -> None:
        os.close(release_w)  # or the parent's close would not end the read below
        fd = os.open(tmp_path / "compact.lock", os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(held_w, b"held")
        os.read(release_r, 1)

    pid = fork(holder)
    assert os.read(held_r, 4) == b"held"
    report = journal.compact(tmp_path)
    assert report.busy is True and report.entries == 0 and report.files_folded == 0

    results: list[journal.CompactionReport] = []
    waiting = threading.Thread(target=lambda: results.append(journal.compact(tmp_path, wait=True)))
    waiting.start()
    time.sleep(0.3)
    assert results == [] and waiting.is_alive()  # blocked on the lock
    os.close(release_w)
    waiting.join(10)
    assert reap([pid]) == [0]
    assert len(results) == 1 and results[0].busy is False and results[0].entries == 1
    assert results[0].duration_s >= 0.25  # it waited
    for fd in (held_r, held_w, release_r):
        os.close(fd)


def test_compact_refuses_max_entries_below_one(tmp_path):
    with pytest.raises(ValueError):
        journal.compact(tmp_path, max_entries=0)
