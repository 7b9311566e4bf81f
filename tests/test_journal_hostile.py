"""Hostile content in the state directory: nothing raises, intact records survive, every
skipped line or file is counted by reason, and corrupt lines of finished journals are
quarantined with their origin (docs/formats.md, "Skipped lines")."""

from __future__ import annotations

import json
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from journal_helpers import framed, live_writer, raw_line, write_journal

import journal
from journal._scan import QUARANTINE_KEEP

TEN_MB = 10 << 20


def _quarantined(home: Path, name: str) -> list[dict]:
    text = (home / "quarantine" / f"{name}.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def _good_rec(base_key: str, **changes: object) -> bytes:
    """The ``rec`` bytes of a valid record, with some fields changed."""
    record = json.loads(raw_line(base_key, {"n": 1})[len(b'{"crc":"12345678","rec":') : -2])
    record.update(changes)
    return json.dumps(record, separators=(",", ":")).encode()


def test_every_kind_of_corrupt_line_is_skipped_counted_and_quarantined(tmp_path):
    good_a, good_b = raw_line("a", {"n": 1}), raw_line("b", {"n": 2})
    flipped = raw_line("x", {"n": 1}).replace(b'"n":1', b'"n":3')  # a bit flip in the data
    assert flipped != raw_line("x", {"n": 1})
    lines = [
        (good_a, None),
        (b"hello, world\n", "json"),
        (b"null\n", "json"),
        (b"[1, 2, 3]\n", "json"),
        (flipped, "checksum"),
        (framed(_good_rec("u", key="\xe9").replace(b"\\u00e9", b"\xe9")), "json"),  # not UTF-8
        (framed(b"null"), "json"),
        (framed(b"[1,2]"), "json"),
        (framed(_good_rec("v", v=2)), "version"),
        (framed(_good_rec("w", v=True)), "version"),
        (framed(_good_rec("y", data=[1])), "json"),
        (b"\xff\xfe\x00\x80 binary\n", "json"),
        (b"{" * 3000 + b"\n", "json"),
        (b"z" * TEN_MB + b"\n", "oversize"),
        (b"\n", "json"),
        (good_b, None),
        (raw_line("c", {"n": 3})[:-7], "torn"),  # the last line, cut short
    ]
    path = write_journal(tmp_path, [content for content, _ in lines], name="1-hostile.jnl")
    expected = {"checksum": 1, "json": 10, "version": 2, "torn": 1, "oversize": 1}

    state = journal.load(tmp_path)
    assert {k: r.data for k, r in state.items()} == {"a": {"n": 1}, "b": {"n": 2}}
    assert state.skipped == journal.Skips(**expected)
    assert journal.latest(tmp_path, "b")["data"] == {"n": 2}
    assert journal.latest(tmp_path, "c") is None
    assert [r.key for r in journal.history(tmp_path)] == ["a", "b"]

    report = journal.compact(tmp_path)
    assert report.skipped == journal.Skips(**expected)
    assert report.quarantined == len(lines) - 2 and report.files_archived == 1
    quarantine = _quarantined(tmp_path, path.name)
    assert [(q["file"], q["line"], q["reason"]) for q in quarantine] == [
        (path.name, number, reason)
        for number, (_, reason) in enumerate(lines, start=1)
        if reason is not None
    ]
    assert all(len(q["bytes"]) <= QUARANTINE_KEEP for q in quarantine)
    assert quarantine[0]["bytes"] == "hello, world\n"
    assert journal.inventory(tmp_path).quarantined_records == len(lines) - 2

    state = journal.load(tmp_path)  # from the snapshot now; the journal is archived
    assert {k: r.data for k, r in state.items()} == {"a": {"n": 1}, "b": {"n": 2}}
    assert state.skipped.total == 0 and state.snapshot_intact


def _peak(call: Callable[[], object]) -> tuple[object, int]:
    """What ``call`` returns, and the most memory Python allocated meanwhile."""
    tracemalloc.start()
    try:
        return call(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_ten_megabyte_line_without_newline_is_read_in_bounded_memory(tmp_path):
    write_journal(tmp_path, [raw_line("a", {"n": 1})], name="1-a.jnl")
    write_journal(tmp_path, b"q" * TEN_MB, name="2-huge.jnl")
    state, peak = _peak(lambda: journal.load(tmp_path))
    assert peak < 1 << 20  # the 10 MB line was never held whole
    assert state["a"].data == {"n": 1}
    assert state.skipped == journal.Skips(oversize=1)
    # The hit path reads journals up to READ_WHOLE_MAX (64 MB) whole, by design.
    assert journal.latest(tmp_path, "a")["data"] == {"n": 1}
    report, peak = _peak(lambda: journal.compact(tmp_path))
    assert peak < 1 << 20
    assert report.skipped == journal.Skips(oversize=1) and report.quarantined == 1
    (entry,) = _quarantined(tmp_path, "2-huge.jnl")
    assert (entry["line"], entry["reason"]) == (1, "oversize")
    assert entry["bytes"].startswith("q" * 4096) and len(entry["bytes"]) <= QUARANTINE_KEEP
    records, peak = _peak(lambda: list(journal.history(tmp_path)))  # from the archive now
    assert peak < 1 << 20 and [r.key for r in records] == ["a"]


def test_empty_files_are_nothing_at_all(tmp_path):
    empty = write_journal(tmp_path, b"", name="1-empty.jnl")
    write_journal(tmp_path, [raw_line("a", {"n": 1})], name="2-a.jnl")
    state = journal.load(tmp_path)
    assert set(state) == {"a"} and state.skipped.total == 0
    report = journal.compact(tmp_path)
    assert report.skipped.total == 0 and report.quarantined == 0
    assert not empty.exists() and not (tmp_path / "archive" / empty.name).exists()
    (tmp_path / "snapshot").write_bytes(b"")  # an empty snapshot is corrupt: rebuilt
    state = journal.load(tmp_path)
    assert set(state) == {"a"} and not state.snapshot_intact
    assert journal.compact(tmp_path).snapshot_rebuilt


@pytest.mark.parametrize(
    "damage",
    ["flip-a-byte", "truncate", "garbage", "drop-header", "wrong-count", "directory"],
)
def test_a_corrupt_snapshot_is_rebuilt_from_archive_and_journals(tmp_path, damage):
    with journal.Writer(tmp_path, fsync=False) as writer:
        for n in range(20):
            writer.append(f"old{n}", {"n": n}, "t")
        writer.forget("old0")
    assert journal.compact(tmp_path).files_archived == 1  # old* now only in the archive
    with journal.Writer(tmp_path, fsync=False) as writer:
        writer.append("new", {"n": 99}, "t")
        writer.append("old1", {"n": -1}, "t")
    expected = {f"old{n}": {"n": n} for n in range(2, 20)} | {"new": {"n": 99}, "old1": {"n": -1}}

    snapshot = tmp_path / "snapshot"
    content = snapshot.read_bytes()
    if damage == "flip-a-byte":
        at = content.index(b'"old7"') + 2
        snapshot.write_bytes(content[:at] + bytes([content[at] ^ 0x04]) + content[at + 1 :])
    elif damage == "truncate":
        snapshot.write_bytes(content[: len(content) // 2])
    elif damage == "garbage":
        snapshot.write_bytes(os.urandom(5000))
    elif damage == "drop-header":
        snapshot.write_bytes(content.split(b"\n", 1)[1])
    elif damage == "wrong-count":
        assert b'"entries":20,' in content  # 19 live entries and old0's tombstone
        snapshot.write_bytes(content.replace(b'"entries":20,', b'"entries":19,', 1))
    else:
        snapshot.unlink()
        snapshot.mkdir()

    state = journal.load(tmp_path)
    assert not state.snapshot_intact
    assert {k: r.data for k, r in state.items()} == expected
    assert journal.latest(tmp_path, "new") is None  # the hit path misses rather than guess
    if damage == "directory":
        with pytest.raises(journal.UnsafePathError, match="move it away"):
            journal.compact(tmp_path)  # it cannot replace a directory: says what to do
        assert sorted(os.listdir(tmp_path)) == sorted(  # and leaves no temp file behind
            ["archive", "compact.lock", "journal", "log", "quarantine", "snapshot"]
        )
        snapshot.rmdir()
        report = journal.compact(tmp_path)
        assert not report.snapshot_rebuilt  # missing: rebuilt, but nothing was corrupt
    else:
        report = journal.compact(tmp_path)
        assert report.snapshot_rebuilt
    assert report.entries == len(expected)
    state = journal.load(tmp_path)
    assert state.snapshot_intact and {k: r.data for k, r in state.items()} == expected
    assert journal.latest(tmp_path, "new")["data"] == {"n": 99}
    assert journal.latest(tmp_path, "old0") is None


def test_a_symlink_in_journal_dir_is_refused_not_followed(tmp_path):
    home = tmp_path / "home"
    write_journal(home, [raw_line("mine", {"n": 1})], name="1-mine.jnl")
    target = tmp_path / "elsewhere.jnl"
    target.write_bytes(raw_line("planted", {"evil": True}))
    link = home / "journal" / "2-link.jnl"
    link.symlink_to(target)

    state = journal.load(home)
    assert set(state) == {"mine"}
    assert state.skipped == journal.Skips(not_a_file=1)
    assert journal.latest(home, "planted") is None
    assert all(r.key != "planted" for r in journal.history(home))
    report = journal.compact(home)
    assert report.skipped == journal.Skips(not_a_file=1)
    assert "planted" not in journal.load(home)
    assert link.is_symlink()  # left where it is
    assert target.exists() and b"planted" in target.read_bytes()  # untouched
    assert not (home / "archive" / "2-link.jnl").exists()


def test_a_directory_named_like_a_journal_is_counted_not_a_file(tmp_path):
    write_journal(tmp_path, [raw_line("a", {"n": 1})], name="1-a.jnl")
    (tmp_path / "journal" / "x.jnl").mkdir()
    (tmp_path / "journal" / "x.jnl" / "inner.jnl").write_bytes(raw_line("inner", {"n": 2}))
    state = journal.load(tmp_path)
    assert set(state) == {"a"} and state.skipped == journal.Skips(not_a_file=1)
    report = journal.compact(tmp_path)
    assert report.skipped == journal.Skips(not_a_file=1) and report.files_archived == 1
    assert (tmp_path / "journal" / "x.jnl").is_dir()
    assert "inner" not in journal.load(tmp_path)
    assert [r.key for r in journal.history(tmp_path)] == ["a"]


def test_symlinked_snapshot_and_directories_are_refused(tmp_path):
    home = tmp_path / "home"
    with journal.Writer(home, fsync=False) as writer:
        writer.append("a", {"n": 1}, "t")
    journal.compact(home)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "snapshot").write_bytes((home / "snapshot").read_bytes())
    (home / "snapshot").unlink()
    (home / "snapshot").symlink_to(elsewhere / "snapshot")
    state = journal.load(home)
    assert not state.snapshot_intact and set(state) == {"a"}  # from the archive
    journal.compact(home)
    assert not (home / "snapshot").is_symlink()  # replaced, not written through
    assert (elsewhere / "snapshot").read_bytes().count(b"\n") == 2  # the target unchanged

    link_home = tmp_path / "link-home"
    link_home.symlink_to(home)
    assert len(journal.load(link_home)) == 0
    assert journal.load(link_home).skipped.not_a_file == 1
    assert journal.latest(link_home, "a") is None
    assert list(journal.history(link_home)) == []
    with pytest.raises(journal.UnsafePathError):
        journal.compact(link_home)
    with pytest.raises(journal.UnsafePathError):
        journal.Writer(link_home).append("b", {}, "t")

    other = tmp_path / "other"
    (other / "real-journals").mkdir(parents=True)
    (other / "real-journals" / "1-x.jnl").write_bytes(raw_line("x", {"n": 1}))
    (other / "journal").symlink_to(other / "real-journals")
    assert "x" not in journal.load(other)
    assert journal.latest(other, "x") is None
    with pytest.raises(journal.UnsafePathError):
        journal.Writer(other).append("b", {}, "t")
    assert os.listdir(other / "real-journals") == ["1-x.jnl"]


def test_a_live_journals_line_in_progress_is_not_torn(tmp_path):
    with live_writer(tmp_path, keys=["a", "b"]) as (_, path):
        with open(path, "ab") as stream:  # as if the writer were mid-write()
            stream.write(raw_line("c", {"n": 9})[:30])
        state = journal.load(tmp_path)
        assert set(state) == {"a", "b"} and state.skipped.total == 0
        report = journal.compact(tmp_path)
        assert report.live_files == 1 and report.skipped.total == 0 and report.quarantined == 0
        assert path.exists() and not os.listdir(tmp_path / "quarantine")
    # The writer is gone now: the same bytes are a torn last line.
    report = journal.compact(tmp_path)
    assert report.skipped == journal.Skips(torn=1) and report.files_archived == 1
    assert _quarantined(tmp_path, path.name)[0]["line"] == 3
    assert set(journal.load(tmp_path)) == {"a", "b"}
