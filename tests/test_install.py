"""``reconcile install-hooks`` as a user runs it: a real process and a real settings file.

Which Claude Code runs these settings is proven in tests/e2e/; here, what is written: the
events, the exec or shell form by version, the upgrade of an earlier install, and an
uninstall that finds every entry this command ever wrote.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
from reconcile_helpers import clean_env, default_hook, reconcile_command

NEW = "2.1.332"
ARGV = default_hook()  # this interpreter without site, on the script installed beside it
EXEC = {"type": "command", "command": ARGV[0], "args": ARGV[1:]}
MARKED = {**EXEC, "statusMessage": "session-reconcile"}
SHELL = {"type": "command", "command": shlex.join(ARGV), "statusMessage": "session-reconcile"}
SOURCES = "startup|resume|clear|compact|fork"
# What earlier versions of install-hooks wrote.
EARLIER = {
    "PreToolUse": [{"matcher": "*", "hooks": [{"type": "command", "command": "reconcile hook"}]}],
    "UserPromptSubmit": [{"hooks": [{"type": "command", "command": "reconcile hook"}]}],
}


def install(settings: Path, *args: str, path: str | None = None, home: Path | None = None):
    """Run ``reconcile install-hooks --settings SETTINGS ARGS``; PATH given or inherited."""
    env = clean_env(RECONCILE_HOME=str(home or settings.parent / "state"))
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [*reconcile_command(), "install-hooks", "--settings", str(settings), *args],
        capture_output=True,
        env=env,
        timeout=120,
    )


def hooks_of(settings: Path) -> dict:
    return json.loads(settings.read_text())["hooks"]


def test_default_install_into_a_missing_file_then_idempotent(tmp_path):
    settings = tmp_path / "claude" / "settings.json"
    done = install(settings, "--claude-version", NEW)
    assert done.returncode == 0, done.stderr
    assert hooks_of(settings) == {
        "SessionStart": [{"matcher": SOURCES, "hooks": [MARKED]}],
        "UserPromptSubmit": [{"hooks": [MARKED]}],
    }
    assert b"SessionStart, UserPromptSubmit" in done.stdout and b"exec form" in done.stdout
    assert stat.S_IMODE(settings.stat().st_mode) == 0o600
    # What was written runs, as Claude Code runs it: argv as is, payload on stdin.
    state = tmp_path / "state"
    hook = subprocess.run(
        ARGV,
        input=b'{"session_id": "s-1"}',
        capture_output=True,
        env=clean_env(RECONCILE_HOME=str(state), RECONCILE_EXECUTOR_ID="e-1"),
        timeout=120,
    )
    assert (hook.returncode, hook.stdout, hook.stderr) == (0, b"", b"")
    assert any((state / "journal").iterdir())  # the observation, for the reconciler
    before = settings.read_bytes()
    again = install(settings, "--claude-version", NEW)
    assert again.returncode == 0 and b"already" in again.stdout
    assert settings.read_bytes() == before


def test_keeps_other_keys_and_foreign_hooks_and_uninstall_restores(tmp_path):
    settings = tmp_path / "settings.json"
    original = {
        "model": "opus",
        "permissions": {"allow": ["Bash(ls)"]},
        "hooks": {
            "PreToolUse": [
                {"matcher": "Bash", "hooks": [{"type": "command", "command": "audit.sh"}]}
            ],
            "SessionStart": [{"hooks": [{"type": "command", "command": "welcome", "args": []}]}],
            "Stop": [{"hooks": [{"type": "command", "command": "notify"}]}],
        },
    }
    settings.write_text(json.dumps(original))
    os.chmod(settings, 0o640)
    assert install(settings, "--claude-version", NEW).returncode == 0
    data = json.loads(settings.read_text())
    assert data["model"] == "opus" and data["permissions"] == original["permissions"]
    assert data["hooks"]["Stop"] == original["hooks"]["Stop"]
    assert data["hooks"]["PreToolUse"] == original["hooks"]["PreToolUse"]
    assert data["hooks"]["SessionStart"][0] == original["hooks"]["SessionStart"][0]
    assert data["hooks"]["SessionStart"][1]["hooks"] == [MARKED]
    assert json.loads((tmp_path / "settings.json.bak").read_text()) == original
    assert stat.S_IMODE(settings.stat().st_mode) == 0o640

    dry = install(settings, "--uninstall", "--dry-run")
    assert json.loads(dry.stdout) == original
    assert json.loads(settings.read_text()) == data  # the dry run wrote nothing
    done = install(settings, "--uninstall")
    assert done.returncode == 0 and b"2 hook entries removed" in done.stdout
    assert json.loads(settings.read_text()) == original


def test_leaves_invalid_json_untouched(tmp_path):
    settings = tmp_path / "settings.json"
    settings.write_text('{"hooks": {,,}')
    done = install(settings, "--claude-version", NEW)
    assert done.returncode == 3
    assert b"not valid JSON" in done.stderr and done.stderr.count(b"\n") == 1
    assert settings.read_text() == '{"hooks": {,,}'
    assert not (tmp_path / "settings.json.bak").exists()


def test_upgrades_the_earlier_install_and_drops_its_pre_tool_use(tmp_path):
    settings = tmp_path / "settings.json"
    foreign = {"matcher": "Bash", "hooks": [{"type": "command", "command": "audit.sh"}]}
    settings.write_text(
        json.dumps({"hooks": {**EARLIER, "PreToolUse": [*EARLIER["PreToolUse"], foreign]}})
    )
    assert install(settings, "--claude-version", NEW).returncode == 0
    assert hooks_of(settings) == {
        "PreToolUse": [foreign],
        "UserPromptSubmit": [{"hooks": [MARKED]}],
        "SessionStart": [{"matcher": SOURCES, "hooks": [MARKED]}],
    }


def test_every_tool_use_adds_an_async_pre_tool_use_and_plain_install_removes_it(tmp_path):
    settings = tmp_path / "settings.json"
    done = install(settings, "--every-tool-use", "--claude-version", NEW)
    assert done.returncode == 0 and b"PreToolUse: every tool use, async" in done.stdout
    assert hooks_of(settings)["PreToolUse"] == [
        {"matcher": "*", "hooks": [{**MARKED, "async": True}]}
    ]
    assert install(settings, "--claude-version", NEW).returncode == 0
    assert "PreToolUse" not in hooks_of(settings)


@pytest.mark.parametrize(
    ("version", "session_start", "pre_tool_use"),
    [
        # exec form from 2.1.139, async from 2.1.23; before: the shell form, synchronous
        ("2.1.139", MARKED, {**MARKED, "async": True}),
        ("2.1.138", SHELL, {**SHELL, "async": True}),
        ("2.1.22", SHELL, SHELL),
    ],
)
def test_the_form_follows_the_claude_code_version(tmp_path, version, session_start, pre_tool_use):
    settings = tmp_path / "settings.json"
    done = install(settings, "--every-tool-use", "--claude-version", version)
    assert done.returncode == 0, done.stderr
    hooks = hooks_of(settings)
    assert hooks["SessionStart"] == [{"matcher": SOURCES, "hooks": [session_start]}]
    assert hooks["UserPromptSubmit"] == [{"hooks": [session_start]}]
    assert hooks["PreToolUse"] == [{"matcher": "*", "hooks": [pre_tool_use]}]


def test_the_version_comes_from_claude_on_path(tmp_path):
    """``claude --version`` decides; no ``claude`` (or one that says no version): the shell
    form, which every version runs, and the output says why."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    claude = bin_dir / "claude"
    path = f"{bin_dir}:/usr/bin:/bin"
    settings = tmp_path / "settings.json"

    claude.write_text("#!/bin/sh\necho '2.1.332 (Claude Code)'\n")
    claude.chmod(0o755)
    assert install(settings, path=path).returncode == 0
    assert hooks_of(settings)["UserPromptSubmit"] == [{"hooks": [MARKED]}]

    claude.write_text("#!/bin/sh\necho 'no version here'\n")
    done = install(settings, path=path)
    assert done.returncode == 0 and b"shell form" in done.stdout
    shell = SHELL
    assert hooks_of(settings)["UserPromptSubmit"] == [{"hooks": [shell]}]

    claude.unlink()
    done = install(settings, "--every-tool-use", path=path)
    assert b"--claude-version chooses" in done.stdout
    assert hooks_of(settings)["PreToolUse"] == [{"matcher": "*", "hooks": [shell]}]


