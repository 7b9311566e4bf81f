"""Reusable pieces of the benchmarks: interleaved timing, percentiles, child processes
with their peak RSS, and a plain-text table.

Why interleave: the machines these run on are small and shared, so the speed of the box
drifts during a run. Timing a candidate and its baseline in alternation (and rotating
which goes first) exposes both to the same drift, and the *ratio* of their medians is
then stable where the absolute times are not. Standard library only: importing this
module must not change what a benchmark measures.
"""

from __future__ import annotations

import gc
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent  # the project: children import from here


def fresh_database(admin_url: str, name: str) -> str:
    """Drop the database ``name`` if a former run left it, create it empty, return its URL
    (the admin URL with ``dbname`` replaced)."""
    import psycopg  # loaded only when asked: see above
    from psycopg.conninfo import make_conninfo

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return make_conninfo(admin_url, dbname=name)


def hook_argv() -> list[str]:
    """The hook exactly as ``reconcile install-hooks`` writes it for this environment (its
    default command: ``<env>/bin/python -S <env>/bin/reconcile hook``), so that a benchmark
    times the process Claude Code starts."""
    from cli._install import default_command  # loaded only when asked: see above

    return shlex.split(default_command())


def typed_hook_argv() -> list[str]:
    """``reconcile hook`` as typed in a shell: the installed script, through its shell line."""
    script = Path(sys.executable).with_name("reconcile")
    return [str(script), "hook"] if script.exists() else [sys.executable, "-m", "cli", "hook"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by the nearest-rank method; no interpolation."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, p99, minimum and count of a sample."""
    return {
        "median": statistics.median(values),
        "p99": percentile(values, 99),
        "min": min(values),
        "n": len(values),
    }


def interleaved(
    calls: Mapping[str, Callable[[], object]],
    runs: int,
    *,
    warmup: int = 2,
    disable_gc: bool = True,
    self_timed: bool = False,
) -> dict[str, list[float]]:
    """Time each call ``runs`` times, in rounds that run every call once.

    The order within a round rotates, so no call always follows the same neighbour.
    Returns the seconds of each run, by name. ``disable_gc``: as :mod:`timeit` does, so
    a collection triggered by one call is not billed to the next. ``self_timed``: each
    call returns its own duration in seconds (say, measured inside a child process).
    """
    names = list(calls)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(warmup):
        for name in names:
            calls[name]()
    gc.collect()
    was_enabled = gc.isenabled()
    if disable_gc:
        gc.disable()
    try:
        for round_ in range(runs):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                call = calls[name]
                started = time.perf_counter()
                result = call()
                elapsed = time.perf_counter() - started
                samples[name].append(float(result) if self_timed else elapsed)  # type: ignore[arg-type]
    finally:
        if was_enabled:
            gc.enable()
    return samples


def ratio(candidate: Sequence[float], baseline: Sequence[float], q: float = 50) -> float:
    """The candidate's ``q``-th percentile over the baseline's."""
    if q == 50:
        return statistics.median(candidate) / statistics.median(baseline)
    return percentile(candidate, q) / percentile(baseline, q)


# Appended to a child's code: its peak resident set, then its result, as one JSON line.
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across execve from the image that was
# replaced, which after fork/vfork is the *parent's*, so a child of a 300 MB benchmark
# process reports 300 MB (RUSAGE_CHILDREN in the parent has the same flaw). VmHWM
# belongs to the new address space only.
_REPORT = """
def _peak_rss_kb():
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

import json as _json, sys as _sys
_sys.stdout.write(_json.dumps({"result": RESULT, "peak_rss_kb": _peak_rss_kb()}) + "\\n")
"""


def run_child(code: str, *args: str, timeout: float = 600) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter (``sys.argv[1:]`` = ``args``, the project
    importable) and return ``{"result": RESULT, "peak_rss_kb": ...}``.

    ``code`` must leave a JSON-serialisable value in a global named ``RESULT``; the peak
    RSS is the child's own high-water mark (``VmHWM``), not the parent's.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), _pythonpath()]))}
    done = subprocess.run(
        [sys.executable, "-c", code + _REPORT, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"child failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _pythonpath() -> str:
    return os.environ.get("PYTHONPATH", "")


def duration(seconds: float) -> str:
    """A duration for people: µs, ms or s, three significant figures or so."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, markdown: bool = False
) -> str:
    """Rows as aligned text (first column left, others right), or as a Markdown table."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in cells]
        lines.insert(1, "|" + "|".join("---" for _ in headers) + "|")
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def render(row: list[str]) -> str:
        first = row[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    lines = [render(cells[0]), "  ".join("-" * w for w in widths)]
    lines += [render(row) for row in cells[1:]]
    return "\n".join(lines)


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    return {
        "python": sys.version.split()[0],
        "cores": os.cpu_count(),
        "platform": sys.platform,
        "date": time.strftime("%Y-%m-%d"),
    }
