"""``reconcile verify --transcripts``: the rows checked against Claude Code's own transcripts.

Everything else this tool verifies is internal (journals, snapshot, database). This
compares each settled executor's session with what Claude Code wrote on this host: the
session's transcript (``<project dir>/<session id>.jsonl``) must exist for the
orchestrator to resume it, and a transcript newer than it in the same project directory
that no hook ever observed is a rotation the hooks missed. ``--repair`` journals an
observation for such a transcript where it is unambiguous, for the reconciler to settle
like any other. docs/transcripts.md has the rules and why repair is conservative.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

import journal
from reconcile._fast import (
    CONFIRMED,
    DIVERGENCE_PRESERVED,
    RECONCILED,
    UNSETTLED,
    Observation,
    is_uuid,
    valid_value,
)
from reconcile._outbox import append_observation
from reconcile._reconciler import settle_pending
from reconcile._settings import Settings
from reconcile._transcript import CWD, TRANSCRIPT_PATH, path_problem, project_dir_name

SUFFIX = ".jsonl"
# The row's session per settled type: the id the executor row holds (a terminal
# executor's recovery anchor, for a preserved divergence), which `claude --resume` needs.
ROW_SESSION = {
    RECONCILED: "new_session_id",
    CONFIRMED: "session_id",
    DIVERGENCE_PRESERVED: "stored_session_id",
}
_SESSION_FIELDS = (
    "session_id",
    "new_session_id",
    "old_session_id",
    "stored_session_id",
    "live_session_id",
)

# A row's state. Problems (exit 1): MISSING, NEWER_ORPHAN. Not checked: the rest but OK.
OK = "ok"
MISSING = "missing"  # the directory is here, the session's transcript is not
NEWER_ORPHAN = "newer_orphan"  # a transcript no hook observed is newer than the row's
ELSEWHERE = "elsewhere"  # neither the transcript nor its directory is here: another host?
UNREADABLE = "unreadable"  # the transcript or its directory could not be read
NO_LOCATION = "no_location"  # the record names neither a transcript nor a working directory
PROBLEMS = (MISSING, NEWER_ORPHAN)
UNCHECKED = (ELSEWHERE, UNREADABLE, NO_LOCATION)


def config_dir(env: Mapping[str, str]) -> Path:
    """Claude Code's configuration directory: ``$CLAUDE_CONFIG_DIR``, else ``~/.claude``."""
    named = env.get("CLAUDE_CONFIG_DIR")
    if named:
        return Path(named)
    home = env.get("HOME")
    return (Path(home) if home else Path.home()) / ".claude"


@attrs.frozen
class Transcript:
    """A ``<session id>.jsonl`` file in a project directory."""

    path: str
    session_id: str
    mtime_ns: int
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "session_id": self.session_id,
            "modified_at": _iso_ns(self.mtime_ns),
            "size": self.size,
        }


@attrs.frozen
class Row:
    """One settled executor's session, as checked against its transcript."""

    key: str
    executor_id: str
    session_id: str
    state: str  # OK, a problem, or why it was not checked
    observed_us: int  # when the hooks last changed this key (its latest record)
    transcript: str | None = None  # where the session's transcript is (or should be)
    located_by: str | None = None  # "transcript_path" (observed) or "cwd" (derived)
    cwd: str | None = None
    modified_ns: int | None = None  # the transcript's mtime, when it exists
    size: int | None = None
    newest: bool | None = None  # the newest transcript of its project directory
    newer_orphans: tuple[str, ...] = ()  # session ids
    detail: str | None = None

    @property
    def project_dir(self) -> str | None:
        return os.path.dirname(self.transcript) if self.transcript else None

    @property
    def problems(self) -> list[str]:
        found = [MISSING] if self.state == MISSING else []
        return [*found, NEWER_ORPHAN] if self.newer_orphans else found

    @property
    def checked(self) -> bool:
        return self.state not in UNCHECKED

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "executor_id": self.executor_id,
            "session_id": self.session_id,
            "state": self.state,
            "problems": self.problems,
            "observed_at": _iso_ns(self.observed_us * 1000),
            "transcript": self.transcript,
            "located_by": self.located_by,
            "cwd": self.cwd,
            "modified_at": _iso_ns(self.modified_ns) if self.modified_ns else None,
            "size": self.size,
            "newest": self.newest,
            "newer_orphans": list(self.newer_orphans),
            "detail": self.detail,
        }


