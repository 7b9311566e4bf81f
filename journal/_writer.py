"""This process's journal: append-only, one write() per record, never shared.

The hook's miss path appends through this module, so it imports only what that needs
(no :mod:`pathlib`, :mod:`typing`, :mod:`json` or :mod:`contextlib`: see
docs/performance.md).

A failed append is never acknowledged, and never taints the next one. When the write
fails, is short (a full disk) or its ``fdatasync`` fails, the writer truncates the
journal back to its last complete line (when it can) and abandons it: it closes it,
releasing its lock, so the journal is finished, and the next append starts a new one.
So an acknowledged record never shares a line with a torn fragment, and a journal whose
sync failed once (its durable state unknown: the kernel may have dropped the pages) is
never appended to again.
"""

import fcntl
import posix

from journal import _platform
from journal._codec import Clock, encode, is_event_id
from journal._errors import InvalidRecordError, StorageError
from journal._hit import JOURNAL_DIR, JOURNAL_SUFFIX, PENDING_SUFFIX, join_path
from journal._layout import FILE_MODE, ensure_dir, fsync_dir

TYPE_CHECKING = False  # typing costs milliseconds on the hook's path; checkers see True
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from journal._hit import StrPath

TOMBSTONE_TYPE = "forgotten"
# A UUIDv7 (of 1970), to check a record before its journal exists: same size as any id.
_STAND_IN_ID = "00000000-0000-7000-8000-000000000000"
# New names a writer tries before it gives up: each failure needs a cleanup that found
# the fresh file a minute old (see Writer._create), so one retry is already rare.
_CREATE_TRIES = 100


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

    def __init__(self, home: "StrPath", *, fsync: bool = True) -> None:
        self.home = posix.fspath(home)
        self.fsync = fsync
        self._fd: int | None = None
        self._pid = posix.getpid()
        self._path: str | None = None
        self._size = 0  # bytes of complete lines in our journal: where a failed append ends
        self._clock = Clock()

    @property
    def path(self) -> "Path | None":
        """The journal file, or None while nothing was appended by this process."""
        if self._path is None or self._pid != posix.getpid():
            return None
        from pathlib import Path

        return Path(self._path)

    def append(
        self,
        key: str,
        data: "dict[str, Any]",
        type: str,
        *,
        event_id: str | None = None,
        after: str | None = None,
    ) -> str:
        """Append one event; return its id once the write completed.

        ``event_id``: an id from :func:`new_event_id`, when the caller had to name the
        event before writing it (say, in a database row committed first). Otherwise
        the writer issues the id, after the event id ``after`` if given (of an event
        this one answers, say), and as late as it can: see :meth:`_write`.

        Raises :class:`InvalidRecordError` (or :class:`RecordTooLargeError`) for a key,
        type or data that cannot be stored, and :class:`StorageError` if the write
        fails: the record is then not stored (see the module's docstring), and the next
        append may succeed.
        """
        if data is None:
            raise InvalidRecordError("record data must be a JSON object; use forget() to delete")
        if event_id is not None and after is not None:
            raise InvalidRecordError("give event_id or after, not both")
        return self._write(key, data, type, event_id, after)

    def forget(self, key: str, type: str = TOMBSTONE_TYPE) -> str:
        """Append a tombstone: ``key`` disappears from the folded state."""
        return self._write(key, None, type)

    def close(self) -> None:
        """Close the journal and release its lock (the compactor may then archive it)."""
        if self._fd is not None and self._pid == posix.getpid():
            posix.close(self._fd)
        self._fd = None
        self._path = None

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _write(
        self,
        key: str,
        data: "dict[str, Any] | None",
        type: str,
        event_id: str | None = None,
        after: str | None = None,
    ) -> str:
        """Issue the id (unless given), encode, append.

        An id the writer issues comes as late as it can: on a new journal, after the file
        is created, locked and named. A compaction evicts nothing issued after it began
        and folds every journal it lists; an id issued before the journal was listed could
        be older than what it evicts, though its line was not folded (docs/architecture.md,
        "Compaction"). A bad record is still refused before any file exists: it is encoded
        once first with a stand-in id of the same size.
        """
        pid = posix.getpid()
        for value in (event_id, after):
            if value is not None and not is_event_id(value):
                raise InvalidRecordError(f"event id {value!r:.60} is not a UUIDv7 string")
        if event_id is None and (self._fd is None or self._pid != pid):  # a new journal
            encode(event_id=_STAND_IN_ID, pid=pid, type=type, key=key, data=data)
            self._descriptor(pid)
        event_id = self._issue(event_id, after)
        line = encode(event_id=event_id, pid=pid, type=type, key=key, data=data)
        fd = self._descriptor(pid)  # after encoding: a rejected record creates no file
        try:
            written = posix.write(fd, line)
        except OSError as exc:
            path = self._abandon()
            raise StorageError(f"could not append to {path}: {exc.strerror}") from None
        if written != len(line):
            path = self._abandon()
            raise StorageError(
                f"short write to {path} ({written} of {len(line)} bytes): is the disk full?"
            )
        if self.fsync:
            try:
                _platform.data_sync(fd)  # fdatasync (Linux), fsync (macOS)
            except OSError as exc:
                path = self._abandon()
                raise StorageError(f"could not sync {path}: {exc.strerror}") from None
        self._size += written
        return event_id

    def _issue(self, given: str | None, after: str | None) -> str:
        """``given``, or a fresh id after ``after``; never before an id this writer gave."""
        if given is not None:
            self._clock.advance(given)
            return given
        if after is not None:
            self._clock.advance(after)
        return self._clock.next()

    def _abandon(self) -> str | None:
        """After a failed append: cut the journal back to its last complete line and close
        it (finished, for the compactor); the next append opens a new one."""
        path, fd = self._path, self._fd
        if fd is not None:
            try:  # noqa: SIM105 - not contextlib: see the module's docstring
                posix.ftruncate(fd, self._size)
            except OSError:
                pass  # the fragment stays: a torn last line, quarantined, never acknowledged
            try:  # noqa: SIM105
                posix.close(fd)
            except OSError:
                pass
        self._fd, self._path, self._size = None, None, 0
        return path

    def _descriptor(self, pid: int) -> int:
        if self._pid != pid:  # forked: the inherited file is the parent's, not ours
            if self._fd is not None:
                posix.close(self._fd)
            self._fd, self._path, self._pid, self._size = None, None, pid, 0
        if self._fd is None:
            self._fd, self._path = self._create(pid)
        return self._fd

    def _create(self, pid: int) -> tuple[int, str]:
        """A new journal, locked, under its final name (durable in ``journal/`` with fsync
        on). On failure nothing is left behind but what could not be removed.

        Between the create and the flock, the compactor's cleanup of stale ``.new`` files
        could in principle hold the new file's lock (it tries only files it found empty
        and a minute old, and removes them): then the flock fails, or the rename finds
        the file gone, and the writer starts over under a fresh name rather than give up
        the record (docs/reliability.md, "No lost wake-up").
        """
        ensure_dir(self.home)  # neither it nor journal/ may be a symlink
        directory = ensure_dir(join_path(self.home, JOURNAL_DIR))
        for _ in range(_CREATE_TRIES):
            created = self._try_create(pid, directory)
            if created is not None:
                self._size = 0
                return created
        raise StorageError(
            f"cannot create a journal in {directory}: each new file was taken or removed "
            f"before it could be locked ({_CREATE_TRIES} tries); is another program "
            "cleaning that directory?"
        )

    def _try_create(self, pid: int, directory: str) -> tuple[int, str] | None:
        """One try of :meth:`_create`: None if the cleanup got to the file first."""
        name = f"{pid}-{posix.urandom(8).hex()}{JOURNAL_SUFFIX}"
        path = join_path(directory, name)
        pending = path + PENDING_SUFFIX
        flags = (
            posix.O_WRONLY
            | posix.O_CREAT
            | posix.O_EXCL
            | posix.O_APPEND
            | posix.O_NOFOLLOW
            | posix.O_CLOEXEC
        )
        try:
            fd = posix.open(pending, flags, FILE_MODE)
        except OSError as exc:
            raise StorageError(f"cannot create a journal in {directory}: {exc.strerror}") from None
        current = pending
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                posix.rename(pending, path)
            except (BlockingIOError, FileNotFoundError):
                # The cleanup holds the file, or removed it before we locked it: it is
                # not ours to append to. Its name was ours alone: drop it, try anew.
                _discard(pending, fd)
                return None
            current = path
            if self.fsync:
                fsync_dir(directory)
        except OSError as exc:
            _discard(current, fd)
            raise StorageError(f"cannot open journal {path}: {exc.strerror}") from None
        return fd, path


def _discard(path: str, fd: int) -> None:
    """Remove a journal this writer just created (if it still can) and close it."""
    try:  # noqa: SIM105 - not contextlib: see the module's docstring
        posix.unlink(path)
    except OSError:
        pass  # gone already, or an empty journal or ".new" the compactor removes later
    posix.close(fd)


_ids = Clock()


def new_event_id(after: str | None = None) -> str:
    """A fresh event id (UUIDv7), time-ordered with every other id of this process and,
    if given, after the event id ``after`` (of an event this one answers, say)."""
    if after is not None:
        _ids.advance(after)
    return _ids.next()
