"""One minute of bench/soak.py: iipy behind nginx at saturation with the browsing mix of
bench/bench_tiles.py, two workers.  Every answer is a 200, no worker dies, and the
workers' anonymous memory does not grow beyond a bound between the first interval and
the last.  Throughput is reported, never asserted (the machine may be shared)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.e2e.conftest import REPO_ROOT, require_executable

pytestmark = pytest.mark.e2e

#: Largest growth of a worker's anonymous memory allowed over the minute, in MB.
ANON_GROWTH_MB = 16.0


def test_one_minute_soak_has_no_errors_and_flat_memory(tmp_path):
    require_executable("/usr/sbin/nginx", "nginx-light")
    require_executable("/usr/bin/wrk", "wrk")
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "soak.py"), "--minutes", "1",
         "--interval", "15", "--size", "2048", "--procs", "2", "--connections", "6",
         "--json", str(out), "--dir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    rows, summary = report["rows"], report["summary"]
    assert len(rows) == 4, done.stdout
    assert summary["errors"] == 0 and summary["5xx"] == 0 and summary["deaths"] == 0, done.stdout
    assert all(row["tiles"] > 0 and row["workers"] == 2 for row in rows), done.stdout
    assert all(row["anon_max_mb"] > 0 and row["rss_max_mb"] >= row["anon_max_mb"]
               for row in rows), done.stdout
    assert summary["anon_growth_mb"] <= ANON_GROWTH_MB, done.stdout
