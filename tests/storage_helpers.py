"""Helpers of the storage tests: raw journal files, forked writers."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from journal._codec import Clock, encode

_clock = Clock()


def line(key: str, data: dict[str, Any] | None = None, *, type: str = "t", pid: int = 1) -> bytes:
    """One encoded record line with a fresh event id."""
    return encode(event_id=_clock.next(), pid=pid, type=type, key=key, data=data)


def journal_file(home: Path, content: bytes | Iterable[bytes], name: str | None = None) -> Path:
    """A finished journal (no writer holds it) with ``content``."""
    directory = home / "journal"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (name or f"{os.getpid()}-{os.urandom(8).hex()}.jnl")
    path.write_bytes(content if isinstance(content, bytes) else b"".join(content))
    return path


def forked(body: Callable[[], None]) -> int:
    """Run ``body`` in a forked child that exits 0 when it returns (1 if it raised)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    return pid


def wait_all(pids: Iterable[int]) -> list[int]:
    """Exit statuses of ``pids`` (after waiting for each)."""
    return [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
