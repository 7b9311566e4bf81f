"""Reading the history from a position, and following it: exact, resumable cursors.

The design is in docs/architecture.md ("Replay cursors"). In short: records are read
from every journal (``journal/`` and ``archive/``, wherever a compaction put it by
then), merged in event id order, and the position reached is a *cursor*: for each
journal, how many of its bytes were consumed. Not a time: an outcome is stamped with
the microsecond of the observation it answers, so a record written now may sort hours
before records delivered already, and a time would skip it.

A cursor would name every journal ever read. Three facts keep it to the journals being
written, or read out of order, at that instant:

- ``m``, a file time: a journal whose last write (mtime) is before ``m`` existed at a
  listing this reader made and read to its end (``m`` is that listing's start less
  :data:`CLOCK_MARGIN_US`);
- ``p``, the greatest event id consumed: the merge reads the least next record first,
  so what a finished journal had consumed is its longest prefix of records at or
  before ``p``;
- the entries: each journal whose state those two do not imply, with its byte offset
  (and whether it was read to its end, finished).

A journal is *finished* when it is in ``archive/`` or no writer holds its lock: writers
never reopen a journal, so a finished journal never changes. Read to its end, *done*.
"""

from __future__ import annotations

import heapq
import os
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from journal._errors import CursorError, CursorPrunedError
from journal._hit import (
    ARCHIVE_DIR,
    BODY_START,
    JOURNAL_DIR,
    JOURNAL_SUFFIX,
    LINE_MIDDLE,
    LINE_PREFIX,
    MAX_KEY,
    MAX_LINE,
    MAX_TYPE,
    _json_string,
    _scan_json,
    decode,
    key_needle,
    list_files,
    open_regular,
    printable,
)
from journal._read import describe, writer_gone

CURSOR_VERSION = "1"
# The size cursors are held to (tests/test_replay_cursor.py): about 100 journals named at
# once; a cursor names only those being written or read out of order (docs/architecture.md).
MAX_CURSOR = 4096
CLOCK_MARGIN_US = 1_000_000  # how far a file's mtime may lag the listing that missed it
_NAME_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyz-")


def _now_us() -> int:
    return time.time_ns() // 1000


def _encode_name(name: str) -> str:
    stem = name[: -len(JOURNAL_SUFFIX)] if name.endswith(JOURNAL_SUFFIX) else name
    if stem and _NAME_CHARS.issuperset(stem) and name.endswith(JOURNAL_SUFFIX):
        return stem
    return "~" + name.encode("utf-8", "surrogateescape").hex()


def _decode_name(text: str) -> str:
    if text.startswith("~"):
        return bytes.fromhex(text[1:]).decode("utf-8", "surrogateescape")
    if not text or not _NAME_CHARS.issuperset(text):
        raise ValueError(text)
    return text + JOURNAL_SUFFIX


class Cursor:
    """A position in the history: opaque text for users (:meth:`text`, :meth:`parse`).

    ``m``: file time (microseconds); ``p``: the greatest event id consumed ("" if none);
    ``last``: (journal, byte offset where it starts) of the last record consumed, for
    ``--cursor`` (inclusive); ``entries``: journal name -> (offset, done).
    """

    __slots__ = ("entries", "last", "m", "p")

    def __init__(
        self,
        m: int,
        p: str,
        entries: dict[str, tuple[int, bool]],
        last: tuple[str, int] | None = None,
    ) -> None:
        self.m = m
        self.p = p
        self.entries = entries
        self.last = last

    def text(self) -> str:
        last = "" if self.last is None else f"{_encode_name(self.last[0])}_{self.last[1]:x}"
        parts = [CURSOR_VERSION, f"{self.m:x}", self.p.replace("-", ""), last]
        for name, (offset, done) in sorted(self.entries.items()):
            parts.append(f"{_encode_name(name)}_{offset:x}{'z' if done else ''}")
        return ".".join(parts)

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """The cursor ``text`` denotes; :class:`CursorError` if it is not one."""
        text = text.strip()
        try:
            if len(text) > 16 * MAX_CURSOR:
                raise ValueError("too long")
            version, m, p, last, *rest = text.split(".")
            if version != CURSOR_VERSION:
                raise ValueError(version)
            if p and (len(p) != 32 or int(p, 16) < 0):
                raise ValueError(p)
            pid = f"{p[:8]}-{p[8:12]}-{p[12:16]}-{p[16:20]}-{p[20:]}" if p else ""
            last_at = None
            if last:
                name, _, offset = last.rpartition("_")
                last_at = (_decode_name(name), int(offset, 16))
            entries: dict[str, tuple[int, bool]] = {}
            for part in rest:
                name, _, offset = part.rpartition("_")
                done = offset.endswith("z")  # not a hex digit
                entries[_decode_name(name)] = (int(offset.removesuffix("z"), 16), done)
            return cls(int(m, 16), pid, entries, last_at)
        except (ValueError, UnicodeDecodeError):
            raise CursorError(
                f"not a cursor: {text[:60]!r}{'...' if len(text) > 60 else ''} (a cursor is "
                "the text replay prints in each record's cursor field or with --show-cursor)"
            ) from None

    def inclusive(self) -> Cursor:
        """The position just before the last record this cursor consumed."""
        if self.last is None:
            return self
        entries = dict(self.entries)
        entries[self.last[0]] = (self.last[1], False)
        return Cursor(self.m, self.p, entries, None)


