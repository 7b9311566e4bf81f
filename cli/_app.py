"""The ``reconcile`` command line (every command but the hook's fast path).

Exit codes (docs/operations.md): 0 ok, 1 verification failed, no such entry, or ``db
remove`` without ``--yes`` (it lists what it would remove), 2 usage error, 3 environment
error (database needed and unreachable, unusable state directory, ...), 141 output pipe
closed by its reader (``reconcile replay | head``: the status a program killed by SIGPIPE
has, so ``set -o pipefail`` sees what it sees with any Unix tool; nothing is printed).
Errors, usage errors included, are one line on stderr; ``-v`` adds the traceback and
human logs on stderr. ``reconcile hook`` exits 0 whatever its arguments: Claude Code
treats a hook's exit 2 as "block this tool call".
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import journal
import reconcile
from cli import _commands, _db, _demo, _doctor, _explain, _install, _probe
from cli._commands import UsageError

OK, FAILED, USAGE, ENVIRONMENT, PIPE_CLOSED = 0, 1, 2, 3, 141


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (it prints the whole usage by default)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see: {self.prog} --help)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("session-reconcile")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="reconcile",
        description="Keep executors.claude_session_id in step with live Claude Code sessions.",
    )
    parser.add_argument("--home", help="state directory (default: $RECONCILE_HOME)")
    parser.add_argument("--database-url", help="PostgreSQL URL (default: $RECONCILE_DATABASE_URL)")
    parser.add_argument("-v", "--verbose", action="store_true", help="logs and tracebacks")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, handler: Callable[..., int], help: str, *, home: bool = True
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(handler=handler, needs_home=home)
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
    p.add_argument("--json", action="store_true")

    p = command("db", _db.db, "the database: migrate|up|down|status|url|remove")
    p.add_argument("action", choices=["migrate", "up", "down", "status", "url", "remove"])
    p.add_argument(
        "--create-tables",
        action="store_true",
        help="(migrate) the database is this tool's own: create the orchestrator's tables",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--show-password", action="store_true", help="(url) the password itself")
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
        try:
            args, extra = parser.parse_known_args(argv)
        except SystemExit as exc:  # argparse: --help or --version
            return int(exc.code or 0)
        if args.command == "hook":  # whatever follows it: the hook always exits 0
            return int(args.handler(args, extra))
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        # A malformed RECONCILE_* variable stops a command here, naming it, except the
        # two that diagnose: they run on the defaults and name it (docs/operations.md).
        settings = reconcile.Settings.from_env(
            os.environ,
            ignore_malformed=getattr(args, "diagnoses", False),
            home=args.home,
            database_url=args.database_url,
        )
        if args.needs_home:  # doctor, install-hooks and demo leave the home alone
            _check_home(settings.home)  # first: logging writes under the home
            reconcile.configure_logging(settings, verbose=args.verbose)
        code = int(args.handler(args, settings))
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return PIPE_CLOSED
    except (UsageError, reconcile.ConfigError) as exc:
        return _fail(args, exc, USAGE)
    except (reconcile.ReconcileError, journal.JournalError, OSError) as exc:
        return _fail(args, exc, ENVIRONMENT)
    except KeyboardInterrupt:
        return 130


def _check_home(home: Path) -> None:
    """Refuse a state directory that reads as empty because it cannot be read at all, or
    that is not ours alone, anywhere inside (docs/operations.md)."""
    problem = _probe.home_problem(home)
    if problem is not None:
        raise journal.UnsafePathError(f"{problem[0]}: {problem[1]}")
    journal.check_home(home)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _fail(args: Any, exc: BaseException, code: int) -> int:
    if args is not None and args.verbose:
        traceback.print_exception(exc, file=sys.stderr)
    message = " ".join(str(exc).split()) or type(exc).__name__
    sys.stderr.write(f"reconcile: error: {message}\n")
    return code
