"""``reconcile replay``: the history, from a cursor, followed (docs/operations.md).

Every record printed carries its cursor (the position just after it); ``--cursor-file``
keeps the position of the last record printed across runs: written at the end, on
SIGINT/SIGTERM, on a closed pipe (the last record the pipe took; then replay ends with
its own exit code, as every command does: cli._output.closed_pipe_guard), and every
:data:`SAVE_EVERY_S` seconds while following. How cursors stay exact is in
docs/architecture.md ("Replay cursors").
"""

from __future__ import annotations

import os
import select
import signal
import stat
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import journal
import reconcile
from cli._commands import UsageError, _no_entry
from cli._output import drop_output

SAVE_EVERY_S = 2.0  # while following: how often the cursor file is written (at most)
RS = "\x1e"  # RFC 7464 record separator
FORMATS = ("json", "json-seq", "short")
# Where a record line's ``rec`` object starts (docs/formats.md): LINE_PREFIX, 8 hex digits
# of CRC, LINE_MIDDLE.
_BODY_START = len(b'{"crc":"') + 8 + len(b'","rec":')


def run(args: Any, settings: reconcile.Settings) -> int:
    if args.header:
        return header(args, settings)
    if args.follow and args.until:
        raise UsageError("--follow and --until cannot be used together: a follow never ends")
    starts = [x for x in (args.cursor, args.after_cursor, args.cursor_file) if x is not None]
    if len(starts) > 1:
        raise UsageError("use one of --cursor, --after-cursor and --cursor-file")
    start = _start(args)
    output = args.output or ("short" if sys.stdout.isatty() else "json")
    matches = reconcile.event_matcher(
        since=args.since, key=args.key, executor=args.executor, types=tuple(args.type)
    )
    reader = journal.HistoryReader(settings.home, start, until=args.until)
    stopped: list[int] = []

    def on_signal(signo: int, frame: FrameType | None) -> None:
        stopped.append(signo)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    out = sys.stdout.buffer
    saver = _Saver(args.cursor_file, reader)
    printed = 0
    gone = False
    try:
        records = (
            reader.follow(lambda: bool(stopped), idle=saver.idle)
            if args.follow
            else reader.read(lambda: bool(stopped))
        )
        for raw in records:
            if matches(raw):
                out.write(_format(raw, reader.line, reader.cursor_text(), output))
                printed += 1
            saver.tick()
        saver.flush_and_save()
    except BrokenPipeError:  # the reader went away: done, quietly, with our own code
        saver.save_flushed()  # what the reader took, no more
        drop_output()
        gone = True
    finally:
        for signo, handler in previous.items():
            signal.signal(signo, handler)
    if args.show_cursor and not gone:
        stream = sys.stdout if output == "short" else sys.stderr
        stream.write(f"-- cursor: {reader.cursor_text()}\n")
    for error in reader.errors:
        print(f"reconcile: could not read {error}; its records are missing", file=sys.stderr)
    if printed == 0 and args.key and not gone:  # a filter: no event is an answer (exit 0)
        hint = _no_entry(args.key, journal.load(settings.home), missing="no events")
        print(f"reconcile: note: {hint}", file=sys.stderr)
    if stopped and not args.follow:
        return 128 + stopped[0]  # interrupted: what was printed is not the whole history
    return 0


def header(args: Any, settings: reconcile.Settings) -> int:
    """``replay --header``: the retained history (oldest and newest record, files,
    records by type), in the format ``-o`` chooses."""
    from collections import Counter

    from cli._output import emit_json, emit_pairs, plural

    counts: Counter[str] = Counter()
    oldest = newest = None
    history = journal.history(settings.home)
    for record in history:
        oldest = oldest or record.ts
        newest = record.ts
        counts[record.type] += 1
    files = journal.inventory(settings.home)
    by_type = dict(sorted(counts.items()))
    data: dict[str, Any] = {
        "oldest": oldest,
        "newest": newest,
        "records": sum(counts.values()),
        "by_type": by_type,
        "journals": files.journals,
        "archive_files": files.archive_files,
        "errors": list(history.errors),
    }
    output = args.output or ("short" if sys.stdout.isatty() else "json")
    if output != "short":
        emit_json(data)
        return 0
    emit_pairs(
        [
            ("oldest record", oldest or "none"),
            ("newest record", newest or "none"),
            ("records", ", ".join(f"{n} {t}" for t, n in by_type.items()) or "none"),
            (
                "files",
                f"{plural(files.journals, 'journal')} in journal/, "
                f"{plural(files.archive_files, 'file')} in archive/",
            ),
            *(("unreadable", error) for error in history.errors),
        ]
    )
    return 0