@attrs.frozen
class Repair:
    """What ``--repair`` does (or would do) for one project directory with a newer orphan."""

    key: str
    executor_id: str
    session_id: str  # the orphan's
    transcript: str
    action: str  # "observe" (journal an observation), or "skip"
    reason: str
    outcome: str | None = None  # with --apply: what the reconciler settled it as

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class TranscriptReport:
    rows: list[Row]
    orphans: list[Transcript]
    seen_sessions: int
    errors: list[str]  # journal files that could not be read: what they saw is unknown
    repairs: list[Repair] = attrs.field(factory=list)
    applied: bool = False

    @property
    def ok(self) -> bool:
        return not any(row.problems for row in self.rows)

    @property
    def unchecked(self) -> list[Row]:
        return [row for row in self.rows if not row.checked]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "rows": [row.to_dict() for row in self.rows],
            "problems": sum(1 for row in self.rows if row.problems),
            "unchecked": len(self.unchecked),
            "orphans": [orphan.to_dict() for orphan in self.orphans],
            "seen_sessions": self.seen_sessions,
            "errors": self.errors,
            "repairs": [repair.to_dict() for repair in self.repairs],
            "applied": self.applied,
        }


def verify_transcripts(
    settings: Settings, env: Mapping[str, str], *, key: str | None = None
) -> TranscriptReport:
    """Check every settled executor (or the one of ``key``) against its transcript."""
    state = journal.load(settings.home)
    seen, errors = _seen_sessions(settings.home, state.values())
    errors = [*errors, *state.errors]
    projects = config_dir(env) / "projects"
    located = [
        _locate(record, projects) for record in state.values() if _settled_row(record) is not None
    ]
    wanted = [row for row in located if key is None or row.key == key]
    listings: dict[str, list[Transcript] | str] = {}
    rows = [_check(row, seen, listings) for row in wanted]
    orphans = sorted(
        {
            t.path: t
            for listing in listings.values()
            if not isinstance(listing, str)
            for t in listing
            if t.session_id not in seen
        }.values(),
        key=lambda t: (t.mtime_ns, t.path),
    )
    return TranscriptReport(rows, orphans, len(seen), errors)


def repair_transcripts(
    settings: Settings, env: Mapping[str, str], *, key: str | None = None, apply: bool = False
) -> TranscriptReport:
    """``--repair``: for each row with a newer orphan, journal an observation of the
    orphan's session where that is unambiguous (docs/transcripts.md), and with ``apply``
    settle it through the reconciler. Without ``apply`` nothing is written."""
    report = verify_transcripts(settings, env, key=key)
    everyone = verify_transcripts(settings, env) if key is not None else report
    users: dict[str, set[str]] = {}
    for row in everyone.rows:
        if row.project_dir is not None:
            users.setdefault(row.project_dir, set()).add(row.executor_id)
    by_dir: dict[str, list[Transcript]] = {}
    for orphan in report.orphans:
        by_dir.setdefault(os.path.dirname(orphan.path), []).append(orphan)
    repairs = [
        _plan(row, report, users, by_dir.get(row.project_dir or "", []))
        for row in report.rows
        if row.newer_orphans and row.project_dir is not None
    ]
    if apply and any(r.action == "observe" for r in repairs):
        repairs = _apply(settings, report, repairs)
    return attrs.evolve(report, repairs=repairs, applied=apply)


