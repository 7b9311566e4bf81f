"""Storage checks not covered elsewhere: the format-version-1 reader, one conformance
class over every storage configuration, and regressions the hit path once had (each
found by a test or a review, kept so that it stays fixed)."""

from __future__ import annotations

import fcntl
import os
import time
import zlib

import pytest
from journal_helpers import raw_line, write_journal

import journal
from journal._codec import encode
from journal._hit import decode

# Format version 1 as documented in docs/formats.md: these bytes must keep reading.
V1_LINE = (
    b'{"crc":"b7cfebf4","rec":{"v":1,"id":"019ab8f2-3c4d-7a5b-8c6d-7e8f9a0b1c2d",'
    b'"ts":"2025-11-25T02:57:54.253648Z","pid":4242,"type":"session.confirmed",'
    b'"key":"executor:e-1","data":{"executor_id":"e-1","session_id":"s-1"}}}'
)


def test_format_version_1_reader():
    record, reason = decode(V1_LINE)
    assert reason is None
    assert record == {
        "v": 1,
        "id": "019ab8f2-3c4d-7a5b-8c6d-7e8f9a0b1c2d",
        "ts": "2025-11-25T02:57:54.253648Z",
        "pid": 4242,
        "type": "session.confirmed",
        "key": "executor:e-1",
        "data": {"executor_id": "e-1", "session_id": "s-1"},
    }
    again = encode(
        event_id=record["id"],
        pid=4242,
        type=record["type"],
        key=record["key"],
        data=record["data"],
    )
    assert again == V1_LINE + b"\n"
    assert decode(V1_LINE.replace(b'"pid":4242', b'"pid":4243'))[1] == "checksum"


@pytest.mark.parametrize("version", [b"true", b"1.0", b'"1"'])
def test_only_the_integer_version_1_is_version_1(version):
    body = b'{"v":' + version + b',"id":"x","ts":"y","pid":1,"type":"t","key":"k","data":{}}'
    assert decode(b'{"crc":"%08x","rec":%s}' % (zlib.crc32(body), body))[1] == "version"


NO_ARCHIVE = journal.Retention(max_files=0)


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({"fsync": True, "retention": None}, id="fsync-archive"),
        pytest.param({"fsync": False, "retention": None}, id="nofsync-archive"),
        pytest.param({"fsync": True, "retention": NO_ARCHIVE}, id="fsync-noarchive"),
        pytest.param({"fsync": False, "retention": NO_ARCHIVE}, id="nofsync-noarchive"),
    ],
)
class TestStorageConformance:
    """The storage contract, whatever the configuration (fsync, archive kept or not)."""

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
        body = (tmp_path / "snapshot").read_bytes().split(b"\n", 1)[1]
        second = journal.compact(tmp_path, retention=config["retention"])
        assert (first.entries, second.entries) == (1, 1)
        assert (tmp_path / "snapshot").read_bytes().split(b"\n", 1)[1] == body

    def test_forget_then_compact(self, tmp_path, config):
        with journal.Writer(tmp_path, fsync=config["fsync"]) as writer:
            writer.append("a", {"n": 1}, "t")
            writer.append("b", {"n": 2}, "t")
            writer.forget("a")
        journal.compact(tmp_path, retention=config["retention"])
        assert set(journal.load(tmp_path)) == {"b"}
        assert journal.latest(tmp_path, "a") is None


def test_an_evicted_key_is_not_resurrected_on_the_hit_path(tmp_path):
    stale = raw_line("k", {"v": "stale"})  # older than everything below
    with journal.Writer(tmp_path) as writer:
        writer.append("k", {"v": "current"}, "t")
        writer.append("other", {"v": 1}, "t")
    assert journal.compact(tmp_path, max_entries=1).evicted == 1
    # The stale record comes back in a journal (folded again after a crash, or a
    # long-lived writer's): below the eviction floor, it must not become the entry.
    write_journal(tmp_path, [stale])
    assert "k" not in journal.load(tmp_path)
    assert journal.latest(tmp_path, "k") is None
    write_journal(tmp_path, [raw_line("k", {"v": "fresh"})])  # newer than the floor
    assert journal.latest(tmp_path, "k")["data"] == {"v": "fresh"}


