"""Output helpers: JSON or aligned text, time arguments, progress on a terminal only.

Human output is words and aligned fields, never a Python repr; every command that reports
something also has ``--json``, built from the same dict.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

T = TypeVar("T")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class _ClosedPipeGuard:
    """``sys.stdout``, but a reader that went away (``reconcile doctor | head -1``) ends
    the output quietly instead of raising: later writes go to /dev/null, and the command
    finishes with the exit code it would have had. Whether a write meets the closed pipe
    depends on timing (the whole output may fit in the pipe before the reader leaves),
    so an exit code of its own for it (141) would be a coin toss, and would mask a
    failure (``doctor``'s 3) half the time."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                return int(self._stream.write(text))
            except BrokenPipeError:
                self._gone()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._gone()

    def _gone(self) -> None:
        """Point stdout at /dev/null, so that nothing (the interpreter's final flush of
        what is still buffered, included) can fail on it again."""
        self.reader_gone = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)
        with contextlib.suppress(BrokenPipeError):
            self._stream.flush()  # what was buffered, now into /dev/null

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def closed_pipe_guard() -> Iterator[None]:
    """Within it, a closed stdout is no error (see :class:`_ClosedPipeGuard`)."""
    original = sys.stdout
    sys.stdout = guard = _ClosedPipeGuard(original)
    try:
        yield
    finally:
        guard.flush()  # a closed pipe shows here if not before, not at the exit
        sys.stdout = original


def drop_output() -> None:
    """The reader of stdout went away (a command that writes to ``sys.stdout.buffer``
    saw it first): the rest of the output goes to /dev/null, quietly."""
    if isinstance(sys.stdout, _ClosedPipeGuard):
        sys.stdout._gone()
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def reader_gone() -> bool:
    """Whether the reader of stdout went away: a streaming command may stop early."""
    return bool(getattr(sys.stdout, "reader_gone", False))


def emit_json(value: Any) -> None:
    """One JSON document on stdout."""
    sys.stdout.write(json.dumps(value, sort_keys=True, default=str) + "\n")


def emit_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    """Rows as aligned columns on stdout."""
    cells = [[str(c) for c in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        sys.stdout.write("\n")


def emit_pairs(pairs: Iterable[tuple[str, Any]]) -> None:
    """``name: value`` lines on stdout, names aligned; a None value leaves its line out."""
    pairs = [(name, value) for name, value in pairs if value is not None]
    width = max((len(name) for name, _ in pairs), default=0)
    for name, value in pairs:
        sys.stdout.write(f"{name + ':':<{width + 1}} {value}\n")


def plural(count: int, word: str, words: str | None = None) -> str:
    """``1 entry``, ``2 entries``: a count and its noun."""
    return f"{count} {word if count == 1 else words or word + 's'}"


def size(count_bytes: int) -> str:
    """A byte count for people: 812 bytes, 4.1 KiB, 3.2 MiB."""
    if count_bytes < 1024:
        return plural(count_bytes, "byte")
    value = float(count_bytes)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def yes_no(value: bool) -> str:
    return "yes" if value else "no"


def parse_time(text: str, *, now: float | None = None) -> str:
    """A time argument in the record timestamp format (ISO-8601 UTC, microseconds).

    Accepts ISO-8601 (``2026-11-24``, ``2026-11-24T09:00``, with or without an offset;
    naive means UTC) or a relative age: ``90s``, ``15m``, ``2h``, ``7d``, ``1w``.
    """
    text = text.strip()
    unit = _UNITS.get(text[-1:].lower())
    if unit is not None and text[:-1].replace(".", "", 1).isdigit():
        try:
            moment = datetime.fromtimestamp((now or time.time()) - float(text[:-1]) * unit, UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"invalid time {text!r}: too far back") from None
    else:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"invalid time {text!r}: use ISO-8601 (2026-11-24T09:00Z) or an age (15m, 2h, 7d)"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"invalid time {text!r}: out of the range of dates") from None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def progress(items: Iterable[T], *, total: int | None = None, desc: str = "") -> Iterator[T]:
    """``items``, with a progress bar on stderr when it is a terminal; quiet when piped."""
    if not sys.stderr.isatty():
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, total=total, desc=desc, unit="", leave=False, file=sys.stderr)


def age(seconds: float) -> str:
    """A short human duration: 42s, 3m, 5h, 2d."""
    delta = timedelta(seconds=int(seconds))
    if delta.days:
        return f"{delta.days}d"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


@contextlib.contextmanager
def progress_bar(desc: str, unit: str = "") -> Iterator[Callable[[int, int], None]]:
    """A ``(done, total)`` callback drawing a bar on a terminal; a no-op when piped."""
    if not sys.stderr.isatty():
        yield lambda done, total: None
        return
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=unit, leave=False, file=sys.stderr)

    def advance(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        yield advance
    finally:
        bar.close()
