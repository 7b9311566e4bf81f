"""The storage core's costs, each as a ratio against a baseline measured in the same run.

- append latency, fsync on and off, against a plain ``os.write`` of the same bytes to an
  ``O_APPEND`` file (with ``os.fdatasync`` for the fsync case);
- cold ``load()`` and the hit path's ``latest()`` with a 1,000-entry snapshot plus 0, 32
  and 256 live journals, against ``json.load`` of one 1,000-entry map (the whole read of
  the earlier one-JSON-file cache);
- compaction throughput for 100k records in 5k finished journals, with the compacting
  process's peak RSS, against reading and ``json.loads``-ing the same lines.

Measurements interleave candidate and baseline, and report medians.

    python -m benchmarks.journal_bench [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import journal
from journal._codec import Clock, encode

_clock = Clock()


def _line(key: str, i: int) -> bytes:
    data = {"executor_id": key, "session_id": f"session-{i:08d}-{'x' * 24}"}
    return encode(event_id=_clock.next(), pid=4242, type="session.confirmed", key=key, data=data)


def _interleaved(
    candidate: Callable[[], object], baseline: Callable[[], object], runs: int
) -> tuple[list[float], list[float]]:
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(runs):
        for sink, call in ((ours, candidate), (theirs, baseline)):
            started = time.perf_counter()
            call()
            sink.append(time.perf_counter() - started)
    return ours, theirs


def _p99(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * 0.99))]


def bench_append(tmp: Path, runs: int) -> list[dict[str, object]]:
    rows = []
    payload = _line("executor:e-1", 1)
    for fsync in (False, True):
        home = tmp / f"append-{fsync}"
        writer = journal.Writer(home, fsync=fsync)
        writer.append("warm", {}, "t")  # the file exists: measure appends, not creation
        fd = os.open(tmp / f"plain-{fsync}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

        def plain(fd: int = fd, fsync: bool = fsync) -> None:
            os.write(fd, payload)
            if fsync:
                os.fdatasync(fd)

        ours, theirs = _interleaved(
            lambda w=writer: w.append("executor:e-1", {"session_id": "s"}, "t"), plain, runs
        )
        writer.close()
        os.close(fd)
        rows.append(
            {
                "what": f"append, fsync {'on' if fsync else 'off'}",
                "ours_us": statistics.median(ours) * 1e6,
                "ours_p99_us": _p99(ours) * 1e6,
                "baseline": "os.write" + (" + fdatasync" if fsync else ""),
                "baseline_us": statistics.median(theirs) * 1e6,
                "ratio": statistics.median(ours) / statistics.median(theirs),
            }
        )
    return rows


def _home_with(tmp: Path, journals: int) -> Path:
    home = tmp / f"load-{journals}"
    journal_dir = home / "journal"
    journal_dir.mkdir(parents=True)
    for i in range(1000):
        (journal_dir / f"1-{i:016x}.jnl").write_bytes(_line(f"executor:e-{i}", i))
    journal.compact(home)  # a 1,000-entry snapshot
    for j in range(journals):
        lines = b"".join(_line(f"executor:e-{(j * 5 + k) % 1000}", k) for k in range(3))
        (journal_dir / f"2-{j:016x}.jnl").write_bytes(lines)
    return home


def bench_load(tmp: Path, runs: int) -> list[dict[str, object]]:
    old = tmp / "old-cache.json"
    old.write_text(json.dumps({f"e-{i}": f"session-{i:08d}-{'x' * 24}" for i in range(1000)}))

    def json_load() -> None:
        with open(old) as stream:
            json.load(stream)

    rows = []
    for journals in (0, 32, 256):
        home = _home_with(tmp, journals)
        for name, call in (
            ("load()", lambda h=home: journal.load(h)),
            ("latest() (hit path)", lambda h=home: journal.latest(h, "executor:e-500")),
        ):
            ours, theirs = _interleaved(call, json_load, runs)
            rows.append(
                {
                    "what": f"{name}, 1,000 entries + {journals} journals",
                    "ours_us": statistics.median(ours) * 1e6,
                    "ours_p99_us": _p99(ours) * 1e6,
                    "baseline": "json.load of 1,000 entries",
                    "baseline_us": statistics.median(theirs) * 1e6,
                    "ratio": statistics.median(ours) / statistics.median(theirs),
                }
            )
    return rows


_CHILD = """
import json, resource, sys, time
mode, home = sys.argv[1], sys.argv[2]
started = time.perf_counter()
if mode == "compact":
    import journal
    report = journal.compact(home, max_entries=1000)
    records = report.records
else:
    import os
    records = 0
    for name in os.listdir(home + "/journal"):
        with open(home + "/journal/" + name, "rb") as stream:
            for line in stream:
                json.loads(line)
                records += 1
elapsed = time.perf_counter() - started
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"records": records, "seconds": elapsed, "rss_kb": rss}))
"""


def bench_compaction(
    tmp: Path, records: int, files: int, rounds: int = 3
) -> list[dict[str, object]]:
    per_file = records // files
    results: dict[str, list[dict[str, float]]] = {"compact": [], "read": []}
    for round_ in range(rounds):
        home = tmp / f"compact-{records}-{round_}"
        journal_dir = home / "journal"
        journal_dir.mkdir(parents=True)
        for f in range(files):
            lines = b"".join(_line(f"executor:e-{(f * 7 + k) % 5000}", k) for k in range(per_file))
            (journal_dir / f"3-{f:016x}.jnl").write_bytes(lines)
        for mode in ("read", "compact"):  # read first: compaction archives the files
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, mode, str(home)],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
            )
            if out.returncode != 0:
                raise RuntimeError(f"{mode} of {records} records failed: {out.stderr[-2000:]}")
            results[mode].append(json.loads(out.stdout))
    compact = statistics.median(r["seconds"] for r in results["compact"])
    read = statistics.median(r["seconds"] for r in results["read"])
    return [
        {
            "what": f"compaction, {records:,} records in {files:,} journals",
            "ours_us": compact * 1e6,
            "records_per_s": records / compact,
            "peak_rss_mb": max(r["rss_kb"] for r in results["compact"]) / 1024,
            "baseline": "read + json.loads of every line",
            "baseline_us": read * 1e6,
            "baseline_rss_mb": max(r["rss_kb"] for r in results["read"]) / 1024,
            "ratio": compact / read,
        }
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    parser.add_argument("--json", action="store_true", help="figures as JSON")
    args = parser.parse_args()
    runs = 50 if args.quick else 400
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        rows = bench_append(tmp, runs * 2)
        rows += bench_load(tmp, max(10, runs // 4))
        rows += bench_compaction(tmp, *((5_000, 250) if args.quick else (100_000, 5_000)))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores, "
        f"{'quick' if args.quick else 'full'} run, medians of interleaved runs"
    )
    print(f"{'what':52}{'ours':>11}{'baseline':>11}{'ratio':>7}  baseline")
    for row in rows:
        print(
            f"{row['what']:52}{_fmt(row['ours_us']):>11}{_fmt(row['baseline_us']):>11}"
            f"{row['ratio']:>7.2f}  {row['baseline']}"
        )
        if "records_per_s" in row:
            print(
                f"{'':52}{row['records_per_s']:>11,.0f} records/s, peak RSS "
                f"{row['peak_rss_mb']:.0f} MB (baseline {row['baseline_rss_mb']:.0f} MB)"
            )


def _fmt(us: object) -> str:
    value = float(us)  # type: ignore[arg-type]
    return f"{value / 1000:.2f} ms" if value >= 1000 else f"{value:.1f} µs"


if __name__ == "__main__":
    main()
