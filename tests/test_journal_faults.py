"""Injected I/O errors in real processes: nothing acknowledged is lost, readers never raise.

Each trial runs one real process under ``strace -f -e inject=SYSCALL:error=ERR:when=N``:
``reconcile compact`` on a state directory with a snapshot, an archive and finished
journals; a writer script appending into a brand-new state directory; a reader script
calling ``load``, ``history``, ``latest`` and ``inventory``. The injected call is one that
touches the state directory: a first run without injection (the *discovery* run, same
files, same environment, same path lengths, so the same system calls in the same order)
numbers the calls of each syscall; a trial fails the first of them on the state
directory, or a later one chosen by a seeded random draw. Then, in this process:

- the process neither crashed nor printed a traceback; ``compact`` exits 0 or 3 (an
  environment error, one line); a reader reports an error or returns complete results;
- every acknowledged record is in ``load()`` and exactly once in ``history()``, before
  and after a clean compaction, which must succeed (so the lock is not stale);
- no temp file (``*.tmp``) or pending journal (``*.new``) is left, and ``verify`` passes.

Every trial checks from strace's own output that its fault was injected, and into a call
on the state directory. The trials run a few at a time in threads (each waits on its
process); each parameter is its own test, so a failure names syscall, error and call.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from journal_helpers import raw_line, write_journal
from reconcile_helpers import reconcile_command

import journal
import reconcile

STRACE = shutil.which("strace")
pytestmark = pytest.mark.skipif(
    STRACE is None, reason="strace is not installed (.ci/run installs it with apt-get)"
)

ERRORS = ("ENOSPC", "EIO", "EDQUOT", "EMFILE")
OCCURRENCES = ("first", "later")
# The syscalls each workload makes on the state directory (the discovery run checks it).
WORKLOAD_SYSCALLS = {
    "compact": (
        "openat",
        "read",
        "write",
        "fsync",
        "rename",
        "unlink",
        "getdents64",
        "mkdir",
        "flock",
        "linkat",
    ),
    "writer": ("openat", "write", "fdatasync", "fsync", "rename", "mkdir", "flock"),
    "reader": ("openat", "read", "getdents64", "flock"),
}
TRACED = sorted({name for names in WORKLOAD_SYSCALLS.values() for name in names})
PARALLEL = 3  # trials at a time: each mostly waits on its process

WRITER = """
import sys, journal
home = sys.argv[1]
for w in range(2):
    with journal.Writer(home) as writer:
        for n in range(5):
            key = f"w{w}-{n}"
            try:
                event_id = writer.append(key, {"n": n}, "t")
            except journal.JournalError as exc:
                print("failed", key, exc, file=sys.stderr)
                continue
            print("ack", key, event_id, flush=True)
"""

READER = """
import json, sys, journal
home = sys.argv[1]
state = journal.load(home)
history = journal.history(home)
ids = [record.id for record in history]
latest = {key: (journal.latest(home, key) or {}).get("id") for key in sys.argv[2:]}
print(json.dumps({
    "state": {key: record.id for key, record in state.items()},
    "state_errors": list(state.errors),
    "history": ids,
    "history_errors": list(history.errors),
    "latest": latest,
    "inventory_errors": list(journal.inventory(home).errors),
}))
"""


class Trial(NamedTuple):
    workload: str
    syscall: str
    error: str
    occurrence: str


TRIALS = [
    Trial(workload, syscall, error, occurrence)
    for workload, syscalls in WORKLOAD_SYSCALLS.items()
    for syscall in syscalls
    for error in ERRORS
    for occurrence in OCCURRENCES
]


class Outcome(NamedTuple):
    call: int  # which call of the syscall was failed (1-based, as strace counts)
    injected: str  # strace's line for the injected call ("" if none was injected)
    exit_code: int
    stderr: str
    problems: list[str]


# ---- the workloads: state directories, commands, expectations ---------------------------


def _environment() -> dict[str, str]:
    """The same for the discovery run and every trial: the same system calls."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _seeded_home(home: Path) -> tuple[dict[str, str], set[str]]:
    """A state directory as a busy day leaves it. Returns {key: event id} of every record,
    and the ids that retention takes out of the history (in the snapshot still).

    A snapshot, three archived journals (one older than the retention: pruned), four
    finished journals (two written with fsync off, one with a corrupt line to
    quarantine), an empty one, a stale pending journal and a stale snapshot temp file;
    no quarantine/ and no log/ directory (the compaction creates them).
    """
    acked: dict[str, str] = {}
    for w in range(3):
        with journal.Writer(home) as writer:
            for n in range(4):
                acked[f"a{w}-{n}"] = writer.append(f"a{w}-{n}", {"n": n}, "t")
    journal.compact(home)
    old = time.time() - 40 * 86400
    aged = sorted((home / "archive").iterdir())[0]
    os.utime(aged, (old, old))
    pruned = {record.id for record in journal.history(home) if record.id in aged.read_text()}
    for w in range(4):
        with journal.Writer(home, fsync=w % 2 == 0) as writer:
            for n in range(6):
                acked[f"j{w}-{n}"] = writer.append(f"j{w}-{n}", {"n": n, "pad": "x" * 300}, "t")
    write_journal(home, [raw_line("bad-neighbour", {"n": 1}), b"corrupt\n"], name="1-bad.jnl")
    acked["bad-neighbour"] = journal.load(home)["bad-neighbour"].id
    write_journal(home, b"", name="2-empty.jnl")
    stale = time.time() - 3600
    for path in (home / "journal" / "3-dead.jnl.new", home / ".snapshot.1.tmp"):
        path.write_bytes(b"")
        os.utime(path, (stale, stale))
    for name in ("quarantine", "log"):
        (home / name).rmdir()
    return acked, pruned


