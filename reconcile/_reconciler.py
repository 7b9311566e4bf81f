"""The reconciler: settles observations with the database (docs/architecture.md).

One per state directory at a time, by ``reconcile.lock``. It settles every observation
that is still the latest record of its key (``session.observed``, or ``session.pending``
from 0.1), in event order, over **one** connection, each in the one-round-trip transaction
of :func:`reconcile._store.decide`, and journals the outcome whose event id is the audit
row's. Then it releases the lock and looks once more: an observation appended while it
held the lock was not followed by a new reconciler (its hook saw the lock taken), so it
is this one's to settle. It exits when nothing is left.

The database unreachable, slow, refusing or without its tables: it records a backoff in
``backoff`` (the next attempt time, doubling up to a cap, with jitter), which every hook
honours, and exits. The observations stay in the journal, and the first reconciler after
the backoff settles them: no operator command needed.

A crash anywhere is safe: an observation is settled only by a journaled outcome, and
settling one twice finds the database already right ("confirmed": no second audit row).

What the journal could not read does not stop a run: observations in a file that could
not be read wait there for a later run, and corrupt lines were never observations. Both
are logged once per run (``reconciler.unreadable``, ``reconciler.skipped``), since a run
reads the journal many times and each read meets them again.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

import journal
from reconcile._engine import NO_EXECUTOR, append_fitted, event_for
from reconcile._errors import DatabaseUnavailableError, RejectedError
from reconcile._fast import REJECTED, UNRESOLVED, UNSETTLED, valid_value
from reconcile._log import configure, get_logger
from reconcile._outbox import BACKOFF, read_backoff, take_lock
from reconcile._settings import Settings
from reconcile._store import STALE, connect, decide

BACKOFF_BASE_S = 1.0
_IDENTITY_FIELDS = ("executor_id", "agent_id", "agent_name", "team")
_LOCK_POLL_S = 0.01
_LINGER_POLL_S = 0.05


@attrs.frozen
class ReconcileReport:
    """What one reconciler run did. ``outcomes`` counts settlements by kind."""

    outcomes: dict[str, int] = attrs.field(factory=dict)
    busy: bool = False  # another reconciler held the lock
    backoff: bool = False  # the database was in backoff, or failed now
    error: str | None = None

    @property
    def settled(self) -> int:
        return sum(self.outcomes.values())

    def to_dict(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "settled": self.settled}


def run_reconciler(argv: Sequence[str]) -> int:
    """Entry point of the detached reconciler a hook starts: ``argv[1]`` is the inherited
    descriptor of ``reconcile.lock``, already locked. Always returns 0; logs the rest."""
    lock_fd = int(argv[1]) if len(argv) > 1 else None
    if lock_fd is not None:  # keep the lock; drop anything else the hook inherited
        os.closerange(3, lock_fd)
        os.closerange(lock_fd + 1, 1 << 16)
    os.chdir("/")
    try:
        settings = _settings(os.environ)
        settle_pending(settings, lock_fd=lock_fd, linger_s=settings.linger_s)
    except BaseException as exc:  # a detached process: the log is its only voice
        get_logger().error("reconciler.failed", error=f"{type(exc).__name__}: {exc}"[:500])
    return 0


def run_now(env: Mapping[str, str]) -> str:
    """The synchronous mode: settle now, in this process, within the configured timeouts
    (waiting for a running reconciler at most the statement timeout), whatever the
    backoff. Returns ``"settled"``, ``"busy"`` or ``"failed"``; never raises."""
    try:
        settings = _settings(env)
        report = settle_pending(settings, wait_s=settings.statement_timeout_s, ignore_backoff=True)
    except Exception as exc:
        get_logger().error("reconciler.failed", error=f"{type(exc).__name__}: {exc}"[:500])
        return "failed"
    if report.error is not None:
        return "failed"
    return "busy" if report.busy else "settled"


def _settings(env: Mapping[str, str]) -> Settings:
    """The settings of a process nobody watches, logging configured: a malformed variable
    takes the default the hook takes too, and is logged (``settings.ignored``) instead of
    keeping every observation unsettled (docs/operations.md, "Settings")."""
    settings = Settings.from_env(env, ignore_malformed=True)
    configure(settings)
    for bad in Settings.malformed(env):
        get_logger().warning("settings.ignored", **bad.to_dict(), hint=bad.message())
    return settings


def settle_pending(
    settings: Settings,
    *,
    lock_fd: int | None = None,
    wait_s: float = 0.0,
    linger_s: float = 0.0,
    ignore_backoff: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ReconcileReport:
    """Settle every unsettled observation of ``settings.home``; see the module docstring.

    ``lock_fd``: ``reconcile.lock``, already held (a hook handed it over). Otherwise the
    lock is taken, waiting up to ``wait_s`` for a running reconciler. ``linger_s``: keep
    the lock and the connection that long after the last settlement, settling whatever
    new observations arrive meanwhile (a burst of hooks spread over seconds then costs
    one connection, not one each). ``ignore_backoff``: try the database even inside a
    backoff window (the foreground commands do).
    """
    run = _Run(settings, progress)
    try:
        while True:
            fd = lock_fd if lock_fd is not None else _lock(run.home, wait_s)
            lock_fd = None
            if fd is None:
                return attrs.evolve(run.report, busy=not run.outcomes)
            try:
                if not ignore_backoff and _backoff_until(run.home) > time.time():
                    return attrs.evolve(run.report, backoff=True)
                if not run.settle_all():
                    return run.report
                run.linger(linger_s)
                if run.error is not None:
                    return run.report
            finally:
                os.close(fd)  # released: a hook from now on may start a reconciler
            # Look once more, lock released: whatever was appended while it was held
            # had no reconciler started for it.
            if not run.todo():
                return run.report
    finally:
        run.close()


class _Run:
    """One reconciler's work: its connection (opened on first need), what it tried."""

    def __init__(self, settings: Settings, progress: Callable[[int, int], None] | None):
        self.settings = settings
        self.home = str(settings.home)
        self.progress = progress
        self.outcomes: dict[str, int] = {}
        self.tried: set[str] = set()  # observations attempted here: never loop on one
        self.error: str | None = None
        self._unreadable: set[str] = set()  # read errors already logged by this run
        self._skipped_logged = False
        self._conn_cm: Any = None
        self._conn: Any = None
        self._log = get_logger()

    @property
    def report(self) -> ReconcileReport:
        return ReconcileReport(
            dict(self.outcomes), backoff=self.error is not None, error=self.error
        )

    def todo(self) -> list[journal.Record]:
        state = journal.load(self.home)
        self._note_read_problems(state)
        return [r for r in _waiting(state) if r.id not in self.tried]

    def _note_read_problems(self, state: journal.State) -> None:
        """Log, once per run, the files the journal could not read and its skipped lines."""
        new = [error for error in state.errors if error not in self._unreadable]
        if new:
            self._unreadable.update(new)
            self._log.warning(
                "reconciler.unreadable",
                errors=new,
                hint="observations in these files wait until they can be read: "
                "fix the file system, and the next reconciler settles them",
            )
        if state.skipped.total and not self._skipped_logged:
            self._skipped_logged = True
            self._log.warning(
                "reconciler.skipped",
                skipped={reason: n for reason, n in state.skipped.as_dict().items() if n},
                hint="corrupt lines are skipped; `reconcile compact` quarantines them",
            )

    def settle_all(self) -> bool:
        """Settle what waits now; False if the database failed (a backoff is recorded)."""
        todo = self.todo()
        if not todo:
            return True
        try:
            if self._conn is None:
                self._conn_cm = connect(self.settings, application="reconcile-reconciler")
                self._conn = self._conn_cm.__enter__()
            with journal.Writer(self.home, fsync=self.settings.fsync) as writer:
                for index, record in enumerate(todo):
                    self.tried.add(record.id)
                    if self.progress is not None:
                        self.progress(index, len(todo))
                    kind = settle_one(self.settings, self._conn, writer, record)
                    self.outcomes[kind] = self.outcomes.get(kind, 0) + 1
        except DatabaseUnavailableError as exc:
            self.error = str(exc)
            record_failure(self.settings, self.error)
            self._log.warning("reconciler.backoff", error=self.error, unsettled=len(todo))
            return False
        record_success(self.settings)
        return True

    def linger(self, seconds: float) -> None:
        """Settle new observations until none has come for ``seconds``. Each hook that
        observes creates a journal file, so a change of the journal directory's mtime is
        the cheap sign to look again."""
        if seconds <= 0:
            return
        directory = os.path.join(self.home, "journal")
        seen = _mtime(directory)
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < seconds:
            time.sleep(_LINGER_POLL_S)
            now = _mtime(directory)
            if now != seen:
                seen = now
                if not self.settle_all():
                    return
                quiet_since = time.monotonic()

    def close(self) -> None:
        if self._conn_cm is not None:
            self._conn_cm.__exit__(None, None, None)
        if self.outcomes:
            self._log.info("reconciler.done", **self.outcomes)


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def unsettled(home: str) -> list[journal.Record]:
    """Observations still waiting: the latest record of their key, oldest first."""
    return _waiting(journal.load(home))


