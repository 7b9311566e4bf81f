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
from collections.abc import Callable
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
    matches = _matcher(args.since, args.key, tuple(args.type))
    executor = args.executor
    reader = journal.HistoryReader(
        settings.home, start, until=args.until, key=args.key, executor=executor
    )
    stopped: list[int] = []

    def on_signal(signo: int, frame: FrameType | None) -> None:
        stopped.append(signo)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    out = _Out(sys.stdout.buffer)
    saver = _Saver(args.cursor_file, reader, out)
    by_executor = _ByExecutor(executor, reader, saver) if executor is not None else None
    form = _formatter(output)
    write = out.write
    line_of = reader.cursor_text
    gone = False
    try:
        idle = saver.idle if by_executor is None else by_executor.idle
        records = (
            reader.follow(lambda: bool(stopped), idle=idle)
            if args.follow
            else reader.read(lambda: bool(stopped))
        )
        if by_executor is None and matches is None:  # every record: the fast path
            parts, n = out.parts, 0
            for raw in records:
                parts.append(form(raw, reader.line, line_of()))
                n += 1
                if not n & 127:
                    out.records += 128
                    out.drain()
                    saver.tick()
            out.records += n & 127
        else:
            for raw in records:
                if by_executor is not None:
                    for held in by_executor.take(raw):  # an observation its outcome names
                        if matches is None or matches(held[0]):
                            write(form(*held))
                    if not by_executor.owns(raw):
                        saver.tick()
                        continue
                if matches is None or matches(raw):
                    write(form(raw, reader.line, line_of()))
                saver.tick()
            if by_executor is not None:
                by_executor.settle()
        saver.flush_and_save()
    except BrokenPipeError:  # the reader went away: done, quietly, with our own code
        saver.save_flushed()  # what the reader took, no more
        drop_output()
        gone = True
    finally:
        for signo, handler in previous.items():
            signal.signal(signo, handler)
    printed = out.records
    if args.show_cursor and not gone:
        stream = sys.stdout if output == "short" else sys.stderr
        stream.write(f"-- cursor: {saver.position()}\n")
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


class _Out:
    """stdout for records: written in batches (one system call per :data:`BATCH` records
    at most, whatever the buffering of ``sys.stdout``), all of it out at each
    :meth:`flush`."""

    BATCH = 128  # records (a line is 4 KB at most)

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.parts: list[bytes] = []
        self.records = 0

    def write(self, data: bytes) -> None:
        self.parts.append(data)
        self.records += 1
        if len(self.parts) >= self.BATCH:
            self.drain()

    def drain(self) -> None:
        if not self.parts:
            return
        data = memoryview(b"".join(self.parts))
        self.parts.clear()
        while data:
            written = self.stream.write(data)
            if written is None or written >= len(data):  # None: a buffered stream took it all
                break
            data = data[written:]  # an unbuffered stream (PYTHONUNBUFFERED) may take part

    def flush(self) -> None:
        self.drain()
        sys.stdout.flush()


class _Saver:
    """Writes the cursor file: the position of what stdout has taken for sure."""

    def __init__(self, path: str | None, reader: journal.HistoryReader, out: _Out) -> None:
        self.path = Path(path) if path else None
        self.reader = reader
        self.out = out
        # While a record waits for what follows it (replay --executor), the position
        # before it: a saved cursor never passes a record not printed yet.
        self.hold: str | None = None
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
        self.out.flush()
        self.flushed = self.position()
        if self.reader.consumed != self.consumed_at_save:
            self.tick()

    def position(self) -> str:
        return self.hold if self.hold is not None else self.reader.cursor_text()

    def flush_and_save(self) -> None:
        self.out.flush()
        self.flushed = self.position()
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


