"""journal: a lossless per-process event journal with snapshot compaction.

Each process appends keyed records to a journal file of its own (:class:`Writer`); a
compactor (:func:`compact`) folds the journals into a bounded snapshot, and
:func:`load` gives the latest record per key. The package knows nothing of what the
keys and records mean.

Exports are loaded lazily so that the hit path (:func:`latest`) imports no third-party
module: ``import journal`` costs nothing until a name is used.
"""

import sys

TYPE_CHECKING = False  # not from typing: importing it costs the hit path milliseconds

__all__ = [
    "FILE_MODE",
    "LOG_DIR",
    "CompactionIncompleteError",
    "CompactionReport",
    "Cursor",
    "CursorError",
    "CursorPrunedError",
    "History",
    "HistoryReader",
    "InvalidRecordError",
    "Inventory",
    "JournalError",
    "Record",
    "RecordTooLargeError",
    "Retention",
    "Skips",
    "State",
    "StorageError",
    "UnsafePathError",
    "UntrustedPathError",
    "Writer",
    "absolute_path",
    "check_home",
    "compact",
    "dump_json",
    "ensure_dir",
    "ensure_home",
    "event_id_next_to",
    "event_time_us",
    "fold",
    "history",
    "home_refusal",
    "inventory",
    "join_path",
    "latest",
    "load",
    "lock_marked",
    "mark_lock",
    "mode_text",
    "new_event_id",
    "parse_json",
    "path_refusal",
    "release_lock",
    "writable_fix",
    "write_atomically",
]

_WHERE = {
    "CompactionIncompleteError": "_errors",
    "CompactionReport": "_model",
    "Cursor": "_follow",
    "CursorError": "_errors",
    "CursorPrunedError": "_errors",
    "HistoryReader": "_follow",
    "History": "_read",
    "Record": "_model",
    "Skips": "_model",
    "State": "_model",
    "InvalidRecordError": "_errors",
    "Inventory": "_inventory",
    "inventory": "_inventory",
    "JournalError": "_errors",
    "RecordTooLargeError": "_errors",
    "StorageError": "_errors",
    "UnsafePathError": "_errors",
    "UntrustedPathError": "_trust",
    "check_home": "_trust",
    "home_refusal": "_hit",
    "mode_text": "_hit",
    "writable_fix": "_hit",
    "path_refusal": "_hit",
    "Writer": "_writer",
    "event_id_next_to": "_codec",
    "event_time_us": "_hit",
    "parse_json": "_hit",
    "join_path": "_hit",
    "dump_json": "_json",
    "FILE_MODE": "_layout",
    "LOG_DIR": "_hit",
    "absolute_path": "_layout",
    "ensure_dir": "_layout",
    "ensure_home": "_layout",
    "write_atomically": "_layout",
    "fold": "_fold",
    "new_event_id": "_writer",
    "Retention": "_compact",
    "compact": "_compact",
    "history": "_read",
    "latest": "_hit",
    "load": "_read",
    "lock_marked": "_platform",
    "mark_lock": "_platform",
    "release_lock": "_platform",
}


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'journal' has no attribute {name!r}")
    __import__(f"journal.{module}")  # not importlib: that costs the hook half a millisecond
    value = getattr(sys.modules[f"journal.{module}"], name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from journal._codec import event_id_next_to
    from journal._compact import Retention, compact
    from journal._errors import (
        CompactionIncompleteError,
        CursorError,
        CursorPrunedError,
        InvalidRecordError,
        JournalError,
        RecordTooLargeError,
        StorageError,
        UnsafePathError,
    )
    from journal._fold import fold
    from journal._follow import Cursor, HistoryReader
    from journal._hit import (
        LOG_DIR,
        event_time_us,
        home_refusal,
        join_path,
        latest,
        mode_text,
        parse_json,
        path_refusal,
        writable_fix,
    )
    from journal._inventory import Inventory, inventory
    from journal._json import dump_json
    from journal._layout import FILE_MODE, absolute_path, ensure_dir, ensure_home, write_atomically
    from journal._model import CompactionReport, Record, Skips, State
    from journal._platform import lock_marked, mark_lock, release_lock
    from journal._read import History, history, load
    from journal._trust import UntrustedPathError, check_home
    from journal._writer import Writer, new_event_id
