"""Output helpers: JSON or aligned text, time arguments, progress on a terminal only.

Human output is words and aligned fields, never a Python repr; every command that reports
something also has ``--json``, built from the same dict.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

T = TypeVar("T")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


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
