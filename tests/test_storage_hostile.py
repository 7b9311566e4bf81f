"""Hostile content in the state directory: nothing raises, intact records survive,
every skipped line is counted by reason, corrupt lines are quarantined."""

from __future__ import annotations

import json
import os

import pytest
from storage_helpers import journal_file, line

import journal


def bit_flip(raw: bytes, index: int) -> bytes:
    return raw[:index] + bytes([raw[index] ^ 0x04]) + raw[index + 1 :]


HOSTILE = {
    "torn": (b"", "torn"),  # appended below: a record cut before its newline
    "bit-flip": (bit_flip(line("x"), 60), "checksum"),
    "garbage": (b"hello, world\n", "json"),
    "null": (b"null\n", "json"),
    "array": (b"[1, 2, 3]\n", "json"),
    "non-utf8": (b"\xff\xfe\x00\x80 not text\n", "json"),
    "future-version": (None, "version"),
    "oversize": (b"{" + b"x" * (10 << 20), "oversize"),  # 10 MB, no newline
}


def future_version_line() -> bytes:
    import zlib

    body = b'{"v":2,"id":"x","ts":"y","pid":1,"type":"t","key":"x","data":{}}'
    return b'{"crc":"%08x","rec":%s}\n' % (zlib.crc32(body), body)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_one_hostile_line_among_intact_ones(tmp_path, case):
    content, reason = HOSTILE[case]
    if case == "future-version":
        content = future_version_line()
    before, after = line("before", {"n": 1}), line("after", {"n": 2})
    body = before + after + (line("torn")[:-7] if case == "torn" else content)
    path = journal_file(tmp_path, body)
    state = journal.load(tmp_path)
    assert {k: dict(r.data) for k, r in state.items()} == {"before": {"n": 1}, "after": {"n": 2}}
    assert state.skipped.as_dict()[reason] == 1 and state.skipped.total == 1

    report = journal.compact(tmp_path)
    assert report.skipped.as_dict()[reason] == 1 and report.quarantined == 1
    assert report.entries == 2
    [quarantined] = (tmp_path / "quarantine").iterdir()
    entry = json.loads(quarantined.read_text())
    assert (entry["file"], entry["line"], entry["reason"]) == (path.name, 3, reason)
    assert len(entry["bytes"]) <= 65536
    assert journal.load(tmp_path).skipped.total == 0  # archived: not read again


def test_empty_files_and_directories_named_like_journals(tmp_path):
    journal_file(tmp_path, b"")
    (tmp_path / "journal" / "9-0000000000000000.jnl").mkdir()
    journal_file(tmp_path, line("k", {"ok": True}))
    state = journal.load(tmp_path)
    assert list(state) == ["k"] and state.skipped.not_a_file == 1
    report = journal.compact(tmp_path)
    assert report.entries == 1 and report.skipped.not_a_file == 1


def test_a_planted_symlink_is_refused_not_followed(tmp_path):
    outside = tmp_path / "outside.jnl"
    planted = line("planted", {"evil": True})
    outside.write_bytes(planted)
    journal_file(tmp_path, line("real", {"n": 1}))
    (tmp_path / "journal" / "6-6666666666666666.jnl").symlink_to(outside)
    (tmp_path / "snapshot").symlink_to(outside)
    state = journal.load(tmp_path)
    assert "planted" not in state and "real" in state
    assert state.skipped.not_a_file >= 1
    assert journal.latest(tmp_path, "planted") is None
    report = journal.compact(tmp_path)
    assert "planted" not in journal.load(tmp_path)
    assert report.entries == 1
    assert outside.read_bytes() == planted  # neither read, moved nor archived
    assert (tmp_path / "journal" / "6-6666666666666666.jnl").is_symlink()


def test_writer_refuses_a_symlinked_journal_directory(tmp_path):
    real = tmp_path / "elsewhere"
    real.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    (home / "journal").symlink_to(real)
    with pytest.raises(journal.UnsafePathError, match="symlink"):
        journal.Writer(home).append("k", {}, "t")
    assert list(real.iterdir()) == []


def test_corrupt_snapshot_is_rebuilt_from_archive_and_journals(tmp_path):
    for i in range(5):
        journal_file(tmp_path, [line(f"old{i}", {"i": i})])
    journal.compact(tmp_path)  # five journals archived, snapshot written
    journal_file(tmp_path, [line("new", {"n": 1})])  # and one still to fold
    snapshot = tmp_path / "snapshot"
    raw = snapshot.read_bytes()
    snapshot.write_bytes(bit_flip(raw, len(raw) // 2))
    state = journal.load(tmp_path)
    assert set(state) == {f"old{i}" for i in range(5)} | {"new"}
    assert state.snapshot_intact is False
    report = journal.compact(tmp_path)
    assert report.snapshot_rebuilt is True and report.entries == 6
    assert journal.load(tmp_path).snapshot_intact is True


@pytest.mark.parametrize(
    "content", [b"", b"\x00" * 100, b"not a snapshot\n", b'{"snapshot":1,"entries":5}\n']
)
def test_unreadable_snapshot_never_raises(tmp_path, content):
    journal_file(tmp_path, [line("a", {"n": 1})])
    journal.compact(tmp_path)
    (tmp_path / "snapshot").write_bytes(content)
    assert set(journal.load(tmp_path)) == {"a"}  # from the archive


def test_file_modes(tmp_path):
    home = tmp_path / "home"
    with journal.Writer(home) as writer:
        writer.append("k", {"n": 1}, "t")
        path = writer.path
    journal.compact(home)
    assert path is not None
    for directory in (home, home / "journal", home / "archive", home / "quarantine"):
        assert oct(os.stat(directory).st_mode & 0o777) == "0o700", directory
    for file in (home / "snapshot", home / "archive" / path.name, home / "compact.lock"):
        assert oct(os.stat(file).st_mode & 0o777) == "0o600", file


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
    report = journal.compact(tmp_path)
    assert report.entries == 1
    assert journal.latest(tmp_path, "k")["data"] == {"n": 1}


def test_readers_refuse_symlinked_directories(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    journal_file(elsewhere, [line("planted", {"n": 1})])
    home = tmp_path / "home"
    home.mkdir()
    (home / "journal").symlink_to(elsewhere / "journal")
    assert "planted" not in journal.load(home)
    assert list(journal.history(home)) == []
    assert journal.latest(home, "planted") is None
    linked_home = tmp_path / "linked"
    linked_home.symlink_to(elsewhere)
    assert len(journal.load(linked_home)) == 0
    assert list(journal.history(linked_home)) == []


@pytest.mark.parametrize("version", [b"true", b"1.0", b'"1"'])
def test_only_the_integer_version_1_is_version_1(version):
    import zlib

    from journal._codec import decode

    body = b'{"v":' + version + b',"id":"x","ts":"y","pid":1,"type":"t","key":"k","data":{}}'
    assert decode(b'{"crc":"%08x","rec":%s}' % (zlib.crc32(body), body))[1] == "version"
