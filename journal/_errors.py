"""The journal package's exceptions: one base class, each message says what to fix."""

from __future__ import annotations


class JournalError(Exception):
    """Base class of every error raised by :mod:`journal`."""


class InvalidRecordError(JournalError, ValueError):
    """A key, type or data value cannot be written as a record."""


class RecordTooLargeError(InvalidRecordError):
    """The encoded record would not fit in one atomic append (PIPE_BUF)."""


class UnsafePathError(JournalError):
    """A path in the state directory is a symlink or not what it should be."""
