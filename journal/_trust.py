"""Whose state directory is this? Refuse one that anybody but us could have written.

A state directory holds what the hook trusts (journals, the snapshot) and what replay
applies to the database (pending observations). A file that another local user could
have planted there is a forged cache hit or a forged database write, and a directory
they can write is one they can empty. So the directory, and everything in it, must be
owned by the effective user and writable by nobody else: no group or other write bit,
no symlink. Anything else is refused, never repaired: we cannot tell what a stranger
changed, and changing modes of what we did not create is not ours to do.

Two checks, one rule:

- :func:`check_home`: everything (a few thousand ``lstat`` calls at most), for every
  command line run; raises :class:`UntrustedPathError` naming the path and the fix.
- :func:`home_refusal`: the hook's, on every tool use, so three ``lstat`` calls (the
  directory, ``journal/`` and ``snapshot``: what the hit path reads), returning the
  reason instead of raising. What lies deeper is refused by the next command.
  :func:`path_refusal` is the same for one path.

The server's own files (``pg/data``, ``pg/server.log``) are left to PostgreSQL, which
refuses a data directory that is not its user's or that others can read; they belong to
another user when an older version ran the server as ``reconcile-pg`` from here.

Standard library only: this runs on the hook's hit path.
"""

from __future__ import annotations

import os
import stat

from journal._errors import UnsafePathError

TYPE_CHECKING = False  # typing costs milliseconds on the hit path; checkers see True
if TYPE_CHECKING:
    StrPath = str | os.PathLike[str]  # as journal._layout's (which imports this module)

# Beside journal/_layout.py's names, spelled out: that module imports this one.
_HIT_PATH_READS = ("journal", "snapshot")
_SERVER_OWNED = frozenset({os.path.join("pg", "data"), os.path.join("pg", "data.new")})
_SERVER_LOG = os.path.join("pg", "server.log")


class UntrustedPathError(UnsafePathError, PermissionError):
    """A path in the state directory is not ours alone (another owner, a group or world
    write bit, a symlink): the directory is refused until that is fixed."""


def refusal(path: StrPath, st: os.stat_result) -> str | None:
    """Why ``path`` (whose ``lstat`` is ``st``) may not be trusted, or None: one line that
    names the path and says what to do."""
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symlink; a state directory holds no symlinks: remove it"
    if st.st_uid != os.geteuid():
        return (
            f"{path} belongs to {_user(st.st_uid)}, not to {_user(os.geteuid())}: a state "
            "directory must be yours alone; remove it (or its owner must), or set "
            "RECONCILE_HOME to a directory of your own"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (
            f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): "
            f"check what it holds, then chmod go-w {path}"
        )
    return None


def path_refusal(path: StrPath) -> str | None:
    """Why ``path`` may not be trusted, or None (also when it does not exist: there is
    nothing to read, and we create what is missing, ours). One ``lstat``; never raises."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:  # unreadable is not absent: not ours to trust either
        return f"{path} cannot be checked ({exc.strerror}): fix its permissions"
    return refusal(path, st)


def home_refusal(home: StrPath) -> str | None:
    """The hook's check: why ``home`` may not be read, or None. Never raises.

    Three ``lstat`` calls: ``home``, ``home/journal`` and ``home/snapshot``; a missing one
    passes (created 0700/0600 by us when first needed).
    """
    for path in (home, *(os.path.join(home, name) for name in _HIT_PATH_READS)):
        reason = path_refusal(path)
        if reason is not None:
            return reason
    return None


def check_home(home: StrPath) -> None:
    """Raise :class:`UntrustedPathError` unless ``home`` and all it holds are ours alone.

    A home that does not exist yet passes (it will be created 0700). The walk does not
    follow symlinks (they are refused) and leaves the server's files to PostgreSQL.
    """
    try:
        st = os.lstat(home)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        raise UntrustedPathError(f"{home} cannot be checked ({exc.strerror})") from None
    _raise_if(refusal(home, st))
    if not stat.S_ISDIR(st.st_mode):
        raise UntrustedPathError(f"{home} is not a directory: move it away or set RECONCILE_HOME")
    top = os.fspath(home)
    skipped = {os.path.join(top, path) for path in (*_SERVER_OWNED, _SERVER_LOG)}
    stack = [top]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            raise UntrustedPathError(f"{directory} cannot be listed ({exc.strerror})") from None
        for entry in entries:
            if entry.path in skipped:
                continue
            try:
                child = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed meanwhile (a compaction archiving a journal)
            except OSError as exc:
                reason = f"{entry.path} cannot be checked ({exc.strerror})"
                raise UntrustedPathError(reason) from None
            _raise_if(refusal(entry.path, child))
            if stat.S_ISDIR(child.st_mode):
                stack.append(entry.path)


def _raise_if(reason: str | None) -> None:
    if reason is not None:
        raise UntrustedPathError(reason)


def _user(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"
