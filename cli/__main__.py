"""Entry point of the ``reconcile`` console script.

``reconcile hook`` is dispatched before anything else is imported: it runs once per
tool use and its hit path must cost next to nothing. Arguments after ``hook`` are the
hook's own (``--sync``); any others are ignored rather than refused: the hook always
exits 0, and Claude Code reads a hook's exit 2 as "block this tool call". Every other
command loads the argparse application in :mod:`cli._app`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (see docs/operations.md)."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["hook"]:  # flags after it (--sync) are the hook's own
        from cli._hook import run

        return run(argv=args[1:])
    from cli._app import run as run_app

    return run_app(args)


if __name__ == "__main__":
    sys.exit(main())
