"""The Writer's rules, time-ordered folding and retention (freezegun), history streaming,
and one conformance class run against every storage configuration."""

from __future__ import annotations

import math
import os
import time

import pytest
from freezegun import freeze_time
from storage_helpers import journal_file, line

import journal


@pytest.mark.parametrize(
    ("key", "data", "type", "error"),
    [
        ("", {}, "t", "non-empty"),
        (None, {}, "t", "non-empty"),
        ("k" * 513, {}, "t", "limit is 512"),
        ("k", {"s": {1, 2}}, "t", "JSON-serialisable"),
        ("k", {"x": math.nan}, "t", "JSON-serialisable"),
        ("k", [1, 2], "t", "JSON object"),
        ("k", "text", "t", "JSON object"),
        ("k", None, "t", "forget()"),
        ("k", {}, "", "printable"),
        ("k", {}, "bad\ntype", "printable"),
        ("k", {"blob": "x" * 5000}, "t", "limit is 4096"),
    ],
)
def test_append_rejects_what_cannot_be_stored(tmp_path, key, data, type, error):
    writer = journal.Writer(tmp_path)
    with pytest.raises(journal.InvalidRecordError, match=error):
        writer.append(key, data, type)
    assert writer.path is None and not (tmp_path / "journal").exists()  # nothing created


def test_too_large_is_its_own_error(tmp_path):
    with pytest.raises(journal.RecordTooLargeError):
        journal.Writer(tmp_path).append("k", {"blob": "x" * 4100}, "t")


def test_the_file_appears_on_first_append_with_a_pid_and_nonce_name(tmp_path):
    writer = journal.Writer(tmp_path)
    assert writer.path is None and not tmp_path.joinpath("journal").exists()
    event_id = writer.append("k", {"n": 1}, "t")
    assert writer.path is not None
    pid, nonce = writer.path.stem.split("-")
    assert int(pid) == os.getpid() and len(nonce) == 16
    other = journal.Writer(tmp_path)
    other.append("k2", {}, "t")
    assert other.path != writer.path  # same pid, never the same file
    assert journal.load(tmp_path)["k"].id == event_id
    writer.close()
    other.close()


def test_event_ids_are_uuid7_ordered_and_carry_the_timestamp(tmp_path):
    with journal.Writer(tmp_path, fsync=False) as writer:
        ids = [writer.append(f"k{i}", {}, "t") for i in range(200)]
    assert ids == sorted(ids) and len(set(ids)) == 200
    assert all(i[14] == "7" and i[19] in "89ab" for i in ids)
    records = list(journal.history(tmp_path))
    assert [r.id for r in records] == ids
    assert all(abs(journal.event_time_us(r.id) / 1e6 - time.time()) < 60 for r in records)


def test_forget_removes_the_key_everywhere(tmp_path):
    stale = line("k", {"n": 0})  # encoded now: older than the tombstone below
    with journal.Writer(tmp_path) as writer:
        writer.append("k", {"n": 1}, "t")
        writer.forget("k", type="cache.forgotten")
    assert "k" not in journal.load(tmp_path) and journal.latest(tmp_path, "k") is None
    journal.compact(tmp_path)
    assert "k" not in journal.load(tmp_path)
    # An older record folded again (a crash before archiving) cannot bring it back.
    journal_file(tmp_path, [stale])
    assert "k" not in journal.load(tmp_path)
    assert journal.compact(tmp_path).entries == 0


def test_records_fold_by_timestamp_not_by_file_or_arrival(tmp_path):
    with freeze_time("2031-01-01 12:00:00"):
        late = journal.Writer(tmp_path, fsync=False)
        late.append("k", {"v": "late"}, "t")
    with freeze_time("2030-01-01 12:00:00"):
        early = journal.Writer(tmp_path, fsync=False)
        early.append("k", {"v": "early"}, "t")  # written second, happened first
    assert journal.load(tmp_path)["k"].data == {"v": "late"}
    assert [r.data["v"] for r in journal.history(tmp_path)] == ["early", "late"]
    since = list(journal.history(tmp_path, since="2030-06-01T00:00:00.000000Z"))
    assert [r.data["v"] for r in since] == ["late"]
    until = list(journal.history(tmp_path, until="2030-06-01T00:00:00.000000Z"))
    assert [r.data["v"] for r in until] == ["early"]
    late.close()
    early.close()


def test_eviction_drops_the_least_recently_written(tmp_path):
    for day, key in enumerate(["a", "b", "c", "d"], start=1):
        with freeze_time(f"2032-01-0{day} 00:00:00"), journal.Writer(tmp_path) as writer:
            writer.append(key, {"day": day}, "t")
    with freeze_time("2032-01-05 00:00:00"), journal.Writer(tmp_path) as writer:
        writer.append("a", {"day": 5}, "t")  # a is the most recent again
    report = journal.compact(tmp_path, max_entries=2)
    assert report.evicted == 2
    assert set(journal.load(tmp_path)) == {"a", "d"}  # not insertion order: b, c went


