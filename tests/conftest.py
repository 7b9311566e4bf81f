"""The suite's set-up: what it imports, and its PostgreSQL.

The tests import the *installed* packages (``--import-mode=importlib`` in pyproject.toml,
and the checkout taken off ``sys.path`` below), so CI tests what pip installed; the
helper modules beside this file are importable by name.

PostgreSQL: one server per test session, one fresh database per test.

The embedded server (``reconcile._server``) is started once, in a temporary state
directory, and stopped at the end. With ``RECONCILE_TEST_DATABASE_URL`` set to an admin
URL of a server you run (one that may create and drop databases), that server is used
instead and left running.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

_TESTS = Path(__file__).resolve().parent
_CHECKOUT = _TESTS.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _CHECKOUT]
sys.path.insert(0, str(_TESTS))

# After the path is set: nothing of ours may be imported from the checkout.
import psycopg  # noqa: E402
import pytest  # noqa: E402
from psycopg.conninfo import make_conninfo  # noqa: E402

_numbers = itertools.count()


def pytest_report_header() -> str:
    import journal

    return f"session-reconcile from {Path(journal.__file__).parent.parent}"


@pytest.fixture(scope="session")
def admin_url() -> Iterator[str]:
    """An admin URL (may create and drop databases) for the whole session."""
    given = os.environ.get("RECONCILE_TEST_DATABASE_URL")
    if given:
        yield given
        return
    from reconcile import _server

    # A private (0700) directory of its own; under root the server's data lives outside
    # it (docs/operations.md), so remove() deletes both.
    home = Path(tempfile.mkdtemp(prefix="reconcile-test-pg-"))
    url = _server.up(home)
    try:
        yield make_conninfo(url, dbname="postgres")
    finally:
        _server.remove(home)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def database_url(admin_url: str) -> Iterator[str]:
    """A fresh, empty database for one test; dropped afterwards, sessions and all."""
    # The pid keeps two sessions sharing one RECONCILE_TEST_DATABASE_URL apart.
    name = f"reconcile_test_{os.getpid()}_{next(_numbers)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # a crashed run's
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield make_conninfo(admin_url, dbname=name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
