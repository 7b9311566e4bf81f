"""The fold: the latest record per key, in (timestamp, event id) order. Pure, no I/O.

Applying a record is idempotent and commutative: the result depends only on the set of
records, not on how often or in which order they were seen. Tombstones (records whose
data is null) are kept in the table so that an older record read later, from a journal
that was folded before, cannot bring a forgotten key back.

Eviction needs the same care. When the compactor trims the table it remembers the
newest (ts, id) it evicted: the *floor*, kept in the snapshot. A record at or below the
floor for a key the table does not hold is dropped, because it is either the evicted
record itself or older than it; folding a journal again after a crash, or a live one at
every compaction, cannot resurrect an evicted key with stale data. (The cache then
misses, and the database answers: the safe direction.)

Some records must never be evicted, whatever their age: the caller names their types
(``pinned``; for reconcile, observations the database has not settled yet, which only
the cache remembers). Eviction passes over them, and if they alone exceed the bound
the table keeps them all: the bound gives way, never a pinned record.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

Table = dict[str, dict[str, Any]]
Order = tuple[str, str]


def apply(table: Table, record: dict[str, Any], floor: Order | None = None) -> None:
    """Fold one raw record into ``table`` in place."""
    key = record["key"]
    current = table.get(key)
    order = (record["ts"], record["id"])
    if current is None:
        if floor is None or order > floor:
            table[key] = record
    elif order > (current["ts"], current["id"]):
        table[key] = record


def fold(
    records: Iterable[dict[str, Any]], table: Table | None = None, floor: Order | None = None
) -> Table:
    """Fold ``records`` into ``table`` (a new one by default) and return it."""
    table = {} if table is None else table
    for record in records:
        apply(table, record, floor)
    return table


def is_tombstone(record: dict[str, Any]) -> bool:
    return record["data"] is None


def trim(
    table: Table,
    max_entries: int,
    floor: Order | None = None,
    pinned: Collection[str] = (),
) -> tuple[list[str], Order | None]:
    """Evict the least recently written keys beyond ``max_entries`` live entries.

    A live record whose type is in ``pinned`` is never evicted: the others go first, and
    if pinned records alone exceed ``max_entries`` all of them stay (the table then holds
    more than ``max_entries``). Tombstones are bounded the same way, separately, and are
    never pinned. Returns the evicted live keys and the new floor: the newest (ts, id)
    ever evicted, ``floor`` included.
    """
    live = [r for r in table.values() if not is_tombstone(r)]
    dead = [r for r in table.values() if is_tombstone(r)]
    evictable = [r for r in live if r["type"] not in pinned] if pinned else live
    evicted: list[str] = []
    for group, size, report in ((evictable, len(live), True), (dead, len(dead), False)):
        excess = size - max_entries
        if excess <= 0:
            continue
        group.sort(key=lambda r: (r["ts"], r["id"]))
        for record in group[:excess]:
            del table[record["key"]]
            order = (record["ts"], record["id"])
            floor = order if floor is None else max(floor, order)
            if report:
                evicted.append(record["key"])
    return evicted, floor
