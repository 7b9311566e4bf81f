"""Power loss, simulated ALICE-style: what is durable at every instant of a real workload.

A real process (appends with fsync on and off, compactions, a forget, journals opened and
closed, all into a brand-new state directory) runs once under ``strace``, which records
every system call that changes files or makes them durable, with the bytes written. The
recording is replayed on a model of the file system that keeps two states: what the
process saw (*volatile*) and what a power cut would keep (*durable*):

- a file's data is durable as of the last ``fsync``/``fdatasync`` of that file;
- a directory's entries (creations, renames, links, removals in it) are durable as of the
  last ``fsync`` of that directory; a new directory is an entry of its parent.

A cut after each mutating call gives a durable state, materialised in a fresh directory
in four variants: exactly what was synced (the pessimistic state); everything (as after a
process crash); every entry but only synced data (metadata written back early); synced
entries but all data. On each: ``load()`` holds, for every key, its latest acknowledged
record or something newer, ``history()`` holds every acknowledged record exactly once,
and so do both after a compaction of that state, which must succeed.

An append is *acknowledged* when the workload printed its id, after ``append()``
returned (with fsync on), or, for appends made with fsync off, after a compaction that
archived their journal returned: the contract of docs/reliability.md. The limits of the
model are stated there.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import journal

STRACE = shutil.which("strace")
pytestmark = pytest.mark.skipif(
    STRACE is None, reason="strace is not installed (.ci/run installs it with apt-get)"
)

WORKLOAD = """
import sys, journal
home = sys.argv[1]

def ack(event_id):
    print(event_id, flush=True)

first = journal.Writer(home)  # the state directory does not exist yet
for n in range(3):
    ack(first.append(f"a{n}", {"n": n}, "t"))
quick = journal.Writer(home, fsync=False)  # not durable until compacted
unsynced = [quick.append(f"b{n}", {"n": n}, "t") for n in range(3)]
quick.close()
journal.compact(home)
for event_id in unsynced:
    ack(event_id)
ack(first.append("a1", {"n": 10}, "t"))
ack(first.forget("a0"))
first.close()
with journal.Writer(home) as second:
    for n in range(2):
        ack(second.append(f"c{n}", {"n": n}, "t"))
journal.compact(home)
with journal.Writer(home) as third:
    ack(third.append("d0", {"n": 0}, "t"))
    ack(third.append("a2", {"n": 20}, "t"))
