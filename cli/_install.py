"""``reconcile install-hooks``: wire the hook into a Claude Code settings.json, or remove it.

Which events (docs/hook.md has the measurements behind this):

- ``SessionStart`` (matcher ``startup|resume|clear|compact|fork``): Claude Code fires it
  at every change of session id, so this is where the id is observed first;
- ``UserPromptSubmit``: once per prompt, before the first model request; the safety net;
- ``PreToolUse`` (matcher ``*``) only with ``--every-tool-use``, and then ``async`` where
  Claude Code supports it, so that no tool use waits on the hook.

The first two are synchronous on purpose: each runs once per session or prompt, and a
headless session that ends cancels the async hooks still running (measured with the
real Claude Code), which would lose the one observation that matters.

The command, unless ``--command`` says otherwise, runs this installation's interpreter
without ``site`` on its ``reconcile`` script: ``<env>/bin/python -S <env>/bin/reconcile
hook``, by absolute paths. Claude Code then starts the interpreter itself: no ``/bin/sh``
reading the script's shell line first, no ``PATH`` lookup, and no dependence on the
``PATH`` Claude Code happens to see (docs/hook.md). Where no such script lies beside the
interpreter (``python -m cli``), it is ``reconcile hook``, found on the ``PATH``.

The form depends on the Claude Code version (``claude --version`` of the ``claude`` on
``PATH``, or ``--claude-version``): from 2.1.139 the exec form (``command`` + ``args``,
no ``/bin/sh`` in between), before it the shell form; ``async`` from 2.1.23. An unknown
version gets the shell form without ``async``, which every version runs.

Every entry written carries ``"statusMessage": "session-reconcile"`` (the text Claude
Code shows while a hook runs) and that is how a later run knows it: an entry with that
mark, one that runs a program or script named ``reconcile`` with a ``hook`` argument
(what earlier versions wrote, whatever ``--command`` said), or one running the given
``--command``.
Installing replaces every such entry (so an upgrade drops a PreToolUse entry written
before); ``--uninstall`` removes them all.

Careful with a file the user owns: every other key and every foreign hook is kept, a
backup is written as a new file (never through a link, never over an earlier backup), and
the new file replaces the old atomically with the old mode; a ``settings.json`` that is a
link is written through, to the file it names. A file that is not valid JSON is left
untouched and reported; a missing file stays missing on ``--uninstall``. What holds
nothing (a missing file, blank, ``{}``) gets no backup, and an ``--uninstall`` that would
leave ``{}`` removes the file (not a link): an install then an uninstall leave things
as they were.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from reconcile import ReconcileError, Settings

MARK = "session-reconcile"  # statusMessage of every entry this command writes
SESSION_SOURCES = "startup|resume|clear|compact|fork"
EXEC_FORM_SINCE = (2, 1, 139)  # Claude Code CHANGELOG: hook `args` (exec form) added
ASYNC_SINCE = (2, 1, 23)  # the first CHANGELOG entry about async hooks
EVENTS = ("SessionStart", "UserPromptSubmit", "PreToolUse")
_SHELL_SYNTAX = set("$`|&;<>()*?[]{}~!#\\\n")
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")

Version = tuple[int, int, int]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", metavar="PATH", help="default ~/.claude/settings.json")
    parser.add_argument("--uninstall", action="store_true", help="remove every entry it wrote")
    parser.add_argument("--dry-run", action="store_true", help="print the result, write nothing")
    parser.add_argument(
        "--command",
        dest="hook_command",
        metavar="COMMAND",
        help="the hook command (default: this installation's python -S on its reconcile "
        "script, by absolute paths; else 'reconcile hook', which must be on Claude Code's PATH)",
    )
    parser.add_argument(
        "--every-tool-use",
        action="store_true",
        help="also run on PreToolUse (async where supported): belt and braces",
    )
    parser.add_argument(
        "--claude-version",
        type=_version_arg,
        metavar="VERSION",
        help="the Claude Code version to write for (default: `claude --version` on PATH)",
    )


def run(args: Any, settings: Settings) -> int:
    path = Path(args.settings or Path.home() / ".claude" / "settings.json").expanduser()
    if args.uninstall and not path.exists() and not path.is_symlink():
        print(f"{path}: no such file; nothing to remove")
        return 0
    current = _read(path)
    command = args.hook_command or default_command()
    if args.uninstall:
        updated = without(current, command)
        plan = None
        removed = _count_ours(current, command)
    else:
        version = args.claude_version or detect_claude_version()
        plan = Plan.for_version(command, version, every_tool_use=args.every_tool_use)
        updated = with_hooks(current, plan)
        removed = 0
    text = json.dumps(updated, indent=2) + "\n"
    if args.dry_run:
        sys.stdout.write(text)
    elif updated == current and path.exists():
        print(f"{path}: already {'without' if args.uninstall else 'with'} the hook")
    elif args.uninstall and not updated and not path.is_symlink():
        # Nothing but our entries was in it (install-hooks made it, most likely): it goes,
        # as it was before the install, and nothing of the user's needs a backup.
        path.unlink()
        print(f"{path}: {removed} hook entries removed; nothing else was in it: file removed")
    else:
        backup = _write(path, text, keep=bool(current))
        print(f"{path}: " + (f"{removed} hook entries removed" if plan is None else "installed"))
        if backup is not None:
            print(f"  what was there before: {backup}")
    if plan is not None:
        for line in plan.describe():
            print(f"  {line}", file=sys.stderr if args.dry_run else sys.stdout)
        warning = plan.path_warning()
        if warning:
            sys.stderr.write(f"reconcile: warning: {warning}\n")
    return 0


# -- what to write ------------------------------------------------------------------------


class Plan:
    """The entries one install writes: per event, the matcher and the hook entry."""

    def __init__(
        self, command: str, argv: list[str] | None, version: Version | None, every: bool
    ) -> None:
        self.command = command
        self.argv = argv  # the exec form's argument vector, or None for the shell form
        self.version = version
        self.async_tool_use = every and version is not None and version >= ASYNC_SINCE
        self.events: dict[str, tuple[str | None, dict[str, Any]]] = {}
        if argv is not None:
            base: dict[str, Any] = {"type": "command", "command": argv[0], "args": argv[1:]}
        else:
            base = {"type": "command", "command": command}
        base["statusMessage"] = MARK
        self.events["SessionStart"] = (SESSION_SOURCES, dict(base))
        self.events["UserPromptSubmit"] = (None, dict(base))
        if every:
            entry = {**base, "async": True} if self.async_tool_use else dict(base)
            self.events["PreToolUse"] = ("*", entry)

    @classmethod
    def for_version(cls, command: str, version: Version | None, every_tool_use: bool) -> Plan:
        argv = exec_argv(command) if version is not None and version >= EXEC_FORM_SINCE else None
        return cls(command, argv, version, every_tool_use)

    def describe(self) -> list[str]:
        form = "exec form (no shell)" if self.argv is not None else "shell form"
        if self.version is None:
            why = "no `claude` on PATH to ask its version; --claude-version chooses"
        else:
            why = "Claude Code " + ".".join(map(str, self.version))
            if self.argv is None and self.version >= EXEC_FORM_SINCE:
                why += "; the command needs a shell"
        lines = [f"events: {', '.join(self.events)}", f"form: {form} ({why})"]
        if "PreToolUse" in self.events:
            mode = "async" if self.async_tool_use else "synchronous (no async before 2.1.23)"
            lines.append(f"PreToolUse: every tool use, {mode}")
        return lines

    def path_warning(self) -> str | None:
        """Why Claude Code may not find the program, or None."""
        program = self.argv[0] if self.argv is not None else _first_word(self.command)
        if program is None or shutil.which(program) is not None:
            return None
        here = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
        hint = ""
        if here is not None and here.name == "reconcile" and here.is_file():
            hint = f"; pass --command '{shlex.quote(str(here))} hook'"
        return f"{program!r} is not on PATH, so Claude Code may not find it{hint}"


def default_command() -> str:
    """The hook command of this installation: ``<env>/bin/python -S <env>/bin/reconcile
    hook`` when the script lies beside the running interpreter, else ``reconcile hook``."""
    python = Path(sys.executable)
    script = python.with_name("reconcile")
    if python.is_absolute() and script.is_file() and os.access(python, os.X_OK):
        return shlex.join([str(python), "-S", str(script), "hook"])
    return "reconcile hook"


def exec_argv(command: str) -> list[str] | None:
    """The argument vector of a plain command (words, quotes), or None if it needs a shell."""
    if not command.strip() or _SHELL_SYNTAX & set(command):
        return None
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    return argv or None


def _first_word(command: str) -> str | None:
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    return words[0] if words and not (_SHELL_SYNTAX & set(words[0])) else None


def detect_claude_version(program: str = "claude") -> Version | None:
    """``claude --version`` of the ``claude`` on PATH (``2.1.332 (Claude Code)``), or None."""
    found = shutil.which(program)
    if found is None:
        return None
    try:
        done = subprocess.run(
            [found, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(done.stdout) if done.returncode == 0 else None
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def _version_arg(text: str) -> Version:
    match = _VERSION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a version like 2.1.332, got {text!r}")
    return int(match[1]), int(match[2]), int(match[3])


# -- recognising and rewriting entries -------------------------------------------------------


def is_ours(hook: Any, command: str) -> bool:
    """Whether a hook entry was written by this command, now or by an earlier version."""
    if not isinstance(hook, dict) or hook.get("type") != "command":
        return False
    if hook.get("statusMessage") == MARK:
        return True
    program, args = hook.get("command"), hook.get("args")
    if not isinstance(program, str):
        return False
    if isinstance(args, list) and all(isinstance(a, str) for a in args):
        argv: list[str] | None = [program, *args]
    else:
        if program == command:
            return True
        argv = exec_argv(program)
    if argv is None:
        return False
    return argv == exec_argv(command) or _runs_reconcile_hook(argv)


def _runs_reconcile_hook(argv: list[str]) -> bool:
    """``reconcile hook``, ``/x/reconcile hook`` or ``/x/python -S /x/reconcile hook``: a
    program or script named ``reconcile`` before a ``hook`` argument."""
    if "hook" not in argv[1:]:
        return False
    before = argv[: argv.index("hook", 1)]
    return any(os.path.basename(word) == "reconcile" for word in before)


def _ours_in(groups: list[Any], command: str) -> list[tuple[Any, Any]]:
    return [
        (group.get("matcher"), hook)
        for group in groups
        if isinstance(group, dict) and isinstance(group.get("hooks"), list)
        for hook in group["hooks"]
        if is_ours(hook, command)
    ]


def _count_ours(settings: dict[str, Any], command: str) -> int:
    hooks = settings.get("hooks", {})
    return sum(len(_ours_in(g, command)) for g in hooks.values() if isinstance(g, list))


def _remove_ours(groups: list[Any], command: str) -> list[Any]:
    kept = []
    for group in groups:
        if isinstance(group, dict) and isinstance(group.get("hooks"), list):
            remaining = [h for h in group["hooks"] if not is_ours(h, command)]
            if not remaining and group["hooks"]:
                continue  # a group that held only our hooks goes with them
            group["hooks"] = remaining
        kept.append(group)
    return kept


def with_hooks(settings: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """``settings`` with exactly the plan's entries of ours; an event already in that state
    is left as it is, so that a second install changes nothing."""
    updated: dict[str, Any] = json.loads(json.dumps(settings))  # a deep copy, to compare
    hooks = updated.setdefault("hooks", {})
    for event in EVENTS:
        groups = hooks.get(event, [])
        if not isinstance(groups, list):
            raise ReconcileError(f"settings 'hooks.{event}' is not a list; fix it first: unchanged")
        wanted = plan.events.get(event)
        if _ours_in(groups, plan.command) == ([wanted] if wanted else []):
            continue
        groups = _remove_ours(groups, plan.command)
        if wanted is not None:
            matcher, entry = wanted
            group: dict[str, Any] = {"hooks": [entry]}
            groups.append({"matcher": matcher, **group} if matcher is not None else group)
        if groups:
            hooks[event] = groups
        else:
            hooks.pop(event, None)
    if not hooks:
        del updated["hooks"]
    return updated


def without(settings: dict[str, Any], command: str) -> dict[str, Any]:
    """``settings`` without any entry of ours, in any event."""
    updated: dict[str, Any] = json.loads(json.dumps(settings))
    hooks = updated.get("hooks")
    if not isinstance(hooks, dict):
        return updated
    for event, groups in list(hooks.items()):
        if not isinstance(groups, list) or not _ours_in(groups, command):
            continue
        kept = _remove_ours(groups, command)
        if kept:
            hooks[event] = kept
        else:
            del hooks[event]
    if not hooks:
        del updated["hooks"]
    return updated


# -- the file ---------------------------------------------------------------------------------


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


def _write(path: Path, text: str, *, keep: bool = True) -> Path | None:
    """Replace the settings at ``path`` by ``text``; return the backup made, if one was
    (``keep=False``: the file holds nothing, ``{}`` or blank, so none is made).

    A ``path`` that is a link (into a dotfiles repository, say) is written through: the
    file it names is replaced, atomically in its own directory and with its mode, and the
    link stays. The backup of what was there is a new file beside ``path``
    (:func:`_backup`).
    """
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    backup = _backup(target, path.parent) if keep and target.exists() else None
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            if target.exists():
                os.fchmod(stream.fileno(), target.stat().st_mode & 0o777)
            os.fsync(stream.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return backup


_BACKUPS_MAX = 100


def _backup(source: Path, directory: Path) -> Path:
    """A copy of ``source`` in a new file of ``directory``: ``<name>.bak``, else the first
    free ``<name>.bak.N``, or an existing one (not a link) that holds the same bytes.

    Created with ``O_EXCL | O_NOFOLLOW``: a link planted under a backup's name (a
    repository's ``.claude/settings.json.bak`` pointing at the user's global settings) is
    never followed, and no earlier backup, which may be the only copy of what the user
    had before the first install, is ever overwritten.
    """
    with open(source, "rb") as stream:
        content = stream.read()
        mode = os.fstat(stream.fileno()).st_mode & 0o777
    stem = f"{source.name}.bak"
    for n in range(_BACKUPS_MAX):
        backup = directory / (stem if n == 0 else f"{stem}.{n}")
        try:
            fd = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            if _holds(backup, content):
                return backup
            continue
        try:
            os.fchmod(fd, mode)
            os.write(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        return backup
    raise ReconcileError(
        f"{directory} holds {_BACKUPS_MAX} backups of {source.name} already: "
        "remove the ones you do not need; unchanged"
    )


def _holds(path: Path, content: bytes) -> bool:
    """Whether ``path`` is a regular file (not a link) holding exactly ``content``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as stream:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        return stream.read(len(content) + 1) == content
