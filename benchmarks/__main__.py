"""``python -m benchmarks``: the journal design side by side with the one-JSON-file cache.

Same machine, same run, real processes, one PostgreSQL (the embedded server, started in
a temporary directory, or ``--database-url``). Prints the figures, writes the table into
docs/performance.md (between its ``compare`` markers) and three charts beside it.
``--quick`` runs small sizes in well under a minute and writes to a temporary
directory unless ``--out`` is given: CI runs it so that this code cannot rot.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import compare, journal_bench

BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"
DOCS = Path(__file__).resolve().parent.parent / "docs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--out", type=Path, help="where docs go (default: docs/, or a temp dir)")
    parser.add_argument("--database-url", help="an admin URL (default: embedded server)")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as directory:
        tmp = Path(directory)
        admin = args.database_url
        if admin is None:
            from psycopg.conninfo import make_conninfo

            from reconcile import _server

            admin = make_conninfo(_server.up(tmp / "server"), dbname="postgres")
        try:
            results = run(compare.Bench(admin, tmp), quick=args.quick)
        finally:
            if args.database_url is None:
                _server.down(tmp / "server")
        results["seconds"] = round(time.monotonic() - started, 1)
        out = args.out or (tmp / "docs" if args.quick else DOCS)
        out.mkdir(parents=True, exist_ok=True)
        table = render(results, quick=args.quick)
        print(table)
        write_section(out / "performance.md", table)
        from benchmarks.charts import draw

        for path in draw(results, out):
            print(f"wrote {path}")
    if args.json:
        print(json.dumps(results, indent=2, default=str))


def run(bench: compare.Bench, *, quick: bool) -> dict[str, Any]:
    say = lambda what: print(f"- {what}", file=sys.stderr, flush=True)  # noqa: E731
    results: dict[str, Any] = {"quick": quick}
    say("lost entries")
    results["lost_entries"] = compare.lost_entries(bench, [16, 64] if quick else [16, 64, 256])
    say("hit latency")
    results["hit_latency_ms"] = compare.hit_latency(bench, 12 if quick else 100)
    say("round trips")
    results["round_trips"] = compare.round_trips(bench, 4 if quick else 20)
    say("bytes per miss")
    results["bytes_per_miss"] = compare.bytes_per_miss(
        bench, [10, 100] if quick else [10, 100, 1000]
    )
    say("cold read")
    (bench.tmp / "load").mkdir()
    results["cold_read"] = journal_bench.bench_load(bench.tmp / "load", 10 if quick else 100)
    say("compaction")
    sizes = [(10_000, 1)] if quick else [(10_000, 3), (100_000, 1), (1_000_000, 1)]
    results["compaction"] = []
    for records, rounds in sizes:
        (bench.tmp / "compaction").mkdir(exist_ok=True)
        [row] = journal_bench.bench_compaction(
            bench.tmp / "compaction", records, records // 20, rounds
        )
        row["records"] = records
        row["seconds"] = row["ours_us"] / 1e6
        results["compaction"].append(row)
    say("hit rate")
    results["hit_rate"] = compare.hit_rate(3000, 20_000 if quick else 300_000, 1000)
    return results


def render(results: dict[str, Any], *, quick: bool) -> str:
    latency = {name: compare.summary(v) for name, v in results["hit_latency_ms"].items()}
    base = latency["python -c pass"]["p50"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, Python "
        f"{sys.version.split()[0]}, by `python -m benchmarks{' --quick' if quick else ''}` "
        f"({results['seconds']} s). One embedded PostgreSQL 18 for both designs.",
        "",
        "**Lost cache entries** (N forks started at once, each reconciling its own executor;"
        " database rows correct in both designs):",
        "",
        "| forks | old: lost | new: lost | old: DB rows right | new: DB rows right |",
        "|---|---|---|---|---|",
    ]
    for r in results["lost_entries"]:
        lines.append(
            f"| {r['forks']} | {r['old_lost']} ({r['old_lost'] / r['forks']:.0%}) | "
            f"{r['new_lost']} | {r['old_db_rows']} | {r['new_db_rows']} |"
        )
    lines += [
        "",
        "**Hit-path fork wall time** (interleaved runs; ratio of medians to `python -c pass`):",
        "",
        "| command | p50 ms | p99 ms | p50 / `python -c pass` |",
        "|---|---|---|---|",
    ]
    for name, s in latency.items():
        lines.append(f"| {name} | {s['p50']:.2f} | {s['p99']:.2f} | {s['p50'] / base:.2f} |")
    lines += [
        "",
        "**Database work per fork**, counted by the server (`pg_stat_database`: statements ="
        " `xact_commit` - `sessions`):",
        "",
        "| design | statements per hit | connections per hit | statements per miss |"
        " connections per miss |",
        "|---|---|---|---|---|",
    ]
    for r in results["round_trips"]:
        lines.append(
            f"| {r['design']} | {r['hit_statements']:g} | {r['hit_connections']:g} | "
            f"{r['miss_statements']:g} | {r['miss_connections']:g} |"
        )
    lines += [
        "",
        "**Bytes written per miss** as the cache grows (new: the journal line, plus the"
        f" snapshot rewritten once per {compare.COMPACT_THRESHOLD} journals, amortized):",
        "",
        "| entries | old (whole file) | new: append | new: snapshot | new: amortized |",
        "|---|---|---|---|---|",
    ]
    for r in results["bytes_per_miss"]:
        lines.append(
            f"| {r['entries']} | {r['old_bytes']:,} | {r['new_append_bytes']:,} | "
            f"{r['new_snapshot_bytes']:,} | {r['new_amortized_bytes']:,.0f} |"
        )
    lines += [
        "",
        "**Cold read** (in-process medians; baseline `json.load` of a 1,000-entry map, the"
        " old design's whole read):",
        "",
        "| read | time | baseline | ratio |",
        "|---|---|---|---|",
    ]
    for r in results["cold_read"]:
        lines.append(
            f"| {r['what']} | {r['ours_us']:.0f} µs | {r['baseline_us']:.0f} µs | "
            f"{r['ratio']:.2f} |"
        )
    lines += [
        "",
        "**Compaction** (finished journals of 20 records, 5,000 distinct keys, max 1,000"
        " entries; in a child process):",
        "",
        "| records | seconds | records/s | peak RSS | baseline: read + json.loads |",
        "|---|---|---|---|---|",
    ]
    for r in results["compaction"]:
        lines.append(
            f"| {r['records']:,} | {r['seconds']:.2f} | {r['records_per_s']:,.0f} | "
            f"{r['peak_rss_mb']:.0f} MB | {r['baseline_us'] / 1e6:.2f} s |"
        )
    rate = results["hit_rate"]
    lines += [
        "",
        "**Hit rate**, a simulation of the eviction policies only: 3,000 agents with"
        " Zipf-like popularity, sessions rotating on 0.2% of uses, cache bound 1,000:"
        f" least-recently-reconciled (new) **{rate['new']:.1%}**, insertion order (old)"
        f" **{rate['old']:.1%}**.",
        "",
        "![lost entries](perf-lost-entries.png) ![fork latency](perf-fork-latency.png)"
        " ![compaction](perf-compaction.png)",
    ]
    return "\n".join(lines)


def write_section(path: Path, table: str) -> None:
    """Replace the text between the markers (appending a section if they are absent)."""
    text = path.read_text() if path.exists() else "# Performance\n"
    block = f"{BEGIN}\n{table}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Against the one-JSON-file cache\n\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
