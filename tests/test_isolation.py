"""Nothing of the directory the hook runs in runs (docs/operations.md, "What it touches").

Claude Code runs the hook in the user's project, which may hold anything: a module named
like one of ours, like a dependency, or like the standard library, a
``sitecustomize.py``, a ``.pth`` file. The project below holds all of these, each
leaving a trace file when imported; the hook, the reconciler it starts and the
compactor run from it, and the row must settle with no trace left.

Also here: the ``reconcile`` launcher reached through a link that sits beside another
``python``, which must still run its own environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reconcile_helpers import (
    clean_env,
    command_line_database,
    default_hook,
    hostile_project,
    reconcile_command,
    session_of,
    wait_settled,
)

import reconcile


@pytest.fixture
def db(database_url: str, tmp_path: Path) -> str:
    return command_line_database(database_url, tmp_path)


def run_from(project: Path, command: list[str], home: Path, url: str, session_id: str) -> None:
    env = clean_env(
        RECONCILE_HOME=str(home),
        RECONCILE_DATABASE_URL=url,
        RECONCILE_EXECUTOR_ID="e-1",
        RECONCILE_COMPACT_THRESHOLD="1",  # a hook that writes past 1 journal compacts too
    )
    payload = f'{{"session_id": "{session_id}", "hook_event_name": "UserPromptSubmit"}}'
    done = subprocess.run(
        command, input=payload.encode(), capture_output=True, env=env, cwd=project, timeout=120
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")


def wait_compacted(home: Path, deadline_s: float = 180.0) -> None:
    """Until a compaction has written the snapshot and none runs (a condition, not a time)."""
    give_up = time.monotonic() + deadline_s
    while not (home / "snapshot").exists() or reconcile.compaction_running(home):
        assert time.monotonic() < give_up, f"no compaction of {home} in {deadline_s} s"
        time.sleep(0.05)


@pytest.mark.parametrize("hook", ["installed", "typed"])
def test_nothing_of_the_project_directory_is_imported_and_the_row_settles(tmp_path, db, hook):
    """Fails before 'spawn: the reconciler and compactor run isolated': the reconciler,
    started as ``python -c`` in the project, imported its ``json.py`` and died."""
    project, traces = tmp_path / "project", tmp_path / "traces"
    hostile_project(project, traces)
    home = tmp_path / "home"
    command = default_hook() if hook == "installed" else [*reconcile_command(), "hook"]
    run_from(project, command, home, db, "s-mid")
    wait_settled(home)
    run_from(project, command, home, db, "s-new")  # 3 journals: starts a compaction
    wait_settled(home)
    wait_compacted(home)
    assert session_of(db, "e-1") == "s-new"
    assert sorted(os.listdir(traces)) == []
    env = clean_env(RECONCILE_HOME=str(home), RECONCILE_DATABASE_URL=db)
    for args in (["compact"], ["status"], ["verify", "--db"]):  # an operator's, from there
        done = subprocess.run(
            [*reconcile_command(), *args], capture_output=True, env=env, cwd=project, timeout=300
        )
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    assert sorted(os.listdir(traces)) == []


def test_the_launcher_runs_its_own_environment_through_a_link(tmp_path, db):
    """``reconcile`` linked into a directory that has a ``python`` of its own (as
    /usr/local/bin in Python's container images): the link is followed to the script,
    and the script's environment runs. Fails before 'bin/reconcile: follow links to
    the script': the other python ran, found no package of ours, and did nothing."""
    script = Path(sys.executable).with_name("reconcile")
    if not script.is_file():
        pytest.skip("runs from a checkout: no installed reconcile script to link to")
    elsewhere = tmp_path / "bin"
    elsewhere.mkdir()
    used = tmp_path / "other-python-used"
    other = elsewhere / "python"
    other.write_text(f'#!/bin/sh\ntouch {used}\nexec {sys._base_executable} "$@"\n')
    other.chmod(0o755)
    (elsewhere / "reconcile").symlink_to(script)
    (tmp_path / "relative").mkdir()
    (tmp_path / "relative" / "reconcile").symlink_to("../bin/reconcile")  # a chain of links
    home = tmp_path / "home"
    for n, link in enumerate([elsewhere / "reconcile", tmp_path / "relative" / "reconcile"]):
        run_from(tmp_path, [str(link), "hook"], home, db, f"s-{n}")
        wait_settled(home)
        assert session_of(db, "e-1") == f"s-{n}"
    assert not used.exists()
