"""The three charts of docs/performance.md (matplotlib, imported only here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def draw(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    written = []

    lost = results["lost_entries"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    forks = [str(r["forks"]) for r in lost]
    positions = range(len(forks))
    ax.bar(
        [p - 0.2 for p in positions],
        [r["old_lost"] for r in lost],
        0.4,
        label="one JSON file (old)",
        color="#c44e52",
    )
    ax.bar(
        [p + 0.2 for p in positions],
        [r["new_lost"] for r in lost],
        0.4,
        label="journals (new)",
        color="#4c72b0",
    )
    for p, r in zip(positions, lost, strict=True):
        ax.annotate(str(r["new_lost"]), (p + 0.2, r["new_lost"]), ha="center", va="bottom")
    ax.set_xticks(list(positions), forks)
    ax.set_xlabel("concurrent hook forks, each reconciling its own executor")
    ax.set_ylabel("cache entries lost")
    ax.set_title("Lost entries")
    ax.legend()
    fig.tight_layout()
    written.append(_save(fig, out / "perf-lost-entries.png"))

    latency = results["hit_latency_ms"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, color in (
        ("python -c pass", "#999999"),
        ("new hook", "#4c72b0"),
        ("old hook", "#c44e52"),
    ):
        values = sorted(latency[name])
        ax.plot(
            values, [(i + 1) / len(values) for i in range(len(values))], label=name, color=color
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks([5, 10, 20, 50, 100, 200])
    ax.set_xlabel("wall time of one hit fork (ms, log scale)")
    ax.set_ylabel("fraction of forks")
    ax.set_title("Hit-path fork latency (CDF)")
    ax.legend()
    fig.tight_layout()
    written.append(_save(fig, out / "perf-fork-latency.png"))

    compaction = results["compaction"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    records = [r["records"] for r in compaction]
    ax.plot(
        records,
        [r["seconds"] for r in compaction],
        "o-",
        color="#4c72b0",
        label="compaction time (s)",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("records in the journals")
    ax.set_ylabel("seconds")
    other = ax.twinx()
    other.plot(
        records,
        [r["peak_rss_mb"] for r in compaction],
        "s--",
        color="#dd8452",
        label="peak RSS (MB)",
    )
    other.set_ylabel("peak RSS (MB)")
    other.set_ylim(bottom=0)
    ax.set_title("Compaction cost against records")
    lines = ax.get_lines() + other.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="upper left")
    fig.tight_layout()
    written.append(_save(fig, out / "perf-compaction.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
