"""Structured logging: JSON lines under ``$RECONCILE_HOME/log/``, size-bounded, never stdout.

The hook must never write to stdout (Claude Code reads it), so the file is the default
sink; ``verbose`` adds human-readable lines on stderr for an operator at a terminal.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from journal import FILE_MODE, LOG_DIR, ensure_dir
from reconcile._settings import Settings, redact_url

LOG_NAME = "reconcile.log"
ROTATE_LOCK = "rotate.lock"  # beside the log: one rotation at a time


class _BoundedFile:
    """Appends each log line with one write(); past ``max_bytes`` the file is renamed to
    ``.1`` (replacing the previous one) and a new one begun: at most twice the bound.

    Rotation is one process at a time, and only of the file this process just wrote to.
    Every process (each hook among them) appends here, and several may see the file past
    the bound at once. Renaming without care dropped lines: a second rename, or one by a
    process whose write went to a file rotated meanwhile, moved the *new* file over
    ``.1``, discarding the full one just rotated, up to ``max_bytes`` of the newest lines.
    So the rotating process takes ``rotate.lock`` without waiting (another one holds it:
    that one rotates) and, under it, renames only if the path still names the file its
    descriptor wrote (same inode) and that file is still past the bound. A write below
    the bound costs what it did: open, write, fstat, close.
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes

    def msg(self, message: str) -> None:
        line = (message + "\n").encode("utf-8", "replace")
        try:
            fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE
            )
            try:
                os.write(fd, line)
                if os.fstat(fd).st_size > self.max_bytes:
                    self._rotate(fd)
            finally:
                os.close(fd)
        except OSError:
            pass  # logging must never break the caller; the event itself is journaled

    log = debug = info = warning = warn = error = critical = exception = msg

    def _rotate(self, fd: int) -> None:
        """Rename the file ``fd`` wrote to ``.1``, if no other process is rotating, and
        if that file is still the log and still past the bound (see the class)."""
        import fcntl  # only on the rare write that crosses the bound

        lock = os.open(
            self.path.with_name(ROTATE_LOCK),
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            FILE_MODE,
        )
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return  # another process rotates now
            mine = os.fstat(fd)
            current = os.lstat(self.path)
            same = (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino)
            if same and current.st_size > self.max_bytes:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        finally:
            os.close(lock)  # releases the flock


class _Console:
    """A processor that also shows each event, human-readable, on stderr (``-v``)."""

    def __init__(self) -> None:
        self.render = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())

    def __call__(self, logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
        sys.stderr.write(str(self.render(logger, method, dict(event))) + "\n")
        return event


def _redact(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    for key in ("database_url", "url"):
        if isinstance(event.get(key), str):
            event[key] = redact_url(event[key])
    return event


def configure(settings: Settings, *, verbose: bool = False, create: bool = True) -> None:
    """Send ``reconcile`` logs to ``home/log/reconcile.log`` (and stderr when verbose).

    ``create=False`` (the read-only commands): a log directory that does not exist yet is
    not created, and the logs go nowhere (stderr still, when verbose)."""
    try:
        if create:
            path = ensure_dir(settings.home / LOG_DIR) / LOG_NAME
        elif (settings.home / LOG_DIR).is_dir():
            path = settings.home / LOG_DIR / LOG_NAME
        else:
            path = Path(os.devnull)
    except Exception:  # an unusable home: logs go nowhere rather than break the hook
        path = Path(os.devnull)
    sink = _BoundedFile(path, settings.log_max_bytes)
    console: list[Processor] = [_Console()] if verbose else []
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            *console,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=lambda *_: sink,
        cache_logger_on_first_use=False,
    )


def get_logger() -> Any:
    """The package's logger (configured by :func:`configure`, or structlog's default)."""
    return structlog.get_logger("reconcile").bind(pid=os.getpid())
