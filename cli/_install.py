"""``reconcile install-hooks``: add (or remove) the hook in a Claude Code settings.json.

Idempotent, and careful with a file the user owns: every other key and every foreign
hook is kept, a backup is written, and the new file replaces the old atomically. A file
that is not valid JSON is left untouched and reported.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from reconcile import ReconcileError
from reconcile._settings import Settings

EVENTS = {"PreToolUse": "*", "UserPromptSubmit": None}  # event -> matcher (None: none)


def run(args: Any, settings: Settings) -> int:
    path = Path(args.settings or Path.home() / ".claude" / "settings.json").expanduser()
    current = _read(path)
    updated = (
        _without(current, args.hook_command)
        if args.uninstall
        else _with(current, args.hook_command)
    )
    text = json.dumps(updated, indent=2) + "\n"
    if args.dry_run:
        sys.stdout.write(text)
        return 0
    if updated == current and path.exists():
        print(f"{path}: already {'without' if args.uninstall else 'with'} the hook")
        return 0
    _write(path, text)
    action = "removed from" if args.uninstall else "installed in"
    print(f"{args.hook_command!r} {action} {path}")
    return 0


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ReconcileError(f"cannot read {path}: {exc}") from None
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise ReconcileError(f"{path} is not valid JSON ({exc}); fix it first: unchanged") from None
    if not isinstance(data, dict) or not isinstance(data.get("hooks", {}), dict):
        raise ReconcileError(f"{path}: expected a JSON object with an object 'hooks'; unchanged")
    return data


def _ours(hook: Any, command: str) -> bool:
    return (
        isinstance(hook, dict) and hook.get("type") == "command" and hook.get("command") == command
    )


def _with(settings: dict[str, Any], command: str) -> dict[str, Any]:
    updated = json.loads(json.dumps(settings))  # a deep copy; the original stays comparable
    hooks = updated.setdefault("hooks", {})
    for event, matcher in EVENTS.items():
        groups = hooks.setdefault(event, [])
        if not isinstance(groups, list):
            raise ReconcileError(f"settings 'hooks.{event}' is not a list; unchanged")
        if any(
            _ours(h, command) for g in groups if isinstance(g, dict) for h in g.get("hooks", [])
        ):
            continue
        group: dict[str, Any] = {"hooks": [{"type": "command", "command": command}]}
        if matcher is not None:
            group = {"matcher": matcher, **group}
        groups.append(group)
    return updated


def _without(settings: dict[str, Any], command: str) -> dict[str, Any]:
    updated = json.loads(json.dumps(settings))
    hooks = updated.get("hooks")
    if not isinstance(hooks, dict):
        return updated
    for event in EVENTS:
        groups = hooks.get(event)
        if not isinstance(groups, list):
            continue
        kept = []
        for group in groups:
            if isinstance(group, dict) and isinstance(group.get("hooks"), list):
                remaining = [h for h in group["hooks"] if not _ours(h, command)]
                if not remaining and group["hooks"]:
                    continue  # a group that held only our hook goes with it
                group["hooks"] = remaining
            kept.append(group)
        if kept:
            hooks[event] = kept
        else:
            del hooks[event]
    if not hooks:
        del updated["hooks"]
    return updated


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        shutil.copy2(path, path.with_name(path.name + ".bak"))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