"""

MUTATING = (
    "openat", "write", "ftruncate", "fsync", "fdatasync", "rename", "renameat2",
    "link", "linkat", "unlink", "unlinkat", "mkdir", "mkdirat", "rmdir", "close",
)  # fmt: skip
_CALL = re.compile(r"^\d+\s+(\w+)\((.*)\)\s+=\s+(-?\d+)")
_STRING = re.compile(r'"((?:\\x[0-9a-f]{2})*)"')


def _strings(args: str) -> list[bytes]:
    return [bytes.fromhex(s.replace("\\x", "")) for s in _STRING.findall(args)]


@dataclass
class Inode:
    directory: bool
    data: bytearray = field(default_factory=bytearray)
    entries: dict[str, int] = field(default_factory=dict)
    synced_data: bytes = b""
    synced_entries: dict[str, int] = field(default_factory=dict)


@dataclass
class Opened:
    inode: int
    append: bool
    offset: int = 0


class FileSystem:
    """The model: volatile and durable state of everything under ``base``."""

    def __init__(self, base: Path) -> None:
        self.base = str(base)
        self.inodes: dict[int, Inode] = {0: Inode(directory=True)}  # base: durable, empty
        self.fds: dict[int, Opened] = {}

    def _new(self, directory: bool) -> int:
        number = len(self.inodes)
        self.inodes[number] = Inode(directory=directory)
        return number

    def _parent(self, path: bytes) -> tuple[Inode, str] | None:
        text = path.decode()
        if not text.startswith(self.base + "/"):
            return None
        *dirs, name = text[len(self.base) + 1 :].split("/")
        node = self.inodes[0]
        for part in dirs:
            node = self.inodes[node.entries[part]]
        return node, name

    def _lookup(self, path: bytes) -> int | None:
        if path.decode() == self.base:
            return 0
        found = self._parent(path)
        if found is None:
            return None
        parent, name = found
        return parent.entries.get(name)

    def apply(self, name: str, args: str, result: int) -> bool:
        """Apply one call; True if it touched the model."""
        if result < 0:
            return False
        strings = _strings(args)
        fd = int(args.split(",")[0]) if args[:1].isdigit() else None
        if name == "openat":
            flags = args.split(",")[2]
            found = self._parent(strings[0])
            if found is None:
                return False
            parent, entry = found
            if entry not in parent.entries:
                parent.entries[entry] = self._new(directory=False)
            inode = parent.entries[entry]
            if "O_TRUNC" in flags:
                self.inodes[inode].data.clear()
            self.fds[result] = Opened(inode, "O_APPEND" in flags)
            return "O_CREAT" in flags or "O_TRUNC" in flags
        if name == "close":
            self.fds.pop(fd or 0, None)
            return False
        if name in ("write", "ftruncate", "fsync", "fdatasync"):
            opened = self.fds.get(fd) if fd is not None else None
            if opened is None:
                return False
            node = self.inodes[opened.inode]
            if name == "write":
                start = len(node.data) if opened.append else opened.offset
                chunk = strings[0][:result]
                node.data[start : start + len(chunk)] = chunk
                opened.offset = start + len(chunk)
            elif name == "ftruncate":
                size = int(args.split(",")[1])
                del node.data[size:]
            elif node.directory:
                node.synced_entries = dict(node.entries)
            else:
                node.synced_data = bytes(node.data)
            return True
        if name in ("mkdir", "mkdirat"):
            found = self._parent(strings[0])
            if found is None:
                return False
            found[0].entries[found[1]] = self._new(directory=True)
            return True
        if name in ("rename", "renameat2", "link", "linkat"):
            source, target = self._parent(strings[0]), self._parent(strings[1])
            if source is None or target is None:
                return False
            target[0].entries[target[1]] = source[0].entries[source[1]]
            if name.startswith("rename"):
                del source[0].entries[source[1]]
            return True
        if name in ("unlink", "unlinkat", "rmdir"):
            found = self._parent(strings[0])
            if found is None:
                return False
            del found[0].entries[found[1]]
            return True
        return False

    def open_directory(self, fd: int, path: bytes) -> None:
        """An fd opened on a directory (O_DIRECTORY): fsync on it syncs entries."""
        inode = self._lookup(path)
        if inode is not None:
            self.fds[fd] = Opened(inode, append=False)

    def materialise(self, out: Path, *, entries: str, data: str) -> None:
        """Write the chosen state (``volatile`` or ``synced`` entries and data) to ``out``."""

        written: dict[int, Path] = {}  # a file under two names is one file, hard-linked

        def write(inode: int, path: Path) -> None:
            node = self.inodes[inode]
            if inode in written:
                path.hardlink_to(written[inode])
            elif node.directory:
                path.mkdir(mode=0o700)
                listing = node.entries if entries == "volatile" else node.synced_entries
                for name, child in listing.items():
                    write(child, path / name)
            else:
                content = bytes(node.data) if data == "volatile" else node.synced_data
                path.write_bytes(content)
                path.chmod(0o600)
                written[inode] = path

        out.parent.mkdir(parents=True, exist_ok=True)
        write(0, out)


VARIANTS = {
    "synced": ("synced", "synced"),
    "everything": ("volatile", "volatile"),
    "entries-not-data": ("volatile", "synced"),
    "data-not-entries": ("synced", "volatile"),
}


def _record(tmp_path: Path) -> tuple[list[tuple[str, str, int]], Path]:
    base = tmp_path / "base"
    base.mkdir()
    log = tmp_path / "strace.log"
    done = subprocess.run(
        [STRACE or "strace", "-f", "-qq", "-xx", "-s", "1000000", "-e", "signal=none",
         "-e", "trace=" + ",".join(MUTATING), "-o", str(log),
         sys.executable, "-c", WORKLOAD, str(base / "home")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    calls = []
    for line in log.read_text().splitlines():
        match = _CALL.match(line)
        if match is not None:
            calls.append((match[1], match[2], int(match[3])))
    return calls, base


def _check(home: Path, acked: list[str], where: str) -> None:
    for stage in ("as found", "after a compaction"):
        if stage == "after a compaction":
            journal.compact(home)
        history = list(journal.history(home))
        ids = [r.id for r in history]
        assert len(ids) == len(set(ids)), f"{where}, {stage}: a record twice in history()"
        missing = set(acked) - set(ids)
        assert not missing, f"{where}, {stage}: {len(missing)} acknowledged lost from history()"
        state = journal.load(home)
        assert state.errors == ()
        by_id = {r.id: r for r in history}
        for event_id in acked:
            record = by_id[event_id]
            newest = max((r for r in history if r.key == record.key), key=lambda r: (r.ts, r.id))
            if newest.is_tombstone:
                assert record.key not in state, f"{where}, {stage}: {record.key} forgotten"
            else:
                entry = state.get(record.key)
                assert entry is not None and (entry.ts, entry.id) >= (record.ts, record.id), (
                    f"{where}, {stage}: {record.key} lost from load()"
                )


def test_no_acknowledged_append_is_lost_at_any_power_cut(tmp_path):
    calls, base = _record(tmp_path)
    model = FileSystem(base)
    acked: list[str] = []
    stdout = b""
    cuts = checked = 0
    for index, (name, args, result) in enumerate(calls):
        if name == "write" and args.startswith("1,"):  # the workload's stdout: acks
            stdout += _strings(args)[0][:result]
            *lines, stdout = stdout.split(b"\n")  # an ack counts once its line is whole
            acked.extend(line.decode() for line in lines)
            continue
        if name == "openat" and "O_DIRECTORY" in args and result >= 0:
            model.open_directory(result, _strings(args)[0])
            continue
        if not model.apply(name, args, result):
            continue
        cuts += 1
        for variant, (entries, data) in VARIANTS.items():
            out = tmp_path / "cuts" / f"{index}-{variant}"
            model.materialise(out, entries=entries, data=data)
            _check(out / "home", acked, f"cut after call {index} ({name}), {variant}")
            checked += 1
            shutil.rmtree(out)
    assert len(acked) == 12  # the workload acknowledged every append
    assert cuts >= 50 and checked == 4 * cuts
    print(f"\n{cuts} cut points, {checked} durable states checked")
