"""The real Claude Code in a private world: its own home, settings, PATH and temp dir.

A :class:`Sandbox` owns a directory with ``home/`` (``~/.claude/settings.json`` lives
there), ``work/`` (the project Claude Code runs in), ``tmp/`` and ``bin/``. ``bin/`` holds
a ``reconcile`` that appends one line to ``hook-processes.log`` and then ``exec``\\ s the
command ``install-hooks`` writes by default (this environment's ``python -S`` on its
script), and :meth:`Sandbox.install` installs that wrapper as the hook's command: every
hook process Claude Code starts leaves exactly one line (a count of processes, not of
reports about them). The benchmark uses two others: the default install itself, nothing
in between (``direct``), and a bash wrapper that also records each hook's CPU seconds
(``times``).

:meth:`Sandbox.run` runs ``claude -p PROMPT --output-format stream-json --verbose
--include-hook-events`` offline against the fake Messages API, under ``reaper.py``: when
it returns, every process the session started (detached ones too) has finished.

The environment is built from nothing but what is named here, so a developer's own
``ANTHROPIC_API_KEY``, Claude settings or ``RECONCILE_`` variables never leak in.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from reconcile_helpers import default_hook, reconcile_command

HERE = Path(__file__).resolve().parent

CLAUDE_VARIABLE = "RECONCILE_E2E_CLAUDE"
RUN_TIMEOUT_S = 600  # one `claude -p`, the model's side answered at once; generous for CI
SETTLE_S = 120  # how long the reaper waits for what a session left behind

T = TypeVar("T")


def claude_binary(environ: Mapping[str, str] = os.environ) -> Path | str:
    """The native ``claude`` named by ``RECONCILE_E2E_CLAUDE``, or why there is none."""
    named = environ.get(CLAUDE_VARIABLE)
    if not named:
        return (
            f"{CLAUDE_VARIABLE} is not set; to fetch the pinned Claude Code and use it: "
            f"export {CLAUDE_VARIABLE}=$(tests/e2e/fetch-claude)"
        )
    path = Path(named)
    if not (path.is_file() and os.access(path, os.X_OK)):
        return f"{CLAUDE_VARIABLE}={named} is not an executable file"
    return path


def wait_for(
    probe: Callable[[], T], accept: Callable[[T], bool], what: str, timeout_s: float = 60
) -> T:
    """Poll ``probe`` until ``accept`` takes its value; fail after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout_s} s, still not {what}: {value!r}")
        time.sleep(0.1)


class Run:
    """One ``claude -p``: its exit code, its stream-json events, what the reaper saw."""

    def __init__(
        self,
        completed: subprocess.CompletedProcess[bytes],
        report: dict[str, Any],
        started_at: float,
    ) -> None:
        self.started_at = started_at  # time.monotonic() when the reaper was started
        self.exit_code: int = report["exit_code"]
        self.stderr = completed.stderr.decode(errors="replace")
        self.report = report
        self.events: list[dict[str, Any]] = []
        for line in completed.stdout.decode(errors="replace").splitlines():
            if line.strip():
                self.events.append(json.loads(line))

    @property
    def session_id(self) -> str:
        """The session id Claude Code reports (its ``init`` message, then its result)."""
        ids = {e["session_id"] for e in self.events if e.get("type") in ("system", "result")}
        ids.discard(None)
        init = [e for e in self.events if e.get("subtype") == "init"]
        if init:
            return str(init[-1]["session_id"])
        assert len(ids) == 1, f"no session id reported: {self.events[:3]}"
        return str(ids.pop())

    @property
    def result(self) -> dict[str, Any]:
        results = [e for e in self.events if e.get("type") == "result"]
        assert results, f"no result event; stderr: {self.stderr[-2000:]}"
        return results[-1]

    def hook_events(self, subtype: str) -> list[dict[str, Any]]:
        """``hook_started`` or ``hook_response`` events of the hooks that ran."""
        return [e for e in self.events if e.get("type") == "system" and e.get("subtype") == subtype]

    def tool_results(self) -> int:
        return sum(
            1
            for e in self.events
            if e.get("type") == "user"
            for block in e["message"].get("content", [])
            if isinstance(block, dict) and block.get("type") == "tool_result"
        )