def _waiting(state: journal.State) -> list[journal.Record]:
    waiting = [record for record in state.values() if record.type in UNSETTLED]
    return sorted(waiting, key=lambda r: (r.ts, r.id))


def settle_one(
    settings: Settings, conn: Any, writer: journal.Writer, record: journal.Record
) -> str:
    """Settle one observation in one transaction and journal the outcome; return its kind.

    Values no database could take (not what a hook writes; a foreign or damaged record)
    are settled as ``session.rejected``, so that one bad record never blocks the rest.
    Raises :class:`DatabaseUnavailableError` when the database cannot be used.
    """
    data = record.data or {}
    identity_raw = data.get("identity")
    identity = identity_raw if isinstance(identity_raw, dict) else {}
    session_id = data.get("session_id")
    fields = {name: identity.get(name) for name in _IDENTITY_FIELDS}
    values_ok = valid_value(session_id) and all(
        value is None or valid_value(value) for value in fields.values()
    )
    outcome_data: dict[str, Any] = {"identity": fields, "session_id": session_id}
    if not values_ok or not any(fields.values()) or not isinstance(session_id, str):
        return _reject(writer, record, outcome_data, "invalid identity or session id")
    # The outcome sorts right after the observation it answers, whatever the clocks did,
    # and before any later observation of the key: one journaled while this run settled
    # the observations it read before must stay the latest, to be settled in turn.
    event_id = journal.event_id_next_to(record.id)
    try:
        decision = decide(
            conn,
            session_id=session_id,
            event_id=event_id,
            deadline_s=settings.statement_timeout_s,
            observed_us=journal.event_time_us(record.id),
            **fields,
        )
    except RejectedError as exc:
        return _reject(writer, record, outcome_data, str(exc))
    if decision.outcome == NO_EXECUTOR:
        _append(writer, record.key, outcome_data, UNRESOLVED, event_id)
        return "unresolved"
    if decision.outcome == STALE:  # a respawn while it waited: not this executor's id
        why = f"executor {decision.executor_id} began after it was observed; not written"
        return _reject(writer, record, outcome_data, why)
    event_type, event_data = event_for(decision, session_id)
    _append(writer, record.key, event_data, event_type, event_id)
    return decision.outcome


