"""Reading record files line by line, tolerating anything.

A reader never raises on content: each line yields either a raw record (a dict, before
any class exists) or the reason it was skipped. Memory stays bounded whatever the file
holds: a line longer than ``MAX_LINE`` is consumed in chunks and never kept whole.
The pieces this builds on (opening without following links, decoding a line) are the
hit path's, in :mod:`journal._hit`.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

from journal._hit import MAX_LINE, NOT_A_FILE, OVERSIZE, TORN, decode, open_regular

TYPE_CHECKING = False
if TYPE_CHECKING:
    from journal._hit import StrPath

QUARANTINE_KEEP = MAX_LINE + 1  # bytes of an oversize line kept: the first read's


class Line:
    """One line of a file: a record, or why it was skipped (with the offending bytes)."""

    __slots__ = ("number", "raw", "reason", "record")

    def __init__(
        self, number: int, record: dict[str, Any] | None, reason: str | None, raw: bytes
    ) -> None:
        self.number = number
        self.record = record
        self.reason = reason
        self.raw = raw


def scan(
    path: StrPath, *, finished: bool, needle: bytes | None = None
) -> Generator[Line, None, None]:
    """Yield every line of the file at ``path``.

    ``finished``: the writer is gone, so a last line without newline is torn (counted);
    otherwise it is still being written and is silently left for later.
    ``needle``: skip, without decoding, lines that do not contain these bytes.

    A name that is not a regular file yields one ``not-a-file`` line. A file that is
    gone raises FileNotFoundError, and one that cannot be opened or read raises OSError
    (from the first ``next()``, or part-way): the caller decides, never this reader.
    """
    fd = open_regular(path)
    if fd is None:
        yield Line(0, None, NOT_A_FILE, b"")
        return
    with open(fd, "rb") as stream:
        yield from scan_stream(stream, finished=finished, needle=needle)


def scan_stream(stream: Any, *, finished: bool, needle: bytes | None = None) -> Iterator[Line]:
    """Like :func:`scan`, over an open binary stream."""
    number = 0
    while True:
        line = stream.readline(MAX_LINE + 1)  # an OSError propagates: not content
        if not line:
            return
        number += 1
        if line.endswith(b"\n") and len(line) <= MAX_LINE:
            if needle is not None and needle not in line:
                continue
            record, reason = decode(line[:-1])
            yield Line(number, record, reason, line if reason else b"")
        elif len(line) > MAX_LINE:
            kept = line  # readline() stopped at QUARANTINE_KEEP bytes
            while not line.endswith(b"\n"):
                line = stream.readline(1 << 16)
                if not line:
                    break
            yield Line(number, None, OVERSIZE, kept)
        elif finished:
            yield Line(number, None, TORN, line)
        else:
            return  # a live writer's line in progress
