"""The state directory (docs/formats.md): creating and replacing things in it.

Its names (and listing and opening files for reading) are the hit path's, in
:mod:`journal._hit`, which loads no module it can do without.

Every directory is created 0700 and every file 0600; nothing in it is followed through
a symlink (``O_NOFOLLOW`` on files, ``lstat`` on directories). A directory this module
creates is made durable in its parent (fsync of the parent) before it is used, so a
power loss cannot take away a directory that acknowledged records were written into.

An error is never taken for absence: :func:`journal._hit.list_files` says "none" only for a
directory that does not exist, and raises when one exists but cannot be listed.
"""

import posix
from _stat import S_ISDIR, S_ISLNK  # what stat.py re-exports; neither os nor stat

from journal._errors import StorageError, UnsafePathError
from journal._hit import ARCHIVE_DIR, JOURNAL_DIR, LOG_DIR, QUARANTINE_DIR, TEMP_SUFFIX, refusal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import TypeVar

    from journal._hit import StrPath

    StrPathT = TypeVar("StrPathT", str, Path)

DIR_MODE = 0o700
FILE_MODE = 0o600


# Paths are made absolute by hand (and joined by :func:`journal._hit.join_path`): a hook
# that journals an observation loads this module, and ``os`` would cost it a tenth of
# its time (docs/performance.md).


def absolute_path(path: "StrPath") -> str:
    """``os.path.abspath``: ``path`` from the working directory, ``.`` and ``..`` and
    repeated slashes folded away (a leading ``//`` too)."""
    text = posix.fspath(path)
    if not text.startswith("/"):
        text = f"{posix.getcwd()}/{text}"
    parts: list[str] = []
    for part in text.split("/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part and part != ".":
            parts.append(part)
    return "/" + "/".join(parts)


def ensure_dir(path: "StrPathT") -> "StrPathT":
    """Create ``path`` 0700 (missing parents too), each creation fsynced in its parent;
    refuse a symlink, a non-directory, or a directory that is not ours alone (see
    :mod:`journal._trust`). Iterative: a path that cannot be created (say, under
    ``/proc``) fails once, with the reason."""
    missing: list[str] = []
    current = absolute_path(path)
    while True:  # up to the nearest directory that exists (bounded by the path's depth)
        try:
            posix.mkdir(current, DIR_MODE)  # the umask may narrow the mode, never widen it
        except FileNotFoundError:
            parent = current.rpartition("/")[0] or "/"
            if parent == current:
                raise UnsafePathError(f"{path} cannot be created: no root directory") from None
            missing.append(current)
            current = parent
            continue
        except FileExistsError:
            pass  # a directory (fine), a file or a dangling symlink (refused below)
        except OSError as exc:
            raise UnsafePathError(f"{path} cannot be created: {exc.strerror}") from None
        else:
            _sync_parent(current)
        break
    for directory in reversed(missing):
        try:
            posix.mkdir(directory, DIR_MODE)
        except FileExistsError:
            continue  # created meanwhile by another process, which makes it durable
        except OSError as exc:
            raise UnsafePathError(
                f"{path} cannot be created ({directory}: {exc.strerror}); "
                "choose a state directory you can write to"
            ) from None
        _sync_parent(directory)
    try:
        st = posix.lstat(path)
    except OSError as exc:
        raise UnsafePathError(f"{path} cannot be used: {exc.strerror}") from None
    if S_ISLNK(st.st_mode):
        raise UnsafePathError(f"{path} is a symlink; the state directory must be a real directory")
    if not S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{path} exists and is not a directory; move it away")
    from journal._trust import UntrustedPathError  # not ours alone: refused

    reason = refusal(path, st)
    if reason is not None:
        raise UntrustedPathError(reason)
    return path


def _sync_parent(directory: str) -> None:
    """Make the creation of ``directory`` durable. A parent we may not open (``-wx``
    permissions) cannot be synced: its entry is then as durable as the file system
    makes it. On any other failure the directory is removed again (if still empty), so
    that the next attempt creates it, and syncs it, anew."""
    try:
        fsync_dir(directory.rpartition("/")[0] or "/")
    except PermissionError:
        pass
    except OSError as exc:
        try:  # noqa: SIM105 - not contextlib: see write_atomically
            posix.rmdir(directory)
        except OSError:
            pass  # not empty: another process uses it already
        raise StorageError(
            f"created {directory} but could not make it durable ({exc.strerror})"
        ) from None


def ensure_home(home: "Path") -> "Path":
    """Create the state directory and its subdirectories; return ``home``."""
    ensure_dir(home)
    for name in (JOURNAL_DIR, ARCHIVE_DIR, QUARANTINE_DIR, LOG_DIR):
        ensure_dir(home / name)
    return home


def fsync_dir(path: "StrPath") -> None:
    """Make renames, creations and removals in ``path`` durable (raises OSError)."""
    fd = posix.open(path, posix.O_RDONLY | posix.O_DIRECTORY | posix.O_NOFOLLOW | posix.O_CLOEXEC)
    try:
        posix.fsync(fd)
    finally:
        posix.close(fd)


def temp_path(path: "Path") -> "Path":
    """Where :func:`write_atomically` writes ``path``'s next content."""
    return path.with_name(f".{path.name}.{posix.getpid()}{TEMP_SUFFIX}")


def write_atomically(path: "Path", content: bytes) -> None:
    """Replace ``path`` by ``content``: temp file, fsync, rename, fsync the directory.

    The temp file is created anew (``O_EXCL``) and held under an exclusive flock while it
    is written, so that a cleaner can tell a live one from one left by a dead process.
    On failure it is removed and :class:`StorageError` (or :class:`UnsafePathError` if
    ``path`` is a directory) is raised, with the old file untouched.
    """
    import fcntl  # not on the hit path, which never writes

    tmp = temp_path(path)
    # (Not contextlib.suppress: this module is on the hit path, which imports nothing extra.)
    try:  # noqa: SIM105
        posix.unlink(tmp)  # left by a dead process that had our pid
    except OSError:
        pass  # usually absent; if it cannot be removed, the O_EXCL open below says why
    flags = posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_NOFOLLOW | posix.O_CLOEXEC
    try:
        fd = posix.open(tmp, flags, FILE_MODE)
    except OSError as exc:
        raise StorageError(f"cannot create {tmp}: {exc.strerror}") from None
    step = "write"
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            view = memoryview(content)
            while view:
                view = view[posix.write(fd, view) :]
            step = "sync"
            posix.fsync(fd)
        finally:
            posix.close(fd)
        step = "replace"
        posix.replace(tmp, path)
    except OSError as exc:
        try:  # noqa: SIM105
            posix.unlink(tmp)
        except OSError:
            pass  # a stale temp file: the next compaction removes it
        if isinstance(exc, (IsADirectoryError, NotADirectoryError)):
            raise UnsafePathError(
                f"{path} cannot be replaced ({exc.strerror}); move it away"
            ) from None
        raise StorageError(f"cannot {step} {path}: {exc.strerror}") from None
    try:
        fsync_dir(path.parent)
    except OSError as exc:
        raise StorageError(
            f"replaced {path} but could not make it durable ({exc.strerror})"
        ) from None
