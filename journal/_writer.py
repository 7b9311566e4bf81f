"""This process's journal: append-only, one write() per record, never shared.

The hook's miss path appends through this module, so it imports only what that needs
(no :mod:`pathlib`, :mod:`typing` or :mod:`json`: see docs/performance.md).
"""

from __future__ import annotations

import fcntl
import os

from journal._codec import Clock, encode, is_event_id
from journal._errors import InvalidRecordError, JournalError
from journal._layout import (
    FILE_MODE,
    JOURNAL_DIR,
    JOURNAL_SUFFIX,
    PENDING_SUFFIX,
    ensure_dir,
    fsync_dir,
)

TYPE_CHECKING = False  # typing costs milliseconds on the hook's path; checkers see True
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from journal._layout import StrPath

TOMBSTONE_TYPE = "forgotten"


class Writer:
    """Appends records to this process's own journal under ``home/journal/``.

    The file is created on the first append as ``<pid>-<nonce>.jnl`` (the random nonce
    keeps a reused pid from colliding), first under a ``.new`` name until its exclusive
    flock is held, so a compactor never mistakes it for a finished journal. The lock is
    held until :meth:`close` or process exit; it is how the compactor tells live journals
    from finished ones. A child process after ``fork()`` drops the inherited descriptor
    and opens a journal of its own on its first append.

    ``fsync``: make each append durable before it returns (see docs/performance.md for
    the cost). Without it an append survives a process crash but not a power loss.
    """

    def __init__(self, home: StrPath, *, fsync: bool = True) -> None:
        self.home = os.fspath(home)
        self.fsync = fsync
        self._fd: int | None = None
        self._pid = os.getpid()
        self._path: str | None = None
        self._clock = Clock()

    @property
    def path(self) -> Path | None:
        """The journal file, or None while nothing was appended by this process."""
        if self._path is None or self._pid != os.getpid():
            return None
        from pathlib import Path

        return Path(self._path)

    def append(
        self, key: str, data: dict[str, Any], type: str, *, event_id: str | None = None
    ) -> str:
        """Append one event; return its id once the write completed.

        ``event_id``: an id from :func:`new_event_id`, when the caller had to name the
        event before writing it (say, in a database row committed first).

        Raises :class:`InvalidRecordError` (or :class:`RecordTooLargeError`) for a key,
        type or data that cannot be stored, and :class:`JournalError` if the write fails.
        """
        if data is None:
            raise InvalidRecordError("record data must be a JSON object; use forget() to delete")
        return self._write(key, data, type, event_id)

    def forget(self, key: str, type: str = TOMBSTONE_TYPE) -> str:
        """Append a tombstone: ``key`` disappears from the folded state."""
        return self._write(key, None, type)

    def close(self) -> None:
        """Close the journal and release its lock (the compactor may then archive it)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None
        self._path = None

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _write(
        self, key: str, data: dict[str, Any] | None, type: str, event_id: str | None = None
    ) -> str:
        pid = os.getpid()
        if event_id is None:
            event_id = self._clock.next()
        elif is_event_id(event_id):
            self._clock.advance(event_id)
        else:
            raise InvalidRecordError(f"event id {event_id!r:.60} is not a UUIDv7 string")
        line = encode(event_id=event_id, pid=pid, type=type, key=key, data=data)
        fd = self._descriptor(pid)  # after encoding: a rejected record creates no file
        try:
            written = os.write(fd, line)
            if self.fsync:
                os.fdatasync(fd)
        except OSError as exc:
            raise JournalError(f"could not append to {self._path}: {exc.strerror}") from None
        if written != len(line):
            raise JournalError(
                f"short write to {self._path} ({written} of {len(line)} bytes): disk full?"
            )
        return event_id

    def _descriptor(self, pid: int) -> int:
        if self._pid != pid:  # forked: the inherited file is the parent's, not ours
            if self._fd is not None:
                os.close(self._fd)
            self._fd, self._path, self._pid = None, None, pid
        if self._fd is None:
            self._fd, self._path = self._create(pid)
        return self._fd

    def _create(self, pid: int) -> tuple[int, str]:
        ensure_dir(self.home)  # neither it nor journal/ may be a symlink
        directory = ensure_dir(os.path.join(self.home, JOURNAL_DIR))
        name = f"{pid}-{os.urandom(8).hex()}{JOURNAL_SUFFIX}"
        path = os.path.join(directory, name)
        pending = path + PENDING_SUFFIX
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(pending, flags, FILE_MODE)
        except OSError as exc:
            raise JournalError(f"cannot create a journal in {directory}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(pending, path)
            if self.fsync:
                fsync_dir(directory)
        except OSError as exc:
            os.close(fd)
            raise JournalError(f"cannot open journal {path}: {exc.strerror}") from None
        return fd, path


_ids = Clock()


def new_event_id(after: str | None = None) -> str:
    """A fresh event id (UUIDv7), time-ordered with every other id of this process and,
    if given, after the event id ``after`` (of an event this one answers, say)."""
    if after is not None:
        _ids.advance(after)
    return _ids.next()
