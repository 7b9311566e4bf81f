"""``reconcile demo``, the README's main job, end to end on its own embedded server."""

from __future__ import annotations

import json
import subprocess

from reconcile_helpers import clean_env, reconcile_command


def test_demo_reports_no_loss_and_agrees_with_the_database():
    done = subprocess.run(
        [*reconcile_command(), "demo", "--agents", "10", "--forks", "60", "--json"],
        capture_output=True,
        env=clean_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["forks"] == 60
    assert report["hits"] + report["misses"] == 60
    assert report["lost"] == 0 and report["verified"] is True
    assert report["hits"] > 0 and report["misses"] >= 8  # every agent missed at least once
    assert report["db_transactions"] == report["misses"]  # one transaction per miss
    assert report["audit_rows"] <= report["misses"]
    assert 0 < report["p50_ms"] <= report["p99_ms"]
    assert set(report) >= {"forks", "hits", "misses", "lost", "p50_ms", "p99_ms"}