class Sandbox:
    """A private directory where Claude Code runs; see the module docstring."""

    def __init__(
        self, root: Path, claude: Path, api_url: str, hook: str = "count", **environment: str
    ) -> None:
        """``hook``: the ``reconcile`` Claude Code finds first: ``count`` (one line per
        process in :attr:`counter`), ``times`` (that, and bash ``times`` after each, for
        :meth:`hook_cpu_s`) or ``direct`` (the real script, nothing added)."""
        self.root = root
        self.claude = claude
        self.home = root / "home"
        self.work = root / "work"
        self.bin = root / "bin"
        self.settings = self.home / ".claude" / "settings.json"
        self.counter = root / "hook-processes.log"
        self.cpu = root / "hook-cpu"  # with hook="times": one file per hook process
        for directory in (self.home / ".claude", self.work, self.bin, root / "tmp", self.cpu):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.hook = hook
        wrapper = self.bin / "reconcile"
        real, log = shlex.join(default_hook()[:-1]), shlex.quote(str(self.counter))
        first = [self.bin]
        if hook == "count":
            wrapper.write_text(f'#!/bin/sh\necho "$$ $*" >> {log}\nexec {real} "$@"\n')
        elif hook == "times":
            cpu = shlex.quote(str(self.cpu))
            wrapper.write_text(
                f'#!/bin/bash\necho "$$ $*" >> {log}\n{real} "$@"\nstatus=$?\n'
                f"times > {cpu}/$$\nexit $status\n"
            )
        elif hook == "direct":  # its own directory on PATH: the script finds its
            script = Path(reconcile_command()[0])  # environment from where it lies
            if script.name != "reconcile":
                raise RuntimeError("no reconcile script beside this Python: pip install . first")
            first.append(script.parent)
        else:
            raise ValueError(f"hook is count, times or direct, not {hook!r}")
        if hook != "direct":
            wrapper.chmod(0o700)
        self.path = os.pathsep.join(
            [*map(str, first), str(claude.parent), "/usr/local/bin:/usr/bin:/bin"]
        )
        self.environment = {
            "PATH": self.path,
            "HOME": str(self.home),
            "TMPDIR": str(root / "tmp"),
            "LANG": "C.UTF-8",
            "ANTHROPIC_BASE_URL": api_url,
            "ANTHROPIC_API_KEY": "dummy",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            **environment,
        }

    def allow_bash(self) -> None:
        """Permissions that let the Bash tool run unasked (the bypass flags need
        ``IS_SANDBOX=1`` as root, and are not what a user runs)."""
        self.settings.write_text(json.dumps({"permissions": {"allow": ["Bash"]}}))
        self.settings.chmod(0o600)

    def install(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        """``reconcile install-hooks`` into this sandbox's settings, with its PATH (so the
        version comes from this ``claude``); the counting wrapper as its ``--command``
        unless this sandbox runs the hook ``direct`` or ``args`` name another."""
        env = {k: v for k, v in self.environment.items() if not k.startswith("ANTHROPIC_")}
        if self.hook != "direct" and "--command" not in args:
            args = ("--command", f"{self.bin / 'reconcile'} hook", *args)
        done = subprocess.run(
            [*reconcile_command(), "install-hooks", "--settings", str(self.settings), *args],
            capture_output=True,
            env=env,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done

    def hook_cpu_s(self) -> list[float]:
        """With ``hook="times"``: the CPU seconds (user + system) of each hook process that
        ran to its end (one Claude Code cancelled leaves its child orphaned instead)."""
        cpu = []
        for path in self.cpu.iterdir():
            lines = path.read_text().splitlines()  # the wrapper's own times, its child's
            cpu.append(sum(_seconds(t) for t in lines[1].split()))
        return cpu

    def reset_counts(self) -> None:
        """Forget the hook processes counted so far."""
        self.counter.unlink(missing_ok=True)
        for path in self.cpu.iterdir():
            path.unlink()

    def hook_processes(self) -> list[str]:
        """One line per hook process Claude Code started so far."""
        try:
            return self.counter.read_text().splitlines()
        except FileNotFoundError:
            return []

    def run(self, prompt: str, *flags: str, **environment: str) -> Run:
        """``claude -p PROMPT FLAGS`` with this environment plus ``environment``."""
        report = self.root / f"reaper-{time.monotonic_ns()}.json"
        command = [
            sys.executable,
            str(HERE / "reaper.py"),
            str(report),
            str(SETTLE_S),
            "--",
            str(self.claude),
            "-p",
            prompt,
            "--output-format",
            "stream-json",
            "--verbose",
            "--include-hook-events",
            *flags,
        ]
        started_at = time.monotonic()
        completed = subprocess.run(
            command,
            cwd=self.work,
            env={**self.environment, **environment},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=RUN_TIMEOUT_S,
        )
        assert completed.returncode == 0, completed.stderr.decode(errors="replace")
        return Run(completed, json.loads(report.read_text()), started_at)


def _seconds(text: str) -> float:
    """``0m0.012s`` (bash ``times``) in seconds."""
    minutes, seconds = text.rstrip("s").split("m")
    return int(minutes) * 60 + float(seconds)
