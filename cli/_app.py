"""The ``reconcile`` command line (every command but the hook's fast path).

Exit codes (docs/operations.md): 0 ok, 1 verification failed, no such entry, or ``db
remove`` without ``--yes`` (it lists what it would remove), 2 usage error, 3 environment
error (database needed and unreachable, unusable state directory, ...). An output pipe
closed by its reader (``reconcile doctor | head -1``) changes nothing of that: the rest
of the output is dropped quietly and the exit code is the command's own, whatever the
timing (:func:`cli._output.closed_pipe_guard`).
Errors, usage errors included, are one line on stderr; ``-v`` adds the traceback and
human logs on stderr. ``reconcile hook`` exits 0 whatever its arguments: Claude Code
treats a hook's exit 2 as "block this tool call".
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import journal
import reconcile
from cli import _commands, _db, _demo, _doctor, _explain, _install, _probe, _psql
from cli._commands import UsageError
from cli._output import closed_pipe_guard
from cli._probe import no_home

OK, FAILED, USAGE, ENVIRONMENT = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (it prints the whole usage by default), and a
    "did you mean" for a mistyped command or choice (``stauts``, ``db upp``)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see: {self.prog} --help)")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        choices = action.choices
        if choices is not None and value not in choices:
            names = [str(choice) for choice in choices]
            guess = difflib.get_close_matches(str(value), names, n=1, cutoff=0.6)
            hint = f"did you mean {guess[0]!r}?" if guess else "choose from " + ", ".join(names)
            raise argparse.ArgumentError(action, f"invalid choice: {value!r}; {hint}")
        super()._check_value(action, value)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("session-reconcile")
    except PackageNotFoundError:
        return "unknown"


class _Version(argparse.Action):
    """``--version``, looked up when asked: reading the package's metadata costs every
    other command tens of milliseconds (importlib.metadata and what it imports)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS) -> None:
        super().__init__(
            option_strings,
            dest,
            default=argparse.SUPPRESS,
            nargs=0,
            help="show program's version number and exit",
        )

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(f"{parser.prog} {_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="reconcile",
        description="Keep executors.claude_session_id in step with live Claude Code sessions.",
    )
    parser.add_argument("--home", help="state directory (default: $RECONCILE_HOME)")
    parser.add_argument("--database-url", help="PostgreSQL URL (default: $RECONCILE_DATABASE_URL)")
    parser.add_argument("-v", "--verbose", action="store_true", help="logs and tracebacks")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str,
        handler: Callable[..., int],
        help: str,
        *,
        home: bool = True,
        more: str = "",
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=f"{help}. {more}" if more else help)
        p.set_defaults(handler=handler, needs_home=home, command_parser=p)
        return p

    p = command("hook", _commands.hook, "the Claude Code hook: reads the payload on stdin")
    p.add_argument("--sync", action="store_true", help="settle before exiting (RECONCILE_SYNC)")

    p = command("status", _commands.status, "what the cache and the database look like")
    p.set_defaults(diagnoses=True)
    p.add_argument("--json", action="store_true")

    p = command("doctor", _doctor.run, "check the set-up and say the next step", home=False)
    p.set_defaults(diagnoses=True)
    p.add_argument("--settings", help="Claude Code settings (default ~/.claude/settings.json)")
    p.add_argument("--json", action="store_true")

    p = command(
        "explain", _explain.run, "why the hook did what it did (writes nothing)", home=False
    )
    p.set_defaults(diagnoses=True)
    p.add_argument("--payload", metavar="JSON", help="the hook's payload (default: stdin)")
    p.add_argument("--session-id", metavar="ID", help="a payload with this session_id")
    p.add_argument("--sync", action="store_true", help="as the hook with --sync")
    p.add_argument(
        "--no-db", action="store_true", help="do not ask the database what it would decide"
    )
    p.add_argument("--json", action="store_true")

    p = command("show", _commands.show, "cache entries as the hook sees them")
    p.add_argument("key", nargs="?")
    p.add_argument(
        "--at",
        type=_time,
        metavar="TIME",
        help="as of an instant (ISO-8601 or an age): the history folded",
    )
    p.add_argument("--json", action="store_true")

    p = command("compact", _commands.compact, "fold journals into the snapshot")
    p.add_argument("--wait", action="store_true", help="wait for a running compaction")
    p.add_argument("--max-entries", type=_positive_int, help="cache bound (default 1000)")
    p.add_argument("--json", action="store_true")

    p = command("forget", _commands.forget, "journal a tombstone for a cache key")
    p.add_argument("key")
    p.add_argument("--json", action="store_true")

    p = command("replay", _commands.replay, "the event history, from a cursor, followed")
    p.add_argument("-f", "--follow", action="store_true", help="then new records as written")
    p.add_argument("--cursor", metavar="CURSOR", help="start at this cursor's record")
    p.add_argument("--after-cursor", metavar="CURSOR", help="start after this cursor's record")
    p.add_argument(
        "--cursor-file", metavar="FILE", help="start after the cursor in FILE; keep it there"
    )
    p.add_argument("--show-cursor", action="store_true", help="print the cursor at the end")
    p.add_argument(
        "--header", action="store_true", help="what history is retained, instead of the records"
    )
    p.add_argument(
        "-o",
        "--output",
        choices=("json", "json-seq", "short"),
        metavar="FORMAT",
        help="json (JSON Lines, default when piped), json-seq (RFC 7464), short (a terminal's)",
    )
    p.add_argument("--since", type=_time, help="ISO-8601 or an age (15m, 2h, 7d)")
    p.add_argument("--until", type=_time, help="ISO-8601 or an age")
    p.add_argument("--key")
    p.add_argument("--executor")
    p.add_argument("--type", action="append", default=[], help="repeatable")
    p.add_argument("--to-db", action="store_true", help="apply pending events to the DB")
    p.add_argument("--json", action="store_true", help="(with --to-db) the report as JSON")

    p = command("verify", _commands.verify, "rebuild from history and compare")
    p.add_argument("--db", action="store_true", help="compare with the database too")
    p.add_argument(
        "--at",
        type=_time,
        metavar="TIME",
        help="as of an instant (ISO-8601 or an age): the history up to it",
    )
    p.add_argument(
        "--transcripts",
        action="store_true",
        help="instead: each settled executor against Claude Code's transcripts on this host",
    )
    p.add_argument("--key", help="(--transcripts) this cache key only")
    p.add_argument(
        "--repair",
        action="store_true",
        help="(--transcripts) observe each unambiguous missed rotation (a dry run)",
    )
    p.add_argument("--apply", action="store_true", help="(--repair) do it")
    p.add_argument("--json", action="store_true")

    p = command(
        "db",
        _db.db,
        "the database: migrate|up|down|status|url|psql|remove",
        more="The embedded server's "
        "`db url` is for clients on libpq 16 or later (it names require_auth, which "
        "psycopg 3 with its own libpq, the embedded package's psql, and psql 16 or later "
        "know); with an older psql, use `db psql [--psql PATH] [--unverified-server] "
        "[ARGS...]`, which runs psql on the database, ARGS passed to psql as given "
        "(docs/operations.md, psql)",
    )
    p.add_argument("action", choices=["migrate", "up", "down", "status", "url", "psql", "remove"])
    p.add_argument(
        "--create-tables",
        action="store_true",
        help="(migrate) the database is this tool's own: create the orchestrator's tables",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--show-password",
        action="store_true",
        help="(url) the password itself, in the URL (still for libpq 16 or later)",
    )
    p.add_argument(
        "--orphans",
        action="store_true",
        help="(remove) root's servers whose state directory is gone, not this one's",
    )
    p.add_argument("--yes", action="store_true", help="(remove) remove what is listed")

    p = command(
        "install-hooks", _install.run, "add the hook to Claude Code's settings.json", home=False
    )
    _install.add_arguments(p)

    p = command("demo", _demo.run, "the whole thing on a throwaway embedded PostgreSQL", home=False)
    p.set_defaults(own_settings=True)  # the user's RECONCILE_* tuning is not the demo's
    p.add_argument("--home", dest="demo_home", help="keep the demo's state here (new or empty)")
    p.add_argument("--agents", type=_positive_int, default=24)
    p.add_argument("--forks", type=_positive_int, default=200)
    p.add_argument("--concurrency", type=_positive_int, default=os.cpu_count() or 2)
    p.add_argument("--json", action="store_true")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _time(text: str) -> str:
    from cli._output import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(argv: list[str]) -> int:
    """Parse ``argv`` and run the command; return the exit code."""
    args: Any = None
    try:
        parser = build_parser()
        argv, psql_args = _psql.split_argv(argv)  # after `db psql`: psql's own words
        try:
            args, extra = parser.parse_known_args(argv)
        except SystemExit as exc:  # argparse: --help or --version
            return int(exc.code or 0)
        if args.command == "hook":  # whatever follows it: the hook always exits 0
            return int(args.handler(args, extra))
        if extra:  # the command's own help says what it takes
            args.command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if args.command == "db":
            _db.check_options(args)
        args.psql_args = psql_args
        # A malformed RECONCILE_* variable stops a command here, naming it, except the
        # two that diagnose: they run on the defaults and name it (docs/operations.md).
        settings = reconcile.Settings.from_env(
            os.environ,
            ignore_malformed=getattr(args, "diagnoses", False)
            or getattr(args, "own_settings", False),
            home=args.home,
            database_url=args.database_url,
        )
        if args.needs_home:  # doctor, install-hooks and demo leave the home alone
            _check_home(settings.home)  # first: logging writes under the home
            read_only = _read_only(args)
            reconcile.configure_logging(settings, verbose=args.verbose, create=not read_only)
        with closed_pipe_guard():  # a reader gone: quiet, the exit code unchanged
            code = int(args.handler(args, settings))
        # A read-only command's home that does not exist (status says so itself; an
        # error says what to do instead)
        looked = code == OK and args.command != "status" and _read_only(args)
        if looked and not os.path.lexists(settings.home):
            sys.stderr.write(f"reconcile: note: {no_home(settings.home)}\n")
        return code
    except (UsageError, reconcile.ConfigError) as exc:
        return _fail(args, exc, USAGE)
    except (reconcile.ReconcileError, journal.JournalError, OSError) as exc:
        return _fail(args, exc, ENVIRONMENT)
    except KeyboardInterrupt:
        return 130


def _read_only(args: Any) -> bool:
    """Whether the command only looks: it then creates nothing, not even the state
    directory or its log directory (docs/operations.md)."""
    if args.command == "replay":
        return not args.to_db
    if args.command == "db":
        return args.action in ("status", "url")
    return args.command in ("status", "show", "verify")


def _check_home(home: Path) -> None:
    """Refuse a state directory that reads as empty because it cannot be read at all, or
    that is not ours alone, anywhere inside (docs/operations.md)."""
    problem = _probe.home_problem(home)
    if problem is not None:
        raise journal.UnsafePathError(f"{problem[0]}: {problem[1]}")
    journal.check_home(home)


def _fail(args: Any, exc: BaseException, code: int) -> int:
    if args is not None and args.verbose:
        traceback.print_exception(exc, file=sys.stderr)
    message = " ".join(str(exc).split()) or type(exc).__name__
    sys.stderr.write(f"reconcile: error: {message}\n")
    return code