def test_a_command_that_needs_a_shell_keeps_the_shell_form(tmp_path):
    settings = tmp_path / "settings.json"
    command = "cd /tmp && reconcile hook"
    done = install(settings, "--command", command, "--claude-version", NEW)
    assert done.returncode == 0 and b"needs a shell" in done.stdout
    assert hooks_of(settings)["UserPromptSubmit"] == [
        {"hooks": [{"type": "command", "command": command, "statusMessage": "session-reconcile"}]}
    ]


def test_uninstall_removes_every_entry_whatever_its_command(tmp_path):
    """Issue 12: a ``--command`` install survived ``--uninstall``, and an install after
    another left both."""
    settings = tmp_path / "settings.json"
    absolute = f"{tmp_path}/venv/bin/reconcile hook"
    earlier_custom = {"type": "command", "command": absolute}  # an earlier --command install
    wrapped = "/opt/wrap/run-it --quiet"  # not named reconcile: known by its mark
    settings.write_text(json.dumps({"hooks": {**EARLIER, "Stop": [{"hooks": [earlier_custom]}]}}))

    assert install(settings, "--command", wrapped, "--claude-version", NEW).returncode == 0
    assert install(settings, "--command", absolute, "--claude-version", NEW).returncode == 0
    hooks = hooks_of(settings)
    assert set(hooks) == {"SessionStart", "UserPromptSubmit", "Stop"}
    assert hooks["UserPromptSubmit"] == [
        {"hooks": [{**MARKED, "command": f"{tmp_path}/venv/bin/reconcile", "args": ["hook"]}]}
    ]
    settings.write_text(
        json.dumps(
            {
                "hooks": {
                    **hooks,
                    "PostToolUse": [
                        {"hooks": [{**MARKED, "command": "/opt/wrap/run-it", "args": ["--quiet"]}]}
                    ],
                }
            }
        )
    )

    done = install(settings, "--uninstall")
    assert done.returncode == 0, done.stderr
    assert not settings.exists()  # it held nothing else: it goes
    again = install(settings, "--uninstall")
    assert again.returncode == 0 and b"nothing to remove" in again.stdout


