"""``reconcile db migrate|up|down|status|url|psql|remove``: the database's schema and the embedded
server.

``db up`` starts the embedded server and migrates it: that database is the tool's own, so
its tables are created with it and the first hook finds them. Its stdout is the URL alone
(``url=$(reconcile db up)`` works); what it did goes to stderr. A configured database
(``RECONCILE_DATABASE_URL``) is migrated only by an explicit ``db migrate``, which
creates the orchestrator's tables only with ``--create-tables`` (docs/operations.md,
"Beside an orchestrator").

``db remove`` deletes the embedded server, data and all, and nothing else deletes one: it
lists what it would remove, and removes it only with ``--yes`` (exit 1 without, so a
script cannot mistake the listing for the deed). ``--orphans``: root's servers whose
state directory is gone, instead of this state directory's.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import attrs

import reconcile
from cli import _probe, _psql
from cli._commands import UsageError
from cli._output import emit_json, emit_pairs

LISTED = 1  # `db remove` without --yes: listed, nothing removed


# The options of one action only (--json goes with all).
OPTIONS = {
    "create_tables": "migrate",
    "show_password": "url",
    "orphans": "remove",
    "yes": "remove",
}


def check_options(args: Any) -> None:
    """Refuse an option given to an action it does not apply to (``db up
    --create-tables``): accepted silently, it would seem to have done something."""
    for option, action in OPTIONS.items():
        if getattr(args, option) and args.action != action:
            flag = "--" + option.replace("_", "-")
            raise UsageError(
                f"{flag} goes with `db {action}`, not `db {args.action}` (see: reconcile db --help)"
            )


def db(args: Any, settings: reconcile.Settings) -> int:
    embedded = not settings.database_url
    check_options(args)
    this_server = args.action in ("up", "down") or (args.action == "remove" and not args.orphans)
    if this_server and not embedded:
        raise reconcile.ConfigError(
            f"`db {args.action}` manages the embedded server; "
            "unset RECONCILE_DATABASE_URL to use it"
        )
    action: dict[str, Any] = {
        "migrate": _migrate,
        "up": _up,
        "down": _down,
        "status": _status,
        "url": _url,
        "psql": _psql.run,
        "remove": _remove_orphans if args.orphans else _remove,
    }
    return int(action[args.action](args, settings))


def _up(args: Any, settings: reconcile.Settings) -> int:
    started = reconcile.server_url(settings.home) is None
    url = reconcile.server_up(settings.home)
    with reconcile.migration_connection(settings) as conn:  # the tool's own database
        applied = reconcile.migrate(conn, create_tables=True)
    if args.json:
        emit_json({"url": url, "started": started, "applied": applied})
        return 0
    print(url)
    server = "started" if started else "already running"
    tables = _applied(applied)
    print(f"reconcile: embedded PostgreSQL {server}; {tables}", file=sys.stderr)
    return 0


def _applied(applied: list[str]) -> str:
    """What a migration did, in words: ``created table agents, ...``."""
    return ", ".join(applied) if applied else "the schema is current"


def _down(args: Any, settings: reconcile.Settings) -> int:
    stopped = reconcile.server_down(settings.home)
    if args.json:
        emit_json({"stopped": stopped})
    else:
        print(
            "stopped the embedded PostgreSQL"
            if stopped
            else "the embedded PostgreSQL was not running"
        )
    return 0


def _migrate(args: Any, settings: reconcile.Settings) -> int:
    own = args.create_tables or not settings.database_url  # the embedded one is its own
    with reconcile.migration_connection(settings) as conn:
        applied = reconcile.migrate(conn, create_tables=own)
    if args.json:
        emit_json({"applied": applied})
    else:
        print(_applied(applied))
    return 0


def _status(args: Any, settings: reconcile.Settings) -> int:
    found = _probe.database(settings)
    found["next_step"] = _probe.database_next_step(found)
    server = reconcile.server_status(settings.home) if found["embedded"] else None
    if args.json:
        emit_json({**found, "server": attrs.asdict(server) if server else None})
    else:
        rows = _probe.describe_database(found)
        if server is not None:
            rows.append(("server", _describe_server(server)))
            rows.append(("data", server.data_dir))
        emit_pairs([*rows, ("next step", found["next_step"])])
    return 0 if found["reachable"] else 3


def _describe_server(server: reconcile.ServerStatus) -> str:
    if server.running:
        return f"running (pid {server.pid}, port {server.port})"
    return "stopped" if server.initialized else "not set up yet (reconcile db up does it)"


def _url(args: Any, settings: reconcile.Settings) -> int:
    # The embedded URL names its password file, not the password (unless asked); a
    # configured one is shown redacted.
    url = reconcile.redact_url(settings.database_url) or reconcile.server_url(
        settings.home, show_password=args.show_password
    )
    if url is None:
        raise reconcile.DatabaseUnavailableError(
            "the embedded server is not running; run: reconcile db up"
        )
    if args.json:
        emit_json({"url": url})
    else:
        print(url)
    return 0


def _remove(args: Any, settings: reconcile.Settings) -> int:
    """This state directory's server: listed, and removed with ``--yes``."""
    plan = reconcile.server_removal(settings.home)
    removed = False
    if plan.paths and args.yes:
        removed = reconcile.server_remove(settings.home)
    if args.json:
        emit_json({**attrs.asdict(plan), "removed": removed})
    elif not plan.paths:
        print(f"nothing to remove: no embedded PostgreSQL in {settings.home}")
    else:
        done = "removed" if removed else "would remove"
        print(f"{done} the embedded PostgreSQL of {settings.home}, data and all:")
        for path in plan.paths:
            print(f"  {path}")
        if not removed:
            held = "holds a database" if plan.database else "holds no database"
            runs = "; the server runs, and would be stopped first" if plan.running else ""
            print(f"its data directory {plan.data_dir} {held}{runs}")
            print("rerun with --yes to remove them")
    return LISTED if plan.paths and not removed else 0


def _remove_orphans(args: Any, settings: reconcile.Settings) -> int:
    """Root's servers whose state directory is seen to be gone: listed, and removed with
    ``--yes`` (each checked again just before)."""
    root = os.geteuid() == 0
    found = reconcile.server_remove_orphans() if args.yes else reconcile.server_orphans()
    removed = bool(found) and args.yes
    if args.json:
        emit_json({"orphans": [attrs.asdict(o) for o in found], "removed": removed})
    elif not root:
        print(
            "nothing to do: only root's servers live outside their state directory; "
            "yours is in $RECONCILE_HOME/pg, and goes with it"
        )
    elif not found:
        print("no server whose state directory is gone")
    else:
        done = "removed" if removed else "would remove"
        print(f"{done} {len(found)} server(s) whose state directory is gone, data and all:")
        for orphan in found:
            held = "holds a database" if orphan.database else "holds no database"
            print(f"  {orphan.server}  (served {orphan.home}; {held})")
        if not removed:
            print(
                "a state directory moved elsewhere counts as gone until `reconcile db up` "
                "runs in it; rerun with --yes to remove them"
            )
    return LISTED if found and not removed else 0
