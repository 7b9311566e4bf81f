"""``reconcile doctor``: is everything in place for the hook to work, and if not, what next?

The checks run in the order a newcomer sets things up: the state directory, the database
URL, whether the database answers, its schema (tables, columns, index), where the
embedded server keeps its data (and what deletes it), and the hook in
Claude Code's settings, then the identity variables of the environment doctor runs in
(what a hook started from it would see). A check that depends on a failed one is not
run. The first failure names the one next step; exit 0 when all is well, 3 otherwise.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import attrs

import journal
import reconcile
from cli import _probe
from cli._output import emit_json, emit_table

OK, FAILED, NOT_CHECKED = "ok", "FAILED", "not checked"


@attrs.frozen
class Check:
    name: str
    status: str  # ok | FAILED | not checked
    detail: str
    next_step: str | None = None


def default_settings() -> Path:
    """Claude Code's user settings, where ``install-hooks`` writes by default."""
    return Path.home() / ".claude" / "settings.json"


def run(args: Any, settings: reconcile.Settings) -> int:
    path = Path(args.settings).expanduser() if args.settings else default_settings()
    checks = [
        _settings(),
        _state_directory(settings.home),
        *_database(settings),
        *_server(settings),
        _hooks(path, args.settings),
        _identity(),
    ]
    failed = [check for check in checks if check.status == FAILED]
    next_step = failed[0].next_step if failed else None
    if args.json:
        emit_json(
            {
                "ok": not failed,
                "checks": [attrs.asdict(check) for check in checks],
                "next_step": next_step,
            }
        )
    else:
        emit_table([(c.name, c.status, c.detail) for c in checks], ("CHECK", "RESULT", "DETAIL"))
        print()
        if failed:
            print(f"next step: {next_step}")
        else:
            print("all is well: each hook keeps executors.claude_session_id in step")
    return 3 if failed else 0


def _settings() -> Check:
    """The RECONCILE_* variables: a malformed one is replaced by its default everywhere
    doctor's other checks look, and named here."""
    ignored = _probe.ignored_settings()
    if not ignored:
        return Check("settings", OK, "every RECONCILE_* variable set is usable")
    detail = "; ".join(
        f"{bad['variable']}={bad['value']!r}: {bad['error']} (default {bad['default']} used)"
        for bad in ignored
    )
    return Check("settings", FAILED, detail, _probe.settings_next_step(ignored))


def _identity() -> Check:
    """The identity variables here, as a hook started from this environment would take
    them: none at all is fine (no agent session here); some that the hook cannot use is
    the silent "the hook did nothing" of docs/operations.md, and ``explain`` says why."""
    found = reconcile.explain(os.environ, b'{"session_id": "doctor"}')
    name = "identity"
    if found.identity is not None:
        return Check(name, OK, f"a hook here would use the cache key {found.key}")
    set_here = [f"{v.source}={v.value}" for v in found.variables if v.value is not None]
    if not set_here:
        return Check(
            name, OK, "no identity variable set here (fine outside an agent session; "
            "inside one, `reconcile explain --session-id ID` says what the hook sees)",
        )  # fmt: skip
    return Check(
        name, FAILED, f"{', '.join(set_here)}: {found.why}", "reconcile explain --session-id ID"
    )


def _state_directory(home: Path) -> Check:
    problem = _probe.home_problem(home)
    if problem is not None:
        return Check("state directory", FAILED, problem[0], problem[1])
    try:  # everything in it ours alone too (docs/operations.md)
        journal.check_home(home)
    except journal.UntrustedPathError as exc:
        detail, _, fix = str(exc).partition(": ")  # "<path> <what>: <fix>"
        return Check("state directory", FAILED, detail, fix or str(exc))
    if not home.exists():
        return Check("state directory", OK, f"{home} (not created yet: the first hook will)")
    return Check("state directory", OK, str(home))


def _database(settings: reconcile.Settings) -> list[Check]:
    found = _probe.database(settings)
    step = _probe.database_next_step(found)
    if found["url"] is None:
        return [
            Check("database", FAILED, found["error"], step),
            Check("reachable", NOT_CHECKED, "no database yet"),
            Check("schema", NOT_CHECKED, "no database yet"),
        ]
    where = found["url"] + (" (embedded)" if found["embedded"] else "")
    checks = [Check("database", OK, where)]
    if not found["reachable"]:
        checks.append(Check("reachable", FAILED, found["error"], step))
        checks.append(Check("schema", NOT_CHECKED, "the database does not answer"))
        return checks
    checks.append(Check("reachable", OK, f"PostgreSQL {found['server_version']}"))
    schema = _probe.describe_schema(found["schema"])
    if step is not None:
        checks.append(Check("schema", FAILED, schema, step))
    else:
        checks.append(Check("schema", OK, f"{schema} (agents, executors, audit_events)"))
    return checks


