"""Properties of the fold and the record format, with hypothesis."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from storage_helpers import journal_file

import journal
from journal._codec import Clock, decode, encode
from journal._fold import fold

KEYS = st.sampled_from([f"k{i}" for i in range(6)])
DATA = st.one_of(
    st.none(),
    st.dictionaries(
        st.text(max_size=8),
        st.one_of(st.integers(), st.text(max_size=20), st.booleans(), st.none()),
        max_size=4,
    ),
)
_clock = Clock()
FUNCTION_SCOPED = HealthCheck.function_scoped_fixture  # tmp_path_factory is safe to share


@st.composite
def records(draw: st.DrawFn) -> list[dict]:
    """Raw records with ids from a real clock, so (ts, id) orders them."""
    items = draw(st.lists(st.tuples(KEYS, DATA), max_size=30))
    out = []
    for key, data in items:
        raw, _ = decode(encode(event_id=_clock.next(), pid=7, type="t", key=key, data=data)[:-1])
        out.append(raw)
    return out


@given(records(), st.randoms())
def test_fold_is_idempotent_and_order_independent(items, rng):
    once = fold(items)
    twice = fold(items, fold(items))
    shuffled = list(items)
    rng.shuffle(shuffled)
    assert once == twice == fold(shuffled)
    assert fold(items + items[: len(items) // 2]) == once


@given(
    key=st.text(min_size=1, max_size=100),
    data=DATA,
    type=st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=64),
    pid=st.integers(0, 2**31),
)
def test_encode_decode_round_trip(key, data, type, pid):
    event_id = _clock.next()
    line = encode(event_id=event_id, pid=pid, type=type, key=key, data=data)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and len(line) <= 4096
    record, reason = decode(line[:-1])
    assert reason is None
    assert (record["id"], record["key"], record["type"], record["pid"], record["data"]) == (
        event_id,
        key,
        type,
        pid,
        data,
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(items=records(), splits=st.lists(st.integers(0, 30), max_size=5), seed=st.integers())
def test_load_is_independent_of_how_records_are_split_across_journals(
    tmp_path_factory, items, splits, seed
):
    lines = [
        encode(event_id=r["id"], pid=r["pid"], type=r["type"], key=r["key"], data=r["data"])
        for r in items
    ]
    expected = {k: r["id"] for k, r in fold(items).items() if r["data"] is not None}

    def loaded(cuts: list[int], order_seed: int) -> dict[str, str]:
        home = tmp_path_factory.mktemp("home")
        bounds = sorted({0, len(lines), *(c for c in cuts if c <= len(lines))})
        chunks = [lines[a:b] for a, b in itertools.pairwise(bounds)]
        random.Random(order_seed).shuffle(chunks)
        for i, chunk in enumerate(chunks):
            journal_file(home, chunk, name=f"{i:04d}-{i:016x}.jnl")
        return {k: r.id for k, r in journal.load(home).items()}

    assert loaded(splits, seed) == expected
    assert loaded([], 0) == expected


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(content=st.binary(max_size=3000), as_snapshot=st.booleans())
def test_any_bytes_never_raise(tmp_path_factory, content, as_snapshot):
    home: Path = tmp_path_factory.mktemp("home")
    if as_snapshot:
        (home / "snapshot").write_bytes(content)
    else:
        journal_file(home, content)
    state = journal.load(home)
    assert journal.latest(home, "k0") is None or state.get("k0") is not None
    report = journal.compact(home)
    assert report.busy is False
    assert len(journal.load(home)) == report.entries
    list(journal.history(home))


@given(st.binary(max_size=5000))
def test_decode_never_raises(raw):
    record, reason = decode(raw)
    assert (record is None) != (reason is None)


# Format version 1 as documented in docs/formats.md: these bytes must keep reading.
V1_LINE = (
    b'{"crc":"b7cfebf4","rec":{"v":1,"id":"019ab8f2-3c4d-7a5b-8c6d-7e8f9a0b1c2d",'
    b'"ts":"2025-11-25T02:57:54.253648Z","pid":4242,"type":"session.confirmed",'
    b'"key":"executor:e-1","data":{"executor_id":"e-1","session_id":"s-1"}}}'
)


def test_format_version_1_reader():
    record, reason = decode(V1_LINE)
    assert reason is None
    assert record == {
        "v": 1,
        "id": "019ab8f2-3c4d-7a5b-8c6d-7e8f9a0b1c2d",
        "ts": "2025-11-25T02:57:54.253648Z",
        "pid": 4242,
        "type": "session.confirmed",
        "key": "executor:e-1",
        "data": {"executor_id": "e-1", "session_id": "s-1"},
    }
    assert (
        encode(
            event_id=record["id"],
            pid=4242,
            type=record["type"],
            key=record["key"],
            data=record["data"],
        )
        == V1_LINE + b"\n"
    )
    assert decode(V1_LINE.replace(b'"pid":4242', b'"pid":4243'))[1] == "checksum"
