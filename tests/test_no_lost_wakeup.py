"""No lost wake-up (issue 19): observers never take the locks the protocol relies on.

A hook that finds ``reconcile.lock`` held leaves its observation to the reconciler it
thinks runs; a probe (``reconcile status``, the demo, a test's wait) that held the lock
for an instant made that conclusion wrong, and the observation waited for the next hook.
Likewise the compactor's cleanup of stale ``.new`` journals, trying the lock of a file a
writer had just created, made the writer's own lock fail and its record be refused.
Real processes throughout; every wait has a deadline in minutes and ends on a condition.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from reconcile_helpers import ROOT, clean_env, cli, hook_process, seed, session_of, wait_settled

import journal
import reconcile
from journal import _platform
from reconcile import migrate

DEADLINE_S = 300.0

# A probe in a tight loop, as `reconcile status` in a loop or a test's wait would be;
# it writes one byte per 100 probes so the test knows it is at work.
PROBE_LOOP = """
import os, sys
sys.path.insert(0, {root!r})
import reconcile
from journal import _platform
_platform.use_stand_in(sys.argv[2] == "stand-in")
home, n = sys.argv[1], 0
while True:
    reconcile.reconciler_running(home)
    reconcile.compaction_running(home)
    n += 1
    if n % 100 == 0:
        os.write(1, b".")
"""


@pytest.fixture(params=["native", "stand-in"])
def mark_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """The platform's mark (an OFD lock on Linux) and the stand-in other systems run."""
    _platform.use_stand_in(request.param == "stand-in")
    try:
        yield request.param
    finally:
        _platform.use_stand_in(not _platform.OFD_LOCKS)


class Prober:
    """A process probing ``home``'s locks in a tight loop; counts its probes."""

    def __init__(self, home: Path, kind: str) -> None:
        code = PROBE_LOOP.format(root=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(home), kind], stdout=subprocess.PIPE
        )
        self.probes = 0
        self._reader = threading.Thread(target=self._count, daemon=True)
        self._reader.start()

    def _count(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(4096):
            self.probes += 100 * len(chunk)

    def wait_started(self) -> None:
        give_up = time.monotonic() + DEADLINE_S
        while self.probes == 0:
            assert self.proc.poll() is None, "the probe loop died"
            assert time.monotonic() < give_up, "the probe loop never started"
            time.sleep(0.01)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=60)
        self._reader.join(timeout=60)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def test_a_probe_in_a_tight_loop_never_makes_take_lock_fail(tmp_path: Path, mark_kind: str):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    fd = reconcile.take_lock(str(home))  # both lock files exist from here on
    assert fd is not None
    reconcile.release_lock(fd)
    journal.compact(home)
    prober = Prober(home, mark_kind)
    try:
        prober.wait_started()
        start, takes = prober.probes, 0
        # At least 20000 takes and 50000 probes overlapping them, however fast each side is.
        while takes < 20000 or prober.probes - start < 50000:
            assert prober.proc.poll() is None, "the probe loop died"
            fd = reconcile.take_lock(str(home))
            assert fd is not None, f"take_lock failed after {takes} takes: a probe held it"
            reconcile.release_lock(fd)
            report = journal.compact(home) if takes % 50 == 0 else None
            assert report is None or not report.busy, "a probe made the compactor give up"
            takes += 1
    finally:
        prober.stop()


def test_the_mark_shows_a_held_lock_to_other_processes_and_goes_with_it(
    tmp_path: Path, mark_kind: str
):
    """Held here, handed to a child (as a hook hands it to its reconciler), released."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)

    def seen() -> bool:
        code = (
            f"import sys; sys.path.insert(0, {str(ROOT)!r}); import reconcile; "
            "from journal import _platform; "
            f"_platform.use_stand_in({mark_kind == 'stand-in'}); "
            f"print(reconcile.reconciler_running({str(home)!r}))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip() == b"True"

    assert not seen()
    fd = reconcile.take_lock(str(home))
    assert fd is not None
    assert seen()
    child_code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); from journal import _platform; "
        f"_platform.use_stand_in({mark_kind == 'stand-in'}); "
        "from reconcile._lock import adopt_lock; sys.stdin.readline(); "
        f"adopt_lock({str(home)!r}, {fd}); print('ready', flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", child_code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        pass_fds=(fd,),
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        reconcile.release_lock(fd)  # the hook's copy goes once it started the child...
        child.stdin.write(b"go\n")
        child.stdin.flush()
        assert child.stdout.readline() == b"ready\n"  # ...which marks it anew if need be
        assert seen()
        assert reconcile.take_lock(str(home)) is None
    finally:
        child.kill()
        child.communicate(timeout=60)  # waits, and closes its pipes
    assert not seen()
    fd = reconcile.take_lock(str(home))
    assert fd is not None
    reconcile.release_lock(fd)


@pytest.fixture
def db(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn, create_tables=True)
    return database_url


def test_hooks_against_a_status_loop_and_a_compaction_loop_leave_nothing_unsettled(
    tmp_path: Path, db: str
):
    """The issue's check: hooks run while `reconcile status` and probes loop and
    compactions run back to back; once the hooks stop, everything gets settled."""
    home = tmp_path / "home"
    executors, rounds = 6, 8
    seed(db, [], [(f"e-{i}", None, f"old-{i}", "running") for i in range(executors)])
    home.mkdir(mode=0o700)
    stop = threading.Event()
    statuses = [0]

    def status_loop() -> None:
        while not stop.is_set():
            done = cli("status", "--json", home=home, url=db)
            assert done.returncode == 0, done.stderr
            statuses[0] += 1

    def compaction_loop() -> None:
        while not stop.is_set():
            journal.compact(home, pinned_types=reconcile.UNSETTLED)

    prober = Prober(home, "stand-in" if _platform._stand_in else "native")
    loops = [threading.Thread(target=f) for f in (status_loop, compaction_loop)]
    for loop in loops:
        loop.start()
    try:
        prober.wait_started()
        for r in range(rounds):
            hooks = [
                hook_process(
                    home,
                    db,
                    {"session_id": f"s-{r}-{i}"},
                    RECONCILE_EXECUTOR_ID=f"e-{i}",
                    RECONCILE_LINGER="0",
                    RECONCILE_COMPACT_THRESHOLD="2",
                )
                for i in range(executors)
            ]
            for hook in hooks:
                out, err = hook.communicate(timeout=DEADLINE_S)
                assert hook.returncode == 0, err
                assert out == b""
    finally:
        stop.set()
        for loop in loops:
            loop.join(timeout=DEADLINE_S)
        prober.stop()
    assert statuses[0] > 0 and prober.probes > 0
    wait_settled(home, deadline_s=DEADLINE_S)
    assert {session_of(db, f"e-{i}") for i in range(executors)} == {
        f"s-{rounds - 1}-{i}" for i in range(executors)
    }


WRITER_LOOP = """
import sys
sys.path.insert(0, {root!r})
import journal
home, me, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    with journal.Writer(home, fsync=False) as writer:  # a new journal for every record
        writer.append(f"{{me}}-{{i}}", {{"i": i}}, "t")
