"""The public value objects: Record, State, CompactionReport."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from journal._fold import Table, is_tombstone
from journal._hit import REASONS


@attrs.frozen
class Record:
    """One event as stored: format version, event id (UUIDv7), UTC timestamp, writer pid,
    event type, key, and data (a dict, or None for a tombstone)."""

    v: int
    id: str
    ts: str
    pid: int
    type: str
    key: str
    data: Mapping[str, Any] | None

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> Record:
        return cls(raw["v"], raw["id"], raw["ts"], raw["pid"], raw["type"], raw["key"], raw["data"])

    @property
    def is_tombstone(self) -> bool:
        return self.data is None

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class Skips:
    """How many lines or files were skipped, by reason."""

    checksum: int = 0
    json: int = 0
    version: int = 0
    torn: int = 0
    oversize: int = 0
    not_a_file: int = 0

    @classmethod
    def from_counts(cls, counts: Mapping[str, int]) -> Skips:
        return cls(**{reason.replace("-", "_"): counts.get(reason, 0) for reason in REASONS})

    @property
    def total(self) -> int:
        return sum(attrs.astuple(self))

    def as_dict(self) -> dict[str, int]:
        return {reason: getattr(self, reason.replace("-", "_")) for reason in REASONS}


class State(Mapping[str, Record]):
    """The folded cache: the latest live record per key. Read-only.

    ``errors`` names each file or directory that could not be read (an I/O error, not
    bad content): while it is not empty, records in those files may be missing here.
    """

    __slots__ = ("_records", "errors", "skipped", "snapshot_intact")

    def __init__(
        self,
        table: Table,
        skipped: Skips,
        snapshot_intact: bool,
        errors: tuple[str, ...] = (),
    ) -> None:
        self._records = {k: Record.from_raw(r) for k, r in table.items() if not is_tombstone(r)}
        self.skipped = skipped
        self.snapshot_intact = snapshot_intact
        self.errors = errors

    def __getitem__(self, key: str) -> Record:
        return self._records[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        errors = f" errors={len(self.errors)}" if self.errors else ""
        return f"<State entries={len(self)} skipped={self.skipped.total}{errors}>"


@attrs.frozen
class CompactionReport:
    """What one compaction did (or that it could not run because another one was).

    ``pinned`` counts the live entries whose type the caller pinned (never evicted);
    ``over_bound``, how many entries beyond ``max_entries`` the snapshot holds because
    the entries never evicted (pinned, or written since the compaction began) alone
    exceeded it (0 otherwise).

    ``errors`` names each file the compaction could not read, sync or move, and why;
    each was left where it was, for the next run. :func:`journal.compact` raises
    :class:`journal.CompactionIncompleteError` (holding this report) when it is not empty.
    """

    busy: bool
    files_folded: int = 0
    files_archived: int = 0
    live_files: int = 0
    records: int = 0
    skipped: Skips = attrs.field(factory=Skips)
    quarantined: int = 0
    entries: int = 0
    evicted: int = 0
    pinned: int = 0
    over_bound: int = 0
    archive_pruned: int = 0
    snapshot_rebuilt: bool = False
    duration_s: float = 0.0
    temporaries_removed: int = 0
    errors: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["skipped"] = self.skipped.as_dict()
        data["errors"] = list(self.errors)
        return data
