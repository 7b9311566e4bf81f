"""``reconcile verify --transcripts`` at scale: ``--executors`` settled executors and
``--transcripts`` transcripts on disk, time and peak memory.

The state directory is built as the hooks and the reconciler leave it: per executor an
observation (with ``transcript_path`` and ``cwd``) and its ``session.reconciled``
outcome, compacted into the snapshot and archived (so the history is read from the
archive, as on a long-lived host). Each executor has a project directory of its own
holding its session's transcript and older sessions' (orphans no record names), and
one executor in ten a transcript newer than its row's (a missed rotation), so the check
finds problems as it would on a real host. The check and the ``--repair`` dry run each
run in a fresh interpreter (the project importable, no database: neither needs one);
the time is measured inside it, the memory is its peak resident set (VmHWM).

    python -m benchmarks.transcripts_bench [--executors 1000] [--transcripts 10000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import journal
from benchmarks._harness import run_child

CHECK = """
import os, sys, time
from reconcile import Settings, verify_transcripts, repair_transcripts
settings = Settings.from_env({}, home=sys.argv[1], database_url="postgresql://unused")
env = {"CLAUDE_CONFIG_DIR": sys.argv[2]}
check = repair_transcripts if sys.argv[3] == "repair" else verify_transcripts
started = time.perf_counter()
report = check(settings, env)
elapsed = time.perf_counter() - started
RESULT = {
    "seconds": elapsed,
    "rows": len(report.rows),
    "problems": sum(1 for r in report.rows if r.problems),
    "orphans": len(report.orphans),
    "repairs": sum(1 for r in report.repairs if r.action == "observe"),
}
"""


def build(root: Path, executors: int, transcripts: int) -> tuple[Path, Path]:
    home, claude = root / "state", root / "claude"
    projects = claude / "projects"
    per_dir = max(1, transcripts // executors)
    now = time.time()
    with journal.Writer(home, fsync=False) as writer:
        for number in range(executors):
            cwd = f"/work/project {number}.d"
            directory = projects / cwd.replace("/", "-").replace(" ", "-").replace(".", "-")
            directory.mkdir(parents=True)
            session = str(uuid.uuid4())
            path = directory / f"{session}.jsonl"
            key = f"executor:e-{number}"
            located = {"transcript_path": str(path), "cwd": cwd}
            identity = {"executor_id": f"e-{number}", "agent_id": None}
            identity.update(agent_name=None, team=None)
            observed = writer.append(
                key, {"identity": identity, "session_id": session, **located}, "session.observed"
            )
            writer.append(
                key,
                {
                    "executor_id": f"e-{number}",
                    "old_session_id": None,
                    "new_session_id": session,
                    "agent": None,
                    "team": None,
                    **located,
                },
                "session.reconciled",
                event_id=journal.event_id_next_to(observed),
            )
            for older in range(per_dir - 1):  # earlier sessions no record names
                orphan = directory / f"{uuid.uuid4()}.jsonl"
                orphan.write_text('{"type":"user"}\n')
                os.utime(orphan, (now - 7200 - older, now - 7200 - older))
            path.write_text('{"type":"user"}\n' * 10)
            os.utime(path, (now - 3600, now - 3600))
            if number % 10 == 0:  # a missed rotation: newer than the row's transcript
                newer = directory / f"{uuid.uuid4()}.jsonl"
                newer.write_text('{"type":"user"}\n')
                os.utime(newer, (now + 60, now + 60))
    journal.compact(home, max_entries=executors * 2)
    return home, claude


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executors", type=int, default=1000)
    parser.add_argument("--transcripts", type=int, default=10000)
    parser.add_argument("--quick", action="store_true", help="100 executors, 1,000 transcripts")
    args = parser.parse_args()
    if args.quick:
        args.executors, args.transcripts = 100, 1000
    with tempfile.TemporaryDirectory(prefix="reconcile-bench-transcripts-") as scratch:
        home, claude = build(Path(scratch), args.executors, args.transcripts)
        on_disk = sum(1 for _ in claude.glob("projects/*/*.jsonl"))
        print(f"{args.executors} settled executors, {on_disk} transcripts on disk")
        for mode in ("verify", "repair"):
            out = run_child(CHECK, str(home), str(claude), mode)
            result = out["result"]
            result["peak_rss_mb"] = round(out["peak_rss_kb"] / 1024, 1)
            print(mode, json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
