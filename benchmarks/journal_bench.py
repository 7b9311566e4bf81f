"""The storage core's costs, each as a ratio against a baseline measured in the same run.

- append latency, fsync on and off, against a plain ``os.write`` of the same bytes to an
  ``O_APPEND`` file (with ``os.fdatasync`` for the fsync case);
- ``load()`` and the hit path's ``latest()`` with a 1,000-entry snapshot plus 0, 32 and
  256 live journals (held open and locked by real writers), against ``json.load`` of one
  1,000-entry map (the whole read of the earlier one-JSON-file cache): repeated in this
  process, and once per fresh interpreter (imports included, start-up excluded);
- compaction throughput for 100k records in 5k finished journals, with the compacting
  process's peak RSS, against reading and ``json.loads``-ing the same lines.

Measurements interleave candidate and baseline (rotating which goes first) and report
medians and p99. Shared helpers live in :mod:`benchmarks._harness`.

    python -m benchmarks.journal_bench [--quick] [--json] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import journal
from benchmarks import _harness
from journal._codec import Clock, encode

_clock = Clock()
OLD_CACHE_ENTRIES = 1000
RECORDS_PER_LIVE_JOURNAL = 3


def _session(i: int) -> str:
    return f"01938f2e-{i:04x}-7000-8000-{i:012x}"


def _line(key: str, i: int, pid: int = 4242) -> bytes:
    """A realistic record: what the hook writes when it reconciles an executor."""
    data = {
        "executor_id": key.removeprefix("executor:"),
        "old_session_id": _session(i),
        "new_session_id": _session(i + 1),
        "agent": "reviewer",
        "team": "platform",
    }
    return encode(event_id=_clock.next(), pid=pid, type="session.reconciled", key=key, data=data)


def _row(what: str, baseline: str, ours: list[float], theirs: list[float]) -> dict[str, Any]:
    return {
        "what": what,
        "baseline": baseline,
        "runs": len(ours),
        "ours_us": statistics.median(ours) * 1e6,
        "ours_p99_us": _harness.percentile(ours, 99) * 1e6,
        "baseline_us": statistics.median(theirs) * 1e6,
        "baseline_p99_us": _harness.percentile(theirs, 99) * 1e6,
        "ratio": _harness.ratio(ours, theirs),
        "ratio_p99": _harness.ratio(ours, theirs, 99),
    }


# -- append ---------------------------------------------------------------------------


def bench_append(tmp: Path, runs: int) -> list[dict[str, Any]]:
    """Per-append latency of :class:`journal.Writer` against ``os.write`` of its bytes."""
    rows = []
    data = {"executor_id": "e-1", "session_id": _session(1)}
    for fsync in (False, True):
        writer = journal.Writer(tmp / f"append-{int(fsync)}", fsync=fsync)
        writer.append("executor:e-1", data, "session.confirmed")  # measure appends, not creation
        assert writer.path is not None
        payload = writer.path.read_bytes()  # the very bytes an append writes (same length)
        plain = tmp / f"plain-{int(fsync)}"
        fd = os.open(plain, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

        def baseline(fd: int = fd, fsync: bool = fsync, payload: bytes = payload) -> None:
            os.write(fd, payload)
            if fsync:
                os.fdatasync(fd)

        def candidate(writer: journal.Writer = writer) -> None:
            writer.append("executor:e-1", data, "session.confirmed")

        try:
            samples = _harness.interleaved({"ours": candidate, "plain": baseline}, runs)
        finally:
            writer.close()
            os.close(fd)
        state = "on" if fsync else "off"
        rows.append(
            _row(
                f"append, fsync {state} ({len(payload)} B)",
                "os.write" + (" + os.fdatasync" if fsync else "") + " of the same bytes",
                samples["ours"],
                samples["plain"],
            )
        )
    return rows


# -- reads ----------------------------------------------------------------------------


@contextmanager
def _home_with(tmp: Path, live: int) -> Iterator[Path]:
    """A state directory: a 1,000-entry snapshot plus ``live`` journals whose writers are
    still running (each holds its journal's lock, as a live hook process does)."""
    home = tmp / f"read-{live}"
    journal_dir = home / "journal"
    journal_dir.mkdir(parents=True)
    lines = b"".join(_line(f"executor:e-{i}", i) for i in range(OLD_CACHE_ENTRIES))
    (journal_dir / f"4242-{0:016x}.jnl").write_bytes(lines)
    report = journal.compact(home, max_entries=OLD_CACHE_ENTRIES)
    assert report.entries == OLD_CACHE_ENTRIES, report
    with ExitStack() as stack:
        for j in range(live):
            writer = stack.enter_context(journal.Writer(home, fsync=False))
            for k in range(RECORDS_PER_LIVE_JOURNAL):
                key = f"executor:e-{(j * 7 + k) % OLD_CACHE_ENTRIES}"
                data = {"executor_id": key[9:], "session_id": _session(j * 10 + k)}
                writer.append(key, data, "session.confirmed")
        yield home


def _old_cache(tmp: Path) -> Path:
    path = tmp / "old-cache.json"
    path.write_text(json.dumps({f"e-{i}": _session(i) for i in range(OLD_CACHE_ENTRIES)}))
    return path


_READ_CHILD = """
import sys, time
mode, path, key = sys.argv[1:4]
if mode == "json.load":
    started = time.perf_counter()
    import json
    with open(path) as stream:
        json.load(stream)
    RESULT = time.perf_counter() - started
else:
    started = time.perf_counter()
    import journal
    if mode == "load()":
        assert len(journal.load(path)) == 1000
    else:
        assert journal.latest(path, key) is not None
    RESULT = time.perf_counter() - started
"""

HIT_KEY = "executor:e-500"


def bench_load(
    tmp: Path, runs: int, fresh_runs: int | None = None, sizes: tuple[int, ...] = (0, 32, 256)
) -> list[dict[str, Any]]:
    """``load()`` and ``latest()`` against ``json.load`` of the old cache's whole file.

    In this process (``runs`` interleaved rounds; every call reads everything again, no
    state is kept between calls) and, when ``fresh_runs``, once per fresh interpreter,
    timed inside the child from before its first import to the result.
    """
    old = _old_cache(tmp)

    def json_load() -> None:
        with open(old) as stream:
            json.load(stream)

    baseline = f"json.load of {OLD_CACHE_ENTRIES:,} entries"
    rows = []
    for live in sizes:
        with _home_with(tmp, live) as home:
            setup = f"{OLD_CACHE_ENTRIES:,} entries + {live} live"
            samples = _harness.interleaved(
                {
                    "load()": lambda h=home: journal.load(h),
                    "latest()": lambda h=home: journal.latest(h, HIT_KEY),
                    "json.load": json_load,
                },
                runs,
            )
            for name in ("load()", "latest()"):
                rows.append(_row(f"{name}, {setup}", baseline, samples[name], samples["json.load"]))
            if not fresh_runs:
                continue
            calls: dict[str, Callable[[], object]] = {
                mode: lambda m=mode, p=(old if mode == "json.load" else home): _child_read(m, p)
                for mode in ("load()", "latest()", "json.load")
            }
            samples = _harness.interleaved(calls, fresh_runs, warmup=1, self_timed=True)
            for name in ("load()", "latest()"):
                rows.append(
                    _row(
                        f"{name}, {setup}, fresh process",
                        baseline + ", fresh process (import json included)",
                        samples[name],
                        samples["json.load"],
                    )
                )
    return rows


def _child_read(mode: str, path: Path) -> float:
    return float(_harness.run_child(_READ_CHILD, mode, str(path), HIT_KEY)["result"])


# -- compaction -----------------------------------------------------------------------

_COMPACT_CHILD = """
import sys, time
home = sys.argv[1]
import journal
compact = journal.compact  # resolves the lazy import: time the compaction only
started = time.perf_counter()
report = compact(home, max_entries=1000)
RESULT = {
    "seconds": time.perf_counter() - started,
    "records": report.records,
    "archived": report.files_archived,
    "skipped": report.skipped.total,
}
"""

_READ_LINES_CHILD = """
import json, os, sys, time
directory = sys.argv[1]
started = time.perf_counter()
records = 0
for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as stream:
        for line in stream:
            json.loads(line)
            records += 1
RESULT = {"seconds": time.perf_counter() - started, "records": records}
"""


def _journal_files(records: int, files: int, keys: int) -> list[bytes]:
    """The contents of ``files`` finished journals holding ``records`` records in all."""
    per_file = records // files
    return [
        b"".join(
            _line(f"executor:e-{(f * 7 + k) % keys}", k, pid=10_000 + f) for k in range(per_file)
        )
        for f in range(files)
    ]


def bench_compaction(tmp: Path, records: int, files: int, rounds: int = 3) -> list[dict[str, Any]]:
    """Compaction of ``records`` records in ``files`` finished journals (5,000 distinct
    keys, at most 1,000 kept), in a child process, against a child that reads and
    ``json.loads`` every line of the same files. Alternates which runs first."""
    contents = _journal_files(records, files, keys=5000)
    results: dict[str, list[dict[str, Any]]] = {"compact": [], "read": []}
    for round_ in range(rounds):
        home = tmp / f"compact-{records}-{round_}"
        journal_dir = home / "journal"
        journal_dir.mkdir(parents=True)
        for f, content in enumerate(contents):
            # As a real writer names them; finished, since no process holds their lock.
            (journal_dir / f"{10_000 + f}-{f:016x}.jnl").write_bytes(content)
        # Compaction moves the files to archive/, unchanged: the baseline reads them there.
        order = ("read", "compact") if round_ % 2 == 0 else ("compact", "read")
        for mode in order:
            if mode == "compact":
                out = _harness.run_child(_COMPACT_CHILD, str(home))
            else:
                where = journal_dir if order[0] == "read" else home / "archive"
                out = _harness.run_child(_READ_LINES_CHILD, str(where))
            out["result"]["peak_rss_kb"] = out["peak_rss_kb"]
            results[mode].append(out["result"])
    for mode, runs in results.items():
        counted = {r["records"] for r in runs}
        if counted != {records - records % files}:
            raise RuntimeError(f"{mode} saw {counted} records, expected {records}")
    ours = [r["seconds"] for r in results["compact"]]
    theirs = [r["seconds"] for r in results["read"]]
    row = _row(
        f"compaction, {records:,} records in {files:,} journals",
        "read + json.loads of every line",
        ours,
        theirs,
    )
    row.update(
        records_per_s=records / statistics.median(ours),
        baseline_records_per_s=records / statistics.median(theirs),
        peak_rss_mb=max(r["peak_rss_kb"] for r in results["compact"]) / 1024,
        baseline_rss_mb=max(r["peak_rss_kb"] for r in results["read"]) / 1024,
        rounds=rounds,
    )
    return [row]


# -- output ---------------------------------------------------------------------------


def render(rows: list[dict[str, Any]], *, markdown: bool = False) -> str:
    def us(value: float) -> str:
        return _harness.duration(value / 1e6)

    body = [
        [
            row["what"],
            us(row["ours_us"]),
            us(row["ours_p99_us"]),
            us(row["baseline_us"]),
            us(row["baseline_p99_us"]),
            f"{row['ratio']:.2f}",
            f"{row['ratio_p99']:.2f}",
        ]
        for row in rows
    ]
    text = _harness.table(
        ["measurement", "median", "p99", "base median", "base p99", "ratio", "p99 ratio"],
        body,
        markdown=markdown,
    )
    baselines: dict[str, list[str]] = {}
    for row in rows:
        baselines.setdefault(row["baseline"], []).append(row["what"].split(",")[0])
    notes = [
        f"- {', '.join(dict.fromkeys(whats))}: against {baseline}"
        for baseline, whats in baselines.items()
    ]
    for row in rows:
        if "records_per_s" in row:
            notes.append(
                f"- {row['what']}: {row['records_per_s']:,.0f} records/s "
                f"(baseline {row['baseline_records_per_s']:,.0f}), peak RSS "
                f"{row['peak_rss_mb']:.1f} MB (baseline {row['baseline_rss_mb']:.1f} MB, "
                f"ratio {row['peak_rss_mb'] / row['baseline_rss_mb']:.2f})"
            )
    return text + "\n\n" + "\n".join(notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, well under 20 s")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--dir", type=Path, help="where to put the files (default: a temp dir)")
    args = parser.parse_args()
    quick = args.quick
    started = time.monotonic()
    say = (lambda _: None) if args.json else (lambda what: print(what, file=sys.stderr, flush=True))
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        tmp = Path(directory)
        say("append ...")
        rows = bench_append(tmp, 200 if quick else 5000)
        say("load() and latest() ...")
        rows += bench_load(tmp, 20 if quick else 500, fresh_runs=4 if quick else 60)
        say("compaction ...")
        sizes = (5_000, 250, 1) if quick else (100_000, 5_000, 5)
        rows += bench_compaction(tmp, *sizes)
    figures = {
        "machine": {**_harness.machine(), "quick": quick},
        "seconds": round(time.monotonic() - started, 1),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    m = figures["machine"]
    print(
        f"python {m['python']}, {m['cores']} cores, {'quick' if quick else 'full'} run in "
        f"{figures['seconds']} s; medians and p99 of interleaved runs; ratio = ours / baseline"
    )
    print()
    print(render(rows, markdown=args.markdown))


if __name__ == "__main__":
    main()
