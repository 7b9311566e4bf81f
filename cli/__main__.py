"""Entry point of the ``reconcile`` console script.

``reconcile hook`` is dispatched before anything else is imported, straight to
:func:`reconcile.exit_hook`: it runs on Claude Code events and its hit path must cost
next to nothing (the installed script does the same, bin/reconcile). Arguments after
``hook`` are the hook's own (``--sync``); any others are ignored rather than refused: the
hook always exits 0, and Claude Code reads a hook's exit 2 as "block this tool call".
Every other command loads the argparse application in :mod:`cli._app`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (see docs/operations.md)."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["hook"]:  # flags after it (--sync) are the hook's own
        from reconcile import exit_hook

        exit_hook(args[1:])
    from cli._app import run as run_app

    return run_app(args)


if __name__ == "__main__":
    sys.exit(main())
