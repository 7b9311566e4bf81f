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
- :func:`journal._hit.home_refusal`: the hook's, on every tool use, so three ``lstat``
  calls (the directory, ``journal/`` and ``snapshot``: what the hit path reads),
  returning the reason instead of raising. What lies deeper is refused by the next
  command. :func:`journal._hit.path_refusal` is the same for one path. The rule itself,
  :func:`journal._hit.refusal`, lives there too: the hit path loads one module.

The server's own files (``pg/data``, ``pg/server.log``) are left to PostgreSQL, which
refuses a data directory that is not its user's or that others can read; they belong to
another user when an older version ran the server as ``reconcile-pg`` from here.
"""

import posix
from _stat import S_ISDIR  # what stat.py re-exports; neither os nor stat

from journal._errors import UnsafePathError
from journal._hit import join_path, refusal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from journal._hit import StrPath

_SERVER_OWNED = frozenset({"pg/data", "pg/data.new"})
_SERVER_LOG = "pg/server.log"


class UntrustedPathError(UnsafePathError, PermissionError):
    """A path in the state directory is not ours alone (another owner, a group or world
    write bit, a symlink): the directory is refused until that is fixed."""


def check_home(home: "StrPath") -> None:
    """Raise :class:`UntrustedPathError` unless ``home`` and all it holds are ours alone.

    A home that does not exist yet passes (it will be created 0700). The walk does not
    follow symlinks (they are refused) and leaves the server's files to PostgreSQL.
    """
    try:
        st = posix.lstat(home)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        raise UntrustedPathError(f"{home} cannot be checked ({exc.strerror})") from None
    _raise_if(refusal(home, st))
    if not S_ISDIR(st.st_mode):
        raise UntrustedPathError(f"{home} is not a directory: move it away or set RECONCILE_HOME")
    top = posix.fspath(home)
    skipped = {join_path(top, path) for path in (*_SERVER_OWNED, _SERVER_LOG)}
    stack = [top]
    while stack:
        directory = stack.pop()
        try:
            entries = list(posix.scandir(directory))
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
            if S_ISDIR(child.st_mode):
                stack.append(entry.path)


def _raise_if(reason: str | None) -> None:
    if reason is not None:
        raise UntrustedPathError(reason)