def _plan(
    row: Row, report: TranscriptReport, users: dict[str, set[str]], candidates: list[Transcript]
) -> Repair:
    """Whether ``row``'s directory has one orphan to observe (``candidates``: its orphans)."""
    directory = row.project_dir or ""
    listing = _list(directory)
    orphans = {t.session_id for t in candidates}
    newest = max(candidates, key=lambda t: t.mtime_ns)
    plan = Repair(row.key, row.executor_id, newest.session_id, newest.path, "skip", "")

    def skip(reason: str) -> Repair:
        return attrs.evolve(plan, reason=reason)

    if report.errors:
        return skip("some journal files could not be read: what they observed is unknown")
    sharing = users.get(directory, set()) - {row.executor_id}
    if sharing:
        return skip("other executors use this project directory: " + ", ".join(sorted(sharing)))
    if isinstance(listing, str):
        return skip(f"the project directory could not be listed again ({listing})")
    others = [t for t in listing if t.session_id != newest.session_id]
    if any(t.mtime_ns >= newest.mtime_ns for t in others):
        return skip("no one transcript is newer than every other in its directory")
    if row.observed_us * 1000 >= newest.mtime_ns:
        return skip("the hooks saw this row change after the transcript was last written")
    if not valid_value(newest.session_id) or newest.session_id not in orphans:
        return skip("its name is not a session id this tool can write")  # pragma: no cover
    return attrs.evolve(plan, action="observe", reason="the newest session of its directory")


def _apply(settings: Settings, report: TranscriptReport, repairs: list[Repair]) -> list[Repair]:
    home = str(settings.home)
    rows = {row.key: row for row in report.rows}
    done = []
    for repair in repairs:
        if repair.action == "observe":
            repair = _observe(settings, repair, rows[repair.key].cwd)
        done.append(repair)
    if any(r.action == "observe" for r in done):
        settle_pending(settings, wait_s=settings.statement_timeout_s, ignore_backoff=True)
    settled = []
    for repair in done:
        if repair.action == "observe":
            latest = journal.latest(home, repair.key)
            kind = latest["type"] if latest is not None else None
            repair = attrs.evolve(repair, outcome=None if kind in UNSETTLED else kind)
        settled.append(repair)
    return settled


def _observe(settings: Settings, repair: Repair, cwd: str | None) -> Repair:
    """Journal the observation of ``repair``, unless the hooks wrote about its row since
    the transcript was last modified, or the transcript is gone (checked again now)."""
    home = str(settings.home)
    latest = journal.latest(home, repair.key)
    try:
        modified_ns = os.stat(repair.transcript).st_mtime_ns
    except OSError as exc:
        return attrs.evolve(repair, action="skip", reason=f"the transcript: {exc.strerror}")
    if latest is not None and journal.event_time_us(latest["id"]) * 1000 >= modified_ns:
        why = "the hooks saw this row change after the transcript was last written"
        return attrs.evolve(repair, action="skip", reason=why)
    observation = Observation(repair.session_id, repair.executor_id, None, None, None)
    observation.key = repair.key  # the row's own cache entry, whatever its key form
    payload = {TRANSCRIPT_PATH: repair.transcript, **({CWD: cwd} if cwd else {})}
    append_observation(
        home,
        observation,
        fsync=settings.fsync,
        after=latest["id"] if latest is not None else None,
        payload=payload,
        extra={"source": "transcript"},
    )
    return repair


def _settled_row(record: journal.Record) -> tuple[str, str] | None:
    """(executor id, the session id the row holds) of a settled record, else None."""
    field = ROW_SESSION.get(record.type)
    data = record.data or {}
    executor, session = data.get("executor_id"), data.get(field) if field else None
    if isinstance(executor, str) and executor and isinstance(session, str) and session:
        return executor, session
    return None


