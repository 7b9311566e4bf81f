"""The journal package's exceptions: one base class, each message says what to fix.

An I/O failure (:class:`StorageError`) is never taken for absent or bad content: what
could not be read or written is left where it was, for the next run, and the error names
it (docs/reliability.md).
"""

TYPE_CHECKING = False  # typing costs milliseconds on the hit path; checkers see True
if TYPE_CHECKING:
    from journal._model import CompactionReport


class JournalError(Exception):
    """Base class of every error raised by :mod:`journal`."""


class InvalidRecordError(JournalError, ValueError):
    """A key, type or data value cannot be written as a record."""


class RecordTooLargeError(InvalidRecordError):
    """The encoded record would not fit in one atomic append (PIPE_BUF)."""


class UnsafePathError(JournalError):
    """A path in the state directory is a symlink or not what it should be."""


class StorageError(JournalError, OSError):
    """The file system refused a read, write, sync, rename or lock (disk full, I/O
    error, quota, out of descriptors). Nothing acknowledged was lost: the operation
    left every file as it was, or in a state the next run completes."""


class CompactionIncompleteError(StorageError):
    """A compaction did what it safely could, but some files could not be read or moved:
    they were left in place, to be folded by the next compaction. ``report`` says what
    was done; ``report.errors`` names each file and what failed."""

    def __init__(self, message: str, report: "CompactionReport") -> None:
        super().__init__(message)
        self.report = report


class CursorError(JournalError, ValueError):
    """A replay cursor's text is not a cursor (a typo, or a truncated copy)."""


class CursorPrunedError(JournalError):
    """A replay cursor points into history that archive retention already removed."""