def test_hit_path_never_trusts_a_corrupt_snapshot(tmp_path):
    # A live writer still holds an older record; a newer one was compacted into the
    # snapshot; then one byte of the snapshot flips. load() rebuilds from the archive
    # and finds the newer record; the hit path must not answer with the older one.
    live = journal.Writer(tmp_path, fsync=False)
    live.append("e-1", {"session_id": "A"}, "t")
    with journal.Writer(tmp_path, fsync=False) as writer:
        writer.append("e-1", {"session_id": "B"}, "t")
    journal.compact(tmp_path)
    snapshot = tmp_path / "snapshot"
    raw = snapshot.read_bytes()
    at = raw.index(b'"B"') + 1
    snapshot.write_bytes(raw[:at] + b"C" + raw[at + 1 :])
    assert journal.load(tmp_path)["e-1"].data == {"session_id": "B"}
    assert journal.latest(tmp_path, "e-1") is None  # a miss: the database answers
    live.close()


def test_a_deleted_snapshot_is_rebuilt_from_the_archive(tmp_path):
    with journal.Writer(tmp_path) as writer:
        writer.append("k", {"n": 1}, "t")
    journal.compact(tmp_path)
    (tmp_path / "snapshot").unlink()
    assert journal.load(tmp_path)["k"].data == {"n": 1}
    assert journal.latest(tmp_path, "k") is None  # not guessed from journals alone
    assert journal.compact(tmp_path).entries == 1
    assert journal.latest(tmp_path, "k")["data"] == {"n": 1}


