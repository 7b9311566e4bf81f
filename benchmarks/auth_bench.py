"""Connecting to the embedded server, by each way it could tell its owner from others.

The same server, the same run, connections interleaved (each a fresh connection, one
``SELECT 1``, closed), ratios against trust (what older versions did, and what admits
anybody): scram-sha-256 over 127.0.0.1 with the password file, as ``reconcile db up``
sets it up (one PBKDF2 round) and with PostgreSQL's default 4096 rounds, and peer
authentication over a Unix socket in a private directory (the alternative weighed in
docs/operations.md). Under root the server runs as reconcile-pg, as it does for real.

    python -m benchmarks.auth_bench [--connections N]
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import psycopg

from reconcile import _server
from reconcile import _server_auth as auth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=300, help="per way")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="reconcile-auth-bench-"))
    sockets = Path(tempfile.mkdtemp(prefix="rpg-"))  # short: the socket path limit
    service = pwd.getpwnam(_server.SERVICE_USER) if os.geteuid() == 0 else None
    if service is not None:  # ours: the server's user must create its socket there
        os.chown(sockets, service.pw_uid, service.pw_gid)
    home = base / "server"
    try:
        url = _server.up(home, [f"unix_socket_directories={sockets}"])
        ways = _configure(home, url, base, sockets)
        times: dict[str, list[float]] = {way: [] for way in ways}
        for _ in range(args.connections):
            for way, conninfo in ways.items():
                started = time.perf_counter()
                with psycopg.connect(conninfo) as conn:
                    conn.execute("SELECT 1").fetchone()
                times[way].append(time.perf_counter() - started)
    finally:
        _server.remove(home)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(sockets, ignore_errors=True)
    baseline = statistics.median(times["trust (older versions)"])
    print(f"{'':44} {'median':>9} {'p90':>9} {'ratio':>6}")
    for way, samples in times.items():
        median = statistics.median(samples)
        p90 = sorted(samples)[int(len(samples) * 0.9)]
        print(f"{way:44} {median * 1e3:6.2f} ms {p90 * 1e3:6.2f} ms {median / baseline:5.2f}x")


def _configure(home: Path, url: str, base: Path, sockets: Path) -> dict[str, str]:
    """Open the bench's own server to each way (its pg_hba.conf is rewritten: the server
    is removed afterwards) and return a connection string for each."""
    port = psycopg.conninfo.conninfo_to_dict(url)["port"]
    slow = auth.new_password()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE bench_trust")
        verifier = auth.scram_verifier(slow, iterations=4096)
        conn.execute(f"CREATE ROLE slow LOGIN PASSWORD '{verifier}'")
    data = Path(_server.status(home).data_dir)
    me = pwd.getpwuid(os.geteuid()).pw_name
    extra = "host bench_trust postgres 127.0.0.1/32 trust\n"
    extra += "host all slow 127.0.0.1/32 scram-sha-256\nlocal all all peer map=owner\n"
    for name, text in (
        ("pg_hba.conf", extra + auth.HBA_TEXT),
        ("pg_ident.conf", f"owner {me} postgres\n"),
    ):
        owner = data.stat()
        (data / name).write_text(text)
        os.chown(data / name, owner.st_uid, owner.st_gid)
    slow_passfile = base / "slow.passfile"
    auth.write_passfile(slow_passfile, slow)
    slow_passfile.write_text(slow_passfile.read_text().replace(":postgres:", ":slow:"))
    ways = {
        "trust (older versions)": f"host=127.0.0.1 port={port} user=postgres dbname=bench_trust",
        "scram-sha-256, 1 round, passfile (chosen)": url,
        "scram-sha-256, 4096 rounds, passfile": (
            f"host=127.0.0.1 port={port} user=slow dbname=reconcile "
            f"passfile={slow_passfile} require_auth=scram-sha-256"
        ),
        "peer, Unix socket in a 0700 directory": (
            f"host={sockets} port={port} user=postgres dbname=reconcile"
        ),
    }
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 60
    while True:  # the reload is asynchronous: wait until every way is open
        try:
            for conninfo in ways.values():
                psycopg.connect(conninfo).close()
            return ways
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


if __name__ == "__main__":
    main()
