"""Where time decides: fold order by timestamp (not by write or file order), eviction of
the least recently written, archive retention by count and age, stale pending journals.
The clock is frozen (freezegun) so that every instant is chosen by the test."""

from __future__ import annotations

import os
import time
from pathlib import Path

from freezegun import freeze_time

import journal

T0 = "2026-03-01T12:00:00"


def _append_at(home: Path, when: str, key: str, data: dict) -> journal.Record:
    with freeze_time(when), journal.Writer(home, fsync=False) as writer:
        event_id = writer.append(key, data, "t")
    return next(r for r in journal.history(home) if r.id == event_id)


def test_timestamps_come_from_the_frozen_clock(tmp_path):
    # A whole second: freezegun's clock is a float, fractions of it are not exact.
    record = _append_at(tmp_path, "2026-03-01 12:34:56", "k", {"n": 1})
    assert record.ts == "2026-03-01T12:34:56.000000Z"
    assert journal.event_time_us(record.id) == 1772368496000000
    assert record.id.startswith("019ca965-0580-7000-")  # UUIDv7: 48 bits of Unix ms, version 7


def test_the_fold_follows_timestamps_not_write_order(tmp_path):
    late = _append_at(tmp_path, "2026-03-01 12:00:05", "k", {"v": "late"})
    early = _append_at(tmp_path, "2026-03-01 12:00:01", "k", {"v": "early"})  # written after
    assert early.ts < late.ts
    assert journal.load(tmp_path)["k"].data == {"v": "late"}
    assert journal.latest(tmp_path, "k")["data"] == {"v": "late"}
    journal.compact(tmp_path)
    _append_at(tmp_path, "2026-03-01 12:00:03", "k", {"v": "middle"})  # after compaction
    assert journal.load(tmp_path)["k"].data == {"v": "late"}
    assert journal.latest(tmp_path, "k")["data"] == {"v": "late"}
    _append_at(tmp_path, "2026-03-01 12:00:06", "k", {"v": "newest"})
    assert journal.load(tmp_path)["k"].data == {"v": "newest"}
    assert [r.data["v"] for r in journal.history(tmp_path)] == [
        "early",
        "middle",
        "late",
        "newest",
    ]


def test_a_forget_older_than_the_record_does_not_delete_it(tmp_path):
    _append_at(tmp_path, "2026-03-01 12:00:05", "k", {"v": 1})
    with freeze_time("2026-03-01 12:00:01"), journal.Writer(tmp_path, fsync=False) as writer:
        writer.forget("k")
    assert journal.load(tmp_path)["k"].data == {"v": 1}
    with freeze_time("2026-03-01 12:00:09"), journal.Writer(tmp_path, fsync=False) as writer:
        writer.forget("k")
    assert "k" not in journal.load(tmp_path)


def test_same_instant_appends_stay_ordered(tmp_path):
    with freeze_time(T0), journal.Writer(tmp_path, fsync=False) as writer:
        ids = [writer.append("k", {"n": n}, "t") for n in range(50)]
    assert ids == sorted(ids) and len(set(ids)) == 50  # the clock stalled; ids did not
    assert journal.load(tmp_path)["k"].data == {"n": 49}
    records = list(journal.history(tmp_path))
    assert [r.data["n"] for r in records] == list(range(50))
    assert records[0].ts == "2026-03-01T12:00:00.000000Z"


def test_a_clock_stepping_back_keeps_one_writers_ids_increasing(tmp_path):
    with journal.Writer(tmp_path, fsync=False) as writer:
        with freeze_time("2026-03-01 12:00:10"):
            first = writer.append("k", {"n": 1}, "t")
        with freeze_time("2026-03-01 12:00:00"):  # NTP stepped the clock back
            second = writer.append("k", {"n": 2}, "t")
    assert second > first
    assert journal.load(tmp_path)["k"].data == {"n": 2}