def _reader_home(home: Path) -> tuple[dict[str, str], set[str]]:
    """Compacted, then two more finished journals: readers need snapshot and journals."""
    acked, pruned = _seeded_home(home)
    journal.compact(home)
    for w in range(2):
        with journal.Writer(home) as writer:
            for n in range(3):
                acked[f"r{w}-{n}"] = writer.append(f"r{w}-{n}", {"n": n}, "t")
    return acked, pruned


READER_KEYS = ("a1-2", "j3-5", "r1-1")


def _argv(workload: str, home: Path) -> list[str]:
    if workload == "compact":
        return [*reconcile_command(), "--home", str(home), "compact"]
    if workload == "writer":
        return [sys.executable, "-c", WRITER, str(home)]
    return [sys.executable, "-c", READER, str(home), *READER_KEYS]


# ---- strace ---------------------------------------------------------------------------

_LINE = re.compile(r"^(\d+)\s+(\w+)\((.*)$")


def _strace(
    argv: list[str], log: Path, inject: str | None = None
) -> subprocess.CompletedProcess[str]:
    command = [STRACE or "strace", "-f", "-qq", "-y", "--seccomp-bpf", "-e", "signal=none"]
    command += ["-e", "trace=" + ",".join(TRACED), "-o", str(log)]
    if inject is not None:
        command += ["-e", f"inject={inject}"]
    return subprocess.run(
        [*command, "--", *argv],
        env=_environment(),
        cwd="/",
        capture_output=True,
        text=True,
        timeout=600,
    )


def _touches(line: str, home: Path) -> bool:
    """Whether a strace line is a call on the state directory (a path argument in it,
    or a descriptor that -y shows to be in it)."""
    return f'"{home}/' in line or f'"{home}"' in line or f"<{home}/" in line or f"<{home}>" in line


def _calls_on_home(log: Path, home: Path) -> dict[str, list[int]]:
    """For each syscall, the (1-based) numbers of its calls that touch ``home``."""
    counts: dict[str, int] = {}
    found: dict[str, list[int]] = {}
    pids = set()
    for line in log.read_text(errors="replace").splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        pids.add(match[1])
        name = match[2]
        counts[name] = counts.get(name, 0) + 1
        if _touches(line, home):
            found.setdefault(name, []).append(counts[name])
    assert len(pids) == 1, f"one process expected, strace saw {sorted(pids)}"
    return found


# ---- running and judging trials --------------------------------------------------------


