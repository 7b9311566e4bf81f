"""What is in a state directory, for operators (``reconcile status``)."""

from __future__ import annotations

import os
from pathlib import Path

import attrs

from journal._layout import QUARANTINE_DIR, SNAPSHOT
from journal._read import archive_files, journal_files, writer_gone
from journal._snapshot import read_header


@attrs.frozen
class Inventory:
    """Files and sizes of the state directory; ``snapshot_created`` is the last compaction."""

    journals: int
    journal_bytes: int
    live_writers: int
    archive_files: int
    archive_bytes: int
    quarantined_records: int
    snapshot_bytes: int
    snapshot_created: str | None

    def to_dict(self) -> dict[str, object]:
        return attrs.asdict(self)


def inventory(home: Path | str) -> Inventory:
    """Count what ``home`` holds; never raises for a missing or odd directory."""
    home = Path(home)
    journals = journal_files(home)
    archived = archive_files(home)
    quarantined = 0
    for path in (home / QUARANTINE_DIR).glob("*.jsonl") if (home / QUARANTINE_DIR).is_dir() else ():
        try:
            with open(path, "rb") as stream:
                quarantined += sum(1 for _ in stream)
        except OSError:
            continue
    header = read_header(home / SNAPSHOT)
    return Inventory(
        journals=len(journals),
        journal_bytes=_size(journals),
        live_writers=sum(1 for path in journals if writer_gone(path) is False),
        archive_files=len(archived),
        archive_bytes=_size(archived),
        quarantined_records=quarantined,
        snapshot_bytes=_size([home / SNAPSHOT]),
        snapshot_created=header.get("created") if header else None,
    )


def _size(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        try:
            total += os.lstat(path).st_size
        except OSError:
            continue
    return total
