"""The state directory (DESIGN §3): its paths, and opening things in it safely.

Every directory is created 0700 and every file 0600; nothing in it is followed through a
symlink (``O_NOFOLLOW`` on files, ``lstat`` on directories).
"""

from __future__ import annotations

import os
import stat

from journal._errors import UnsafePathError

TYPE_CHECKING = False  # typing costs milliseconds on the hit path; checkers see True
if TYPE_CHECKING:
    from pathlib import Path
    from typing import TypeVar

    StrPath = str | os.PathLike[str]
    StrPathT = TypeVar("StrPathT", str, Path)

JOURNAL_DIR = "journal"
ARCHIVE_DIR = "archive"
QUARANTINE_DIR = "quarantine"
LOG_DIR = "log"
SNAPSHOT = "snapshot"
COMPACT_LOCK = "compact.lock"
JOURNAL_SUFFIX = ".jnl"
PENDING_SUFFIX = ".new"  # a journal being created, not yet locked by its writer

READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
DIR_MODE = 0o700
FILE_MODE = 0o600


def ensure_dir(path: StrPathT) -> StrPathT:
    """Create ``path`` 0700 (missing parents too); refuse a symlink or a non-directory."""
    try:
        os.mkdir(path, DIR_MODE)  # the umask may narrow the mode, never widen it
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        if parent == os.path.abspath(path):
            raise UnsafePathError(f"{path} cannot be created") from None
        ensure_dir(parent)
        return ensure_dir(path)
    except FileExistsError:
        pass  # a directory (fine), a file or a dangling symlink (refused below)
    except OSError as exc:
        raise UnsafePathError(f"{path} cannot be created: {exc.strerror}") from None
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise UnsafePathError(f"{path} cannot be used: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(f"{path} is a symlink; the state directory must be a real directory")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{path} exists and is not a directory; move it away")
    return path


def ensure_home(home: Path) -> Path:
    """Create the state directory and its subdirectories; return ``home``."""
    ensure_dir(home)
    for name in (JOURNAL_DIR, ARCHIVE_DIR, QUARANTINE_DIR, LOG_DIR):
        ensure_dir(home / name)
    return home


def fsync_dir(path: StrPath) -> None:
    """Make renames and creations in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_files(directory: StrPath, suffix: str) -> list[str]:
    """Paths in ``directory`` ending in ``suffix``, sorted; none if it does not exist,
    is not readable, or is a symlink (refused, never followed)."""
    try:
        if stat.S_ISLNK(os.lstat(directory).st_mode):
            return []
        names = os.listdir(directory)
    except OSError:
        return []
    return [os.path.join(directory, name) for name in sorted(names) if name.endswith(suffix)]


def write_atomically(path: Path, content: bytes) -> None:
    """Replace ``path`` by ``content``: temp file, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE
    )
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError as exc:  # a directory where the file should be, say
        os.unlink(tmp)
        raise UnsafePathError(f"{path} cannot be replaced ({exc.strerror}); move it away") from None
    fsync_dir(path.parent)
