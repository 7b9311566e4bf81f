"""What the hook costs a real Claude Code session, per way of installing it.

The native ``claude`` (``RECONCILE_E2E_CLAUDE``, see ``tests/e2e/fetch-claude``) runs
``claude -p`` sessions of N Bash tool uses, offline, against the fake Messages API of
tests/e2e/, each a new session of one executor (so its first hook is a miss and the
database is written, as for a session an orchestrator has just spawned). Per install:

- **hook processes** and their **CPU seconds**: a bash wrapper in front of ``reconcile``
  appends its child's ``times`` (user + system) after each hook; processes a hook leaves
  running in the background (a reconciler, a compaction) are reaped by ``reaper.py`` and
  counted apart, with their CPU;
- **wall per tool use**: the fake server's time from sending a tool_use to receiving the
  request that carries its result (Claude Code's hooks, the tool, its bookkeeping), with
  the real script on PATH and no wrapper; its ratio is against the same sessions with no
  hook at all, measured in the same rounds;
- **to the first request**: from starting ``claude`` to the first model request, which
  is where the SessionStart and UserPromptSubmit hooks are paid;
- **row right**: whether the executor row holds the session's id once everything the
  session started has finished; also for sessions without a tool use, which end soon
  after their prompt; and how many hooks Claude Code cancelled (an async hook still
  running when a headless session ends is killed, and says ``"outcome": "cancelled"``).

Installs, interleaved in rounds (the order rotates): no hook; the earlier install
(PreToolUse on every tool use and UserPromptSubmit, synchronous, shell form); the default
(``reconcile install-hooks``: SessionStart and UserPromptSubmit, synchronous, exec form);
the default with both made ``async`` (the alternative docs/hook.md weighs); and
``--every-tool-use`` (PreToolUse added, async).

    python -m benchmarks.claude_hooks [--rounds N] [--tool-uses N] [--quick] [--json]

Needs the project installed (``pip install .``: the hook is the ``reconcile`` script) and
an embedded PostgreSQL (started for the run), or ``--database-url`` (an admin URL).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._harness import ROOT, fresh_database, machine, table
from reconcile import migrate

# The sandbox and the fake server are the end-to-end suite's: one harness for both.
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "e2e")]

from claude_sandbox import Run, Sandbox, claude_binary  # noqa: E402
from fake_api import FakeMessagesAPI  # noqa: E402
from reconcile_helpers import session_of  # noqa: E402

DATABASE = "reconcile_claude_bench"
EARLIER = {  # what install-hooks wrote before: every tool use, synchronous, shell form
    "PreToolUse": [{"matcher": "*", "hooks": [{"type": "command", "command": "reconcile hook"}]}],
    "UserPromptSubmit": [{"hooks": [{"type": "command", "command": "reconcile hook"}]}],
}


def _none(box: Sandbox) -> None:
    pass


def _earlier(box: Sandbox) -> None:
    settings = json.loads(box.settings.read_text())
    box.settings.write_text(json.dumps({**settings, "hooks": EARLIER}))


def _default(box: Sandbox) -> None:
    box.install()


def _all_async(box: Sandbox) -> None:
    box.install()
    settings = json.loads(box.settings.read_text())
    for groups in settings["hooks"].values():
        for group in groups:
            for hook in group["hooks"]:
                hook["async"] = True
    box.settings.write_text(json.dumps(settings))


def _every_tool_use(box: Sandbox) -> None:
    box.install("--every-tool-use")


INSTALLS: dict[str, Callable[[Sandbox], None]] = {
    "no hook": _none,
    "earlier: PreToolUse + UserPromptSubmit, sync": _earlier,
    "default: SessionStart + UserPromptSubmit, sync": _default,
    "default, both async": _all_async,
    "--every-tool-use (PreToolUse async)": _every_tool_use,
}
NONE, EARLIER_NAME, DEFAULT = list(INSTALLS)[:3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="sessions per install and pass")
    parser.add_argument("--tool-uses", type=int, default=10, help="tool uses per session")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 tool uses")
    parser.add_argument("--database-url", help="an admin URL of a server to use instead")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    rounds, tool_uses = (1, 3) if args.quick else (args.rounds, args.tool_uses)
    claude = claude_binary()
    if not isinstance(claude, Path):
        sys.exit(f"benchmarks.claude_hooks: {claude}")
    version = subprocess.run([claude, "--version"], capture_output=True, text=True).stdout
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(ignore_cleanup_errors=True)))
        if args.database_url:
            admin = args.database_url
        else:
            from benchmarks.__main__ import dedicated_server

            admin = stack.enter_context(dedicated_server())
        url = prepare(admin)
        results = measure(claude, url, tmp, rounds, tool_uses)
    results.update(machine=machine(), claude_code=version.strip(), rounds=rounds)
    results["tool_uses"] = tool_uses
    print(report(results))
    if args.json:
        print(json.dumps(results, indent=2))


def prepare(admin: str) -> str:
    """A fresh database with the schema and one executor per install."""
    import psycopg

    url = fresh_database(admin, DATABASE)
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn, create_tables=True)
        for n in range(len(INSTALLS)):
            conn.execute(
                "INSERT INTO executors (id, agent_id, claude_session_id, state) "
                "VALUES (%s, NULL, NULL, 'running')",
                (f"e-{n}",),
            )
    return url


def measure(claude: Path, url: str, tmp: Path, rounds: int, tool_uses: int) -> dict[str, Any]:
    """Every install, ``rounds`` sessions in each pass, interleaved and rotated."""
    boxes: dict[tuple[str, str], Sandbox] = {}
    for n, (name, install) in enumerate(INSTALLS.items()):
        for kind in ("direct", "times"):  # wall without a wrapper; processes and CPU with
            box = Sandbox(
                tmp / f"{n}-{kind}",
                claude,
                "http://127.0.0.1:9",  # each run gets its own server
                hook=kind,
                RECONCILE_HOME=str(tmp / f"state-{n}"),
                RECONCILE_DATABASE_URL=url,
                RECONCILE_EXECUTOR_ID=f"e-{n}",
            )
            box.allow_bash()
            install(box)
            boxes[name, kind] = box
    names = list(INSTALLS)
    raw: dict[str, dict[str, list[float]]] = {
        name: {
            "turnaround_s": [],
            "first_request_s": [],
            "row_right": [],
            "processes": [],
            "cpu_s": [],
            "background": [],
            "background_cpu_s": [],
            "short_row_right": [],
            "cancelled": [],  # async hooks Claude Code cancelled, per session
        }
        for name in names
    }
    prompt = f"Work. tool uses: {tool_uses}"
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            n = names.index(name)
            figures = raw[name]
            run, api = _session(boxes[name, "direct"], prompt, tool_uses)
            figures["turnaround_s"].extend(api.turnarounds_s.values())
            first = min(t for t, method, path in api.requests if path.startswith("/v1/messages"))
            figures["first_request_s"].append(first - run.started_at)
            figures["row_right"].append(float(session_of(url, f"e-{n}") == run.session_id))
            figures["cancelled"].append(_cancelled(run))

            box = boxes[name, "times"]
            box.reset_counts()
            run, api = _session(box, prompt, tool_uses)
            figures["processes"].append(len(box.hook_processes()))
            figures["cpu_s"].append(sum(box.hook_cpu_s()))
            figures["background"].append(len(run.report["orphans"]))
            figures["background_cpu_s"].append(sum(o["cpu_s"] for o in run.report["orphans"]))

            if name != NONE:  # a session without tool uses: over soon after its prompt
                run, api = _session(boxes[name, "direct"], "Hello.", 0)
                right = session_of(url, f"e-{n}") == run.session_id
                figures["short_row_right"].append(float(right))
                figures["cancelled"].append(_cancelled(run))
        print(f"- round {round_ + 1} of {rounds}", file=sys.stderr, flush=True)
    return {"installs": raw}


def _cancelled(run: Run) -> float:
    return sum(1 for e in run.hook_events("hook_response") if e["outcome"] == "cancelled")


def _all_cpu(figures: dict[str, list[float]]) -> float:
    pairs = zip(figures["cpu_s"], figures["background_cpu_s"], strict=True)
    return statistics.median(hooks + background for hooks, background in pairs)


def _session(box: Sandbox, prompt: str, tool_uses: int) -> tuple[Run, FakeMessagesAPI]:
    with FakeMessagesAPI() as api:
        run = box.run(prompt, ANTHROPIC_BASE_URL=api.url)
    if run.exit_code != 0 or len(api.turnarounds_s) != tool_uses:
        raise RuntimeError(f"the session did not run {tool_uses} tool uses: {run.stderr[-2000:]}")
    for response in run.hook_events("hook_response"):  # figures of a broken hook are no use
        if response["outcome"] not in ("success", "cancelled"):
            raise RuntimeError(f"a hook failed: {json.dumps(response)[:2000]}")
    return run, api


def report(results: dict[str, Any]) -> str:
    installs = results["installs"]
    base_turn = statistics.median(installs[NONE]["turnaround_s"])
    base_first = statistics.median(installs[NONE]["first_request_s"])
    rows = []
    for name, f in installs.items():
        turn = statistics.median(f["turnaround_s"])
        first = statistics.median(f["first_request_s"])
        rows.append(
            [
                name,
                f"{statistics.median(f['processes']):g}",
                f"{statistics.median(f['cpu_s']) * 1000:.0f} ms",
                f"{statistics.median(f['background']):g} / "
                f"{statistics.median(f['background_cpu_s']) * 1000:.0f} ms",
                f"{turn * 1000:.1f} ms ({turn / base_turn:.2f}x)",
                f"{(turn - base_turn) * 1000:+.1f} ms",
                f"{first * 1000:.0f} ms ({(first - base_first) * 1000:+.0f})",
                f"{sum(f['row_right']):g}/{len(f['row_right'])}",
                f"{sum(f['short_row_right']):g}/{len(f['short_row_right'])}",
                f"{sum(f['cancelled']):g}",
            ]
        )
    headers = [
        "install",
        "hook processes",
        "their CPU",
        "background procs / CPU",
        "wall per tool use",
        "gained",
        "to first request",
        "row right",
        "row right, no tool use",
        "hooks cancelled",
    ]
    earlier, default = installs[EARLIER_NAME], installs[DEFAULT]

    def med(figures: dict[str, list[float]], key: str) -> float:
        return statistics.median(figures[key])

    gained_earlier = med(earlier, "turnaround_s") - base_turn
    gained_default = med(default, "turnaround_s") - base_turn
    lines = [
        f"{results['claude_code']}; {results['rounds']} sessions of {results['tool_uses']} "
        f"tool uses per install and pass; medians per session (wall: per tool use, pooled)",
        "",
        table(headers, rows, markdown=True),
        "",
        "earlier / default: "
        f"hook processes {med(earlier, 'processes') / med(default, 'processes'):.1f}x, "
        f"their CPU {med(earlier, 'cpu_s') / med(default, 'cpu_s'):.1f}x "
        f"({_all_cpu(earlier) / _all_cpu(default):.1f}x with the background processes), "
        f"wall gained per tool use {gained_earlier * 1000:+.1f} ms vs "
        f"{gained_default * 1000:+.1f} ms",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
