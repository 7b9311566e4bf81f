"""What the hook's hit path imports, in a fresh interpreter, as installed.

The hit path runs on every Claude Code event it is wired to, so what it imports is its
cost (docs/performance.md). This runs the installed ``reconcile`` script exactly as
``install-hooks`` writes it (``python -S <script> hook``) on a hit, under ``-X importtime``
(which reports every import as it happens, even in a process that ends with ``_exit``),
and compares with an interpreter that ran nothing: the difference is the hit path.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from reconcile_helpers import clean_env

import journal

# Ours, exactly: the two packages' faces and one module of each, nothing else.
OURS = {"reconcile", "reconcile._hook", "reconcile._fast", "journal", "journal._hit"}
# The standard library's: two C modules (checksums, the JSON scanner) and stat's constants.
STDLIB_ALLOWED = {"_json", "zlib", "_stat"}
FORBIDDEN = {"os", "attrs", "structlog", "psycopg", "argparse", "typing", "pathlib", "json", "re"}


def imported(argv: list[str], env: dict[str, str], stdin: bytes = b"") -> set[str]:
    """The modules a process imported, as ``-X importtime`` reported them."""
    done = subprocess.run(argv, input=stdin, capture_output=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b""
    lines = [x for x in done.stderr.decode().splitlines() if x.startswith("import time:")]
    return {line.rpartition("|")[2].strip() for line in lines[1:]}  # after the heading


def installed() -> tuple[Path, Path]:
    """The installed ``reconcile`` script and the interpreter beside it, as
    ``install-hooks`` runs them; skips where there is none, or where it is editable."""
    script = Path(sys.executable).with_name("reconcile")
    if not script.exists():
        pytest.skip("no installed `reconcile` script beside this interpreter")
    checkout = Path(__file__).resolve().parent.parent
    if Path(journal.__file__).resolve().parent == checkout / "journal":
        pytest.skip("an editable install runs `site` after all (bin/reconcile): CI checks this")
    return script, script.with_name("python")


def test_the_hit_path_imports_only_its_own_modules(tmp_path: Path):
    script, python = installed()
    with journal.Writer(tmp_path) as writer:  # the entry a settled miss left behind
        writer.append(
            "executor:e-1", {"executor_id": "e-1", "session_id": "s-1"}, "session.confirmed"
        )
    env = clean_env(RECONCILE_HOME=str(tmp_path), RECONCILE_EXECUTOR_ID="e-1")
    env.pop("PYTHONPATH", None)
    baseline = imported([str(python), "-S", "-X", "importtime", "-c", "pass"], env)
    payload = json.dumps(  # as Claude Code sends it: the transcript's place on every event
        {
            "session_id": "s-1",
            "hook_event_name": "PreToolUse",
            "transcript_path": "/home/u/.claude/projects/-w/s-1.jsonl",
            "cwd": "/w",
        }
    ).encode()
    hook = imported([str(python), "-S", "-X", "importtime", str(script), "hook"], env, payload)
    assert len(list(journal.history(tmp_path))) == 1  # it was a hit: nothing written
    added = hook - baseline
    assert {m for m in added if m.split(".")[0] in ("cli", "reconcile", "journal")} == OURS
    stdlib = {m for m in added if m.split(".")[0] not in ("cli", "reconcile", "journal")}
    assert stdlib <= STDLIB_ALLOWED, stdlib - STDLIB_ALLOWED
    assert not {m.split(".")[0] for m in hook} & FORBIDDEN


# Past a hit (an observation journaled, a reconciler started), the hook loads the outbox,
# the writer, the backoff, the lock and the spawn, and from the standard library only
# ``fcntl`` more: not ``os``, whose import costs a miss about a tenth of its time.
MISS_STDLIB_ALLOWED = STDLIB_ALLOWED | {"fcntl"}
MISS_FORBIDDEN = FORBIDDEN | {"__future__", "stat", "_collections_abc", "random", "struct"}


def test_a_miss_imports_no_more_of_the_standard_library_than_fcntl(tmp_path: Path):
    script, python = installed()
    home = tmp_path / "home"
    env = clean_env(
        RECONCILE_HOME=str(home),
        RECONCILE_EXECUTOR_ID="e-1",
        RECONCILE_DATABASE_URL="postgresql://x@127.0.0.1:9/d",  # its reconciler gives up
        RECONCILE_RETRY_HORIZON="0",
    )
    env.pop("PYTHONPATH", None)
    baseline = imported([str(python), "-S", "-X", "importtime", "-c", "pass"], env)
    payload = json.dumps(
        {
            "session_id": "s-1",
            "hook_event_name": "UserPromptSubmit",
            "transcript_path": "/home/u/.claude/projects/-w/s-1.jsonl",
            "cwd": "/w",
        }
    ).encode()
    hook = imported([str(python), "-S", "-X", "importtime", str(script), "hook"], env, payload)
    [observed] = journal.history(home)  # it was a miss: the observation journaled
    assert observed.type == "session.observed"
    added = hook - baseline
    assert {"reconcile._outbox", "journal._writer", "reconcile._spawn"} <= added  # it was
    stdlib = {m for m in added if m.split(".")[0] not in ("cli", "reconcile", "journal")}
    assert stdlib <= MISS_STDLIB_ALLOWED, stdlib - MISS_STDLIB_ALLOWED
    assert not set(hook) & MISS_FORBIDDEN, set(hook) & MISS_FORBIDDEN


def test_the_installed_script_runs_the_hook_without_site():
    script = Path(sys.executable).with_name("reconcile")
    if not script.exists():
        pytest.skip("no installed `reconcile` script beside this interpreter")
    lines = script.read_text().splitlines()
    assert lines[0] == "#!/bin/sh"  # pip left our shell line alone
    assert any('/python" -S "$script"' in line for line in lines[:20])


def test_a_symlinked_script_finds_its_environment(tmp_path: Path):
    """``ln -s .venv/bin/reconcile ~/.local/bin/`` must not fall back to another Python."""
    script = Path(sys.executable).with_name("reconcile")
    if not script.exists():
        pytest.skip("no installed `reconcile` script beside this interpreter")
    link = tmp_path / "bin" / "reconcile"
    link.parent.mkdir()
    link.symlink_to(script)
    env = clean_env(RECONCILE_HOME=str(tmp_path / "home"))
    done = subprocess.run([str(link), "--version"], capture_output=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith(b"reconcile "), done.stderr
    hook = subprocess.run(
        [str(link), "hook"], input=b'{"session_id": "s"}', capture_output=True, env=env
    )
    assert (hook.returncode, hook.stdout, hook.stderr) == (0, b"", b"")
