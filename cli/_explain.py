"""``reconcile explain``: print the hook's steps for a payload and this environment.

Presentation only: :func:`reconcile.explain` does the work (and writes nothing). The
payload is the hook's stdin, ``--payload JSON``, or a made-up one with ``--session-id``;
the environment is this process's, with ``--home`` and ``--sync`` as the hook takes
them. Unless ``--no-db``, it then asks the database, read-only, what settling this
session id would decide for the row (:func:`reconcile.preview_settlement`). Exit 0
whatever the verdict, and whether or not the database answers: explaining a skip or an
outage is not a failure.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import attrs

import reconcile
from cli._commands import UsageError
from cli._output import emit_json, emit_pairs


def run(args: Any, settings: reconcile.Settings) -> int:
    env = dict(os.environ)
    if args.home:
        env["RECONCILE_HOME"] = args.home
    raw = _payload(args)
    sync = args.sync or (env.get("RECONCILE_SYNC") or "").strip().lower() in (
        "1", "true", "yes", "on",
    )  # fmt: skip
    found = reconcile.explain(env, raw, sync=sync)
    preview = None if args.no_db else reconcile.preview_settlement(settings, found)
    if args.json:
        database = None if preview is None else attrs.asdict(preview)
        emit_json({**attrs.asdict(found), "skipped": found.skipped, "database": database})
    else:
        _print(found, preview)
    return 0


def _payload(args: Any) -> bytes | None:
    """The payload's bytes as the hook would read them (None: over its 1 MiB limit)."""
    if args.payload is not None and args.session_id is not None:
        raise UsageError("give --payload or --session-id, not both")
    if args.payload is not None:
        raw = args.payload.encode("utf-8", "surrogateescape")
    elif args.session_id is not None:
        raw = json.dumps({"session_id": args.session_id}).encode()
    else:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError(
                "pipe the hook's payload on stdin, or give --payload JSON or --session-id ID"
            )
        raw = sys.stdin.buffer.read(reconcile.MAX_PAYLOAD + 1)
    return None if len(raw) > reconcile.MAX_PAYLOAD else raw


def _print(found: reconcile.Explanation, preview: reconcile.Preview | None) -> None:
    print("1. payload: " + ("ok" if found.payload == "ok" else f"unusable ({found.payload})"))
    if found.session_id is not None:
        print(f"   session_id: {found.session_id}")
    if found.variables:
        print("2. identity variables (in the order the hook looks):")
        for v in found.variables:
            state = "unset" if v.value is None else repr(v.value)
            taken = (v.note or "").startswith("taken")
            mark = (" <- taken" if taken else " <- used") if v.used else ""
            note = f"  ({v.note})" if v.note else ""
            print(f"   {v.source:<26} {state}{mark}{note}")
    step = 3
    if found.key is not None:
        print(f"{step}. cache key: {found.key}")
        step += 1
    trusted = "not trusted: " + found.home_refusal if found.home_refusal else "trusted"
    missing = "" if found.home_exists else " (does not exist yet)"
    print(f"{step}. state directory: {found.home}{missing}, {trusted}")
    step += 1
    if found.key is not None and found.home_refusal is None:
        record = found.record
        described = (
            "none"
            if record is None
            else f"{record.get('type')} {json.dumps(record.get('data'), sort_keys=True)} "
            f"(event {record.get('id')})"
        )
        print(f"{step}. cache record: {described}")
        step += 1
    print(f"{step}. verdict: {found.verdict}")
    print(f"   why: {found.why}")
    print(f"{step + 1}. the hook would do: {found.action}")
    emit_pairs([("   outcome", found.outcome)])
    if preview is None:
        return
    print(f"{step + 2}. the database, asked read-only: {preview.why}")
    if preview.error is not None:
        print(f"   error: {preview.error}")
    elif preview.executor_id is not None:
        state = f"{preview.executor_state}, session {preview.stored_session_id or 'none'}"
        print(f"   executor: {preview.executor_id} ({state})")
    if preview.outcome is not None:
        emit_pairs([("   decision", preview.outcome)])