def test_archive_retention_by_count_and_age(tmp_path):
    for i in range(6):
        journal_file(tmp_path, [line(f"k{i}", {})], name=f"{i}-{i:016x}.jnl")
    journal.compact(tmp_path)
    archived = sorted((tmp_path / "archive").iterdir())
    assert len(archived) == 6
    now = time.time()
    for age_days, path in zip([40, 35, 1, 1, 1, 1], archived, strict=True):
        os.utime(path, (now - age_days * 86400,) * 2)
    with freeze_time(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now))):
        report = journal.compact(tmp_path, retention=journal.Retention(max_files=3))
    assert report.archive_pruned == 3  # two too old, one more over the count
    assert len(list((tmp_path / "archive").iterdir())) == 3


def test_history_streams_with_few_files_open(tmp_path):
    for i in range(2000):
        journal_file(tmp_path, [line(f"k{i}", {"i": i})], name=f"{i}-{i:016x}.jnl")
    journal.compact(tmp_path, max_entries=10)
    open_fds = []
    count = 0
    for record in journal.history(tmp_path):
        count += 1
        if count % 250 == 0:
            open_fds.append(len(os.listdir("/proc/self/fd")))
            assert record.key == f"k{count - 1}"
    assert count == 2000
    baseline = len(os.listdir("/proc/self/fd"))
    assert max(open_fds) <= baseline + 3


CONFIGURATIONS = [
    pytest.param({"fsync": True, "retention": None}, id="fsync-archive"),
    pytest.param({"fsync": False, "retention": None}, id="nofsync-archive"),
    pytest.param(
        {"fsync": True, "retention": journal.Retention(max_files=0)}, id="fsync-noarchive"
    ),
    pytest.param(
        {"fsync": False, "retention": journal.Retention(max_files=0)}, id="nofsync-noarchive"
    ),
]


@pytest.mark.parametrize("config", CONFIGURATIONS)
class TestStorageConformance:
    """The storage contract, whatever the configuration."""

    def test_latest_record_per_key_survives_compaction(self, tmp_path, config):
        with journal.Writer(tmp_path, fsync=config["fsync"]) as writer:
            for i in range(30):
                writer.append(f"k{i % 7}", {"i": i}, "t")
        before = {k: r.id for k, r in journal.load(tmp_path).items()}
        journal.compact(tmp_path, retention=config["retention"])
        after = {k: r.id for k, r in journal.load(tmp_path).items()}
        assert before == after and len(after) == 7
        assert journal.latest(tmp_path, "k6")["data"] == {"i": 27}

    def test_compaction_is_idempotent(self, tmp_path, config):
        with journal.Writer(tmp_path, fsync=config["fsync"]) as writer:
            writer.append("a", {"n": 1}, "t")
        first = journal.compact(tmp_path, retention=config["retention"])
        snapshot = (tmp_path / "snapshot").read_bytes()
        second = journal.compact(tmp_path, retention=config["retention"])
        assert (first.entries, second.entries) == (1, 1)
        assert (tmp_path / "snapshot").read_bytes().split(b"\n", 1)[1] == snapshot.split(b"\n", 1)[
            1
        ]

    def test_forget_then_compact(self, tmp_path, config):
        with journal.Writer(tmp_path, fsync=config["fsync"]) as writer:
            writer.append("a", {"n": 1}, "t")
            writer.append("b", {"n": 2}, "t")
            writer.forget("a")
        journal.compact(tmp_path, retention=config["retention"])
        assert set(journal.load(tmp_path)) == {"b"}


def test_an_evicted_key_is_not_resurrected_by_an_older_record(tmp_path):
    stale = line("k", {"v": "stale"})  # older than everything below
    with journal.Writer(tmp_path) as writer:
        writer.append("k", {"v": "current"}, "t")
        writer.append("other", {"v": 1}, "t")
    report = journal.compact(tmp_path, max_entries=1)
    assert report.evicted == 1 and set(journal.load(tmp_path)) == {"other"}
    # The stale record comes back in a journal (folded again after a crash, or a
    # long-lived writer's): below the eviction floor, it must not become the entry.
    journal_file(tmp_path, [stale])
    assert "k" not in journal.load(tmp_path)
    assert journal.latest(tmp_path, "k") is None
    assert journal.compact(tmp_path, max_entries=1).entries == 1
    assert "k" not in journal.load(tmp_path)
    fresh = line("k", {"v": "fresh"})  # newer than the floor: a real new entry
    journal_file(tmp_path, [fresh])
    assert journal.load(tmp_path)["k"].data == {"v": "fresh"}
    assert journal.latest(tmp_path, "k")["data"] == {"v": "fresh"}


def test_hit_path_refuses_a_snapshot_without_header(tmp_path):
    with journal.Writer(tmp_path) as writer:
        writer.append("k", {"v": 1}, "t")
    journal.compact(tmp_path)
    snapshot = tmp_path / "snapshot"
    snapshot.write_bytes(b"garbage\n" + snapshot.read_bytes().split(b"\n", 1)[1])
    assert journal.latest(tmp_path, "k") is None  # the database will answer
    assert journal.load(tmp_path)["k"].data == {"v": 1}  # rebuilt from the archive
