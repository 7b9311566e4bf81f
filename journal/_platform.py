"""The calls that differ between Linux and other systems (macOS), in one place.

**Lock marks.** A lock of the protocol (``reconcile.lock``, ``compact.lock``: flock,
taken without blocking) must never be taken by a process that only wants to know
whether someone holds it: a probe holding it for an instant makes a hook or a compactor
that tries it in that instant conclude "someone runs" when no one does, and what it
came to do waits for the next hook (docs/architecture.md, "Locks and probes"). So the
holder also *marks* the lock, and probes read the mark without taking anything:

- Linux: an open-file-description lock (``F_OFD_SETLK``, write) on the lock file, set
  through the very descriptor that holds the flock. Linux keeps flock and fcntl locks
  apart, so the mark never meets the protocol's lock; it belongs to the open file
  description, so it travels with the descriptor a hook hands to its reconciler, and
  it goes when the last copy is closed, with the flock. A probe asks ``F_OFD_GETLK``,
  which tests and takes nothing. (Not ``/proc/locks``: in a PID namespace it hides a
  flock whose taker has exited, as a hook that handed its lock over has.)
- Elsewhere (macOS: no OFD locks, and its flock and fcntl locks on one file meet): a
  file beside the lock (``<lock>.probe``) that the holder keeps flocked exclusively;
  probes try it shared, without blocking, and let go at once. A probe can then delay
  a holder's mark by its instant (the holder retries briefly) but never make the
  protocol's lock fail. The mark is not inherited across ``posix_spawn`` there with
  the lock: a reconciler marks again when it starts (:func:`mark_lock` on the handed
  descriptor), so until then a probe may say "not running".

The mark serves observers only: the protocol never depends on it, and a mark that
could not be set only makes probes say "not held".

**Syncing an append.** Linux's ``fdatasync`` makes a file's data durable, and its size
when that changed: what an append needs, without its times. macOS has no
``fdatasync`` (Python's ``os`` and ``posix`` lack it there): :data:`data_sync` is
``fsync``, which syncs the times too. (``F_FULLFSYNC``, which also empties the drive's
cache, costs tens of milliseconds per call there; ``fsync`` is what Python's own
``os.fsync`` does.)
"""

import fcntl
import posix
import sys

if sys.platform != "darwin":
    data_sync = posix.fdatasync
else:  # no fdatasync on macOS
    data_sync = posix.fsync

OFD_LOCKS = hasattr(fcntl, "F_OFD_GETLK")  # Linux 3.15+; the stand-in elsewhere
MARK_SUFFIX = ".probe"  # the stand-in's file beside the lock
_MARK_TRIES = 200  # the stand-in: 1 ms apart, while probes hold the mark for an instant

_extra: dict[int, int] = {}  # the stand-in: lock descriptor -> its mark's descriptor


def mark_lock(fd: int, path: str) -> bool:
    """Mark the lock ``path``, held through ``fd``, for probes; return whether it is
    marked. Call it again in a process that was handed ``fd`` (it marks at most once);
    release with :func:`release_lock`."""
    if OFD_LOCKS and not _stand_in:
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock_struct(fcntl.F_WRLCK))
        except OSError:
            return False
        return True
    if fd in _extra:
        return True
    try:
        mark = posix.open(path + MARK_SUFFIX, _MARK_FLAGS, 0o600)
    except OSError:
        return False
    for _ in range(_MARK_TRIES):
        try:
            fcntl.flock(mark, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            import time

            time.sleep(0.001)  # a probe's instant
            continue
        except OSError:
            break
        _extra[fd] = mark
        return True
    posix.close(mark)
    return False


def release_lock(fd: int) -> None:
    """Close the lock's descriptor ``fd``, and its mark's (the mark first)."""
    mark = _extra.pop(fd, None)
    if mark is not None:
        posix.close(mark)
    posix.close(fd)


def lock_marked(path: str) -> bool:
    """Whether a holder marked the lock ``path``; takes nothing that any holder wants.
    False if the file does not exist or cannot be read (let whoever needs the lock find
    out)."""
    if OFD_LOCKS and not _stand_in:
        try:
            fd = posix.open(path, posix.O_RDONLY | posix.O_NOFOLLOW | posix.O_CLOEXEC)
        except OSError:
            return False
        try:
            got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock_struct(fcntl.F_RDLCK))
        except OSError:
            return False
        finally:
            posix.close(fd)
        return int.from_bytes(got[:2], sys.byteorder) != fcntl.F_UNLCK  # l_type
    try:
        fd = posix.open(path + MARK_SUFFIX, posix.O_RDONLY | posix.O_NOFOLLOW | posix.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        posix.close(fd)  # releases the probe's shared lock, if it got one
    return False


def use_stand_in(on: bool) -> None:
    """Run the stand-in on Linux too (tests exercise what macOS runs)."""
    global _stand_in
    _stand_in = on


_stand_in = not OFD_LOCKS
_SEEK_SET = 0  # os.SEEK_SET, the same on every system
_MARK_FLAGS = posix.O_RDWR | posix.O_CREAT | posix.O_NOFOLLOW | posix.O_CLOEXEC


def _flock_struct(kind: int) -> bytes:
    """Linux's ``struct flock`` for the whole file, ``l_pid`` 0 (as OFD locks want):
    ``short l_type, l_whence``, padding, ``off_t l_start, l_len``, ``pid_t l_pid``,
    padding; laid out by hand, since ``struct`` costs the hook a module (LP64 Linux,
    the only place OFD locks are used)."""
    order = sys.byteorder
    head = kind.to_bytes(2, order) + _SEEK_SET.to_bytes(2, order) + bytes(4)
    return head + bytes(8) + bytes(8) + bytes(4) + bytes(4)