"""


def test_writers_creating_journals_against_a_compaction_loop_lose_nothing(tmp_path: Path):
    home = tmp_path / "home"
    writers, each = 4, 300
    journal.ensure_home(home)
    stop = threading.Event()
    compactions = [0]

    def compaction_loop() -> None:
        while not stop.is_set():
            journal.compact(home)
            compactions[0] += 1

    loop = threading.Thread(target=compaction_loop)
    loop.start()
    try:
        code = WRITER_LOOP.format(root=str(ROOT))
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(home), f"w{w}", str(each)],
                stderr=subprocess.PIPE,
            )
            for w in range(writers)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=DEADLINE_S)
            assert proc.returncode == 0, err.decode()[-2000:]
    finally:
        stop.set()
        loop.join(timeout=DEADLINE_S)
    assert compactions[0] > 0
    journal.compact(home)
    keys = {r.key for r in journal.history(home)}
    assert keys == {f"w{w}-{i}" for w in range(writers) for i in range(each)}


STRACE = shutil.which("strace")


@pytest.mark.skipif(STRACE is None, reason="strace is not installed")
def test_the_cleanup_never_tries_the_lock_of_a_fresh_pending_journal(tmp_path: Path):
    """A writer's ``.new`` file exists, unlocked, between its create and its flock: a
    compaction in that instant must not try its lock (strace shows every flock)."""
    home = tmp_path / "home"
    journal.ensure_home(home)
    (home / "journal").mkdir(mode=0o700, exist_ok=True)
    fresh = home / "journal" / "1-0123456789abcdef.jnl.new"
    fresh.touch(mode=0o600)  # as a writer's create leaves it, before its flock
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import journal; "
    code += f"journal.compact({str(home)!r})"
    traced = subprocess.run(
        [STRACE, "-f", "-y", "-e", "trace=flock", sys.executable, "-c", code],
        capture_output=True,
        timeout=DEADLINE_S,
        env=clean_env(),
    )
    assert traced.returncode == 0, traced.stderr.decode()[-2000:]
    flocks = [line for line in traced.stderr.decode().splitlines() if "flock(" in line]
    assert any("compact.lock" in line for line in flocks)  # strace saw the flocks
    assert not [line for line in flocks if fresh.name in line]
    assert fresh.exists()  # and left it to its writer


@pytest.mark.skipif(STRACE is None, reason="strace is not installed")
def test_a_writer_whose_new_journal_was_taken_starts_over_and_loses_nothing(tmp_path: Path):
    """The writer's first flock fails as if the cleanup held its fresh file (strace
    injects EWOULDBLOCK there): the append still succeeds, in a journal of its own."""
    home = tmp_path / "home"
    INJECT = "inject=flock:error=EAGAIN:when=1"
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); import journal; "
        f"journal.Writer({str(home)!r}).append('k', {{'v': 1}}, 't')"
    )
    traced = subprocess.run(
        [STRACE, "-f", "-e", "trace=flock", "-e", INJECT, sys.executable, "-c", code],
        capture_output=True,
        timeout=DEADLINE_S,
        env=clean_env(),
    )
    assert "(Resource temporarily unavailable) (INJECTED)" in traced.stderr.decode()
    assert traced.returncode == 0, traced.stderr.decode()[-2000:]
    assert [r.key for r in journal.history(home)] == ["k"]
    assert [p.name for p in (home / "journal").iterdir() if p.name.endswith(".new")] == []
