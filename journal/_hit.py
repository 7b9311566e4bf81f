"""The hit path's read, whole: the latest raw record for one key, on ``posix`` alone.

The hook runs this on every Claude Code event it is wired to, in a fresh interpreter, so
what it loads is what it costs (docs/performance.md): ``os`` costs a tenth of the
interpreter's own start-up, and each module file of ours about a seventieth. So
everything the hit path runs in this package is in this one module, on what the
interpreter has loaded anyway (``posix``, ``_stat``, ``time``) plus two C modules: ``zlib``
for checksums and ``_json``, the scanner behind :func:`json.loads`, without the ``json``
package (which imports ``re``). The rest of the package builds on these pieces:
:mod:`journal._codec` writes the lines decoded here, :mod:`journal._scan` streams the
files read whole here, :mod:`journal._trust` checks a whole state directory by the rule
:func:`refusal` states, and :mod:`journal._layout` creates what is named here.

It returns raw records (plain dicts, see docs/formats.md), never a class, and it never
raises and never trusts less than :func:`journal.load` does: whatever it cannot read or
check (an I/O error, a snapshot that is not intact, a compaction that replaced the
snapshot while the journals were being read) is a miss, and the database answers.
"""

import posix
import zlib
from _stat import S_IMODE, S_ISLNK, S_ISREG, S_IWGRP, S_IWOTH  # what stat.py re-exports

TYPE_CHECKING = False  # typing costs milliseconds on the hit path; checkers see True
if TYPE_CHECKING:
    import os
    from collections.abc import Iterable, Iterator
    from typing import Any

    StrPath = str | os.PathLike[str]
    Identity = tuple[int, int, int, int]

# The state directory's names (docs/formats.md); journal._layout creates them.
JOURNAL_DIR = "journal"
ARCHIVE_DIR = "archive"
QUARANTINE_DIR = "quarantine"
LOG_DIR = "log"
SNAPSHOT = "snapshot"
COMPACT_LOCK = "compact.lock"
JOURNAL_SUFFIX = ".jnl"
PENDING_SUFFIX = ".new"  # a journal being created, not yet locked by its writer
TEMP_SUFFIX = ".tmp"  # ".<name>.<pid>.tmp": a file being replaced (write_atomically)

READ_FLAGS = posix.O_RDONLY | posix.O_NOFOLLOW | posix.O_NONBLOCK | posix.O_CLOEXEC
READ_WHOLE_MAX = 64 << 20  # bytes: a larger file (hostile, surely) is streamed


# -- Whose files these are (the rule journal._trust applies to a whole directory) --------

# What the hit path reads, beside the directory itself: checked on every hook.
_HIT_PATH_READS = (JOURNAL_DIR, SNAPSHOT)


def refusal(path: "StrPath", st: "os.stat_result") -> str | None:
    """Why ``path`` (whose ``lstat`` is ``st``) may not be trusted, or None: one line that
    names the path and says what to do. A file another local user could have planted or
    changed is a forged hit or a forged database write (docs/operations.md)."""
    if S_ISLNK(st.st_mode):
        return f"{path} is a symlink; a state directory holds no symlinks: remove it"
    if st.st_uid != posix.geteuid():
        return (
            f"{path} belongs to {_user(st.st_uid)}, not to {_user(posix.geteuid())}: a "
            "state directory must be yours alone; remove it (or its owner must), or set "
            "RECONCILE_HOME to a directory of your own"
        )
    if st.st_mode & (S_IWGRP | S_IWOTH):
        return f"{path} is writable by group or others (mode {mode_text(st.st_mode)}): " + (
            writable_fix(path)
        )
    return None


def mode_text(mode: int) -> str:
    """A file mode as every message prints it: four octal digits, ``0770``."""
    return f"{S_IMODE(mode):04o}"


def writable_fix(path: "StrPath") -> str:
    """What every message says to do about ``path`` writable by group or others."""
    return f"check what it holds, then chmod go-w {path}"


def join_path(directory: "StrPath", name: str) -> str:
    """``os.path.join`` of a directory and a relative name (``os`` is not loaded here)."""
    top = posix.fspath(directory)
    return top + name if top.endswith("/") else f"{top}/{name}"


