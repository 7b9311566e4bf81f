"""The hook's costs against an earlier commit: two installs side by side.

    python -m benchmarks.hook_versions --base d2284e3 [--rounds 400] [--paths hit,miss,waiting]

Builds a non-editable install of the commit ``--base`` (``git archive``) and one of the
working tree, each in a virtual environment of its own, then runs each install's hook
as ``install-hooks`` writes it (``<env>/bin/python -S <env>/bin/reconcile hook``) in
turns with ``python -S -c pass``, the installs' order alternating per round, so that
both meet the same machine. Per path: the median wall time and the mean CPU of the hook
process itself (``os.wait4``), each as a ratio to ``python -S -c pass``, and the change.

- ``hit``: the session id is settled in the journal;
- ``miss``: a new session id in a fresh state directory: the observation is journaled
  and a reconciler started (it meets a refusing database and gives up at once; it runs
  beside the next measurements, for both installs alike);
- ``waiting``: the observation is journaled already and a backoff is in force.

CPU is the figure to read on a loaded machine; wall times there say more about the
scheduler. Needs git and the package index (the dependencies are installed).
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
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFUSING = "postgresql://x@127.0.0.1:9/d"
PATHS = ("hit", "miss", "waiting")


def build(name: str, source: Path, into: Path) -> Path:
    """A virtual environment under ``into`` with ``source`` installed (not editable)."""
    env_dir = into / f"venv-{name}"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", str(source)]
    subprocess.run(pip, check=True)
    return env_dir


def archive(commit: str, into: Path) -> Path:
    """The tree of ``commit``, extracted under ``into``."""
    target = into / "base"
    target.mkdir()
    tar = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=tar, check=True)
    return target


def timed(argv: list[str], env: dict[str, str], stdin: bytes) -> tuple[float, float]:
    """Wall and CPU seconds of one process (its own CPU, from ``wait4``)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    assert proc.stdin is not None
    proc.stdin.write(stdin)
    proc.stdin.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}")
    return time.perf_counter() - started, usage.ru_utime + usage.ru_stime


def payload(session_id: str) -> bytes:
    """What Claude Code sends on a prompt, the transcript's place included."""
    return json.dumps(
        {
            "session_id": session_id,
            "hook_event_name": "UserPromptSubmit",
            "transcript_path": f"/home/u/.claude/projects/-w/{session_id}.jsonl",
            "cwd": "/w",
        }
    ).encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hook_versions")
    parser.add_argument("--base", required=True, help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--paths", default=",".join(PATHS))
    args = parser.parse_args(argv)
    paths = [p for p in args.paths.split(",") if p]
    if not paths or set(paths) - set(PATHS):
        parser.error(f"--paths: a comma-separated subset of {','.join(PATHS)}")
    scratch = Path(tempfile.mkdtemp(prefix="hook-versions-"))
    installs = {
        "base": build("base", archive(args.base, scratch), scratch),
        "this": build("this", ROOT, scratch),
    }
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RECONCILE_", "GENIE_"))}
    clean.pop("PYTHONPATH", None)

    def env_for(home: Path) -> dict[str, str]:
        return {
            **clean,
            "RECONCILE_HOME": str(home),
            "RECONCILE_EXECUTOR_ID": "e-1",
            "RECONCILE_DATABASE_URL": REFUSING,
            "RECONCILE_RETRY_HORIZON": "0",
        }

    def hook(env_dir: Path) -> list[str]:
        return [str(env_dir / "bin" / "python"), "-S", str(env_dir / "bin" / "reconcile"), "hook"]

    homes: dict[str, tuple[Path, Path]] = {}
    for name, env_dir in installs.items():
        hit, waiting = scratch / f"hit-{name}", scratch / f"waiting-{name}"
        write = (
            "import journal, sys; w = journal.Writer(sys.argv[1]); w.append('executor:e-1', "
            "{'executor_id': 'e-1', 'session_id': 's-hit'}, 'session.confirmed'); w.close()"
        )
        subprocess.run([str(env_dir / "bin" / "python"), "-c", write, str(hit)], check=True)
        timed(hook(env_dir), env_for(waiting), payload("s-waiting"))  # its reconciler fails
        time.sleep(1.0)
        now = time.time()
        record = {"failures": 5, "until": now + 3000, "cap_s": 3600, "since": now}
        (waiting / "backoff").write_text(json.dumps(record))  # in force for the whole run
        homes[name] = (hit, waiting)

    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for round_ in range(args.rounds):
        names = list(installs) if round_ % 2 == 0 else list(installs)[::-1]
        for name in names:
            hit, waiting = homes[name]
            cases = {
                "hit": (hit, "s-hit"),
                "miss": (scratch / f"miss-{name}-{round_}", f"s-{uuid.uuid4()}"),
                "waiting": (waiting, "s-waiting"),
            }
            for path in paths:
                home, session_id = cases[path]
                sample = timed(hook(installs[name]), env_for(home), payload(session_id))
                samples.setdefault((name, path), []).append(sample)
        baseline = [sys.executable, "-S", "-c", "pass"]
        samples.setdefault(("pass", ""), []).append(timed(baseline, clean, b""))

    def wall(key: tuple[str, str]) -> float:
        return statistics.median(s[0] for s in samples[key])

    def cpu(key: tuple[str, str]) -> float:
        return statistics.mean(s[1] for s in samples[key])

    pw, pc = wall(("pass", "")), cpu(("pass", ""))
    print(
        f"{args.rounds} rounds, {args.base} against the working tree; python -S -c pass: "
        f"wall {pw * 1e3:.2f} ms, CPU {pc * 1e3:.2f} ms; load {os.getloadavg()[0]:.1f}"
    )
    for path in paths:
        b, t = ("base", path), ("this", path)
        print(
            f"{path:8} wall {wall(b) / pw:.3f}x -> {wall(t) / pw:.3f}x "
            f"({100 * (wall(t) / wall(b) - 1):+.1f}%)   "
            f"CPU {cpu(b) / pc:.3f}x -> {cpu(t) / pc:.3f}x ({100 * (cpu(t) / cpu(b) - 1):+.1f}%)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
