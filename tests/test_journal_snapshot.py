"""The snapshot format: version 2 (the whole file under one CRC) written, version 1 still
read, the examples of docs/formats.md decoded, and every single-bit flip detected."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import pytest
from journal_helpers import raw_line, write_journal

import journal
from journal import _hit
from journal._hit import SNAPSHOT_CRC_END as CRC_END
from journal._hit import SNAPSHOT_PREFIX as PREFIX
from journal._snapshot import read_snapshot

ROOT = Path(__file__).resolve().parent.parent
FORMATS = ROOT / "docs" / "formats.md"


def _doc_blocks() -> list[str]:
    """The fenced code blocks of docs/formats.md."""
    return re.findall(r"```\n(.*?)```", FORMATS.read_text(), flags=re.DOTALL)


def _doc_snapshot(version: int) -> bytes:
    (block,) = [
        b
        for b in _doc_blocks()
        if re.match(r'\{"(crc":"[0-9a-f]{8}",")?snapshot', b)
        and f'"snapshot":{version},' in b.split("\n", 1)[0]
    ]
    return block.encode("ascii")


def _small_snapshot(home: Path) -> bytes:
    """A real snapshot with a floor (one key evicted), a tombstone and two entries."""
    with journal.Writer(home) as writer:
        writer.append("evicted", {"n": 0}, "t")
        writer.append("a", {"session_id": "s-1"}, "session.confirmed")
        writer.forget("gone")
        writer.append("b", {"session_id": "s-2"}, "session.confirmed")
    report = journal.compact(home, max_entries=2)
    assert report.evicted == 1
    return (home / "snapshot").read_bytes()


def test_the_compactor_writes_version_2_sealed_whole(tmp_path):
    content = _small_snapshot(tmp_path)
    header, _, body = content.partition(b"\n")
    assert content.startswith(PREFIX + b"%08x" % zlib.crc32(content[CRC_END:]))
    assert b'"snapshot":2,"entries":3,' in header and b'"floor":["' in header
    assert body.count(b"\n") == 3
    state = journal.load(tmp_path)
    assert state.snapshot_intact and set(state) == {"a", "b"}


@pytest.mark.parametrize("version", [1, 2])
def test_the_documented_examples_decode(tmp_path, version):
    content = _doc_snapshot(version)
    (tmp_path / "snapshot").write_bytes(content)
    snap = read_snapshot(tmp_path / "snapshot")
    assert snap.intact and snap.floor is None
    assert [r["key"] for r in snap.records] == ["executor:e-1"]
    assert journal.load(tmp_path)["executor:e-1"].data == {
        "executor_id": "e-1",
        "session_id": "s-1",
    }
    assert _hit.latest(tmp_path, "executor:e-1")["data"]["session_id"] == "s-1"
    if version == 2:
        crc = content[len(PREFIX) : CRC_END]
        assert int(crc, 16) == zlib.crc32(content[CRC_END:])  # as the text explains


def test_version_1_is_read_and_rewritten_as_version_2(tmp_path):
    (tmp_path / "snapshot").write_bytes(_doc_snapshot(1))
    write_journal(tmp_path, [raw_line("new", {"n": 1})])
    assert set(journal.load(tmp_path)) == {"executor:e-1", "new"}
    report = journal.compact(tmp_path)
    assert not report.snapshot_rebuilt and report.entries == 2
    assert (tmp_path / "snapshot").read_bytes().startswith(PREFIX)
    assert journal.load(tmp_path).snapshot_intact


def test_every_single_bit_flip_is_detected(tmp_path):
    """All bits of a small real snapshot, header and body: each flip makes it corrupt
    for the compactor's reader, for load(), and for the hit path (a miss)."""
    home = tmp_path / "home"
    content = _small_snapshot(home)
    assert _hit.latest(home, "a") is not None  # intact, it answers
    path = home / "snapshot"
    bits = len(content) * 8
    assert bits > 3000
    undetected = []
    for bit in range(bits):
        flipped = bytearray(content)
        flipped[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(flipped))
        if (
            read_snapshot(path).intact
            or journal.load(home).snapshot_intact
            or _hit.latest(home, "a") is not None
            or _hit.latest(home, "b") is not None
        ):
            undetected.append(bit)
    assert undetected == []
    path.write_bytes(content)
    assert journal.load(home).snapshot_intact  # the loop wrote back what it broke