Head = tuple[dict[str, Any] | None, int, bytes, str, str]

# Where a record line's fields sit (format v1, as journal._codec writes it):
# {"crc":"<8 hex>","rec":{"v":1,"id":"<36>","ts":"<ts>",...}}
_CRC = slice(len(LINE_PREFIX), len(LINE_PREFIX) + 8)
_MIDDLE = slice(BODY_START - len(LINE_MIDDLE), BODY_START)
_REC_HEAD = b'{"v":1,"id":"'
_ID_AT = BODY_START + len(_REC_HEAD)
_TS_HEAD = b'","ts":"'
_TS_AT = _ID_AT + 36 + len(_TS_HEAD)
_REC_HEAD_SLICE = slice(BODY_START, _ID_AT)
_TS_HEAD_SLICE = slice(_ID_AT + 36, _TS_AT)
_LINE_LIMIT = MAX_LINE + 1
_TYPES_SEEN: set[str] = set()  # record types found printable already (few distinct ones)


def _record(line: bytes) -> dict[str, Any] | None:
    """The record on ``line`` (newline included), or None: :func:`journal._hit.decode`'s
    verdict, reached faster for the lines journal._codec writes (anything else is left
    to ``decode`` itself)."""
    if (
        line[-2:] == b"}\n"
        and line[:8] == LINE_PREFIX
        and line[_MIDDLE] == LINE_MIDDLE
        and len(line) > BODY_START + 2
        and _scan_json is not None
    ):
        raw = line[BODY_START:-2]
        if b"%08x" % zlib.crc32(raw) == line[_CRC]:
            try:
                text = raw.decode()
                rec, end = _scan_json(text, 0)
            except Exception:
                return decode(line[:-1])[0]
            if (
                end == len(text)
                and type(rec) is dict
                and len(rec) == 7
                and type(rec.get("v")) is int
                and rec["v"] == 1
                and type(rec.get("id")) is str
                and type(rec.get("ts")) is str
                and type(rec.get("pid")) is int
                and type(key := rec.get("key")) is str
                and 0 < len(key) <= MAX_KEY
                and type(kind := rec.get("type")) is str
                and (kind in _TYPES_SEEN or _printable_type(kind))
                and ((data := rec.get("data")) is None or type(data) is dict)
            ):
                return rec
    return decode(line[:-1])[0]


def _printable_type(kind: str) -> bool:
    if 0 < len(kind) <= MAX_TYPE and printable(kind):
        if len(_TYPES_SEEN) < 1024:
            _TYPES_SEEN.add(kind)
        return True
    return False


def _skim(line: bytes) -> tuple[str, str] | None:
    """(event id, timestamp) of the record on ``line`` (newline included), read from
    their fixed places once the checksum holds; None if the line is not laid out as
    journal._codec writes records (it is then decoded, and judged, whole)."""
    if (
        line[-2:] == b"}\n"
        and line[:8] == LINE_PREFIX
        and line[_MIDDLE] == LINE_MIDDLE
        and line[_REC_HEAD_SLICE] == _REC_HEAD
        and line[_TS_HEAD_SLICE] == _TS_HEAD
    ):
        if b"%08x" % zlib.crc32(line[BODY_START:-2]) != line[_CRC]:
            return None
        ts_end = line.find(b'"', _TS_AT)
        if ts_end < 0:
            return None
        return line[_ID_AT : _ID_AT + 36].decode("ascii", "replace"), line[_TS_AT:ts_end].decode(
            "ascii", "replace"
        )
    return None


