"""What is in a state directory, for operators (``reconcile status``)."""

from __future__ import annotations

import os
from pathlib import Path

import attrs

from journal._hit import (
    ARCHIVE_DIR,
    JOURNAL_DIR,
    JOURNAL_SUFFIX,
    QUARANTINE_DIR,
    SNAPSHOT,
    list_files,
)
from journal._read import describe, writer_gone
from journal._snapshot import read_header


@attrs.frozen
class Inventory:
    """Files and sizes of the state directory; ``snapshot_created`` is the last compaction.

    ``errors`` names what could not be read (an I/O error): the counts leave it out.
    """

    journals: int
    journal_bytes: int
    live_writers: int
    archive_files: int
    archive_bytes: int
    quarantined_records: int
    snapshot_bytes: int
    snapshot_created: str | None
    errors: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        data = attrs.asdict(self)
        data["errors"] = list(self.errors)
        return data


def inventory(home: Path | str) -> Inventory:
    """Count what ``home`` holds; never raises (I/O errors are named in ``errors``)."""
    home = Path(home)
    errors: list[str] = []
    journals = _files(home / JOURNAL_DIR, JOURNAL_SUFFIX, errors)
    archived = _files(home / ARCHIVE_DIR, JOURNAL_SUFFIX, errors)
    quarantined = 0
    for path in _files(home / QUARANTINE_DIR, ".jsonl", errors):
        try:
            with open(path, "rb") as stream:
                quarantined += sum(1 for _ in stream)
        except FileNotFoundError:
            continue
        except OSError as exc:
            errors.append(describe(path, exc))
    try:
        header = read_header(home / SNAPSHOT)
    except OSError as exc:
        errors.append(describe(home / SNAPSHOT, exc))
        header = None
    created = header.get("created") if header else None
    return Inventory(
        journals=len(journals),
        journal_bytes=_size(journals, errors),
        live_writers=sum(1 for path in journals if writer_gone(path) is False),
        archive_files=len(archived),
        archive_bytes=_size(archived, errors),
        quarantined_records=quarantined,
        snapshot_bytes=_size([home / SNAPSHOT], errors),
        snapshot_created=created if isinstance(created, str) else None,
        errors=tuple(errors),
    )


def _files(directory: Path, suffix: str, errors: list[str]) -> list[Path]:
    try:
        return [Path(p) for p in list_files(directory, suffix)]
    except OSError as exc:
        errors.append(describe(directory, exc))
        return []


def _size(paths: list[Path], errors: list[str]) -> int:
    total = 0
    for path in paths:
        try:
            total += os.lstat(path).st_size
        except FileNotFoundError:
            continue
        except OSError as exc:
            errors.append(describe(path, exc))
    return total