def test_uninstall_of_a_missing_file_creates_nothing(tmp_path):
    settings = tmp_path / "claude" / "settings.json"
    done = install(settings, "--uninstall", home=tmp_path / "state")
    assert done.returncode == 0 and b"nothing to remove" in done.stdout
    assert not settings.parent.exists()


def test_warns_when_the_program_is_not_on_path(tmp_path):
    settings = tmp_path / "settings.json"
    missing = install(settings, "--command", "/nowhere/reconcile hook", "--claude-version", NEW)
    assert missing.returncode == 0 and settings.exists()
    assert b"warning: '/nowhere/reconcile' is not on PATH" in missing.stderr
    assert missing.stderr.count(b"\n") == 1

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "reconcile").write_text("#!/bin/sh\n")
    (bin_dir / "reconcile").chmod(0o755)
    on_path = ("--command", "reconcile hook", "--claude-version", NEW)
    found = install(settings, *on_path, path=f"{bin_dir}:/usr/bin:/bin")
    assert found.returncode == 0 and found.stderr == b""
    not_found = install(settings, *on_path, path="/usr/bin:/bin")
    assert b"'reconcile' is not on PATH" in not_found.stderr
    default = install(settings, "--claude-version", NEW, path="/usr/bin:/bin")
    assert default.returncode == 0 and default.stderr == b""  # absolute paths: no PATH lookup


