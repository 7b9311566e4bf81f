"""The state directory's locks: taken by the protocol, probed by observers.

``reconcile.lock`` (one reconciler per state directory) and ``compact.lock`` (one
compaction at a time) are flocks taken without blocking: a process that finds one held
concludes that someone runs and leaves the work to it. That conclusion is only safe if
nothing but a holder ever holds the lock. So the two uses are kept apart:

- :func:`take_lock` is the protocol: a hook, a reconciler's final look, a foreground
  command. It also marks the lock for probes (:func:`journal.mark_lock`).
- :func:`lock_held`, :func:`reconciler_running`, :func:`compaction_running` are probes
  (``reconcile status``, the demo, tests, benchmarks, a hook deciding whether to start a
  compactor): they read the mark and never take the lock, so a probe in a tight loop
  cannot make a hook or a reconciler's re-check see "running" when nothing runs
  (docs/architecture.md, "Locks and probes"). How the mark is read is platform-specific
  and lives in :mod:`journal._platform`.

Like the outbox, this module runs in the hook past a hit: standard library and
``journal`` only, imported when used.
"""

import fcntl
import posix

import journal
from journal import join_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    import os

RECONCILE_LOCK = "reconcile.lock"
COMPACT_LOCK = "compact.lock"

_LOCK_FLAGS = posix.O_RDWR | posix.O_CREAT | posix.O_NOFOLLOW | posix.O_CLOEXEC
_FILE_MODE = 0o600


def take_lock(home: "str | os.PathLike[str]", name: str = RECONCILE_LOCK) -> int | None:
    """The locked, marked descriptor of ``home/name`` if no one holds it, else None.
    Release it with :func:`release_lock` (closing it: the last copy releases both)."""
    path = join_path(home, name)
    try:
        fd = posix.open(path, _LOCK_FLAGS, _FILE_MODE)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        posix.close(fd)
        return None
    journal.mark_lock(fd, path)
    return fd


def adopt_lock(home: "str | os.PathLike[str]", fd: int, name: str = RECONCILE_LOCK) -> None:
    """Mark a held lock handed over by another process (a hook to its reconciler): on
    Linux the mark came with the descriptor; the stand-in marks anew."""
    journal.mark_lock(fd, join_path(home, name))


def release_lock(fd: int) -> None:
    """Release a lock from :func:`take_lock` or :func:`adopt_lock` in this process (the
    lock itself goes when its last copy is closed: a hook's stays with its reconciler)."""
    journal.release_lock(fd)


def lock_held(home: "str | os.PathLike[str]", name: str) -> bool:
    """Whether some process holds ``home/name``, read from its mark: a probe that takes
    nothing, so it never keeps a holder from taking the lock. False if the file does not
    exist yet."""
    return journal.lock_marked(join_path(home, name))


def reconciler_running(home: "str | os.PathLike[str]") -> bool:
    """Whether a reconciler runs for the state directory ``home`` (holds its
    ``reconcile.lock``); a probe: see :func:`lock_held`."""
    return lock_held(home, RECONCILE_LOCK)


def compaction_running(home: "str | os.PathLike[str]") -> bool:
    """Whether a compaction runs in the state directory ``home`` (holds its
    ``compact.lock``); a probe: see :func:`lock_held`."""
    return lock_held(home, COMPACT_LOCK)