def test_eviction_drops_the_least_recently_written_not_the_first_inserted(tmp_path):
    _append_at(tmp_path, "2026-03-01 12:00:09", "a", {"n": 1})  # inserted first, newest
    _append_at(tmp_path, "2026-03-01 12:00:01", "b", {"n": 2})  # oldest
    _append_at(tmp_path, "2026-03-01 12:00:05", "c", {"n": 3})
    report = journal.compact(tmp_path, max_entries=2)
    assert report.evicted == 1 and report.entries == 2
    assert set(journal.load(tmp_path)) == {"a", "c"}
    # A stale record of the evicted key, refolded from a journal, cannot bring it back...
    _append_at(tmp_path, "2026-03-01 12:00:00", "b", {"n": "stale"})
    assert "b" not in journal.load(tmp_path)
    assert journal.latest(tmp_path, "b") is None
    journal.compact(tmp_path, max_entries=2)
    assert set(journal.load(tmp_path)) == {"a", "c"}
    # ...but a newer one does, evicting the now least recent entry.
    _append_at(tmp_path, "2026-03-01 12:00:10", "b", {"n": "fresh"})
    assert journal.latest(tmp_path, "b")["data"] == {"n": "fresh"}
    journal.compact(tmp_path, max_entries=2)
    assert set(journal.load(tmp_path)) == {"a", "b"}


def _archived(home: Path, count: int) -> list[Path]:
    for n in range(count):
        with journal.Writer(home, fsync=False) as writer:
            writer.append(f"k{n}", {"n": n}, "t")
    journal.compact(home, max_entries=1000)
    return sorted((home / "archive").iterdir())


def test_archive_retention_by_count_keeps_the_newest(tmp_path):
    files = _archived(tmp_path, 6)
    with freeze_time(T0):
        now = time.time()
        for age, path in zip([50, 10, 40, 20, 60, 30], files, strict=True):
            os.utime(path, (now - age, now - age))
        report = journal.compact(tmp_path, retention=journal.Retention(max_files=3))
    assert report.archive_pruned == 3
    assert sorted((tmp_path / "archive").iterdir()) == [files[1], files[3], files[5]]
    assert len(journal.load(tmp_path)) == 6  # the snapshot still holds what was pruned


def test_archive_retention_by_age_uses_mtime_against_the_clock(tmp_path):
    files = _archived(tmp_path, 4)
    day = 86400.0
    with freeze_time(T0):
        now = time.time()
        for age, path in zip([3 * day, 1 * day, 2.5 * day, 0], files, strict=True):
            os.utime(path, (now - age, now - age))
        retention = journal.Retention(max_age_s=2 * day)
        report = journal.compact(tmp_path, retention=retention)
    assert report.archive_pruned == 2
    assert sorted((tmp_path / "archive").iterdir()) == [files[1], files[3]]
    # Two days later by the clock alone (no file touched), the rest has aged out too.
    with freeze_time("2026-03-03T12:00:01"):
        assert journal.compact(tmp_path, retention=retention).archive_pruned == 2
    assert list((tmp_path / "archive").iterdir()) == []
    assert len(journal.load(tmp_path)) == 4


def test_an_abandoned_pending_journal_is_removed_only_when_stale(tmp_path):
    pending = tmp_path / "journal" / "123-00ff.jnl.new"
    pending.parent.mkdir(parents=True)
    pending.write_bytes(b"")
    with freeze_time(T0):
        now = time.time()
        os.utime(pending, (now - 30, now - 30))
        journal.compact(tmp_path)
        assert pending.exists()  # 30 s old: maybe a writer about to lock it
        os.utime(pending, (now - 61, now - 61))
        journal.compact(tmp_path)
    assert not pending.exists()


def test_a_floor_from_the_future_hides_nothing_written_after_a_step_back(tmp_path):
    # Written and compacted an hour ahead: the floor is an hour ahead of the real time.
    _append_at(tmp_path, "2026-03-01 13:00:01", "a", {"n": 1})
    _append_at(tmp_path, "2026-03-01 13:00:02", "b", {"n": 2})
    with freeze_time("2026-03-01 13:00:10"):
        assert journal.compact(tmp_path, max_entries=1).evicted == 1
    # The clock steps back an hour: a new key sorts below the floor, and counts.
    _append_at(tmp_path, "2026-03-01 12:00:05", "c", {"n": 3})
    with freeze_time("2026-03-01 12:00:06"):
        assert journal.latest(tmp_path, "c")["data"] == {"n": 3}
        assert journal.load(tmp_path)["c"].data == {"n": 3}
        journal.compact(tmp_path, max_entries=2)  # drops the floor from the future
        assert journal.load(tmp_path)["c"].data == {"n": 3}
    # An old record of the key evicted in the future era comes back only as itself.
    assert journal.latest(tmp_path, "a") is None
    with freeze_time("2026-03-01 14:00:00"):  # the floor in force again is this one's own
        assert journal.latest(tmp_path, "c")["data"] == {"n": 3}