def _formatter(output: str) -> Callable[[dict[str, Any], bytes, str], bytes]:
    """How one record is printed: ``(raw record, its line, its cursor) -> bytes``. JSON:
    the record as its journal holds it (the ``rec`` object of the line, checked and
    decoded already), with its cursor added; not encoded again."""
    if output == "short":
        return lambda raw, line, cursor: (_short(raw) + "\n").encode("utf-8", "replace")
    lead = RS.encode() if output == "json-seq" else b""
    start = _BODY_START

    def as_json(raw: dict[str, Any], line: bytes, cursor: str) -> bytes:
        # line[start:-3]: '{"v":1,...,"data":...' without the closing braces and newline
        return b'%s%s,"cursor":"%s"}\n' % (lead, line[start:-3], cursor.encode("ascii"))

    return as_json


def _matcher(
    since: str | None, key: str | None, types: tuple[str, ...]
) -> Callable[[dict[str, Any]], bool] | None:
    """Whether a raw record passes the filters other than ``--executor`` (``--until``
    is the reader's: a record after it is not consumed at all); None if none is set."""
    if since is None and key is None and not types:
        return None

    def matches(raw: dict[str, Any]) -> bool:
        if since is not None and raw["ts"] < since:
            return False
        if key is not None and raw["key"] != key:
            return False
        return not types or raw["type"] in types

    return matches


def _executor_of(raw: dict[str, Any]) -> str | None:
    """The executor a record names: ``executor_id`` in its data (outcomes), else in its
    data's identity (observations); None if it names none."""
    data = raw["data"] or {}
    if "executor_id" in data:
        found = data["executor_id"]
        return found if isinstance(found, str) else None
    identity = data.get("identity")
    found = identity.get("executor_id") if isinstance(identity, dict) else None
    return found if isinstance(found, str) else None


class _ByExecutor:
    """``replay --executor``: which records belong to the executor.

    A record that names an executor belongs to it. An agent-keyed observation names
    none: it belongs to the executor its own outcome names. That outcome, journaled by
    the reconciler with the next event id after the observation's (same key, same
    timestamp), is the record consumed right after it; so the observation waits for
    the next record consumed, and is printed (with its own cursor) just before it if
    that record is its outcome naming the executor. Meanwhile the cursor file is not
    moved past it. An observation still unsettled, or settled with no executor, belongs
    to none (docs/operations.md)."""

    def __init__(self, executor: str, reader: journal.HistoryReader, saver: _Saver) -> None:
        self.executor = executor
        self.reader = reader
        self.saver = saver
        self.agent_keys = journal.HistoryReader.AGENT_KEY_PREFIXES
        # (raw, line, cursor after it, records consumed when it was)
        self.held: tuple[dict[str, Any], bytes, str, int] | None = None

    def take(self, raw: dict[str, Any]) -> list[tuple[dict[str, Any], bytes, str]]:
        """The waiting observation if ``raw`` (just consumed) is its outcome naming the
        executor; then ``raw`` itself may be the next to wait."""
        found: list[tuple[dict[str, Any], bytes, str]] = []
        if self.held is not None:
            held, line, cursor, at = self.held
            self._release()
            if (
                self.reader.consumed == at + 1
                and raw["key"] == held["key"]
                and raw["ts"] == held["ts"]
                and raw["type"] not in reconcile.UNSETTLED
                and _executor_of(raw) == self.executor
            ):
                found.append((held, line, cursor))
        if (
            raw["type"] in reconcile.UNSETTLED
            and raw["key"].startswith(self.agent_keys)
            and _executor_of(raw) is None
        ):
            cursor = self.reader.cursor_text()
            self.held = (raw, self.reader.line, cursor, self.reader.consumed)
            self.saver.hold = journal.Cursor.parse(cursor).inclusive().text()
        return found

    def owns(self, raw: dict[str, Any]) -> bool:
        return _executor_of(raw) == self.executor

    def settle(self) -> None:
        """At the end of the history read so far: a waiting observation whose next
        record was consumed (and not printed) is not the executor's."""
        if self.held is not None and self.reader.consumed > self.held[3]:
            self._release()

    def idle(self) -> None:
        self.settle()
        self.saver.idle()

    def _release(self) -> None:
        self.held = None
        self.saver.hold = None


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