AGENT_KEY_PREFIXES = ("agent:", "agent-name:")  # keys of records that name no executor


def line_filter(
    key: str | None = None, executor: str | None = None
) -> Callable[[bytes], bool] | None:
    """A test on a record line's bytes that every record of ``key`` (and of executor
    ``executor``) passes, as the hook's hit path finds a key (``journal._hit``): a line
    that fails it is not decoded. A record of executor ``executor`` names it as an
    ``executor_id``, or is agent-keyed (its executor is the one its outcome names,
    docs/operations.md). None when there is nothing to test."""
    tests: list[Callable[[bytes], bool]] = []
    if key is not None:
        needle = key_needle(key)
        tests.append(lambda line: needle in line)
    if executor is not None:
        named = b'"executor_id":' + _json_string(executor)
        agents = tuple(b'"key":' + _json_string(p)[:-1] for p in AGENT_KEY_PREFIXES)
        tests.append(lambda line: named in line or any(a in line for a in agents))
    if not tests:
        return None
    if len(tests) == 1:
        return tests[0]
    first, second = tests
    return lambda line: first(line) and second(line)


class _Journal:
    """One journal as the reader knows it."""

    __slots__ = (
        "after",
        "done",
        "enc",
        "finished",
        "first",
        "head",
        "mtime",
        "name",
        "offset",
        "segment",
        "stream",
    )

    def __init__(self, name: str, offset: int, done: bool, mtime: int) -> None:
        self.name = name
        self.enc = _encode_name(name)
        self.segment = ("", -1, False)  # the cursor's text for it, for (offset, done)
        # The event id of the next record not consumed, "" at its end, None if unknown.
        self.after: str | None = None
        self.offset = offset  # bytes consumed: the end of the last line consumed
        self.done = done  # finished and read to its end: it never changes again
        self.mtime = mtime  # microseconds, from the latest listing that saw it
        self.first: str | None = None  # the first event id seen in it, once known
        self.finished = False
        self.stream: IO[bytes] | None = None
        # The next record not consumed yet: (raw record, the end of its line, the line,
        # its event id, its timestamp); the raw record is None for a record a filter
        # passed over without decoding it (see :func:`line_filter`).
        self.head: Head | None = None


