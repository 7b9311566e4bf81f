"""``reconcile replay``'s speed as a ratio to reading and JSON-parsing the same files.

For each size, a history of that many records in 50 journals (half archived by a
compaction, half live in ``journal/``), then, interleaved in the same run, each in a
fresh interpreter:

- the *floor*: read every journal line by line and ``json.loads`` each line;
- *replay*: ``reconcile replay -o json`` (the whole history, every record with its
  cursor) into ``/dev/null``, start-up excluded.

Prints seconds, records per second, the ratio replay / floor, and replay's peak RSS
(flat memory shows as the same peak whatever the size).

    python -m benchmarks.replay_bench [--sizes 10000,100000,1000000] [--runs N] [--json]
        [--chart PNG]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks._harness import interleaved, machine, run_child, table

JOURNALS = 50

FLOOR = """
import json, os, sys, time
home = sys.argv[1]
started = time.perf_counter()
count = 0
for directory in ("journal", "archive"):
    for name in sorted(os.listdir(os.path.join(home, directory))):
        with open(os.path.join(home, directory, name), "rb") as stream:
            for line in stream:
                json.loads(line)
                count += 1
RESULT = [time.perf_counter() - started, count]
"""

REPLAY = """
import os, sys, time
from cli._app import run
home = sys.argv[1]
saved = os.dup(1)
devnull = os.open(os.devnull, os.O_WRONLY)
os.dup2(devnull, 1)
started = time.perf_counter()
code = run(["--home", home, "replay", "-o", "json"])
sys.stdout.flush()
elapsed = time.perf_counter() - started
os.dup2(saved, 1)
assert code == 0, code
RESULT = [elapsed, 0]
"""


def build(home: Path, records: int) -> None:
    """``records`` records round-robin over :data:`JOURNALS` journals; a compaction
    archives the first half of the journals (the others are written after it)."""
    import journal

    half = JOURNALS // 2
    per = records // JOURNALS
    for phase in (range(half), range(half, JOURNALS)):
        writers = [journal.Writer(home, fsync=False) for _ in phase]
        for i in range(per):
            for n, writer in enumerate(writers):
                writer.append(
                    f"executor:e-{(i * 7 + n) % 5000}",
                    {
                        "session_id": f"{i:08x}-aaaa-bbbb-cccc-{n:012x}",
                        "identity": {"executor_id": f"e-{(i * 7 + n) % 5000}", "team": "core"},
                        "hook": "PostToolUse",
                    },
                    "session.observed",
                )
        for writer in writers:
            writer.close()
        if phase.start == 0:
            journal.compact(home, max_entries=100_000)


def measure(size: int, runs: int, scratch: Path) -> dict[str, object]:
    home = scratch / f"h{size}"
    build(home, size)
    peaks: list[int] = []

    def child(code: str) -> float:
        report = run_child(code, str(home), timeout=3600)
        if code is REPLAY:
            peaks.append(report["peak_rss_kb"])
        return float(report["result"][0])

    samples = interleaved(
        {"floor": lambda: child(FLOOR), "replay": lambda: child(REPLAY)},
        runs,
        warmup=1,
        self_timed=True,
    )
    floor, replay = statistics.median(samples["floor"]), statistics.median(samples["replay"])
    records = (size // JOURNALS) * JOURNALS
    return {
        "records": records,
        "floor_s": floor,
        "replay_s": replay,
        "ratio": replay / floor,
        "replay_records_per_s": records / replay,
        "replay_peak_rss_mb": max(peaks) / 1024,
    }


def chart(rows: list[dict[str, object]], path: Path) -> Path:
    """Replay's time beside the read-and-parse floor, per size (matplotlib, the ``bench``
    extra, imported here only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    positions = list(range(len(rows)))
    for shift, key, label, color in (
        (-0.2, "floor_s", "read + json.loads (floor)", "#8c8c8c"),
        (0.2, "replay_s", "reconcile replay -o json", "#4c72b0"),
    ):
        values = [float(r[key]) for r in rows]  # type: ignore[arg-type]
        ax.bar([p + shift for p in positions], values, width=0.4, label=label, color=color)
    for p, r in zip(positions, rows, strict=True):
        ax.annotate(
            f"{float(r['ratio']):.2f}x",
            (p + 0.2, float(r["replay_s"])),  # type: ignore[arg-type]
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(positions, [f"{int(r['records']):,}" for r in rows])  # type: ignore[call-overload]
    ax.set_yscale("log")
    ax.set_xlabel("records (50 journals)")
    ax.set_ylabel("seconds (log)")
    ax.set_title("replay against reading and parsing the same files, same run")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replay_bench")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--chart", metavar="PNG", help="draw the figures there")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="replay-bench-") as scratch:
        for size in (int(s) for s in args.sizes.split(",")):
            rows.append(measure(size, args.runs, Path(scratch)))
    if args.chart:
        chart(rows, Path(args.chart))
    if args.json:
        print(json.dumps({"machine": machine(), "rows": rows}, indent=2))
        return 0
    print(
        table(
            ["records", "read+parse", "replay", "ratio", "replay rec/s", "replay peak RSS"],
            [
                [
                    f"{r['records']:,}",
                    f"{r['floor_s']:.2f} s",
                    f"{r['replay_s']:.2f} s",
                    f"{r['ratio']:.2f}x",
                    f"{r['replay_records_per_s']:,.0f}",
                    f"{r['replay_peak_rss_mb']:.0f} MB",
                ]
                for r in rows
            ],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
