"""The Markdown section of docs/performance.md that ``python -m benchmarks`` writes."""

from __future__ import annotations

from typing import Any

from benchmarks.compare import COMPACT_THRESHOLD, COMPACTION_KEYS, RECORDS_PER_JOURNAL, summary


def render(results: dict[str, Any]) -> str:
    """Every figure of a run, as Markdown, each table with how it was measured."""
    m = results["machine"]
    command = "python -m benchmarks" + (" --quick" if results["quick"] else "")
    lines = [
        f"Measured {m['date']} on {m['cores']} cores (shared, noisy), Python {m['python']},"
        f" by `{command}` ({results['seconds']} s in all). Both designs in the same run,"
        " as real processes, against one PostgreSQL"
        + (
            " started for the run with `fsync=off`: these figures count round trips and"
            " bytes, not the server's disk."
            if results["server"].startswith("dedicated")
            else " (`--database-url`)."
        ),
        "The old design is `benchmarks/old_hook.py`, rebuilt from its description.",
        "",
    ]
    for part in (_lost, _latency, _trips, _bytes, _cold, _compaction, _hit_rate):
        lines += part(results)
        lines.append("")
    lines.append(
        "![lost entries](perf-lost-entries.png)\n![fork latency](perf-fork-latency.png)\n"
        "![compaction](perf-compaction.png)"
    )
    return "\n".join(lines)


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return out + ["| " + " | ".join(row) + " |" for row in rows]


def _lost(results: dict[str, Any]) -> list[str]:
    rows = [
        [
            str(r["forks"]),
            f"{r['old_lost']} ({r['old_lost'] / r['forks']:.0%})",
            f"**{r['new_lost']}**",
            f"{r['old_db_rows']} / {r['forks']}",
            f"{r['new_db_rows']} / {r['forks']}",
        ]
        for r in results["lost_entries"]
    ]
    return [
        "**Lost cache entries.** N hook forks started at once, each reconciling its own"
        " executor. Old: N minus the entries in the JSON file. New: N minus the entries of"
        " `journal.load()` after a compaction. The database is right in both: the old"
        " design loses only its cache, so the lost executors miss (three round trips"
        " each) until they are written again.",
        "",
        *_table(
            ["forks", "old: lost", "new: lost", "old: DB rows right", "new: DB rows right"], rows
        ),
    ]


def _latency(results: dict[str, Any]) -> list[str]:
    samples = results["hit_latency_ms"]
    base = summary(samples["python -c pass"])["p50"]
    rows = []
    for name, values in samples.items():
        s = summary(values)
        rows.append([name, f"{s['p50']:.1f}", f"{s['p99']:.1f}", f"{s['p50'] / base:.2f}x"])
    n = len(samples["python -c pass"])
    return [
        f"**Hit-path fork wall time**, from `Popen` to exit, {n} rounds interleaved (the"
        " order rotating each round); ratio of medians to `python -c pass`. The old hook"
        " imports psycopg and connects to ask the database for the agent on every fork.",
        "",
        *_table(["command", "p50 ms", "p99 ms", "p50 / `python -c pass`"], rows),
    ]


def _trips(results: dict[str, Any]) -> list[str]:
    rows = [
        [
            r["design"],
            f"{r['hit_statements']:g}",
            f"{r['hit_connections']:g}",
            f"{r['miss_statements']:g}",
            f"{r['miss_connections']:g}",
        ]
        for r in results["round_trips"]
    ]
    method = results["round_trips"][0]["method"]
    return [
        f"**Database round trips**, counted by the server: statements from `{method}`,"
        " connections from `pg_stat_database.sessions`, for the design's own database only."
        " Misses: each fork a new session id; hits: the last one again.",
        "",
        *_table(
            [
                "design",
                "statements per hit",
                "connections per hit",
                "statements per miss",
                "connections per miss",
            ],
            rows,
        ),
    ]


