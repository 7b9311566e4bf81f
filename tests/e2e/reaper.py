"""Run a command and wait for everything it started, detached processes included.

``python reaper.py REPORT DEADLINE_S -- COMMAND...`` makes itself a child subreaper
(``prctl(PR_SET_CHILD_SUBREAPER)``), so every process that COMMAND or its descendants
leave behind (a hook's detached reconciler or compaction) is re-parented here instead of
to init. It waits for COMMAND, then for every such orphan, and writes a JSON report:
COMMAND's exit code and CPU seconds (its own and its waited-for children's: Claude Code,
its hooks, its tools), and each orphan's pid and CPU seconds. When this returns, nothing
COMMAND started is still running, so a test can look at the database without guessing
how long a background process might take.

Orphans still running after DEADLINE_S seconds are killed and listed as ``lingering``:
a process that outlives its session by that much is a bug to report, not to wait for.
Linux only (``prctl``); stdin, stdout and stderr are COMMAND's own.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def _cpu_s(rusage: object) -> float:
    return float(rusage.ru_utime + rusage.ru_stime)  # type: ignore[attr-defined]


def _children() -> list[int]:
    pids: list[int] = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as stream:
                pids.extend(int(pid) for pid in stream.read().split())
        except OSError:
            continue
    return pids


def _command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as stream:
            return stream.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return f"pid {pid}"


def main(argv: list[str]) -> int:
    report_path, deadline_s, separator, *command = argv
    if separator != "--" or not command:
        sys.stderr.write("usage: reaper.py REPORT DEADLINE_S -- COMMAND...\n")
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.stderr.write(f"prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}\n")
        return 2
    started = time.monotonic()
    child = subprocess.Popen(command)
    _, status, rusage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait for it again
    report: dict[str, object] = {
        "exit_code": child.returncode,
        "wall_s": time.monotonic() - started,
        "cpu_s": _cpu_s(rusage),
        "orphans": [],
        "lingering": [],
    }
    orphans: list[dict[str, float]] = report["orphans"]  # type: ignore[assignment]
    deadline = time.monotonic() + float(deadline_s)
    while True:
        try:
            pid, status, rusage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            break  # no child left: everything has finished
        if pid:
            orphans.append({"pid": pid, "cpu_s": _cpu_s(rusage)})
            continue
        if time.monotonic() > deadline:
            lingering = _children()
            report["lingering"] = [_command_line(pid) for pid in lingering]
            for pid in lingering:
                os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
            continue
        time.sleep(0.02)
    report["settled_s"] = time.monotonic() - started
    with open(report_path, "w") as stream:
        json.dump(report, stream)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
