"""Starting the detached processes: the reconciler a hook hands its lock to, and a
compaction (docs/architecture.md, "What the hook runs").

Each is a fresh interpreter, isolated from the directory the hook runs in (the user's
project) and from ``PYTHON*`` variables, detached from the hook's standard streams
(Claude Code waits for every holder of the hook's pipes). Runs in the hook, only when
it starts something: the standard library alone.
"""

import posix
import sys

from journal import absolute_path

TYPE_CHECKING = False  # typing costs milliseconds in the hook; checkers see True
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

# What the detached processes run: a fresh interpreter, isolated from the directory the
# hook runs in (the user's project) and from PYTHON* variables; see :func:`_isolated`.
_RECONCILER = "import sys; from reconcile import run_reconciler; sys.exit(run_reconciler(sys.argv))"
# The compactor pins the record types it is given (argv[3:]): unsettled observations,
# which only the journal remembers, are never evicted.
_COMPACTOR = (
    "import journal, sys; "
    "journal.compact(sys.argv[1], max_entries=int(sys.argv[2]), pinned_types=sys.argv[3:])"
)


def start_reconciler(home: str, env: "Mapping[str, str]", lock_fd: int) -> int:
    """Start the reconciler of ``home``, handing it ``lock_fd`` (``reconcile.lock``,
    locked); return its pid."""
    return spawn(_isolated(home, _RECONCILER, str(lock_fd)), env, keep_fd=lock_fd)


def start_compactor(
    home: str, env: "Mapping[str, str]", max_entries: str, pinned: "Iterable[str]"
) -> int:
    """Start a compaction of ``home`` keeping ``max_entries`` and never evicting the
    ``pinned`` record types; return its pid."""
    home = absolute_path(home)  # the child runs elsewhere
    return spawn(_isolated(home, _COMPACTOR, home, max_entries, *pinned), env)


def spawn(argv: list[str], env: "Mapping[str, str]", *, keep_fd: int | None = None) -> int:
    """Start ``argv`` detached: its own session, stdin/stdout/stderr on /dev/null (Claude
    Code waits for every holder of the hook's pipes), ``keep_fd`` inherited under the same
    number. Returns its pid; it is not waited for (init reaps it)."""
    null = "/dev/null"
    actions = [
        (posix.POSIX_SPAWN_OPEN, 0, null, posix.O_RDONLY, 0),
        (posix.POSIX_SPAWN_OPEN, 1, null, posix.O_WRONLY, 0),
        (posix.POSIX_SPAWN_OPEN, 2, null, posix.O_WRONLY, 0),
    ]
    if keep_fd is not None:
        posix.set_inheritable(keep_fd, True)
    try:
        return posix.posix_spawn(argv[0], argv, dict(env), file_actions=actions, setsid=True)
    finally:
        if keep_fd is not None:
            posix.set_inheritable(keep_fd, False)


def _isolated(home: str, code: str, *args: str) -> list[str]:
    """The command line that runs ``code`` in a fresh interpreter that imports our
    environment and nothing else (docs/architecture.md, "What the hook runs").

    ``-I``: no script or working directory on ``sys.path`` (``python -c`` would put the
    user's project first, ahead of the standard library), no ``PYTHON*`` variable, no
    user site. ``-S``: no ``site``, so no ``.pth`` file or ``sitecustomize`` runs. Our
    packages' directory and this process's own import path (absolute entries only, and
    never the working directory) are appended after the standard library, and the child
    moves to ``home`` before it imports anything of ours.
    """
    root = absolute_path(__file__).rpartition("/")[0].rpartition("/")[0]
    try:
        cwd = posix.getcwd()
    except OSError:  # removed under us: nothing of it can be on the path anyway
        cwd = ""
    path = [root]
    for entry in sys.path:
        if entry.startswith("/") and entry != cwd and entry not in path:
            path.append(entry)
    prelude = f"import posix, sys; posix.chdir({absolute_path(home)!r}); sys.path += {path!r}; "
    return [sys.executable, "-I", "-S", "-c", prelude + code, *args]
