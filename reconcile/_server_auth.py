"""Who may use the embedded PostgreSQL: its owner, with a password only the owner can read.

The server listens on 127.0.0.1, which every local user can reach, so the line between
them is authentication (docs/operations.md compares this with a Unix socket and peer
authentication, and says why this was chosen):

- one role, the superuser ``postgres``; ``pg_hba.conf`` admits it over 127.0.0.1 with
  ``scram-sha-256`` and admits nothing else (no ``trust`` line, no socket line);
- its password is 32 random bytes (:mod:`secrets`), kept in ``pg/passfile`` (0600, in
  the owner's 0700 state directory) in libpq's password-file format, and handed to libpq
  as the ``passfile`` connection parameter: never on a command line, in the environment
  or in a URL (unless ``reconcile db url --show-password`` asks for it);
- the server gets only a SCRAM verifier computed here, through the standard input of a
  single-user ``postgres`` (never a file the server's user could read, never a log);
- clients add ``require_auth=scram-sha-256``: a program squatting on the port while the
  server is down cannot pass itself off as the server (it would have to prove it holds
  the verifier), so it learns nothing the hook would have sent.

One PBKDF2 round: iterations stretch passwords people can guess; 256 random bits leave
nothing to stretch, and PostgreSQL's default 4096 rounds cost both sides about 3 ms per
connection here (measured: docs/operations.md), on every miss's connection.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

PASSFILE = "passfile"
HBA = "pg_hba.conf"
ROLE = "postgres"
SCRAM_ITERATIONS = 1
HBA_TEXT = f"""\
# Written by session-reconcile; rewritten by `reconcile db up` if changed.
# The owner only: role {ROLE}, over 127.0.0.1, with the password in its passfile.
# Nothing else is admitted: no trust, no Unix socket (the server opens none).
host    all    {ROLE}    127.0.0.1/32    scram-sha-256
"""


def new_password() -> str:
    """256 random bits, URL-safe (no ``:`` or ``\\`` to escape in a password file)."""
    return secrets.token_urlsafe(32)


def scram_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> str:
    """The ``SCRAM-SHA-256$...`` secret PostgreSQL stores for ``password`` (RFC 7677), so
    the server is given the verifier, never the password."""
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    encoded = [base64.b64encode(part).decode() for part in (salt, stored_key, server_key)]
    return f"SCRAM-SHA-256${iterations}:{encoded[0]}${encoded[1]}:{encoded[2]}"


def alter_role_sql(password: str) -> str:
    """The statement a single-user server runs to set the password (as a verifier)."""
    return f"ALTER ROLE {ROLE} WITH LOGIN PASSWORD '{scram_verifier(password)}';\n"


def read_password(passfile: Path) -> str | None:
    """The password kept in ``passfile``, None if there is none (a missing file, or not
    ours alone: libpq itself ignores a password file that others may read)."""
    try:
        fd = os.open(passfile, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd) as stream:
        st = os.fstat(stream.fileno())
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            return None
        line = stream.readline().rstrip("\n")
    fields = line.split(":")
    return fields[4] if len(fields) == 5 and fields[3] == ROLE and fields[4] else None


def write_passfile(passfile: Path, password: str) -> None:
    """Keep ``password`` in ``passfile``: 0600, replaced atomically and durably (temp file,
    fsync, rename, fsync of the directory; raises :class:`journal.StorageError`)."""
    from journal import write_atomically

    write_atomically(passfile, f"127.0.0.1:*:*:{ROLE}:{password}\n".encode("ascii"))


def hba_is_current(data: Path) -> bool:
    """Whether the cluster's ``pg_hba.conf`` is ours, as written by :func:`write_hba`."""
    try:
        return (data / HBA).read_text() == HBA_TEXT
    except (OSError, UnicodeDecodeError):
        return False


def write_hba(data: Path, uid: int, gid: int) -> None:
    """Replace ``data/pg_hba.conf`` by ours, owned by the server's user (``uid``). Written
    under a fresh name (never through a link the server's user may have put there)."""
    path = data / HBA
    temp = data / f".{HBA}.{os.getpid()}"
    temp.unlink(missing_ok=True)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, HBA_TEXT.encode())
        os.fchown(fd, uid, gid)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