class HistoryReader:
    """Records from a position (a :class:`Cursor`, or the start), merged in event id
    order, each with the cursor just after it; with :meth:`follow`, then the records
    written since, until ``stop()`` says so.

    ``errors`` names what could not be read (an I/O error): never taken for absence.
    """

    AGENT_KEY_PREFIXES = AGENT_KEY_PREFIXES

    def __init__(
        self,
        home: Path | str,
        cursor: Cursor | None = None,
        until: str | None = None,
        *,
        key: str | None = None,
        executor: str | None = None,
    ) -> None:
        self.home = Path(home)
        # With ``key`` or ``executor``, lines that certainly hold no record of them
        # (:func:`line_filter`) are consumed in their place in the merge, as every record
        # is, but neither decoded nor yielded: what is yielded may still not match.
        self._want = line_filter(key, executor)
        self._until = until  # a record after this timestamp is neither read nor consumed
        self.errors: list[str] = []
        self._table: dict[str, _Journal] = {}
        # The journals a cursor may have to name: read from, or resumed part-way.
        self._held: dict[str, _Journal] = {}
        # Done journals dropped from the table, by name, while they are still listed:
        # listing them again costs no stat.
        self._forgotten: set[str] = set()
        self._entries: str | None = None  # the journals a cursor names (None: to compute)
        self._start = cursor
        self._p = cursor.p if cursor is not None else ""
        # Below which a journal not in the table was consumed (see the module docstring).
        self._m = cursor.m if cursor is not None else 0
        self._forget_below = 0  # done journals older than this leave the table
        self._last_name: str | None = None  # the journal of the last record consumed
        self._last_text = ""  # it, and where that record starts, as a cursor says it
        self._passes = 0
        self.consumed = 0  # records consumed so far
        self.line = b""  # the line of the record last yielded, as written (format v1)

    # -- the position -------------------------------------------------------------------

    def cursor(self) -> Cursor:
        """The position after every record consumed so far."""
        return Cursor.parse(self.cursor_text())

    def cursor_text(self) -> str:
        """:meth:`cursor` as text. It is computed for every record printed, so the part
        naming journals is kept, and computed again only when a journal's entry may have
        changed: when the merge opens, reads from or ends a journal, and at each pass.
        Between those, ``p`` grows only to the record just read: a journal in the merge
        has its next record after it (the merge takes the least), one not in it yet its
        first (the merge opens a journal before reading past its first record), and one
        read to its end has nothing left; so no other journal's entry changes."""
        m, p, head = self._m, self._p, self._last_text
        if self._entries is None:
            # In the order of their names, as Cursor.text has them: one position, one
            # text, whatever order the journals were opened in.
            named = [(j.name, s) for j in self._held.values() if (s := self._segment(j))]
            self._entries = ".".join(s for _, s in sorted(named))
        if self._entries:
            return f"{CURSOR_VERSION}.{m:x}.{p.replace('-', '')}.{head}.{self._entries}"
        return f"{CURSOR_VERSION}.{m:x}.{p.replace('-', '')}.{head}"

    def _segment(self, j: _Journal) -> str | None:
        """What a cursor says of journal ``j`` now; None if the rules imply it."""
        m, p = self._m, self._p
        if j.finished and j.mtime < m and j.after is not None and (not j.after or j.after > p):
            return None  # what it consumed is its longest prefix at or before p: the rule
        if j.offset == 0 and not j.done and (j.first is None or j.first > p or j.mtime >= m):
            return None  # nothing consumed, and the rules read it whole
        text, offset, done = j.segment
        if offset != j.offset or done != j.done:
            text = f"{j.enc}_{j.offset:x}{'z' if j.done else ''}"
            j.segment = (text, j.offset, j.done)
        return text

    # -- reading ------------------------------------------------------------------------

    def read(self, stop: Callable[[], bool] = lambda: False) -> Iterator[dict[str, Any]]:
        """One pass: every record written so far and not consumed yet, merged."""
        listed_at = _now_us()
        names = self._list()
        if self._passes == 0:
            self._m = min(self._m, listed_at - CLOCK_MARGIN_US) if self._start else 0
            self._m = self._m or listed_at - CLOCK_MARGIN_US
        for name, mtime in names.items():
            known = self._table.get(name)
            if known is not None:
                known.mtime = mtime
            elif self._passes == 0:
                self._table[name] = self._resumed(name, mtime)
            elif mtime >= self._forget_below:
                self._table[name] = _Journal(name, 0, False, mtime)
            # else: a done journal this reader forgot (consumed)
        if self._passes == 0 and self._start is not None:
            self._check_pruned(names)
        yield from self._merge(stop)
        self._passes += 1
        # Done journals older than this listing (less the margin) are forgotten: one this
        # reader has not seen is newer than the listing (docs/architecture.md).
        self._forget_below = self._m = listed_at - CLOCK_MARGIN_US
        self._entries = None
        for name in [n for n, j in self._table.items() if j.done and j.mtime < self._m]:
            if self._last_name != name:
                del self._table[name]
                self._held.pop(name, None)
                self._forgotten.add(name)

    def follow(
        self,
        stop: Callable[[], bool],
        idle: Callable[[], None] = lambda: None,
        poll_s: float = 0.25,
    ) -> Iterator[dict[str, Any]]:
        """Pass after pass until ``stop()``; ``idle()`` is called between passes."""
        while not stop():
            yield from self.read(stop)
            if stop():
                return
            idle()
            deadline = time.monotonic() + poll_s
            while not stop() and time.monotonic() < deadline:
                time.sleep(min(0.05, poll_s))

    def _list(self) -> dict[str, int]:
        """Journal name -> mtime (us), ``journal/`` listed before ``archive/``: a journal
        archived between the two listings is in the second."""
        found: dict[str, int] = {}
        listed: set[str] = set()
        for directory in (JOURNAL_DIR, ARCHIVE_DIR):
            try:
                paths = list_files(self.home / directory, JOURNAL_SUFFIX)
            except OSError as exc:
                self._note(describe(self.home / directory, exc))
                continue
            for path in paths:
                name = os.path.basename(path)
                if name in found or name in listed:
                    continue
                listed.add(name)
                known = self._table.get(name)
                if name in self._forgotten or (known is not None and known.done):
                    continue  # done for good: its mtime is known, or no longer needed
                try:
                    found[name] = os.lstat(path).st_mtime_ns // 1000
                except FileNotFoundError:
                    found[name] = self._mtime(name) if directory == JOURNAL_DIR else -1
                except OSError as exc:
                    self._note(describe(path, exc))
        # A forgotten journal no longer listed (pruned) never comes back: the set stays
        # as large as the directories, not as the history followed.
        self._forgotten &= listed
        return {n: t for n, t in found.items() if t >= 0}

    def _mtime(self, name: str) -> int:
        try:
            return os.lstat(self.home / ARCHIVE_DIR / name).st_mtime_ns // 1000
        except OSError:
            return -1

    def _resumed(self, name: str, mtime: int) -> _Journal:
        """A journal as the starting cursor leaves it."""
        start = self._start
        if start is None:
            return _Journal(name, 0, False, mtime)
        if name in start.entries:
            offset, done = start.entries[name]
            self._held[name] = _Journal(name, offset, done, mtime)
            return self._held[name]
        j = _Journal(name, 0, False, mtime)
        if mtime < start.m and start.p:  # its longest prefix at or before p was consumed
            stream = self._open(j)
            if stream is None:
                return j
            with stream:
                head = self._next(j, stream, 0)
                while head is not None and head[3] <= start.p:
                    j.first = j.first or head[3]
                    j.offset = head[1]
                    head = self._next(j, stream, j.offset)
            j.after = "" if head is None else head[3]
            if head is None and j.finished:
                j.done = True
            if j.offset:
                self._held[name] = j
                self._entries = None
        return j

    def _check_pruned(self, names: dict[str, int]) -> None:
        assert self._start is not None
        for name, (offset, done) in self._start.entries.items():
            if name not in names and not done and offset > 0:
                raise CursorPrunedError(
                    f"the cursor points into history that is gone: journal {name} was "
                    "pruned from archive/ (retention) before it was read to its end; "
                    "start from the oldest retained record: replay without --cursor, "
                    "--after-cursor or --cursor-file (or remove the cursor file)"
                )

    def _open(self, j: _Journal) -> IO[bytes] | None:
        """Open a journal where it is now, positioned at its offset; learn whether it is
        finished. None if it is gone (pruned) or unreadable (noted)."""
        for directory in (JOURNAL_DIR, ARCHIVE_DIR):
            path = self.home / directory / j.name
            try:
                fd = open_regular(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                self._note(describe(path, exc))
                return None
            if fd is None:
                j.done = True  # not a regular file: nothing to read, ever
                return None
            # Finished first, then read to the end: then nothing is missed.
            j.finished = directory == ARCHIVE_DIR or writer_gone(path) is True
            if j.finished:  # its mtime now is for good: the one the cursor's rules need
                try:
                    j.mtime = os.fstat(fd).st_mtime_ns // 1000
                except OSError as exc:
                    os.close(fd)
                    self._note(describe(path, exc))
                    return None
            stream = os.fdopen(fd, "rb")
            stream.seek(j.offset)
            return stream
        return None

    def _peek(self, j: _Journal) -> str | None:
        """The event id of the first record at or after ``j.offset`` (None if none)."""
        stream = self._open(j)
        if stream is None:
            return None
        with stream:
            head = self._next(j, stream, j.offset)
        j.after = "" if head is None else head[3]
        return j.after or None

    def _next(self, j: _Journal, stream: IO[bytes], at: int) -> Head | None:
        """The next record from byte ``at`` of ``stream``, with the end of its line, the
        line, its event id and timestamp; lines that hold no record are consumed on the
        way (``j.offset`` moves past them). A line ``want`` refuses is not decoded: its
        checksum is checked, and its id and timestamp read from their places."""
        want = self._want
        while True:
            try:
                line = stream.readline(MAX_LINE + 1)
            except OSError as exc:
                self._note(describe(j.name, exc))
                return None
            if not line:
                return None
            if not line.endswith(b"\n"):
                if len(line) <= MAX_LINE:
                    if j.finished:  # torn: its writer is gone, it never ends
                        j.offset = at + len(line)
                    return None  # a line being written: for a later pass
                end = at + len(line)  # oversize: skipped whole
                while not line.endswith(b"\n"):
                    line = stream.readline(1 << 16)
                    if not line:
                        return None
                    end += len(line)
                j.offset = at = end
                continue
            end = at + len(line)
            if want is not None and not want(line):
                skimmed = _skim(line)
                if skimmed is not None:
                    return None, end, line, skimmed[0], skimmed[1]
            record = _record(line)
            if record is None:
                if j.offset == at:
                    j.offset = end  # not a record: consumed silently (compact counts it)
                at = end
                continue
            return record, end, line, record["id"], record["ts"]

    def _merge(self, stop: Callable[[], bool]) -> Iterator[dict[str, Any]]:
        """Read every journal not done to its current end, records merged by event id."""
        upcoming: list[tuple[str, str]] = []
        for j in self._table.values():
            if j.done:
                continue
            first = self._peek(j)
            if first is None:
                self._settle(j)
                continue
            if j.offset == 0 or j.first is None:
                j.first = j.first or first
            upcoming.append((first, j.name))
        upcoming.sort(reverse=True)
        self._entries = None  # the peeks moved what they found
        active: list[tuple[str, str]] = []
        table, until, want, n = self._table, self._until, self._want, 0
        try:
            while active or upcoming:
                if not n & 63 and stop():  # asked every 64 records: a call costs
                    break
                n += 1
                while upcoming and (not active or upcoming[-1][0] <= active[0][0]):
                    _, name = upcoming.pop()
                    j = self._table[name]
                    j.stream = self._open(j)
                    if j.stream is not None:
                        j.head = self._next(j, j.stream, j.offset)
                    j.after = "" if j.head is None else j.head[3]
                    if j.head is not None:
                        heapq.heappush(active, (j.head[3], name))
                        self._held[name] = j
                        self._entries = None
                    else:
                        self._settle(j)
                if not active:
                    continue
                name = active[0][1]
                j = table[name]
                record, end, line, event_id, ts = j.head  # type: ignore[misc]
                if until is not None and ts > until:
                    return  # the rest sorts after it: left for a cursor to resume from
                # Its entry before and after (see _segment, whose first rule, the common
                # one, is inlined: a finished journal whose next record sorts after p).
                m, p = self._m, self._p
                before = (
                    None
                    if j.finished and j.mtime < m and j.after is not None and j.after > p
                    else self._segment(j)
                )
                self._last_name = name
                self._last_text = f"{j.enc}_{j.offset:x}"
                j.offset = end
                self.consumed += 1
                if event_id > self._p:
                    self._p = event_id
                # The next line: decoded here when it is a whole record (most are), else
                # read again by _next, which knows what to do with every other line.
                stream: IO[bytes] = j.stream  # type: ignore[assignment]
                following = stream.readline(_LINE_LIMIT)
                if (
                    want is None
                    and following[-1:] == b"\n"
                    and (got := _record(following)) is not None
                ):
                    head: Head | None = (got, end + len(following), following, got["id"], got["ts"])
                else:
                    stream.seek(end)
                    head = self._next(j, stream, end)
                j.head = head
                if head is not None:
                    j.after = head[3]
                    heapq.heapreplace(active, (head[3], name))
                else:
                    j.after = ""
                    heapq.heappop(active)
                    self._settle(j)
                if before is not None or (
                    not (j.finished and j.mtime < m and (not j.after or j.after > self._p))
                    and self._segment(j) is not None
                ):
                    self._entries = None  # its entry changed
                if record is not None:
                    self.line = line
                    yield record
        finally:
            for j in self._table.values():
                if j.stream is not None:
                    j.stream.close()
                    j.stream = None
                    j.head = None

    def _settle(self, j: _Journal) -> None:
        """At a journal's current end: done if finished, kept for the next pass if not."""
        if j.stream is not None:
            j.stream.close()
            j.stream = None
        j.head = None
        if j.finished:
            j.done = True
        self._entries = None

    def _note(self, message: str) -> None:
        if message not in self.errors:
            self.errors.append(message)
