"""The hook's hit-path budget: a hit fork against ``python -c pass``, interleaved.

Budget: the median wall time of a hit-path fork at most 1.0x that of
``python -c pass`` on the same machine in the same run. A hit needs no database: the
cache entry is written here directly, and the URL points nowhere, so a fork that missed
would show up as a pending event (checked at the end).

    python -m benchmarks.hook_bench [--runs N]
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

import journal
from benchmarks._harness import hook_argv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        with journal.Writer(home) as writer:  # the entry a previous miss left behind
            writer.append(
                "executor:e-1",
                {"executor_id": "e-1", "session_id": "s-1"},
                "session.confirmed",
            )
        env = {
            **os.environ,
            "RECONCILE_HOME": home,
            "RECONCILE_EXECUTOR_ID": "e-1",
            "RECONCILE_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
        }
        payload = json.dumps({"session_id": "s-1", "hook_event_name": "PreToolUse"}).encode()
        runs = {
            "python -c pass": ([sys.executable, "-c", "pass"], None),
            "reconcile hook (hit)": (hook_argv(), payload),
            "python -c 'import json'": ([sys.executable, "-c", "import json"], None),
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.runs):
            for name, (argv, stdin) in runs.items():
                started = time.perf_counter()
                subprocess.run(argv, input=stdin, env=env, check=True)
                times[name].append(time.perf_counter() - started)
        misses = sum(1 for _ in journal.history(home)) - 1
    base = statistics.median(times["python -c pass"])
    print(f"{args.runs} interleaved runs each")
    print(f"{'':26}{'median ms':>10}{'p99 ms':>9}{'ratio':>7}")
    for name, values in times.items():
        p99 = sorted(values)[min(len(values) - 1, int(len(values) * 0.99))]
        median = statistics.median(values)
        print(f"{name:26}{median * 1000:>10.2f}{p99 * 1000:>9.2f}{median / base:>7.2f}")
    print(f"forks that missed (must be 0): {misses}")


if __name__ == "__main__":
    main()
