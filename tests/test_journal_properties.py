"""Properties of the fold and of the codec (hypothesis), pure and end to end on real files.

The fold's contract (docs/architecture.md, "Records and the fold"): idempotent, and
independent of the order in which files are read and of how records are split across
journals. The codec's: what is encoded decodes to the same record, and no byte string
makes a reader raise.
"""

from __future__ import annotations

import itertools
import random
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from journal_helpers import raw_line, write_journal

import journal
from journal._codec import Clock, _uuid7, encode, is_event_id, timestamp
from journal._errors import RecordTooLargeError
from journal._fold import apply, fold, trim
from journal._hit import MAX_KEY, MAX_LINE, REASONS, decode

FILES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies ----------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=5)

KEYS = st.sampled_from(["a", "b", "c", "d", "e"])
# Few timestamps, so that ties on ts are common and the event id has to break them.
TIMESTAMPS = st.sampled_from([f"2026-01-01T00:00:0{i}.000000Z" for i in range(4)])


@st.composite
def raw_records(draw: st.DrawFn, max_size: int = 30) -> list[dict]:
    """Raw records with unique event ids (as real ones are), tombstones included."""
    count = draw(st.integers(min_value=0, max_value=max_size))
    ids = draw(st.lists(st.uuids(version=4), min_size=count, max_size=count, unique=True))
    return [
        {
            "v": 1,
            "id": str(event_id),
            "ts": draw(TIMESTAMPS),
            "pid": draw(st.integers(min_value=1, max_value=5)),
            "type": "t",
            "key": draw(KEYS),
            "data": draw(st.none() | st.fixed_dictionaries({"n": st.integers(0, 9)})),
        }
        for event_id in ids
    ]


def expected_latest(records: list[dict]) -> dict[str, dict]:
    """The fold's result computed another way: for each key, the max by (ts, id)."""
    out: dict[str, dict] = {}
    for key in {r["key"] for r in records}:
        out[key] = max((r for r in records if r["key"] == key), key=lambda r: (r["ts"], r["id"]))
    return out


# -- the pure fold -------------------------------------------------------------------------


@given(raw_records())
def test_fold_is_the_latest_record_per_key(records):
    assert fold(records) == expected_latest(records)


@given(raw_records(), st.randoms(use_true_random=False))
def test_fold_is_idempotent(records, rnd):
    once = fold(records)
    assert fold(records, fold(records)) == once  # every record folded twice
    assert fold(records + records) == once
    again = dict(once)
    for record in rnd.sample(records, len(records)):  # a random subset refolded
        apply(again, record)
    assert again == once


@given(raw_records(), st.randoms(use_true_random=False))
def test_fold_ignores_read_order(records, rnd):
    shuffled = list(records)
    rnd.shuffle(shuffled)
    assert fold(shuffled) == fold(records)
    assert fold(list(reversed(records))) == fold(records)


@given(raw_records(), st.lists(st.integers(0, 30), max_size=6), st.randoms(use_true_random=False))
def test_fold_ignores_how_records_are_split(records, cuts, rnd):
    bounds = sorted({0, len(records), *(c for c in cuts if c <= len(records))})
    chunks = [records[a:b] for a, b in itertools.pairwise(bounds)]
    rnd.shuffle(chunks)
    table: dict = {}
    for chunk in chunks:  # one journal after another into one table
        fold(chunk, table)
    assert table == fold(records)
    merged: dict = {}
    for chunk in chunks:  # each journal folded alone, then the partial states folded
        fold(fold(chunk).values(), merged)
    assert merged == fold(records)


@given(raw_records(), st.integers(min_value=1, max_value=4))
def test_refolding_after_trim_resurrects_nothing(records, max_entries):
    table = fold(records)
    evicted, floor = trim(table, max_entries)
    assert sum(1 for r in table.values() if r["data"] is not None) <= max_entries
    kept = dict(table)
    fold(records, table, floor)  # a crash after the snapshot: every journal read again
    assert table == kept
    assert not set(evicted) & set(table)