def _reject(writer: journal.Writer, record: journal.Record, data: dict[str, Any], why: str) -> str:
    get_logger().warning("session.rejected", key=record.key, observation=record.id, error=why)
    safe = {"identity": None, "session_id": None, "observation": record.id, "error": why[:300]}
    if valid_value(data.get("session_id")):
        safe["session_id"] = data["session_id"]
    _append(writer, record.key, safe, REJECTED, journal.event_id_next_to(record.id))
    return "rejected"


def _append(
    writer: journal.Writer,
    key: str,
    data: dict[str, Any],
    event_type: str,
    event_id: str | None = None,
) -> None:
    try:
        append_fitted(writer, key, data, event_type, event_id=event_id)  # cut to fit
    except journal.JournalError as exc:  # committed already: the database stays right,
        # and the observation, still unsettled, is confirmed by the next reconciler
        get_logger().error("journal.append_failed", key=key, error=str(exc))


def _lock(home: str, wait_s: float) -> int | None:
    deadline = time.monotonic() + wait_s
    journal.ensure_home(Path(home))  # the lock file's directory, 0700
    while True:
        fd = take_lock(home)
        if fd is not None or time.monotonic() >= deadline:
            return fd
        time.sleep(_LOCK_POLL_S)


def _backoff_until(home: str) -> float:
    record = read_backoff(home) or {}
    until = record.get("until")
    return float(until) if isinstance(until, int | float) else 0.0