def _bytes(results: dict[str, Any]) -> list[str]:
    rows = [
        [
            f"{r['entries']:,}",
            f"{r['old_bytes']:,}",
            f"{r['new_append_bytes']:,}",
            f"{r['new_snapshot_bytes']:,}",
            f"**{r['new_amortized_bytes']:,.0f}**",
            f"{r['new_log_bytes']:,}",
        ]
        for r in results["bytes_per_miss"]
    ]
    return [
        "**Bytes written by one more miss** once the cache holds N entries. Old: the whole"
        " file, rewritten by every miss. New: the one line the miss appends to its own"
        " journal; a compaction rewrites the snapshot once some"
        f" {COMPACT_THRESHOLD} journals (`RECONCILE_COMPACT_THRESHOLD`) have piled up, one"
        " per fork that wrote, so each miss carries 1/"
        f"{COMPACT_THRESHOLD} of a snapshot: amortized = append + snapshot /"
        f" {COMPACT_THRESHOLD}. A snapshot entry is a full record (event id, timestamp,"
        " checksum), about 4x an entry of the old file. The hook also logs one JSON line"
        " per miss (last column; the old hook logs nothing).",
        "",
        *_table(
            ["entries", "old", "new: append", "new: snapshot", "new: amortized", "new: log"],
            rows,
        ),
    ]


def _cold(results: dict[str, Any]) -> list[str]:
    rows = [
        [
            str(r["journals"]),
            f"{r['old_p50_us']:.0f} / {r['old_p99_us']:.0f}",
            f"{r['new_p50_us']:.0f} / {r['new_p99_us']:.0f}",
            f"{r['ratio']:.2f}x",
        ]
        for r in results["cold_read"]
    ]
    return [
        "**Cold read of the cache**, in-process, interleaved: the old design's whole read"
        " (`json.load` of its 1,000-entry file) against the hit path's"
        " `journal.latest(home, key)` on a 1,000-entry snapshot plus 0 / 32 / 256 journals"
        " (3 records each). Journals are archived by every compaction, so their number is"
        " about the agents writing since the last one.",
        "",
        *_table(
            ["journals", "old: json.load p50 / p99 µs", "new: latest() p50 / p99 µs", "p50 ratio"],
            rows,
        ),
    ]


def _compaction(results: dict[str, Any]) -> list[str]:
    rows = [
        [
            f"{r['records']:,}",
            f"{r['journals']:,}",
            f"{r['seconds']:.2f}",
            f"{r['records_per_s']:,.0f}",
            f"{r['peak_rss_mb']:.0f} MB",
            f"{r['baseline_seconds']:.2f} s, {r['baseline_rss_mb']:.0f} MB",
            f"{r['seconds'] / r['baseline_seconds']:.2f}x",
        ]
        for r in results["compaction"]
    ]
    return [
        f"**Compaction** of N records in finished journals of {RECORDS_PER_JOURNAL} records,"
        f" {COMPACTION_KEYS:,} distinct keys recurring, at most 1,000 entries kept; each in a"
        " fresh process (wall time of `journal.compact`, peak RSS = the child's `VmHWM`)."
        " Baseline: a child that reads the same files and `json.loads` every line. The"
        " old design has no compaction: it pays a whole-file rewrite on every miss instead.",
        "",
        *_table(
            [
                "records",
                "journals",
                "seconds",
                "records/s",
                "peak RSS",
                "baseline: read + parse",
                "ratio",
            ],
            rows,
        ),
    ]


def _hit_rate(results: dict[str, Any]) -> list[str]:
    r = results["hit_rate"]
    return [
        "**Hit rate**, a simulation of the eviction policies only (no processes):"
        f" {r['agents']:,} agents with Zipf-like popularity (1/rank^{r['skew']:g}),"
        f" {r['uses']:,} tool uses, each rotating the agent's session with probability"
        f" {r['rotation']:g}; cache bound 1,000. Old: insertion order, trimmed on every"
        " miss. New: the journal's own fold and trim (least recently reconciled first),"
        f" trimmed every {COMPACT_THRESHOLD} misses as the background compaction does.",
        "",
        *_table(
            ["policy", "hit rate"],
            [
                ["insertion order (old)", f"{r['old']:.1%}"],
                ["least recently reconciled (new)", f"**{r['new']:.1%}**"],
                ["least recently *used* (neither design: a hit writes nothing)", f"{r['lru']:.1%}"],
                ["unbounded cache (the ceiling)", f"{r['unbounded']:.1%}"],
            ],
        ),
        "",
        "The two designs' policies differ little: a hit writes nothing in either, so both"
        " evict by when a key was last *written*, and a hot agent that keeps hitting ages"
        " out as if it were idle. They differ only for keys whose session rotated (the old"
        " dict keeps such a key at its first position) and in journals not yet compacted."
        " Recording use would buy the few points of the LRU row, at the price of a write on"
        " every hit; the rest of the gap to the ceiling is capacity (3,000 agents, 1,000"
        " entries).",
    ]