@given(raw_records(), st.integers(min_value=1, max_value=4), st.data())
def test_trim_never_evicts_a_pinned_record(records, max_entries, data):
    for record in records:
        record["type"] = data.draw(st.sampled_from(["pinned", "t"]))
    table = fold(records)
    live = {k: r for k, r in table.items() if r["data"] is not None}
    pinned = {k for k, r in live.items() if r["type"] == "pinned"}
    evicted, floor = trim(table, max_entries, pinned={"pinned"})
    assert pinned <= set(table)  # every pinned entry stays, whatever the bound
    kept = {k for k, r in table.items() if r["data"] is not None}
    if len(live) > max_entries:  # the bound, or the pinned alone if they exceed it
        assert len(kept) == max(max_entries, len(pinned))
    else:
        assert kept == set(live)
    # The unpinned go least recently written first.
    assert all(
        (live[gone]["ts"], live[gone]["id"]) < (live[k]["ts"], live[k]["id"])
        for gone in evicted
        for k in kept - pinned
    )
    before = dict(table)
    fold(records, table, floor)
    assert table == before


@given(raw_records(), st.integers(min_value=1, max_value=4), TIMESTAMPS, st.data())
def test_trim_never_evicts_past_the_horizon(records, max_entries, horizon, data):
    """Nothing at or after the horizon goes, tombstones included; so the floor stays
    below every record written after it, folded or not. The bound holds otherwise."""
    for record in records:
        record["type"] = data.draw(st.sampled_from(["pinned", "t"]))
    late = data.draw(raw_records(max_size=10))  # written after the horizon, never folded
    for record in late:
        record["ts"] = data.draw(st.sampled_from([horizon, "2026-01-01T00:00:09.000000Z"]))
    table = fold(records)
    before = dict(table)
    evicted, floor = trim(table, max_entries, pinned={"pinned"}, horizon=horizon)
    kept = {k for k, r in before.items() if r["type"] == "pinned" and r["data"] is not None}
    kept |= {k for k, r in before.items() if r["ts"] >= horizon}
    assert kept <= set(table)
    assert floor is None or floor < (horizon, "")
    for dead in (False, True):  # the live entries, then the tombstones: bounded apart
        group = {k for k, r in before.items() if (r["data"] is None) is dead}
        left = group & set(table)
        assert len(left) == (
            len(group) if len(group) <= max_entries else max(max_entries, len(group & kept))
        )
        # The evictable go least recently written first.
        assert all(
            (before[gone]["ts"], before[gone]["id"]) < (before[k]["ts"], before[k]["id"])
            for gone in group - left
            for k in left - kept
        )
    assert set(evicted) == {k for k in set(before) - set(table) if before[k]["data"]}
    # What was written after the horizon, folded later over this floor, all counts.
    assert fold(late, dict(table), floor) == fold(late, dict(table))


# -- the codec -----------------------------------------------------------------------------

keys = st.text(min_size=1, max_size=MAX_KEY)
types = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=64
)


@given(keys, types, st.none() | json_objects, st.integers(min_value=0, max_value=2**31))
def test_codec_round_trips(key, type_, data, pid):
    event_id = Clock().next()
    try:
        line = encode(event_id=event_id, pid=pid, type=type_, key=key, data=data)
    except RecordTooLargeError:
        return  # the only refusal for valid input, tested in test_journal_writer.py
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and len(line) <= MAX_LINE
    assert line.isascii()
    record, reason = decode(line[:-1])
    assert reason is None
    assert record == {
        "v": 1,
        "id": event_id,
        "ts": record["ts"],
        "pid": pid,
        "type": type_,
        "key": key,
        "data": data,
    }
    assert journal.Record.from_raw(record).is_tombstone is (data is None)


@given(st.integers(min_value=0, max_value=(1 << 48) * 1000 - 1))
def test_event_ids_encode_their_microsecond_exactly(us):
    event_id = _uuid7(us)
    assert is_event_id(event_id)
    assert journal.event_time_us(event_id) == us
    assert timestamp(event_id) < timestamp(_uuid7(us + 1))  # one microsecond is visible


@given(st.integers(min_value=0, max_value=(1 << 48) * 1000 - 2))
def test_an_answer_sorts_between_its_question_and_anything_issued_after_it(us):
    question = _uuid7(us)
    answer = journal.event_id_next_to(question)
    clock = Clock()  # another process's, told of the question (a hook's observation)
    clock.advance(question)
    later = clock.next()
    assert is_event_id(answer) and timestamp(answer) == timestamp(question)
    assert question < answer < later


