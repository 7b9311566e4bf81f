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

import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

import journal
from reconcile import _backoff as backoff
from reconcile._errors import DatabaseUnavailableError, RejectedError, RowBusyError
from reconcile._fast import REJECTED, UNRESOLVED, UNSETTLED, valid_value
from reconcile._lock import adopt_lock, release_lock, take_lock
from reconcile._log import configure, get_logger
from reconcile._outcome import NO_EXECUTOR, append_fitted, event_for
from reconcile._settings import Settings
from reconcile._store import STALE, connect, decide
from reconcile._transcript import carried

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
        settle_pending(
            settings,
            lock_fd=lock_fd,
            linger_s=settings.linger_s,
            retry_s=settings.retry_horizon_s,
        )
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
    retry_s: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
) -> ReconcileReport:
    """Settle every unsettled observation of ``settings.home``; see the module docstring.

    ``lock_fd``: ``reconcile.lock``, already held (a hook handed it over). Otherwise the
    lock is taken, waiting up to ``wait_s`` for a running reconciler. ``linger_s``: keep
    the lock and the connection that long after the last settlement, settling whatever
    new observations arrive meanwhile (a burst of hooks spread over seconds then costs
    one connection, not one each). ``ignore_backoff``: try the database even inside a
    backoff window (the foreground commands do). ``retry_s``: while anything is
    unsettled and the database, or a row, is away, keep the lock, wait out the backoff
    and try again, for up to ``retry_s`` seconds (the detached reconciler:
    ``RECONCILE_RETRY_HORIZON``); 0 gives up at the first failure.
    """
    run = _Run(settings, progress)
    give_up = time.monotonic() + retry_s
    try:
        while True:
            if lock_fd is not None:  # handed over by a hook: mark it for probes here too
                adopt_lock(run.home, lock_fd)
            fd = lock_fd if lock_fd is not None else _lock(run.home, wait_s)
            lock_fd = None
            if fd is None:
                return attrs.evolve(run.report, busy=not run.outcomes)
            try:
                pause, shared = run.step(linger_s, ignore_backoff=ignore_backoff)
                if pause is None:  # done, lock held: "not running" then means all written
                    run.close()
            finally:
                release_lock(fd)  # released: a hook from now on may start a reconciler
            # Look once more, lock released: whatever was appended while it was held had
            # no reconciler started for it. (Not while the database is away for every
            # key: nothing can be settled before the backoff ends, when this one wakes.)
            if not shared and run.todo():
                continue
            if pause is None:
                return run.report
            if time.monotonic() + pause > give_up:
                return attrs.evolve(run.report, backoff=True)
            # Wait with the lock released (an operator's command may run meanwhile),
            # then take it back; if someone holds it, a reconciler runs: it is theirs.
            time.sleep(pause)
            lock_fd = take_lock(run.home)
            if lock_fd is None:
                return run.report
    finally:
        run.close()