def test_readers_refuse_symlinked_directories(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    write_journal(elsewhere, [raw_line("planted", {"n": 1})])
    home = tmp_path / "home"
    home.mkdir()
    (home / "journal").symlink_to(elsewhere / "journal")
    assert "planted" not in journal.load(home)
    assert list(journal.history(home)) == []
    assert journal.latest(home, "planted") is None


@pytest.mark.parametrize("home", ["/proc/forbidden", "/proc/forbidden/deeper/home"])
def test_a_state_directory_that_cannot_be_created_fails_once_with_the_reason(home):
    # It once recursed until RecursionError (mkdir under /proc fails with ENOENT).
    with pytest.raises(journal.UnsafePathError, match="No such file or directory"):
        journal.compact(home)
    with pytest.raises(journal.UnsafePathError, match="cannot be created"):
        journal.Writer(home).append("k", {"n": 1}, "t")
    assert list(journal.history(home)) == [] and len(journal.load(home)) == 0


def test_stale_temporaries_are_removed_at_the_start_of_a_compaction(tmp_path):
    with journal.Writer(tmp_path) as writer:
        writer.append("k", {"n": 1}, "t")
    journal.compact(tmp_path)
    old = time.time() - 120
    planted = {
        ".snapshot.999.tmp": True,  # a compactor's own: removed, whatever its age
        "quarantine/.1-x.jnl.jsonl.999.tmp": True,
        ".settings.998.tmp": True,  # someone else's, older than a minute: removed
        ".settings.999.tmp": False,  # someone else's, recent: kept
        ".snapshot.997.tmp": False,  # held under flock by its writer: kept
    }
    for name in planted:
        (tmp_path / name).write_bytes(b"half-written")
    os.utime(tmp_path / ".settings.998.tmp", (old, old))
    held = os.open(tmp_path / ".snapshot.997.tmp", os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        report = journal.compact(tmp_path)
    finally:
        os.close(held)
    assert report.temporaries_removed == 3
    for name, removed in planted.items():
        assert (tmp_path / name).exists() is not removed, name
    assert journal.compact(tmp_path).temporaries_removed == 1  # no longer held
    assert journal.load(tmp_path)["k"].data == {"n": 1}


@pytest.mark.parametrize(
    "body",
    [
        '"key":"' + "k" * 600 + '","data":{}',  # a key over MAX_KEY
        '"key":"k","data":{"x":NaN}',
        '"key":"k","data":{"x":1e999}',
    ],
    ids=["long-key", "nan", "overflow"],
)
def test_a_record_the_writer_could_not_write_is_quarantined_not_fatal(tmp_path, body):
    """Readers once accepted lines the encoder refuses; the compactor then failed on
    every run while re-encoding the snapshot. Such a line is now not JSON: skipped."""
    from journal_helpers import framed

    raw = (
        '{"v":1,"id":"01a217ec-dfb3-7220-9f7f-4b12aecbd522","ts":"2026-11-26T12:55:29.459133Z",'
        f'"pid":1,"type":"t",{body}}}'
    ).encode()
    write_journal(tmp_path, [framed(raw), raw_line("good", {"n": 1})])
    report = journal.compact(tmp_path)
    assert (report.entries, report.quarantined) == (1, 1)
    assert journal.compact(tmp_path).entries == 1  # and the next one too


def test_records_written_during_a_compaction_stay_visible(tmp_path):
    """Once, when pinned entries alone filled ``max_entries``, a compaction evicted every
    other entry, even ones written while it ran, and its floor rose above records it
    never folded: a journal created after its listing, a line appended to a live journal
    after it was read. Those were hidden for good. Now nothing written after the
    compaction began is evicted (docs/architecture.md, "The compactor")."""
    from journal_helpers import fork, reap

    observed, confirmed = "session.observed", "session.confirmed"
    with journal.Writer(tmp_path) as writer:  # a finished journal
        writer.append("A", {"n": 1}, observed)
    go_r, go_w = os.pipe()  # parent -> live writer: append K2, then end
    ack_r, ack_w = os.pipe()  # live writer -> parent: one byte after each append

    def live() -> None:
        os.close(go_w)
        os.close(ack_r)
        with journal.Writer(tmp_path) as writer:
            writer.append("K1", {"n": 1}, confirmed)
            os.write(ack_w, b".")
            os.read(go_r, 1)
            writer.append("K2", {"n": 2}, confirmed)
            os.write(ack_w, b".")
            os.read(go_r, 1)  # until the parent closes its end: the journal stays live

    def newcomer() -> None:  # a journal created after the compactor listed journal/
        with journal.Writer(tmp_path) as writer:
            writer.append("Q", {"n": 3}, observed)

    live_pid = fork(live)
    os.close(go_r)
    os.close(ack_w)
    try:
        assert os.read(ack_r, 1) == b"."
        calls: list[tuple[int, int]] = []

        def during(done: int, total: int) -> None:
            calls.append((done, total))
            if done == 0:  # listed, nothing read yet
                assert reap([fork(newcomer)]) == [0]
                os.write(go_w, b".")
                assert os.read(ack_r, 1) == b"."

        report = journal.compact(tmp_path, max_entries=1, pinned_types={observed}, progress=during)
        assert calls[0] == (0, 2)  # the newcomer's journal was not listed
        # K1 predates the compaction; K2 and Q were written during it.
        assert (report.evicted, report.entries, report.over_bound) == (1, 2, 1)
        assert set(journal.load(tmp_path)) == {"A", "K2", "Q"}
        assert journal.latest(tmp_path, "Q")["data"] == {"n": 3}
        assert journal.latest(tmp_path, "K2")["data"] == {"n": 2}
        assert journal.latest(tmp_path, "K1") is None  # evicted, as it may be
        # The next compaction folds Q; K2, older than it began, may go now.
        report = journal.compact(tmp_path, max_entries=1, pinned_types={observed})
        assert (report.evicted, report.entries) == (1, 2)
        assert set(journal.load(tmp_path)) == {"A", "Q"}
        assert journal.latest(tmp_path, "Q")["data"] == {"n": 3}
    finally:
        os.close(go_w)
        os.close(ack_r)
        assert reap([live_pid]) == [0]
