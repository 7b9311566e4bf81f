"""The operator and audit commands: each a function of (args, settings) -> exit code."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import attrs

import journal
import reconcile
from cli._output import age, emit_json, emit_pairs, emit_table, progress, progress_bar
from reconcile._fast import SETTLED_SESSION
from reconcile._settings import Settings, redact_url


def hook(args: Any) -> int:
    """``reconcile [--home H] [--database-url U] hook``: the hook with flags as environment."""
    from cli._hook import run

    env = dict(os.environ)
    if args.home:
        env["RECONCILE_HOME"] = args.home
    if args.database_url:
        env["RECONCILE_DATABASE_URL"] = args.database_url
    return run(env)


def compact(args: Any, settings: Settings) -> int:
    with progress_bar("compact", unit="journal") as advance:
        report = journal.compact(
            settings.home,
            max_entries=args.max_entries or settings.max_entries,
            wait=args.wait,
            progress=advance,
        )
    if args.json:
        emit_json(report.to_dict())
    elif report.busy:
        print("another compaction is running; nothing done (use --wait to wait for it)")
    else:
        skipped = report.skipped.total
        print(
            f"folded {report.records} records from {report.files_folded} journals "
            f"({report.files_archived} archived, {report.live_files} live); "
            f"{report.entries} entries, {report.evicted} evicted, {skipped} skipped, "
            f"{report.quarantined} quarantined, in {report.duration_s * 1000:.1f} ms"
        )
    return 0


def status(args: Any, settings: Settings) -> int:
    state = journal.load(settings.home)
    files = journal.inventory(settings.home)
    pending = sum(1 for record in state.values() if record.type in reconcile.UNSETTLED)
    database = _database_status(settings)
    data: dict[str, Any] = {
        "home": str(settings.home),
        "entries": len(state),
        "max_entries": settings.max_entries,
        "pending": pending,
        "skipped": state.skipped.as_dict(),
        **files.to_dict(),
        "database": database,
    }
    if args.json:
        emit_json(data)
        return 0
    created = files.snapshot_created
    emit_pairs(
        [
            ("home", data["home"]),
            ("entries", f"{len(state)} of {settings.max_entries}"),
            ("pending", pending),
            (
                "journals",
                f"{files.journals} ({files.journal_bytes} bytes, "
                f"{files.live_writers} live writers)",
            ),
            ("archive", f"{files.archive_files} files, {files.archive_bytes} bytes"),
            ("skipped", f"{state.skipped.total} {_nonzero(state.skipped.as_dict())}".rstrip()),
            ("quarantined", files.quarantined_records),
            ("last compaction", created or "never"),
            (
                "database",
                f"{database['url'] or 'none'} "
                f"({'reachable' if database['reachable'] else 'unreachable'}"
                f"{': ' + database['error'] if database.get('error') else ''})",
            ),
            *([("schema", _schema_text(database["schema"]))] if "schema" in database else []),
        ]
    )
    return 0


def _nonzero(counts: dict[str, int]) -> str:
    parts = [f"{reason} {n}" for reason, n in counts.items() if n]
    return f"({', '.join(parts)})" if parts else ""


def _database_status(settings: Settings) -> dict[str, Any]:
    from reconcile._store import connect, ping, resolve_url

    try:
        url = resolve_url(settings)
    except reconcile.DatabaseUnavailableError as exc:
        return {"url": None, "reachable": False, "error": str(exc)}
    try:
        with connect(settings, application="reconcile-status") as conn:
            version = ping(conn)
            schema = reconcile.schema_state(conn)
    except reconcile.DatabaseUnavailableError as exc:
        return {"url": redact_url(url), "reachable": False, "error": str(exc)}
    return {
        "url": redact_url(url),
        "reachable": True,
        "server_version": version,
        "schema": schema.to_dict(),
    }


def _schema_text(schema: dict[str, Any]) -> str:
    """``current``, or what is wrong and what to run."""
    if schema["state"] == "current":
        return "current"
    hint = " (run `reconcile db migrate`)" if schema["state"] == "drifted" else ""
    return f"{schema['state'].replace('_', ' ')}: {'; '.join(schema['problems'])}{hint}"


def show(args: Any, settings: Settings) -> int:
    state = journal.load(settings.home)
    keys = [args.key] if args.key else sorted(state)
    records = [state[k] for k in keys if k in state]
    if args.key and not records:
        if args.json:
            emit_json(None)
        else:
            print(f"no entry for {args.key!r}", file=sys.stderr)
        return 1
    rows = [_entry(record) for record in records]
    if args.json:
        emit_json(rows[0] if args.key else rows)
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


def _entry(record: journal.Record) -> dict[str, Any]:
    data = dict(record.data or {})
    field = SETTLED_SESSION.get(record.type)
    return {
        "key": record.key,
        "type": record.type,
        "session_id": data.get(field) if field else data.get("session_id"),
        "executor_id": data.get("executor_id") or (data.get("identity") or {}).get("executor_id"),
        "event_id": record.id,
        "ts": record.ts,
        "hit_eligible": field is not None,
    }


def forget(args: Any, settings: Settings) -> int:
    with journal.Writer(settings.home, fsync=settings.fsync) as writer:
        event_id = writer.forget(args.key, type="cache.forgotten")
    print(event_id)
    return 0


def replay(args: Any, settings: Settings) -> int:
    if args.to_db:
        report = reconcile.replay_to_db(settings)
        if args.json:
            emit_json(report.to_dict())
        else:
            settled = ", ".join(f"{n} {kind}" for kind, n in sorted(report.outcomes.items()))
            print(
                f"{report.pending} pending applied ({settled or 'none'}), "
                f"{report.superseded} superseded, "
                f"{report.audit_rows_inserted} missing audit rows inserted"
            )
        return 0
    records = reconcile.events(
        settings,
        since=args.since,
        until=args.until,
        key=args.key,
        executor=args.executor,
        types=tuple(args.type),
    )
    import json

    out = sys.stdout
    for record in progress(records, desc="replay"):
        line = {
            "id": record.id,
            "ts": record.ts,
            "type": record.type,
            "key": record.key,
            "pid": record.pid,
            "data": record.data,
        }
        out.write(json.dumps(line, separators=(",", ":"), default=dict) + "\n")
    return 0


def verify(args: Any, settings: Settings) -> int:
    report = reconcile.verify(settings, db=args.db)
    if args.json:
        emit_json(report.to_dict())
    else:
        print(
            f"{report.entries} cache entries, {report.history_records} history records, "
            f"{report.unverifiable} unverifiable: "
            + ("consistent" if report.ok else f"{len(report.differences)} differences")
        )
        for difference in report.differences:
            print(f"  {difference}")
    return 0 if report.ok else 1


def db(args: Any, settings: Settings) -> int:
    embedded = not settings.database_url
    if args.action in ("up", "down") and not embedded:
        raise reconcile.ConfigError(
            f"`db {args.action}` manages the embedded server; "
            "unset RECONCILE_DATABASE_URL to use it"
        )
    result: dict[str, Any]
    if args.action in ("up", "down", "status") or (args.action == "url" and embedded):
        from reconcile import _server
    if args.action == "up":
        result = {"url": _server.up(settings.home), "running": True}
        with reconcile.migration_connection(settings) as conn:  # the tool's own database
            result["applied"] = reconcile.migrate(conn, create_tables=True)
    elif args.action == "down":
        result = {"stopped": _server.down(settings.home)}
    elif args.action == "url":
        # The embedded URL carries no password; a configured one is shown redacted.
        url = redact_url(settings.database_url) or _server.url(settings.home)
        if url is None:
            raise reconcile.DatabaseUnavailableError(
                "the embedded server is not running: reconcile db up"
            )
        if args.json:
            emit_json({"url": url})
        else:
            print(url)
        return 0
    elif args.action == "status":
        result = _database_status(settings)
        if embedded:
            result["embedded"] = attrs.asdict(_server.status(settings.home))
    else:  # the embedded database is the tool's own; elsewhere only with --create-tables
        own = args.create_tables or embedded
        with reconcile.migration_connection(settings) as conn:
            result = {"applied": reconcile.migrate(conn, create_tables=own)}
    if args.json:
        emit_json(result)
    else:
        emit_pairs((k, v) for k, v in result.items())
    return 0 if result.get("reachable", True) else 3