class _Run:
    """One reconciler's work: its connection (opened on first need), what it tried, and
    the keys whose rows are waited for (their own delays, in this process's memory)."""

    def __init__(self, settings: Settings, progress: Callable[[int, int], None] | None):
        self.settings = settings
        self.home = str(settings.home)
        self.progress = progress
        self.outcomes: dict[str, int] = {}
        self.tried: set[str] = set()  # observations settled or refused here: never again
        self.delayed: dict[str, tuple[int, float]] = {}  # key -> (failures, monotonic due)
        self.error: str | None = None
        self._unreadable: set[str] = set()  # read errors already logged by this run
        self._skipped_logged = False
        self._conn_cm: Any = None
        self._conn: Any = None
        self._logged: dict[str, int] = {}  # the outcomes the last reconciler.done counted
        self._log = get_logger()

    @property
    def report(self) -> ReconcileReport:
        return ReconcileReport(
            dict(self.outcomes), backoff=self.error is not None, error=self.error
        )

    def step(self, linger_s: float, *, ignore_backoff: bool) -> tuple[float | None, bool]:
        """One attempt at everything due, lock held. Returns the seconds to wait before
        the next attempt (None: nothing is left to try, all settled or refused for good)
        and whether the wait is the shared backoff (the database away for every key)
        rather than the earliest row's delay."""
        if not ignore_backoff:
            wait = self._shared_wait()
            if wait > 0:
                return wait, True
        if not self.settle_all():
            return self._shared_wait(), True
        self.linger(linger_s)
        if self.error is not None:
            return self._shared_wait(), True
        if not self.delayed:
            return None, False
        due = min(when for _, when in self.delayed.values())
        return max(0.0, due - time.monotonic()), False

    def _shared_wait(self) -> float:
        now = time.time()
        return max(0.0, backoff.until(self.home, now) - now)

    def _delay(self, key: str, error: str) -> None:
        """Try ``key`` again later, alone: its row was locked or its statement slow."""
        failures = self.delayed.get(key, (0, 0.0))[0] + 1
        delay = backoff.delay_s(failures, self.settings.backoff_max_s)
        self.delayed[key] = (failures, time.monotonic() + delay)
        self._log.warning("reconciler.row_busy", key=key, error=error, retry_in_s=round(delay, 1))

    def todo(self) -> list[journal.Record]:
        """The observations to try now: unsettled, not tried by this run, and not of a
        key whose row is waited for; those of keys whose rows failed before come last,
        so that a locked row never stands in front of a newcomer."""
        state = journal.load(self.home)
        self._note_read_problems(state)
        now = time.monotonic()
        due = [
            r
            for r in _waiting(state)
            if r.id not in self.tried and self.delayed.get(r.key, (0, 0.0))[1] <= now
        ]
        return sorted(due, key=lambda r: r.key in self.delayed)  # stable: oldest first

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
                    if self.progress is not None:
                        self.progress(index, len(todo))
                    try:
                        kind = settle_one(self.settings, self._conn, writer, record)
                    except RowBusyError as exc:  # this key waits; the others go on
                        self._delay(record.key, str(exc))
                        continue
                    self.tried.add(record.id)
                    self.delayed.pop(record.key, None)
                    self.outcomes[kind] = self.outcomes.get(kind, 0) + 1
        except DatabaseUnavailableError as exc:
            self.error = str(exc)
            self._drop_connection()
            record_failure(self.settings, self.error)
            self._log.warning("reconciler.backoff", error=self.error, unsettled=len(todo))
            return False
        self.error = None
        record_success(self.settings)
        return True

    def _drop_connection(self) -> None:
        """Forget a connection that failed: the next attempt opens a new one."""
        if self._conn_cm is not None:
            with contextlib.suppress(Exception):
                self._conn_cm.__exit__(None, None, None)
        self._conn_cm = self._conn = None

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
        """Close the connection and log what was settled since the last time; again
        later, only what is new is logged (a look once more may settle more)."""
        if self._conn_cm is not None:
            self._conn_cm.__exit__(None, None, None)
            self._conn_cm = self._conn = None
        if self.outcomes != self._logged:
            self._log.info("reconciler.done", **self.outcomes)
            self._logged = dict(self.outcomes)


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
    located = carried(data)  # where the session's transcript is: the outcome keeps it
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
        _append(writer, record.key, {**outcome_data, **located}, UNRESOLVED, event_id)
        return "unresolved"
    if decision.outcome == STALE:  # a respawn while it waited: not this executor's id
        why = f"executor {decision.executor_id} began after it was observed; not written"
        return _reject(writer, record, outcome_data, why)
    event_type, event_data = event_for(decision, session_id)
    _append(writer, record.key, {**event_data, **located}, event_type, event_id)
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


def record_failure(settings: Settings, error: str) -> None:
    """Push the shared backoff further (:func:`reconcile._backoff.failed`)."""
    _write_backoff(settings, backoff.failed(str(settings.home), error, settings.backoff_max_s))


def record_success(settings: Settings) -> None:
    """Clear the shared backoff, keeping the last error for ``reconcile status``."""
    record = backoff.succeeded(str(settings.home))
    if record is not None:
        _write_backoff(settings, record)


def _write_backoff(settings: Settings, record: dict[str, Any]) -> None:
    try:
        backoff.write(str(settings.home), record)
    except (OSError, journal.JournalError) as exc:  # advice only: the next one retries
        get_logger().warning("backoff.write_failed", error=str(exc))


def outbox_status(settings: Settings, state: journal.State | None = None) -> dict[str, Any]:
    """What ``reconcile status`` shows of the outbox: unsettled observations, the backoff,
    whether a reconciler runs, the last database error seen by any process.

    ``state``: the journal's state if the caller has folded it already (folding it is
    most of the cost), else it is loaded here."""
    from reconcile._lock import reconciler_running

    home = str(settings.home)
    waiting = _waiting(journal.load(home) if state is None else state)
    record = backoff.read(home) or {}
    now = time.time()
    until = backoff.capped_until(record, now)
    in_force = until > now
    return {
        "unsettled": len(waiting),
        "oldest_unsettled": waiting[0].ts if waiting else None,
        "reconciler_running": reconciler_running(home),
        "backoff": {
            "in_force": in_force,
            "failures": record.get("failures", 0),
            "retry_in_s": round(until - now, 1) if in_force else 0,
            "next_attempt_at": _iso(until) if in_force else None,
        },
        "last_error": record.get("last_error"),
        "last_error_at": _iso(record.get("last_error_at")),
    }


def _iso(value: object) -> str | None:
    if not isinstance(value, int | float):
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))
