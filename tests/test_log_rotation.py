"""The log's rotation under real concurrent processes: nothing lost beyond its retention.

Every process of a state directory appends to ``log/reconcile.log`` and rotates it past
``RECONCILE_LOG_MAX_BYTES``; several cross the bound at once. The check is exact: the
writers together write more than the bound and less than twice it, so one rotation is
due and none may drop anything: every line written is in ``reconcile.log`` or
``reconcile.log.1``. Renaming without a lock and an inode check lost the lines of the
file just rotated when a second process renamed the new one over it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

WRITERS = 8
LINES = 200  # per writer; each line is 120-130 bytes, so 192-208 KB in all
MAX_BYTES = 120_000  # less than the total, more than half of it: exactly one rotation
ROUNDS = 6

_WRITER = """
import os, sys, time
import reconcile
from reconcile._log import get_logger
home, max_bytes, go, lines, name = sys.argv[1:]
settings = reconcile.Settings.from_env({}, home=home, log_max_bytes=int(max_bytes))
reconcile.configure_logging(settings)
log = get_logger()
open(os.path.join(home, "ready-" + name), "w").close()
while not os.path.exists(go):
    time.sleep(0.0005)
for seq in range(int(lines)):
    log.info("rotation.test", writer=name, seq=seq)
"""


def _wait(condition, what: str, deadline_s: float = 180.0) -> None:
    give_up = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < give_up, what
        time.sleep(0.01)


def _one_round(home: Path) -> None:
    home.mkdir(mode=0o700)
    go = home / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(home), str(MAX_BYTES), str(go), str(LINES), str(w)]
        )
        for w in range(WRITERS)
    ]
    try:
        ready = [home / f"ready-{w}" for w in range(WRITERS)]
        _wait(lambda: all(p.exists() for p in ready), "the writers never got ready")
        go.touch()  # all at once: they cross the bound together
        for proc in procs:
            assert proc.wait(timeout=300) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    logs = home / "log"
    assert sorted(p.name for p in logs.iterdir() if p.name.startswith("reconcile.log")) == [
        "reconcile.log",
        "reconcile.log.1",
    ]
    found: dict[str, list[int]] = {}
    written = 0
    for name in ("reconcile.log.1", "reconcile.log"):
        content = (logs / name).read_bytes()
        written += len(content)
        for line in content.splitlines():
            record = json.loads(line)
            found.setdefault(record["writer"], []).append(record["seq"])
    lost = {str(w): LINES - len(set(found.get(str(w), ()))) for w in range(WRITERS)}
    assert not any(lost.values()), f"lines lost per writer: {lost}"
    assert all(sorted(seqs) == list(range(LINES)) for seqs in found.values())  # once each
    # Nothing lost, so this is all that was written: one rotation was due, and one only.
    assert MAX_BYTES < written < 2 * MAX_BYTES, "the check needs exactly one rotation due"


def test_concurrent_rotation_loses_no_line(tmp_path: Path):
    for number in range(ROUNDS):
        _one_round(tmp_path / f"home-{number}")
