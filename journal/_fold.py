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

Nor is a record written at or after the *horizon* ever evicted: the compactor takes the
horizon, a timestamp, before it lists the journals. The floor must stay below every
record the compaction did not fold, and those (a journal created after the listing, a
line appended to a live journal after it was read) were written after the horizon; an
entry newer than one of them, evicted, would raise the floor above it and hide it for
good. So the floor is always older than the horizon. Entries of the horizon's own
microsecond count as after it (their order against it is unknown). Like pinned records,
they are kept even beyond the bound.

A floor in the future (the clock stepped back since it was set) is not in force: the
records written since may sort below it. Readers and the compactor pass ``None`` for it
then (``journal._hit.floor_in_force``; docs/architecture.md, "Time").
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
    horizon: str | None = None,
) -> tuple[list[str], Order | None]:
    """Evict the least recently written keys beyond ``max_entries`` live entries.

    A live record whose type is in ``pinned`` is never evicted, nor is any record (a
    tombstone included) whose timestamp is at or after ``horizon``: the others go first,
    and if the kept ones alone exceed ``max_entries`` all of them stay (the table then
    holds more than ``max_entries``). Tombstones are bounded the same way, separately,
    and are never pinned. Returns the evicted live keys and the new floor: the newest
    (ts, id) ever evicted, ``floor`` included (what this call evicts is older than
    ``horizon``).
    """
    live = [r for r in table.values() if not is_tombstone(r)]
    dead = [r for r in table.values() if is_tombstone(r)]
    evicted: list[str] = []
    for group, kept_types, report in ((live, pinned, True), (dead, (), False)):
        excess = len(group) - max_entries
        if excess <= 0:
            continue
        evictable = [
            r
            for r in group
            if (horizon is None or r["ts"] < horizon)
            and not (kept_types and r["type"] in kept_types)
        ]
        evictable.sort(key=lambda r: (r["ts"], r["id"]))
        for record in evictable[:excess]:
            del table[record["key"]]
            order = (record["ts"], record["id"])
            floor = order if floor is None else max(floor, order)
            if report:
                evicted.append(record["key"])
    return evicted, floor