@given(st.binary(max_size=600))
def test_decode_never_raises(data):
    record, reason = decode(data)
    assert (record is None) != (reason is None)
    assert reason is None or reason in REASONS


@given(st.data())
def test_flipping_one_byte_of_a_line_is_detected(data):
    line = raw_line("key", {"n": 1, "s": "some text"})[:-1]
    at = data.draw(st.integers(0, len(line) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(line)
    flipped[at] ^= 1 << bit
    record, reason = decode(bytes(flipped))
    assert record is None and reason in REASONS


# -- end to end: real files ---------------------------------------------------------------

ops = st.lists(
    st.tuples(KEYS, st.none() | st.fixed_dictionaries({"n": st.integers(0, 99)})),
    min_size=1,
    max_size=40,
)


def _encode_all(operations: list[tuple[str, dict | None]]) -> list[bytes]:
    clock = Clock()
    return [
        encode(event_id=clock.next(), pid=7, type="t", key=key, data=data)
        for key, data in operations
    ]


def _state(home: Path) -> dict[str, tuple[str, object]]:
    return {k: (r.id, r.data) for k, r in journal.load(home).items()}


@FILES
@given(ops, st.lists(st.lists(st.integers(0, 40), max_size=5), min_size=2, max_size=4))
def test_load_is_the_same_however_records_are_split_across_files(operations, splits):
    lines = _encode_all(operations)
    expected = {
        r["key"]: (r["id"], r["data"])
        for r in fold(decode(x[:-1])[0] for x in lines).values()
        if r["data"] is not None
    }
    rng = random.Random(len(lines))
    with tempfile.TemporaryDirectory() as tmp:
        for n, cuts in enumerate(splits):
            home = Path(tmp) / f"split{n}"
            shuffled = list(lines)
            rng.shuffle(shuffled)  # files need not hold records in time order either
            bounds = sorted({0, len(lines), *(c for c in cuts if c <= len(lines))})
            for i, (a, b) in enumerate(itertools.pairwise(bounds)):
                write_journal(home, shuffled[a:b], name=f"{i}-{n}.jnl")
            assert _state(home) == expected
            report = journal.compact(home, max_entries=100)
            assert report.skipped.total == 0
            assert _state(home) == expected
            # ...and folding some of the same records again, in a new journal, changes nothing
            write_journal(home, shuffled[: len(shuffled) // 2], name="again.jnl")
            assert _state(home) == expected
            journal.compact(home, max_entries=100)
            assert _state(home) == expected
            for key in "abcde":
                found = journal.latest(home, key)
                assert (found and (found["id"], found["data"])) == (expected.get(key) or None)


@FILES
@given(st.binary(max_size=300), KEYS)
def test_any_bytes_as_a_journal_line_never_raise(garbage, key):
    before, after = raw_line(key, {"n": 1}), raw_line("z", {"n": 2})
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        write_journal(home, before + garbage + b"\n" + after, name="1-a.jnl")
        write_journal(home, garbage, name="2-b.jnl")  # and as a whole file, maybe torn
        state = journal.load(home)
        assert state[key].data == {"n": 1} and state["z"].data == {"n": 2}
        assert journal.latest(home, "z")["data"] == {"n": 2}
        report = journal.compact(home)
        assert not report.busy
        state = journal.load(home)
        assert state[key].data == {"n": 1} and state["z"].data == {"n": 2}
        assert journal.latest(home, key)["data"] == {"n": 1}
        assert {r.key for r in journal.history(home)} >= {key, "z"}


@FILES
@given(st.binary(max_size=2000) | st.builds(lambda b: b"\n".join(b), st.lists(st.binary())))
def test_any_bytes_as_the_snapshot_never_raise(garbage):
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        write_journal(home, [raw_line("k", {"n": 1})])
        (home / "snapshot").write_bytes(garbage)
        state = journal.load(home)
        assert state["k"].data == {"n": 1}
        assert not state.snapshot_intact  # a file present but not a valid snapshot
        assert journal.latest(home, "k") in (None, state["k"].to_dict())
        report = journal.compact(home)
        assert report.snapshot_rebuilt is True
        state = journal.load(home)
        assert state.snapshot_intact and state["k"].data == {"n": 1}
        assert journal.latest(home, "k")["data"] == {"n": 1}
