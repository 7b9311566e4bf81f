"""Helpers of the journal tests: raw record lines, hand-made journal files, forked children.

Children are made with ``os.fork()``: a forked child inherits the imported ``journal``
package and costs about a millisecond, where a fresh interpreter costs tens.
"""

from __future__ import annotations

import contextlib
import os
import signal
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import journal
from journal._codec import Clock, encode

_clock = Clock()


def raw_line(
    key: str, data: dict[str, Any] | None = None, *, type: str = "t", pid: int = 1
) -> bytes:
    """One encoded record line (newline included) with a fresh event id."""
    return encode(event_id=_clock.next(), pid=pid, type=type, key=key, data=data)


def write_journal(home: Path, content: bytes | Iterable[bytes], name: str | None = None) -> Path:
    """A finished journal (no writer holds its lock) holding exactly ``content``."""
    directory = home / "journal"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (name or f"{os.getpid()}-{os.urandom(8).hex()}.jnl")
    path.write_bytes(content if isinstance(content, bytes) else b"".join(content))
    return path


def fork(body: Callable[[], object]) -> int:
    """Run ``body`` in a forked child: exit status 0 when it returns, 1 if it raised."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def reap(pids: Iterable[int]) -> list[int]:
    """Wait for each child; its exit code (negative: the signal that killed it)."""
    return [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]


def kill(pid: int) -> int:
    """SIGKILL one child of ours and reap it; returns its exit code."""
    os.kill(pid, signal.SIGKILL)  # our unreaped child: its pid cannot have been reused
    return reap([pid])[0]


def drain(fd: int) -> bytes:
    """Everything left to read on ``fd`` (until every writer closed it); closes it."""
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def reported_ids(data: bytes) -> list[str]:
    """Event ids reported one per line; a report torn by a kill is not counted."""
    return [part.decode() for part in data.split(b"\n") if len(part) == 36]


def history_ids(home: Path) -> set[str]:
    return {record.id for record in journal.history(home)}


def latest_per_key(home: Path) -> dict[str, journal.Record]:
    """What the fold must give, computed independently from history()."""
    newest: dict[str, journal.Record] = {}
    for record in journal.history(home):
        current = newest.get(record.key)
        if current is None or (record.ts, record.id) > (current.ts, current.id):
            newest[record.key] = record
    return {key: r for key, r in newest.items() if not r.is_tombstone}


def open_fds() -> int:
    """How many descriptors this process holds now."""
    return len(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def live_writer(home: Path, keys: Iterable[str] = ("live",)) -> Iterator[tuple[int, Path]]:
    """A child process holding an open Writer that appended one record per key; yields
    (its pid, its journal's path) and ends it on exit."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()

    def body() -> None:
        os.close(ready_r)
        os.close(done_w)
        writer = journal.Writer(home, fsync=False)
        for n, key in enumerate(keys):
            writer.append(key, {"n": n}, "t")
        os.write(ready_w, str(writer.path).encode())
        os.close(ready_w)
        os.read(done_r, 1)  # until the parent closes its end
        writer.close()

    pid = fork(body)
    os.close(ready_w)
    os.close(done_r)
    try:
        path = Path(drain(ready_r).decode())
        yield pid, path
    finally:
        os.close(done_w)
        assert reap([pid]) == [0]


def framed(raw: bytes) -> bytes:
    """A record line around arbitrary ``raw`` bytes, with a CRC that matches them."""
    return b'{"crc":"%08x","rec":%s}\n' % (zlib.crc32(raw), raw)
