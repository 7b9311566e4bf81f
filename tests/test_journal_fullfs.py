"""A file system that fills up, for real: a small tmpfs the suite mounts (root only).

On tmpfs a write that needs a new page when none is left is cut short at the page
boundary: the short write of a full disk. The writer must cut its journal back to the
last complete line and acknowledge nothing it did not store; once space is back, later
appends must all survive, and nothing of the full period may hide them (a torn fragment
on the line of the next record was the failure this guards against).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import journal
import reconcile

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs the suite as root)"
)

PAGE = 4096
FS_BYTES = 256 * 1024


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "fs"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES},mode=0700", "tmpfs", str(mount)],
        check=True,
    )
    try:
        yield mount
    finally:  # lazily if still busy (a test that failed with a journal open)
        if subprocess.run(["umount", str(mount)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mount)], check=True)


def _fill(mount: Path) -> Path:
    """Take every free page of the file system; return the file that holds them."""
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, PAGE, 1):
            try:
                while os.write(fd, b"\0" * size) == size:
                    pass
            except OSError:
                continue
    finally:
        os.close(fd)
    return filler


@pytest.mark.parametrize("fsync", [True, False], ids=["fsync", "nofsync"])
def test_a_short_write_is_cut_back_and_later_appends_survive(small_fs, fsync):
    home = small_fs / "home"
    acked: dict[str, str] = {}
    writer = journal.Writer(home, fsync=fsync)
    # Lines of one odd length (pids differ in digits: measured here), so that no append
    # ends exactly on a page boundary: the one that needs a new page writes part of
    # itself, up to the boundary, and stops.
    with journal.Writer(small_fs / "probe") as probe:
        probe.append("p000", {"pad": "x" * 200}, "t")
        assert probe.path is not None
        even = probe.path.stat().st_size % 2 == 0
    data = {"pad": "x" * (201 if even else 200)}
    for n in range(3):
        acked[f"b{n:03d}"] = writer.append(f"b{n:03d}", data, "t")
    first_journal = writer.path
    assert first_journal is not None
    assert first_journal.stat().st_size % 2 == 1
    filler = _fill(small_fs)

    failures: list[str] = []
    for n in range(40):  # the journal's last page fills up, then the disk is full
        try:
            acked[f"f{n:03d}"] = writer.append(f"f{n:03d}", data, "t")
        except journal.StorageError as exc:
            failures.append(str(exc))
    assert any("short write" in failure for failure in failures), failures
    assert writer.path != first_journal  # abandoned after the short write
    # cut back to its last complete line: no fragment left for the next record to join
    assert first_journal.read_bytes().endswith(b"\n")

    filler.unlink()  # space is back
    for n in range(5):
        acked[f"a{n:03d}"] = writer.append(f"a{n:03d}", data, "t")
    writer.close()

    for stage in ("before compaction", "after compaction"):
        state = journal.load(home)
        assert {key: state[key].id for key in acked} == acked, stage
        assert state.skipped.total == 0, stage  # no torn fragment anywhere
        ids = [record.id for record in journal.history(home)]
        assert sorted(ids) == sorted(acked.values()), stage
        if stage == "before compaction":
            report = journal.compact(home)
            assert report.quarantined == 0 and report.live_files == 0
    assert reconcile.verify(reconcile.Settings.from_env({}, home=home)).ok


def test_a_compaction_on_a_full_disk_changes_nothing_then_succeeds(small_fs):
    home = small_fs / "home"
    acked = {}
    for w in range(4):
        with journal.Writer(home) as writer:
            for n in range(10):
                acked[f"k{w}-{n}"] = writer.append(f"k{w}-{n}", {"pad": "y" * 300}, "t")
    journal.compact(home)
    with journal.Writer(home) as writer:
        for n in range(10):
            acked[f"late-{n}"] = writer.append(f"late-{n}", {"pad": "z" * 300}, "t")
    snapshot = (home / "snapshot").read_bytes()
    journals = sorted(os.listdir(home / "journal"))
    filler = _fill(small_fs)

    with pytest.raises(journal.CompactionIncompleteError) as raised:
        journal.compact(home)
    assert "No space left on device" in str(raised.value)
    assert raised.value.report.files_archived == 0
    assert (home / "snapshot").read_bytes() == snapshot  # the old one, untouched
    assert sorted(os.listdir(home / "journal")) == journals  # nothing archived
    assert not [p for p in home.rglob("*.tmp")]  # its temp file removed
    state = journal.load(home)
    assert {key: state[key].id for key in acked} == acked

    filler.unlink()
    report = journal.compact(home)
    assert report.files_archived == 1 and report.entries == len(acked)
    state = journal.load(home)
    assert {key: state[key].id for key in acked} == acked
    assert sorted(r.id for r in journal.history(home)) == sorted(acked.values())