def _server(settings: reconcile.Settings) -> list[Check]:
    """Where the embedded server keeps its data, and what deletes it (nothing but ``db
    remove``); under root, that it lives outside the state directory, run by a system
    user. No line for a configured database: it is not this tool's to keep."""
    if settings.database_url:
        return []
    name = "server data"
    root = os.geteuid() == 0
    try:
        server = reconcile.server_status(settings.home)
        orphans = reconcile.server_orphans()
    except reconcile.ServerError as exc:
        return [Check(name, FAILED, str(exc), "see the detail; docs/operations.md, As root")]
    if not server.initialized:
        where = (
            "under /var/lib/reconcile-pg, run by the system user reconcile-pg it creates"
            if root
            else f"in {settings.home / 'pg'}"
        )
        return [Check(name, OK, f"none yet: `reconcile db up` makes one, {where}")]
    detail = (
        f"{server.data_dir}: kept by `reconcile db down`, deleted only by `reconcile db remove`"
    )
    if root:
        detail += (
            " (as root it lives outside the state directory, run by the system user "
            "reconcile-pg: deleting the state directory leaves it)"
        )
    if orphans:
        detail += (
            f"; {len(orphans)} server(s) under /var/lib/reconcile-pg whose state directory "
            "is gone: `reconcile db remove --orphans` lists them"
        )
    return [Check(name, OK, detail)]


def _hooks(path: Path, given: str | None) -> Check:
    name = "claude hooks"
    install = "reconcile install-hooks" + (f" --settings {shlex.quote(given)}" if given else "")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Check(name, FAILED, f"{path} does not exist", install)
    except (OSError, UnicodeDecodeError) as exc:
        return Check(name, FAILED, f"cannot read {path}: {exc}", f"make {path} readable")
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError:
        return Check(name, FAILED, f"{path} is not valid JSON", f"fix {path}, then: {install}")
    found = _reconcile_hooks(data)
    if not found:
        return Check(name, FAILED, f"no reconcile hook in {path}", install)
    for command in found:
        program = _program(command)
        if program is not None and not _runnable(program):
            # Installing again replaces every entry of ours by this installation's own
            # command: absolute paths, nothing looked up on the PATH.
            fixed = install.replace("reconcile", _self(), 1)
            return Check(name, FAILED, f"{program!r} (the hook's command) is not on PATH", fixed)
    described = "; ".join(f"{cmd!r} on {', '.join(events)}" for cmd, events in found.items())
    return Check(name, OK, f"{described} ({path})")


def _reconcile_hooks(data: Any) -> dict[str, list[str]]:
    """command -> events, for each command hook that runs ``reconcile ... hook``."""
    found: dict[str, list[str]] = {}
    hooks = data.get("hooks") if isinstance(data, dict) else None
    for event, groups in hooks.items() if isinstance(hooks, dict) else ():
        for group in groups if isinstance(groups, list) else ():
            entries = group.get("hooks") if isinstance(group, dict) else None
            for hook in entries if isinstance(entries, list) else ():
                if not isinstance(hook, dict) or not isinstance(hook.get("command"), str):
                    continue
                args = hook.get("args")
                words = [str(word) for word in args] if isinstance(args, list) else []
                command = " ".join([hook["command"], *words])
                if "reconcile" in command and "hook" in command.split():
                    found.setdefault(command, []).append(event)
    return found


def _program(command: str) -> str | None:
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    return words[0] if words else None


def _runnable(program: str) -> bool:
    if os.sep in program:
        return os.access(os.path.expanduser(program), os.X_OK)
    return shutil.which(program) is not None


def _self() -> str:
    """An absolute path that runs this very ``reconcile``."""
    script = Path(sys.argv[0])
    if script.name == "reconcile" and script.exists():
        return str(script.resolve())
    beside = Path(sys.executable).with_name("reconcile")
    return str(beside) if beside.exists() else f"{sys.executable} -m cli"