def _locate(record: journal.Record, projects: Path) -> Row:
    executor, session = _settled_row(record) or ("", "")
    data = record.data or {}
    observed = journal.event_time_us(record.id)
    path = data.get(TRANSCRIPT_PATH)
    cwd = data.get(CWD) if path_problem(data.get(CWD)) is None else None
    row = Row(record.key, executor, session, NO_LOCATION, observed, cwd=cwd)
    if not is_uuid(session) or "/" in session:  # not a name Claude Code writes
        return attrs.evolve(row, detail="the session id is not a UUID: no transcript to find")
    if path_problem(path) is None:
        assert isinstance(path, str)
        directory = os.path.dirname(path)
        return attrs.evolve(
            row, transcript=os.path.join(directory, session + SUFFIX), located_by=TRANSCRIPT_PATH
        )
    if cwd is not None:
        directory = str(projects / project_dir_name(cwd))
        return attrs.evolve(
            row, transcript=os.path.join(directory, session + SUFFIX), located_by=CWD
        )
    return attrs.evolve(row, detail="recorded without transcript_path or cwd (an older hook)")


def _check(row: Row, seen: set[str], listings: dict[str, list[Transcript] | str]) -> Row:
    if row.transcript is None:
        return row
    directory = os.path.dirname(row.transcript)
    if directory not in listings:
        listings[directory] = _list(directory)
    listing = listings[directory]
    try:
        info = os.stat(row.transcript)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            return attrs.evolve(row, state=UNREADABLE, detail=f"{exc.strerror}: {row.transcript}")
        if listing == "absent":
            return attrs.evolve(
                row,
                state=ELSEWHERE,
                detail="neither the transcript nor its directory is on this host",
            )
        info = None
    if isinstance(listing, str):  # the directory could not be listed
        if info is None:
            return attrs.evolve(row, state=UNREADABLE, detail=f"{listing}: {directory}")
        return attrs.evolve(
            row,
            state=UNREADABLE,
            modified_ns=info.st_mtime_ns,
            size=info.st_size,
            detail=f"its directory could not be listed ({listing}): {directory}",
        )
    reference = info.st_mtime_ns if info is not None else row.observed_us * 1000
    newer = tuple(
        t.session_id
        for t in sorted(listing, key=lambda t: t.mtime_ns)
        if t.session_id not in seen and t.session_id != row.session_id and t.mtime_ns > reference
    )
    newest = all(t.mtime_ns <= reference for t in listing if t.session_id != row.session_id)
    state = MISSING if info is None else (NEWER_ORPHAN if newer else OK)
    return attrs.evolve(
        row,
        state=state,
        modified_ns=info.st_mtime_ns if info is not None else None,
        size=info.st_size if info is not None else None,
        newest=newest if info is not None else None,
        newer_orphans=newer,
        detail="the session cannot be resumed: no transcript" if info is None else None,
    )


def _list(directory: str) -> list[Transcript] | str:
    """The session transcripts of a project directory (regular files named
    ``<uuid>.jsonl``; links are not followed), ``"absent"``, or why it could not be read."""
    found = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                stem = entry.name[: -len(SUFFIX)]
                if not entry.name.endswith(SUFFIX) or not is_uuid(stem):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # removed while listed
                    continue
                if stat.S_ISREG(info.st_mode):
                    found.append(Transcript(entry.path, stem, info.st_mtime_ns, info.st_size))
    except (FileNotFoundError, NotADirectoryError):
        return "absent"
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return found


def _seen_sessions(home: Path, records: Iterable[journal.Record]) -> tuple[set[str], list[str]]:
    """Every session id any record names (the history, and the cache for what the
    archive no longer holds), and the files that could not be read."""
    seen: set[str] = set()

    def add(data: Mapping[str, Any] | None) -> None:
        for field in _SESSION_FIELDS:
            value = (data or {}).get(field)
            if isinstance(value, str):
                seen.add(value)

    for record in records:
        add(record.data)
    history = journal.history(home)
    for record in history:
        add(record.data)
    return seen, list(history.errors)


def _iso_ns(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1000:06d}Z"