def _start(args: Any) -> journal.Cursor | None:
    try:
        if args.cursor is not None:
            return journal.Cursor.parse(args.cursor).inclusive()
        if args.after_cursor is not None:
            return journal.Cursor.parse(args.after_cursor)
        if args.cursor_file is not None:
            try:
                text = Path(args.cursor_file).read_text(encoding="ascii", errors="replace")
            except FileNotFoundError:
                return None
            return journal.Cursor.parse(text) if text.strip() else None
    except journal.CursorError as exc:
        raise UsageError(str(exc)) from None
    return None


class _Saver:
    """Writes the cursor file: the position of what stdout has taken for sure."""

    def __init__(self, path: str | None, reader: journal.HistoryReader) -> None:
        self.path = Path(path) if path else None
        self.reader = reader
        self.flushed: str | None = None  # the cursor at the last successful flush
        self.saved: str | None = None
        self.last = time.monotonic()
        self.consumed_at_save = -1

    def tick(self) -> None:
        if time.monotonic() - self.last >= SAVE_EVERY_S:
            self.flush_and_save()

    def idle(self) -> None:
        """Between passes of a follow: what was printed goes out; saved now and then.
        A reader gone (``| head -1``) ends the follow, though nothing new was written."""
        if _output_closed():
            raise BrokenPipeError("the reader of the output is gone")
        sys.stdout.flush()
        self.flushed = self.reader.cursor_text()
        if self.reader.consumed != self.consumed_at_save:
            self.tick()

    def flush_and_save(self) -> None:
        sys.stdout.flush()
        self.flushed = self.reader.cursor_text()
        self.last = time.monotonic()
        self.consumed_at_save = self.reader.consumed
        self._write(self.flushed)

    def save_flushed(self) -> None:
        if self.flushed is not None:
            self._write(self.flushed)

    def _write(self, text: str) -> None:
        if self.path is None or text == self.saved:
            return
        journal.write_atomically(self.path, (text + "\n").encode("ascii"))
        self.saved = text


def _output_closed() -> bool:
    """Whether stdout is a pipe whose reading end was closed."""
    try:
        fd = sys.stdout.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        poller = select.poll()
        poller.register(fd, 0)  # POLLERR and POLLHUP are reported whatever is asked
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _format(raw: dict[str, Any], line: bytes, cursor: str, output: str) -> bytes:
    """One record as printed. JSON: the record as its journal holds it (the ``rec``
    object of the line, checked and decoded already), with its cursor added; not
    encoded again."""
    if output == "short":
        return (_short(raw) + "\n").encode("utf-8", "replace")
    body = line[_BODY_START:-2]  # '{"v":1,"id":...,"data":...}' without its closing brace
    record = b'%s,"cursor":"%s"}\n' % (body[:-1], cursor.encode("ascii"))
    return RS.encode() + record if output == "json-seq" else record


def _short(raw: dict[str, Any]) -> str:
    """One line for people: time, event, key, old -> new session, reason."""
    data = raw["data"] or {}
    new = data.get(reconcile.SETTLED_SESSION.get(raw["type"], "session_id"))
    old = data.get("old_session_id") or data.get("stored_session_id")
    change = f"{old} -> {new}" if old and new and old != new else (new or "-")
    reason = data.get("reason") or data.get("error") or ""
    if raw["data"] is None:
        change, reason = "-", "forgotten"
    kind = raw["type"].removeprefix("session.")
    return f"{raw['ts'][:19]}Z  {kind:<20} {raw['key']:<28} {change} {reason}".rstrip()