def record_failure(settings: Settings, error: str) -> None:
    """Push the shared backoff further: doubling from 1 s up to the cap, equal jitter."""
    previous = read_backoff(str(settings.home)) or {}
    failures = previous.get("failures")
    failures = failures + 1 if isinstance(failures, int) and failures >= 0 else 1
    delay = min(settings.backoff_max_s, BACKOFF_BASE_S * 2 ** min(failures - 1, 30))
    delay = delay / 2 + random.uniform(0, delay / 2)
    now = time.time()
    _write_backoff(
        settings,
        {
            "failures": failures,
            "until": now + delay,
            "since": previous.get("since") if failures > 1 else now,
            "last_error": error[:500],
            "last_error_at": now,
        },
    )


def record_success(settings: Settings) -> None:
    """Clear the backoff, keeping the last error for ``reconcile status``."""
    previous = read_backoff(str(settings.home))
    if previous is None or not previous.get("failures"):
        return
    _write_backoff(
        settings,
        {
            "failures": 0,
            "until": 0,
            "since": None,
            "last_error": previous.get("last_error"),
            "last_error_at": previous.get("last_error_at"),
        },
    )


def _write_backoff(settings: Settings, record: dict[str, Any]) -> None:
    content = (journal.dump_json(record) + "\n").encode("ascii")
    try:
        journal.write_atomically(Path(settings.home) / BACKOFF, content)
    except (OSError, journal.JournalError) as exc:  # advice only: the next one retries
        get_logger().warning("backoff.write_failed", error=str(exc))


def outbox_status(settings: Settings, state: journal.State | None = None) -> dict[str, Any]:
    """What ``reconcile status`` shows of the outbox: unsettled observations, the backoff,
    whether a reconciler runs, the last database error seen by any process.

    ``state``: the journal's state if the caller has folded it already (folding it is
    most of the cost), else it is loaded here."""
    from reconcile._outbox import reconciler_running

    home = str(settings.home)
    waiting = _waiting(journal.load(home) if state is None else state)
    backoff = read_backoff(home) or {}
    until = backoff.get("until")
    now = time.time()
    in_force = isinstance(until, int | float) and until > now
    return {
        "unsettled": len(waiting),
        "oldest_unsettled": waiting[0].ts if waiting else None,
        "reconciler_running": reconciler_running(home),
        "backoff": {
            "in_force": in_force,
            "failures": backoff.get("failures", 0),
            "retry_in_s": round(until - now, 1) if in_force and isinstance(until, float) else 0,
        },
        "last_error": backoff.get("last_error"),
        "last_error_at": _iso(backoff.get("last_error_at")),
    }


def _iso(value: object) -> str | None:
    if not isinstance(value, int | float):
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))