def test_a_backup_never_follows_a_link_a_repository_planted(tmp_path):
    """A repository ships ``.claude/settings.json`` and, beside it, ``settings.json.bak``
    as a link to the user's global settings. Installing for that project leaves the
    global settings as they were and the link where it was; the backup is a new file.
    Fails before 'install-hooks: a backup is a new file': the copy followed the link."""
    user = tmp_path / "user-claude" / "settings.json"
    user.parent.mkdir()
    mine = {"model": "opus", "hooks": {"Stop": [{"hooks": [{"type": "command", "command": "x"}]}]}}
    user.write_text(json.dumps(mine))
    project = tmp_path / "repo" / ".claude"
    project.mkdir(parents=True)
    theirs = {"hooks": {"SessionStart": [{"hooks": [{"type": "command", "command": "evil"}]}]}}
    (project / "settings.json").write_text(json.dumps(theirs))
    (project / "settings.json.bak").symlink_to(user)
    done = install(project / "settings.json", "--claude-version", NEW)
    assert done.returncode == 0, done.stderr
    assert json.loads(user.read_text()) == mine
    assert os.readlink(project / "settings.json.bak") == str(user)
    assert json.loads((project / "settings.json.bak.1").read_text()) == theirs
    assert str(project / "settings.json.bak.1").encode() in done.stdout


def test_the_first_backup_is_never_overwritten(tmp_path):
    """install, uninstall, an edit of the user's, install again: ``settings.json.bak``
    still holds what was there before the first install; each other state has a backup
    of its own, and an unchanged file is not backed up twice."""
    settings = tmp_path / "settings.json"
    original = {"model": "opus"}
    settings.write_text(json.dumps(original, indent=2) + "\n")  # as uninstall writes it back
    for args in (("--claude-version", NEW), ("--uninstall",), ("--claude-version", NEW)):
        assert install(settings, *args).returncode == 0
    edited = {**json.loads(settings.read_text()), "theme": "dark"}
    settings.write_text(json.dumps(edited))
    assert install(settings, "--uninstall").returncode == 0
    assert json.loads((tmp_path / "settings.json.bak").read_text()) == original
    backups = sorted(p.name for p in tmp_path.iterdir() if ".bak" in p.name)
    assert backups == ["settings.json.bak", "settings.json.bak.1", "settings.json.bak.2"]
    assert json.loads((tmp_path / "settings.json.bak.2").read_text()) == edited


def test_settings_kept_as_a_link_are_written_through_it(tmp_path):
    """``~/.claude/settings.json`` as a link into a dotfiles repository (stow, chezmoi,
    home-manager): the file it names gets the hook, with its mode; the link stays a link,
    and the backup lies beside the link, not in the dotfiles."""
    dotfiles = tmp_path / "dotfiles" / "claude"
    dotfiles.mkdir(parents=True)
    real = dotfiles / "settings.json"
    real.write_text(json.dumps({"model": "opus"}))
    os.chmod(real, 0o640)
    claude = tmp_path / "home" / ".claude"
    claude.mkdir(parents=True)
    link = claude / "settings.json"
    link.symlink_to("../../dotfiles/claude/settings.json")
    assert install(link, "--claude-version", NEW).returncode == 0
    assert os.readlink(link) == "../../dotfiles/claude/settings.json"
    assert hooks_of(real)["SessionStart"][0]["hooks"] == [MARKED]
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert json.loads((claude / "settings.json.bak").read_text()) == {"model": "opus"}
    assert sorted(os.listdir(dotfiles)) == ["settings.json"]
    assert install(link, "--uninstall").returncode == 0
    assert json.loads(real.read_text()) == {"model": "opus"} and link.is_symlink()
