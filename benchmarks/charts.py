"""The three charts beside docs/performance.md. matplotlib (the ``bench`` extra) is
imported here only, when the charts are drawn, with the Agg backend (no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

OLD_COLOR, NEW_COLOR, BASE_COLOR = "#c44e52", "#4c72b0", "#8c8c8c"
SIZE = (6.4, 3.8)


def draw(results: dict[str, Any], out: Path) -> list[Path]:
    """Write the charts into ``out``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    return [
        _lost_entries(results["lost_entries"], out / "perf-lost-entries.png"),
        _fork_latency(results["hit_latency_ms"], out / "perf-fork-latency.png"),
        _compaction(results["compaction"], out / "perf-compaction.png"),
    ]


def _lost_entries(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=SIZE)
    positions = list(range(len(rows)))
    for shift, design, label, color in (
        (-0.2, "old", "one JSON file (old)", OLD_COLOR),
        (0.2, "new", "journals (new)", NEW_COLOR),
    ):
        xs = [p + shift for p in positions]
        lost = [r[f"{design}_lost"] for r in rows]
        ax.bar(xs, lost, 0.4, label=label, color=color)
        for x, r in zip(xs, rows, strict=True):
            share = r[f"{design}_lost"] / r["forks"]
            ax.annotate(f"{r[f'{design}_lost']} ({share:.0%})", (x, r[f"{design}_lost"]),
                        ha="center", va="bottom", fontsize=8)  # fmt: skip
    ax.set_xticks(positions, [str(r["forks"]) for r in rows])
    ax.set_xlabel("concurrent hook forks, each reconciling its own executor")
    ax.set_ylabel("cache entries lost")
    ax.set_title("Cache entries lost to concurrent forks")
    ax.margins(y=0.15)
    ax.legend()
    return _save(fig, path)


def _fork_latency(samples: dict[str, list[float]], path: Path) -> Path:
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=SIZE)
    colors = (BASE_COLOR, NEW_COLOR, OLD_COLOR)
    for (name, values), color in zip(samples.items(), colors, strict=True):
        ordered = sorted(values)
        fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
        ax.step(ordered, fractions, where="post", label=name, color=color)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("wall time of one fork, ms (log scale)")
    ax.set_ylabel("fraction of forks at or below")
    ax.set_title("Hit-path fork latency (cumulative distribution)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def _compaction(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=SIZE)
    records = [r["records"] for r in rows]
    ax.loglog(records, [r["seconds"] for r in rows], "o-", color=NEW_COLOR,
              label="compaction, seconds")  # fmt: skip
    ax.loglog(records, [r["baseline_seconds"] for r in rows], "o:", color=BASE_COLOR,
              label="baseline: read + json.loads, seconds")  # fmt: skip
    ax.set_xlabel("records in finished journals (log scale)")
    ax.set_ylabel("seconds (log scale)")
    memory = ax.twinx()
    memory.plot(records, [r["peak_rss_mb"] for r in rows], "s--", color="#dd8452",
                label="compaction, peak RSS (MB)")  # fmt: skip
    memory.set_ylabel("peak RSS, MB")
    memory.set_ylim(bottom=0, top=max(r["peak_rss_mb"] for r in rows) * 1.5)
    ax.set_title("Compaction cost against records")
    handles = ax.get_lines() + memory.get_lines()
    ax.legend(handles, [h.get_label() for h in handles], loc="upper left", fontsize=8)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