class Suite:
    """Discovery runs, then every trial, a few at a time; each trial's outcome by key."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.templates: dict[str, Path] = {}
        self.acked: dict[str, dict[str, str]] = {}
        self.pruned: dict[str, set[str]] = {}  # ids that retention takes out of history
        self.calls: dict[str, dict[str, list[int]]] = {}
        self.serial = 0

    def prepare(self) -> None:
        for workload in WORKLOAD_SYSCALLS:
            template = self.base / "templates" / workload / "home"
            if workload == "compact":
                self.acked[workload], self.pruned[workload] = _seeded_home(template)
            elif workload == "reader":
                self.acked[workload], self.pruned[workload] = _reader_home(template)
            else:
                template.parent.mkdir(parents=True)  # the writer creates the home itself
                self.acked[workload], self.pruned[workload] = {}, set()
            self.templates[workload] = template
            home = self._home("d", 0, workload)
            log = home.parent / "strace.log"
            done = _strace(_argv(workload, home), log)
            assert done.returncode == 0, done.stderr
            self.calls[workload] = _calls_on_home(log, home)

    def _home(self, prefix: str, number: int, workload: str) -> Path:
        """A copy of the workload's template, at a path as long as every other one."""
        trial = self.base / f"{prefix}{workload[0]}{number:05d}"
        trial.mkdir()
        home = trial / "home"
        if self.templates[workload].exists():
            shutil.copytree(self.templates[workload], home, symlinks=True)
        return home

    def run(self, trials: list[Trial]) -> dict[Trial, Outcome]:
        numbered = list(enumerate(trials))
        with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
            outcomes = pool.map(lambda item: self._trial(item[0], item[1]), numbered)
            return dict(zip(trials, outcomes, strict=True))

    def _trial(self, number: int, trial: Trial) -> Outcome:
        calls = self.calls[trial.workload].get(trial.syscall, [])
        if not calls:
            return Outcome(0, "", -1, "", [f"no {trial.syscall} call on the state directory"])
        if trial.occurrence == "first" or len(calls) == 1:
            call = calls[0]
        else:
            call = random.Random("-".join(trial)).choice(calls[1:])
        home = self._home("t", number, trial.workload)
        log = home.parent / "strace.log"
        done = _strace(
            _argv(trial.workload, home), log, f"{trial.syscall}:error={trial.error}:when={call}"
        )
        injected = [
            line for line in log.read_text(errors="replace").splitlines() if "(INJECTED)" in line
        ]
        problems: list[str] = []
        if len(injected) != 1 or not _touches(injected[0], home):
            problems.append(f"not injected into the state directory: {injected}")
        if "Traceback" in done.stderr:
            problems.append(f"a traceback:\n{done.stderr}")
        try:
            acked = self._acknowledged(trial.workload, done, problems)
            if trial.workload == "reader":
                self._judge_reader(done.stdout, acked, self.pruned["reader"], problems)
            elif trial.workload == "compact" and done.returncode not in (0, 3):
                problems.append(f"compact exited {done.returncode}: {done.stderr}")
            elif trial.workload == "compact" and done.returncode == 3:
                lines = done.stderr.strip().splitlines()
                if len(lines) != 1 or not lines[0].startswith("reconcile: error: "):
                    problems.append(f"not one error line: {done.stderr!r}")
            elif done.returncode != 0:
                problems.append(f"exited {done.returncode}: {done.stderr}")
            _judge_state(home, acked, self.pruned[trial.workload], problems)
        except Exception as exc:  # every trial reports; none stops the others
            problems.append(f"{type(exc).__name__}: {exc}")
        first = injected[0] if injected else ""
        return Outcome(call, first, done.returncode, done.stderr, problems)

    def _acknowledged(
        self, workload: str, done: subprocess.CompletedProcess[str], problems: list[str]
    ) -> dict[str, str]:
        if workload != "writer":
            return self.acked[workload]
        acked = {}
        for line in done.stdout.splitlines():
            word, key, event_id = line.split()
            assert word == "ack"
            acked[key] = event_id
        if len(acked) < 8:  # one fault costs at most its own append and the one after
            problems.append(f"only {len(acked)} of 10 appends acknowledged: {done.stderr}")
        return acked

    def _judge_reader(
        self, stdout: str, acked: dict[str, str], pruned: set[str], problems: list[str]
    ) -> None:
        out: dict[str, Any] = json.loads(stdout)
        if not out["state_errors"] and out["state"] != acked:
            problems.append(f"load() incomplete without an error: {out}")
        if len(out["history"]) != len(set(out["history"])):
            problems.append("history() yielded a record twice")
        if not out["history_errors"] and set(out["history"]) != set(acked.values()) - pruned:
            problems.append(f"history() incomplete without an error: {out}")
        for key, found in out["latest"].items():
            if found not in (None, acked[key]):
                problems.append(f"latest({key}) answered {found}, not {acked[key]}")


def _judge_state(home: Path, acked: dict[str, str], pruned: set[str], problems: list[str]) -> None:
    """Every acknowledged record in load() and once in history() (but those retention
    pruned), before and after a clean compaction; nothing left behind; verify passes."""
    for stage in ("after the fault", "after a clean compaction"):
        if stage != "after the fault":
            report = journal.compact(home)
            if report.busy:
                problems.append("the compaction lock is still held")
        state = journal.load(home)
        history = journal.history(home)
        ids = [record.id for record in history]
        missing = {k: v for k, v in acked.items() if k not in state or state[k].id != v}
        if missing:
            problems.append(f"{stage}: {len(missing)} acknowledged missing from load()")
        if not set(acked.values()) - pruned <= set(ids) or len(ids) != len(set(ids)):
            problems.append(f"{stage}: history() lost or repeated acknowledged records")
        if state.errors or history.errors:
            problems.append(f"{stage}: read errors {state.errors} {history.errors}")
    left = [p.name for p in home.rglob("*") if p.name.endswith((".tmp", ".new"))]
    if left:
        problems.append(f"left behind: {left}")
    verified = reconcile.verify(reconcile.Settings.from_env({}, home=home))
    if not verified.ok:
        problems.append(f"verify: {verified.differences}")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[Trial, Outcome]:
    suite = Suite(tmp_path_factory.mktemp("faults"))
    suite.prepare()
    return suite.run(TRIALS)


@pytest.mark.parametrize("trial", TRIALS, ids=["-".join(trial) for trial in TRIALS])
def test_an_injected_error_loses_nothing(outcomes, trial):
    outcome = outcomes[trial]
    assert not outcome.problems, "\n".join(
        [f"call {outcome.call}: {outcome.injected}", *outcome.problems]
    )


def test_every_fault_was_injected_and_counted(outcomes):
    """The figures docs/reliability.md reports: trials, faults injected, exits."""
    fired = sum(1 for outcome in outcomes.values() if outcome.injected)
    failed = sum(1 for o in outcomes.values() if o.exit_code == 3)
    print(f"\n{len(outcomes)} trials, {fired} faults injected, compact exit 3: {failed}")
    assert len(outcomes) == len(TRIALS) == 168 and fired == len(TRIALS)