def path_refusal(path: "StrPath") -> str | None:
    """Why ``path`` may not be trusted, or None (also when it does not exist: there is
    nothing to read, and we create what is missing, ours). One ``lstat``; never raises."""
    try:
        st = posix.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:  # unreadable is not absent: not ours to trust either
        return f"{path} cannot be checked ({exc.strerror}): fix its permissions"
    return refusal(path, st)


def home_refusal(home: "StrPath") -> str | None:
    """The hook's check: why ``home`` may not be read, or None. Never raises.

    Three ``lstat`` calls: ``home``, ``home/journal`` and ``home/snapshot``; a missing one
    passes (created 0700/0600 by us when first needed).
    """
    top = posix.fspath(home)
    for path in (top, *(f"{top}/{name}" for name in _HIT_PATH_READS)):
        reason = path_refusal(path)
        if reason is not None:
            return reason
    return None


def _user(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


# -- Files ---------------------------------------------------------------------------------


def list_files(directory: "StrPath", suffix: str) -> list[str]:
    """Paths in ``directory`` ending in ``suffix``, sorted.

    Empty when the directory does not exist, is not a directory, or is a symlink
    (refused, never followed). A directory that exists but cannot be listed raises
    OSError: an unreadable directory is not an empty one.
    """
    top = posix.fspath(directory)
    try:
        if S_ISLNK(posix.lstat(top).st_mode):
            return []
        names = posix.listdir(top)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [f"{top}/{name}" for name in sorted(names) if name.endswith(suffix)]


def open_regular(path: "StrPath") -> int | None:
    """Open ``path`` for reading without following a symlink; None if it is not a regular
    file (a symlink, a directory, a FIFO, a socket: content that is proved unusable).

    Raises FileNotFoundError if it is gone, and OSError if it exists but cannot be
    opened: a file that could not be read is never taken for one that holds nothing.
    """
    try:
        fd = posix.open(path, READ_FLAGS)
    except FileNotFoundError:
        raise
    except OSError:
        # O_NOFOLLOW met a symlink (ELOOP), or a socket refused (ENXIO): not a file.
        # Told apart by lstat, not errno codes (the hit path imports no errno module).
        try:
            regular = S_ISREG(posix.lstat(path).st_mode)
        except OSError:
            regular = True  # cannot tell: the open's error stands
        if not regular:
            return None
        raise
    try:
        regular = S_ISREG(posix.fstat(fd).st_mode)
    except OSError:
        posix.close(fd)
        raise
    if not regular:
        posix.close(fd)
        return None
    return fd


def read_all(path: "StrPath") -> bytes | None:
    """The bytes of the file at ``path`` (none if it is not a regular file), or None if it
    is too large to hold. Raises FileNotFoundError if it is gone, OSError if it cannot
    be read."""
    fd = open_regular(path)
    if fd is None:
        return b""
    try:
        return _read_fd(fd, posix.fstat(fd).st_size)
    finally:
        posix.close(fd)


def _read_fd(fd: int, size: int) -> bytes | None:
    if size > READ_WHOLE_MAX:
        return None
    chunks = []
    while chunk := posix.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


# -- JSON, without the json package --------------------------------------------------------

_WHITESPACE = " \t\n\r"


class _NotJSONError(ValueError):
    """A number JSON (RFC 8259) has no value for: NaN, Infinity, or beyond a float."""


def _finite(text: str) -> float:
    value = float(text)
    if value - value != 0:  # inf or nan
        raise _NotJSONError(f"{text[:40]} is beyond a float")
    return value


class _Context:
    """What the C scanner reads from a ``json.JSONDecoder``: ``loads``'s defaults, but
    strict about numbers. A record whose data held NaN or 1e999 would be read, and then
    could never be written again (the encoder refuses them): such a line is rejected here,
    as not JSON, and quarantined like any other."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = staticmethod(_finite)
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        raise _NotJSONError(f"{name} is not JSON")


try:
    from _json import make_scanner as _make_scanner
except ImportError:  # pragma: no cover - CPython always has it
    _scan_json = None
else:
    _scan_json = _make_scanner(_Context())  # type: ignore[arg-type]  # a duck-typed decoder


def parse_json(data: bytes | str) -> object:
    """Like :func:`json.loads` on UTF-8 (or str) input; raises ValueError if invalid."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    if _scan_json is None:  # pragma: no cover
        import json

        return json.loads(text)
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan_json(text, start)
    except StopIteration:
        raise ValueError("not a JSON document") from None
    except _NotJSONError:
        raise
    except (ValueError, SystemError):
        # Malformed input. The scanner builds its error from json.decoder, and without
        # that module loaded (3.11) it fails with SystemError: let json explain instead.
        import json

        return json.loads(text)
    if text[end:].strip(_WHITESPACE):
        raise ValueError("extra data after the JSON document")
    return value


# -- Record lines (format version 1, written by journal._codec) ----------------------------
#
# A line is one JSON object, ASCII only, terminated by ``\n``::
#
#     {"crc":"1a2b3c4d","rec":{"v":1,"id":"…","ts":"…","pid":1,"type":"…","key":"…","data":…}}
#
# ``crc`` is the CRC-32 of the exact bytes of the ``rec`` value, so a reader verifies a
# line by slicing, without re-serialising anything.

VERSION = 1
MAX_LINE = 4096  # PIPE_BUF on Linux: one write() of at most this many bytes is atomic.
MAX_KEY = 512
MAX_TYPE = 64

LINE_PREFIX = b'{"crc":"'
LINE_MIDDLE = b'","rec":'
BODY_START = len(LINE_PREFIX) + 8 + len(LINE_MIDDLE)
HEX_DIGITS = frozenset(b"0123456789abcdef")
_FIELDS = ("v", "id", "ts", "pid", "type", "key", "data")

# Reasons a line is skipped; the reader counts each one.
CHECKSUM = "checksum"
JSON = "json"
VERSION_REASON = "version"
TORN = "torn"
OVERSIZE = "oversize"
NOT_A_FILE = "not-a-file"
REASONS = (CHECKSUM, JSON, VERSION_REASON, TORN, OVERSIZE, NOT_A_FILE)


def printable(value: str) -> bool:
    return value.isascii() and value.isprintable()


def decode(line: bytes) -> "tuple[dict[str, Any] | None, str | None]":
    """Decode one line without its newline: ``(record, None)`` or ``(None, reason)``.

    Never raises, whatever the bytes.
    """
    if (
        len(line) <= BODY_START + 1
        or not line.startswith(LINE_PREFIX)
        or line[BODY_START - len(LINE_MIDDLE) : BODY_START] != LINE_MIDDLE
        or not line.endswith(b"}")
    ):
        return None, JSON
    crc = line[len(LINE_PREFIX) : len(LINE_PREFIX) + 8]
    if not HEX_DIGITS.issuperset(crc):
        return None, CHECKSUM
    raw = line[BODY_START:-1]
    if zlib.crc32(raw) != int(crc, 16):
        return None, CHECKSUM
    try:
        record = parse_json(raw)
    except ValueError:  # also UnicodeDecodeError and RecursionError's cousin ValueError
        return None, JSON
    except RecursionError:
        return None, JSON
    if not isinstance(record, dict):
        return None, JSON
    version = record.get("v")
    if type(version) is not int or version != VERSION:  # not True, not 1.0
        return None, VERSION_REASON
    if not _well_formed(record):
        return None, JSON
    return record, None


def _well_formed(record: "dict[str, Any]") -> bool:
    return (
        len(record) == len(_FIELDS)
        and isinstance(record.get("id"), str)
        and isinstance(record.get("ts"), str)
        and type(record.get("pid")) is int
        and isinstance(record.get("type"), str)
        and 0 < len(record["type"]) <= MAX_TYPE
        and printable(record["type"])
        and isinstance(record.get("key"), str)
        and 0 < len(record["key"]) <= MAX_KEY
        and (record.get("data") is None or isinstance(record["data"], dict))
    )


def event_time_us(event_id: str) -> int:
    """The Unix time, in microseconds, encoded in an event id (a UUIDv7, journal._codec)."""
    value = int(event_id.replace("-", ""), 16)
    rand_a = (value >> 64) & 0xFFF
    return (value >> 80) * 1000 + -(-rand_a * 1000 // 4096)


def newer(record: "dict[str, Any]", than: "dict[str, Any] | None") -> bool:
    """Whether ``record`` folds after ``than``: (timestamp, event id) order."""
    return than is None or (record["ts"], record["id"]) > (than["ts"], than["id"])


def key_needle(key: str) -> bytes:
    """The bytes every record line about ``key`` contains."""
    return b'"key":' + _json_string(key) + b","


def _json_string(text: str) -> bytes:
    """``text`` as the encoder writes it in a record (ASCII, escaped)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return b'"' + text.encode("ascii") + b'"'
    import json  # rare keys only: the hit path's keys are printable ASCII

    return json.dumps(text).encode("ascii")


def _mentioning(data: bytes, needle: bytes) -> "Iterator[dict[str, Any] | None]":
    """Decode the complete lines of ``data`` that contain ``needle``. The needle may also
    sit in another record's data: callers check the key itself."""
    at = data.find(needle)
    while at >= 0:
        start = data.rfind(b"\n", 0, at) + 1
        end = data.find(b"\n", at)
        if end < 0:
            return
        if end - start < MAX_LINE:
            yield decode(data[start:end])[0]
        at = data.find(needle, end)


def latest_in(data: bytes, key: str) -> "dict[str, Any] | None":
    """The latest record for ``key`` among the complete lines of ``data``."""
    best = None
    for record in _mentioning(data, key_needle(key)):
        if record is not None and record["key"] == key and newer(record, best):
            best = record
    return best


def lookup(files: "Iterable[StrPath]", key: str) -> "dict[str, Any] | None":
    """The latest raw record for ``key`` in ``files`` (tombstones included), or None.

    Each file is read whole and searched for the key's bytes; only the lines that
    mention it are decoded. A line still being written (no newline yet) is left alone.
    A file gone since it was listed is passed over (a compactor archived it: the caller
    checks that the snapshot it read is still the current one); one that cannot be read
    raises OSError.
    """
    needle = key_needle(key)
    best: dict[str, Any] | None = None
    for path in files:
        try:
            data = read_all(path)
            records: Iterator[dict[str, Any] | None]
            if data is None:  # too large to hold: stream it line by line instead
                from journal._scan import scan

                records = (line.record for line in scan(path, finished=False, needle=needle))
            else:
                records = _mentioning(data, needle)
            for record in records:
                if record is not None and record["key"] == key and newer(record, best):
                    best = record
        except FileNotFoundError:
            continue
    return best


# -- The snapshot (format version 2, written by journal._snapshot) -------------------------
#
# The CRC-32 of every byte after its own eight hex digits (bytes 8-15) covers the whole
# file, header included; version 1 covered the record lines only, and is still read.

SNAPSHOT_VERSIONS = (1, 2)  # the snapshot format versions this reader understands
SNAPSHOT_PREFIX = b'{"crc":"'  # version 2: the CRC's eight hex digits follow, at bytes 8-15
SNAPSHOT_CRC_END = len(SNAPSHOT_PREFIX) + 8


def parse_snapshot(content: bytes) -> "tuple[dict[str, Any] | None, bytes, bool]":
    """Split a snapshot (docs/formats.md) into ``(header, body, sealed)``.

    ``header`` is the first line, parsed, when it is a snapshot header of a known
    version (else None, and ``body`` is the whole content); ``body`` the bytes of the
    record lines; ``sealed`` whether the checksum holds and ``entries`` is an integer.
    Intact means sealed, and ``entries`` equal to the number of lines of ``body``, each
    a valid record: the caller counts those. Never raises.
    """
    end = content.find(b"\n")
    header = _snapshot_header(content[:end]) if end >= 0 else None
    if header is None:
        return None, content, False
    body = content[end + 1 :]
    if header["snapshot"] == 2:
        digits = content[len(SNAPSHOT_PREFIX) : SNAPSHOT_CRC_END]
        sealed = (
            content.startswith(SNAPSHOT_PREFIX)
            and HEX_DIGITS.issuperset(digits)
            and int(digits, 16) == zlib.crc32(memoryview(content)[SNAPSHOT_CRC_END:])
        )
    else:
        sealed = header.get("crc") == f"{zlib.crc32(body):08x}"
    return header, body, sealed and type(header.get("entries")) is int


def _snapshot_header(line: bytes) -> "dict[str, Any] | None":
    try:
        parsed = parse_json(line)
    except (ValueError, RecursionError):
        return None
    version = parsed.get("snapshot") if isinstance(parsed, dict) else None
    if type(version) is int and version in SNAPSHOT_VERSIONS:
        return parsed  # type: ignore[return-value]  # a dict, checked above
    return None


def floor_of(header: object) -> tuple[str, str] | None:
    """The eviction floor recorded in a parsed snapshot header (see :mod:`journal._fold`)."""
    floor = header.get("floor") if isinstance(header, dict) else None
    if isinstance(floor, list) and len(floor) == 2 and all(isinstance(x, str) for x in floor):
        return floor[0], floor[1]
    return None


def floor_in_force(
    floor: "tuple[str, str] | None", now_us: int | None = None
) -> "tuple[str, str] | None":
    """``floor``, or None if it is in the future: the clock stepped back since a
    compaction set it, and then the records written since may sort below it, so it
    cannot tell them from what was evicted (docs/architecture.md, "Time"). ``now_us``:
    the time to compare with, Unix microseconds; the clock by default.

    :func:`latest` calls it only for a record that the floor would drop (a miss
    anyway), so a hit reads no clock for it.
    """
    if floor is None:
        return None
    if now_us is None:
        import time  # loaded with the interpreter; read only below a floor, never on a hit

        now_us = time.time_ns() // 1000
    try:
        at = event_time_us(floor[1])
    except ValueError:  # not an event id: the snapshot's checksum held, so ours; keep it
        return floor
    return floor if at <= now_us else None


# -- The read ------------------------------------------------------------------------------


def journal_files(home: "StrPath") -> list[str]:
    """The journals under ``home/journal/``, finished and live (OSError if unlistable)."""
    return list_files(f"{posix.fspath(home)}/{JOURNAL_DIR}", JOURNAL_SUFFIX)


def latest(home: "StrPath", key: str) -> "dict[str, Any] | None":
    """The hit path's read: the latest raw record for ``key``, None if absent or forgotten.

    Reads the snapshot and the journals and decodes only lines that mention ``key``;
    returns a plain dict (see docs/formats.md) so that no class is imported. Journal
    records at or below the snapshot's eviction floor count only for keys the snapshot
    holds, exactly as in :func:`journal.load` (see :mod:`journal._fold`), unless the floor
    is in the future (:func:`floor_in_force`).

    Where :func:`journal.load` would rebuild from the archive (a snapshot corrupt,
    unreadable, or missing while the archive is not empty), this returns None: a miss,
    and the database answers. So does any I/O error, and a snapshot replaced by a
    compaction while the journals were read (a journal archived meanwhile would be
    missed). Never raises.
    """
    try:
        top = posix.fspath(home)
        if S_ISLNK(posix.lstat(top).st_mode):  # refused, as everywhere in the directory
            return None
        path = f"{top}/{SNAPSHOT}"
        snapshot, identity = _read_snapshot(path)
        if snapshot is None:
            return None  # not a file, or absurdly large: not ours to trust here
        if snapshot:
            header, body, sealed = parse_snapshot(snapshot)
            if header is None or not sealed or header["entries"] != body.count(b"\n"):
                return None
            floor = floor_of(header)
        elif list_files(f"{top}/{ARCHIVE_DIR}", JOURNAL_SUFFIX):
            return None  # the snapshot is gone but history was archived: do not guess
        else:
            body, floor = b"", None  # never compacted: every record is in the journals
        best = latest_in(body, key)
        found = lookup(journal_files(top), key)
        if _identity(path) != identity:
            return None  # compacted meanwhile: what it archived may have been missed
    except (OSError, ValueError):
        return None
    if (
        found is not None
        and newer(found, best)
        and (
            best is not None
            or floor is None
            or (found["ts"], found["id"]) > floor
            or floor_in_force(floor) is None  # below a floor from the future: counts
        )
    ):
        best = found
    return None if best is None or best["data"] is None else best


def _read_snapshot(path: str) -> "tuple[bytes | None, Identity | None]":
    """The snapshot's bytes (empty if there is none) and identity; None for the bytes if
    it is not a regular file or too large. Raises OSError if it cannot be read."""
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        return b"", None
    if fd is None:
        return None, None
    try:
        st = posix.fstat(fd)
        content = _read_fd(fd, st.st_size)
    finally:
        posix.close(fd)
    return content, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _identity(path: str) -> "Identity | None":
    """What tells one snapshot file from the next: a compaction renames a new file over
    it (another inode, size or time). None if there is none."""
    try:
        st = posix.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns
