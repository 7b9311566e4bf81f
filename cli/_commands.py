"""The operator and audit commands: each a function of (args, settings) -> exit code.

Human output is aligned ``name: value`` lines in words; ``--json`` prints the same data.
Where a typo is likely (a cache key without its ``executor:`` prefix, an event type
without ``session.``), the message says what was probably meant. Exit codes are listed
in docs/operations.md.
"""

from __future__ import annotations

import difflib
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

import journal
import reconcile
from cli import _probe
from cli._output import (
    age,
    emit_json,
    emit_pairs,
    emit_table,
    plural,
    progress_bar,
)
from cli._output import size as human_size

KEY_FORMS = "executor:ID, agent:ID or agent-name:TEAM/NAME"


class UsageError(Exception):
    """A command-line argument is invalid (exit 2)."""


def hook(args: Any, argv: list[str]) -> int:
    """``reconcile [--home H] [--database-url U] hook [--sync]``: the hook, the global flags
    as its environment, ``argv`` what followed ``hook``."""

    env = dict(os.environ)
    if args.home:
        env["RECONCILE_HOME"] = args.home
    if args.database_url:
        env["RECONCILE_DATABASE_URL"] = args.database_url
    return reconcile.run_hook(env, argv=(["--sync"] if args.sync else []) + argv)


def compact(args: Any, settings: reconcile.Settings) -> int:
    with progress_bar("compact", unit="journal") as advance:
        report = journal.compact(
            settings.home,
            max_entries=args.max_entries or settings.max_entries,
            wait=args.wait,
            pinned_types=reconcile.UNSETTLED,  # only the journal remembers them: never evicted
            progress=advance,
        )
    if args.json:
        emit_json(report.to_dict())
    elif report.busy:
        print("another compaction is running; nothing done (use --wait to wait for it)")
    else:
        emit_pairs(
            [
                (
                    "folded",
                    f"{plural(report.records, 'record')} from "
                    f"{plural(report.files_folded, 'journal')} "
                    f"({report.files_archived} archived, {report.live_files} still being written)",
                ),
                (
                    "cache",
                    f"{plural(report.entries, 'entry', 'entries')}, {report.evicted} evicted, "
                    f"{report.pinned} unsettled kept",
                ),
                (
                    "over the bound",
                    f"{plural(report.over_bound, 'entry', 'entries')}: never evicted are "
                    "unsettled observations (the reconciler settles them once the database "
                    "answers) and what was written while the compaction ran"
                    if report.over_bound
                    else None,
                ),
                ("skipped", plural(report.skipped.total, "corrupt record")),
                ("quarantined", plural(report.quarantined, "record")),
                ("took", f"{report.duration_s * 1000:.1f} ms"),
            ]
        )
    return 0


def status(args: Any, settings: reconcile.Settings) -> int:
    data = status_data(settings)
    if args.json:
        emit_json(data)
    else:
        emit_pairs(status_rows(data))
    return 0


def status_data(settings: reconcile.Settings) -> dict[str, Any]:
    """What ``status --json`` prints; :func:`status_rows` words the same dict."""
    state = journal.load(settings.home)
    files = journal.inventory(settings.home)
    database = _probe.database(settings)
    ignored = _probe.ignored_settings()
    return {
        "home": str(settings.home),
        "home_exists": os.path.lexists(settings.home),
        "settings_ignored": ignored,
        "entries": len(state),
        "max_entries": settings.max_entries,
        "pending": sum(1 for record in state.values() if record.type in reconcile.UNSETTLED),
        "skipped": state.skipped.as_dict(),
        **files.to_dict(),
        "database": database,
        "outbox": reconcile.outbox_status(settings, state),  # the same fold, not a second
        "next_step": _probe.settings_next_step(ignored) or _probe.database_next_step(database),
    }


def status_rows(d: dict[str, Any]) -> list[tuple[str, str | None]]:
    """One ``(label, value)`` per line of ``status``; a None value leaves the line out."""
    skipped = sum(d["skipped"].values())
    reasons = ", ".join(f"{n} {reason}" for reason, n in d["skipped"].items() if n)
    return [
        (
            "state directory",
            d["home"]
            if d["home_exists"]
            else f"{d['home']} (none yet: the first hook or `reconcile db up` creates it)",
        ),
        *(
            (
                "setting ignored",
                f"{bad['variable']}={bad['value']!r}: {bad['error']} "
                f"(the default {bad['default']} is used)",
            )
            for bad in d["settings_ignored"]
        ),
        ("cache", f"{plural(d['entries'], 'entry', 'entries')} of at most {d['max_entries']}"),
        ("pending", f"{d['pending']} (observed, not yet settled with the database)"),
        ("oldest pending", d["outbox"]["oldest_unsettled"]),
        ("reconciler", "running" if d["outbox"]["reconciler_running"] else "not running"),
        ("backoff", _backoff(d["outbox"]["backoff"])),
        (
            "last database error",
            f"{d['outbox']['last_error']} (at {d['outbox']['last_error_at']})"
            if d["outbox"]["last_error"]
            else None,
        ),
        (
            "journals",
            f"{plural(d['journals'], 'file')}, {human_size(d['journal_bytes'])}, "
            f"{d['live_writers']} being written",
        ),
        ("archive", f"{plural(d['archive_files'], 'file')}, {human_size(d['archive_bytes'])}"),
        ("skipped", plural(skipped, "corrupt record") + (f" ({reasons})" if reasons else "")),
        ("quarantined", plural(d["quarantined_records"], "record")),
        ("last compaction", d["snapshot_created"] or "never"),
        *_probe.describe_database(d["database"]),
        ("next step", d["next_step"]),
    ]


def _backoff(backoff: dict[str, Any]) -> str:
    if backoff["in_force"]:
        return (
            f"in force: the database failed {plural(backoff['failures'], 'time')} in a row; "
            f"next attempt in {backoff['retry_in_s']} s"
        )
    return "none (the database may be tried)"


def show(args: Any, settings: reconcile.Settings) -> int:
    state: Any = journal.load(settings.home) if args.at is None else _state_at(settings, args.at)
    if args.key and args.key not in state:
        if args.json:
            emit_json(None)
        print(f"reconcile: error: {_no_entry(args.key, state)}", file=sys.stderr)
        return 1
    keys = [args.key] if args.key else sorted(state)
    rows = [_entry(state[key]) for key in keys]
    if args.json:
        emit_json(rows[0] if args.key else rows)
        return 0
    if not rows:
        if args.at is not None:
            print(f"no entries as of {args.at}")
            return 0
        print("the cache is empty: hooks fill it as they observe sessions")
        return 0
    now = time.time()
    emit_table(
        [
            (
                r["key"],
                r["type"],
                r["session_id"],
                r["executor_id"],
                age(now - journal.event_time_us(r["event_id"]) / 1e6),
            )
            for r in rows
        ],
        ("KEY", "LAST EVENT", "SESSION", "EXECUTOR", "AGE"),
    )
    return 0


def _state_at(settings: reconcile.Settings, at: str) -> dict[str, journal.Record]:
    """The cache as of ``at``: the retained history up to it, folded (no bound, no
    eviction: what the hook would have found, had the cache been large enough)."""
    table: dict[str, dict[str, Any]] = {}
    history = journal.history(settings.home, until=at)
    oldest = None
    for record in history:
        oldest = oldest or record.ts
        journal.fold([record.to_dict()], table)
    for error in history.errors:
        print(f"reconcile: could not read {error}; the state shown may miss it", file=sys.stderr)
    if oldest is None:
        first = next(iter(journal.history(settings.home)), None)
        if first is not None:
            print(
                f"reconcile: {at} is before the oldest retained record ({first.ts}); "
                "what came before, if anything, archive retention pruned",
                file=sys.stderr,
            )
    return {
        key: journal.Record.from_raw(raw) for key, raw in table.items() if raw["data"] is not None
    }


def _entry(record: journal.Record) -> dict[str, Any]:
    data = dict(record.data or {})
    field = reconcile.SETTLED_SESSION.get(record.type)
    return {
        "key": record.key,
        "type": record.type,
        "session_id": data.get(field) if field else data.get("session_id"),
        "executor_id": data.get("executor_id") or (data.get("identity") or {}).get("executor_id"),
        "event_id": record.id,
        "ts": record.ts,
        "hit_eligible": field is not None,
    }


def _no_entry(key: str, keys: Iterable[str], missing: str = "no cache entry") -> str:
    """'no cache entry for KEY', with the key probably meant: the same id under its
    prefix (``e-1`` -> ``executor:e-1``), or a close spelling of the id."""
    prefix, _, ident = key.rpartition(":")
    ids: dict[str, list[str]] = {}
    for candidate in keys:
        ids.setdefault(candidate.rpartition(":")[2], []).append(candidate)
    if not prefix and key in ids:
        guess: str | None = ids[key][0]
    else:
        close = difflib.get_close_matches(ident, list(ids), n=1, cutoff=0.75)
        same = (
            [k for k in ids[close[0]] if not prefix or k.startswith(prefix + ":")] if close else []
        )
        guess = same[0] if same else None
    if guess:
        return f"{missing} for {key!r}; did you mean {guess!r}?"
    if not prefix:
        return f"{missing} for {key!r}; keys look like {KEY_FORMS} (see: reconcile show)"
    return f"{missing} for {key!r} (see: reconcile show)"


def forget(args: Any, settings: reconcile.Settings) -> int:
    state = journal.load(settings.home)
    if args.key not in state:
        when = _forgotten_at(settings, args.key)
        if when is not None:  # idempotent: what is asked is already so
            if args.json:
                emit_json({"key": args.key, "event_id": None, "already_forgotten": when})
            else:
                print(f"{args.key} was already forgotten (at {when}); nothing to do")
            return 0
        print(f"reconcile: error: {_no_entry(args.key, state)}; nothing forgotten", file=sys.stderr)
        return 1
    latest = state[args.key]
    if latest.type in reconcile.UNSETTLED:  # only the journal knows it: never discard it
        print(
            f"reconcile: error: {args.key}'s latest record is an observation the database has not "
            f"settled yet (session {(latest.data or {}).get('session_id')!r}, {latest.ts}); "
            "forgetting it would discard it. Settle it first: `reconcile replay --to-db` "
            "(or wait for the reconciler: `reconcile status` shows what is pending), then "
            "forget; nothing forgotten",
            file=sys.stderr,
        )
        return 1
    with journal.Writer(settings.home, fsync=settings.fsync) as writer:
        event_id = writer.forget(args.key, type=reconcile.FORGOTTEN)
    if args.json:
        emit_json({"key": args.key, "event_id": event_id, "already_forgotten": None})
    else:
        print(f"forgot {args.key} (event {event_id}): its next hook asks the database")
    return 0


def _forgotten_at(settings: reconcile.Settings, key: str) -> str | None:
    """When ``key`` was forgotten, if a tombstone is its latest event in the history."""
    last = None
    for record in reconcile.events(settings, key=key):
        last = record
    return last.ts if last is not None and last.type == reconcile.FORGOTTEN else None


def replay(args: Any, settings: reconcile.Settings) -> int:
    for name in args.type:
        if name not in reconcile.EVENT_TYPES:
            raise UsageError(_unknown_type(name))
    if args.to_db:
        following = (args.follow, args.cursor, args.after_cursor, args.cursor_file)
        if any(x not in (None, False) for x in following):
            raise UsageError("--to-db applies the whole history: no --follow or cursor options")
        return _replay_to_db(args, settings)
    from cli import _replay

    return _replay.run(args, settings)


def _unknown_type(name: str) -> str:
    known = reconcile.EVENT_TYPES
    guess = [t for t in known if t.split(".", 1)[-1] == name] or difflib.get_close_matches(
        name, known, n=1
    )
    hint = f"did you mean {guess[0]}?" if guess else "known types: " + ", ".join(known)
    return f"argument --type: unknown event type {name!r}; {hint}"


def _replay_to_db(args: Any, settings: reconcile.Settings) -> int:
    with progress_bar("replay --to-db", unit="observation") as advance:
        report = reconcile.replay_to_db(settings, progress=advance)
    if args.json:
        emit_json(report.to_dict())
        return 0
    settled = ", ".join(f"{n} {kind}" for kind, n in sorted(report.outcomes.items()))
    emit_pairs(
        [
            ("applied", f"{report.pending} pending" + (f" ({settled})" if settled else "")),
            (
                "superseded",
                f"{report.superseded} waiting (a later observation of their key replaced them)",
            ),
            ("audit rows", f"{report.audit_rows_inserted} missing ones inserted"),
            (
                "restored",
                f"{plural(report.rows_restored, 'row')} put back on the session the "
                "journal's latest change wrote",
            ),
            (
                "left alone",
                f"{plural(report.rows_left_alone, 'row')} holding a session the journal "
                "does not explain, or a terminal executor's (see: reconcile verify --db)"
                if report.rows_left_alone
                else None,
            ),
        ]
    )
    return 0


def verify(args: Any, settings: reconcile.Settings) -> int:
    if args.transcripts:
        return _verify_transcripts(args, settings)
    for flag in ("key", "repair", "apply"):
        if getattr(args, flag):
            raise UsageError(f"--{flag} goes with --transcripts")
    report = reconcile.verify(settings, db=args.db, at=args.at)
    if args.at is not None and not report.history_records:
        print(
            f"reconcile: note: {args.at} is before the oldest retained record; what came "
            "before, if anything, archive retention pruned",
            file=sys.stderr,
        )
    if args.json:
        emit_json(report.to_dict())
        return 0 if report.ok else 1
    compared = "history, cache and database" if args.db else "history and cache"
    if args.at is not None:
        compared = f"history up to {args.at}, the cache entries written by then" + (
            " and the audit rows up to then" if args.db else ""
        )
    emit_pairs(
        [
            (
                "verdict",
                f"consistent: {compared} agree"
                if report.ok
                else f"{plural(len(report.differences), 'difference')} between {compared}",
            ),
            ("cache", plural(report.entries, "entry", "entries")),
            ("history", plural(report.history_records, "record")),
            (
                "unverifiable",
                f"{report.unverifiable} (entries whose history the archive retention dropped)",
            ),
        ]
    )
    for difference in report.differences:
        print(f"  {difference.key}: {_explain(difference)} ({difference.kind})")
    if any(d.kind == "audit_missing" for d in report.differences):
        print(
            "next step: the missing audit rows (once each) and rows gone back to an older "
            "session, as after a restore from a backup, are put back by: "
            "reconcile replay --to-db"
        )
    return 0 if report.ok else 1


def _explain(difference: reconcile.Difference) -> str:
    expected, found = difference.expected, difference.found
    if difference.kind == "executor_missing":
        if expected is None:
            return "this entry names no executor to compare with"
        return f"the database has no executor {expected!r}; this entry settled a session for it"
    if difference.kind == "database_differs":
        held = "no session" if found is None else f"session {found!r}"
        return f"the database holds {held}; the journal says {expected!r}"
    if difference.kind == "audit_missing":
        return f"the database has no audit row for event {expected} ({difference.detail})"
    if difference.kind == "snapshot_differs":
        return f"the cache holds event {found}; the history's latest is {expected}"
    if difference.kind == "missing_from_cache":
        return f"the history has event {expected}, newer than the cache's oldest, but no entry"
    if difference.kind == "unreadable":
        return f"could not be read, so not verified: {found}"
    return f"{difference.kind}: expected {expected}, found {found}"


def _verify_transcripts(args: Any, settings: reconcile.Settings) -> int:
    """``verify --transcripts [--key K] [--repair [--apply]]`` (docs/transcripts.md)."""
    import os

    if args.db:
        raise UsageError("--transcripts and --db are separate checks: run one, then the other")
    if args.at is not None:
        raise UsageError("--at goes with verify and verify --db, not --transcripts")
    if args.apply and not args.repair:
        raise UsageError("--apply goes with --repair (which alone is a dry run)")
    if args.key is not None and ":" not in args.key:
        raise UsageError(f"--key {args.key!r}: keys look like {KEY_FORMS}")
    if args.repair:
        report = reconcile.repair_transcripts(settings, os.environ, key=args.key, apply=args.apply)
    else:
        report = reconcile.verify_transcripts(settings, os.environ, key=args.key)
    if args.key is not None and not report.rows:
        print(f"reconcile: no settled executor under key {args.key!r}", file=sys.stderr)
    if args.json:
        emit_json(report.to_dict())
        return 0 if report.ok else 1
    problems = sum(1 for row in report.rows if row.problems)
    checked = sum(1 for row in report.rows if row.checked)
    verdict = (
        "consistent: every row checked can be resumed, and no newer session went unseen"
        if report.ok
        else f"{plural(problems, 'row')} with a problem"
    )
    emit_pairs(
        [
            ("verdict", verdict),
            ("rows", f"{checked} of {plural(len(report.rows), 'settled executor')} checked"),
            ("not checked", plural(len(report.unchecked), "row") if report.unchecked else None),
            ("orphans", plural(len(report.orphans), "transcript") + " no hook observed"),
            ("unreadable", ", ".join(report.errors) if report.errors else None),
        ]
    )
    for row in report.rows:
        if row.problems or not row.checked:
            print(f"  {row.key}: {_transcript_row(row)}")
    for orphan in report.orphans:
        print(
            f"  orphan {orphan.session_id}: {orphan.path}, "
            f"{human_size(orphan.size)}, modified {_iso_ns(orphan.mtime_ns)}"
        )
    if args.repair:
        for repair in report.repairs:
            if repair.action == "observe" and report.applied:
                settled = repair.outcome or "journaled, settled once the database answers"
                what = f"observed {repair.session_id}: {settled}"
            elif repair.action == "observe":
                what = f"would observe {repair.session_id} ({repair.reason})"
            else:
                what = f"left alone: {repair.reason}"
            print(f"  repair {repair.key} (executor {repair.executor_id}): {what}")
        if not report.repairs:
            print("  repair: nothing to repair")
        elif not report.applied and any(r.action == "observe" for r in report.repairs):
            print("  (a dry run: nothing written; --apply does it)")
    return 0 if report.ok else 1


def _transcript_row(row: Any) -> str:
    session = f"session {row.session_id} (executor {row.executor_id})"
    if row.state == "missing":
        text = f"{session} cannot be resumed: no transcript at {row.transcript}"
    elif not row.checked:
        text = f"{session} not checked ({row.state}): {row.detail}"
    else:
        text = f"{session} at {row.transcript}"
    if row.newer_orphans:
        text += "; newer sessions no hook observed: " + ", ".join(row.newer_orphans)
    return text


def _iso_ns(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // 1_000_000_000))
