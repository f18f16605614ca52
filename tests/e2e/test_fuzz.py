"""A short run of the live fuzzer (bench/fuzz.py): iipy with two workers behind nginx,
four connections of mutated IIP requests (and raw FastCGI ones) for 20 seconds.  Not one
5xx, traceback, worker death or HTTP connection error; the answers are a mix of images
and clean refusals."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.e2e.conftest import NGINX_BIN, REPO_ROOT, require_executable

pytestmark = pytest.mark.e2e


def test_twenty_seconds_of_mutated_requests(tmp_path):
    require_executable(NGINX_BIN, "nginx-light")
    summary_path = tmp_path / "summary.json"
    run = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "fuzz.py"), "--duration", "20",
         "--connections", "4", "--workers", "2", "--seed", "7", "--report", "5",
         "--json", str(summary_path)],
        capture_output=True, text=True, timeout=180, cwd=REPO_ROOT)
    report = run.stdout + run.stderr
    assert summary_path.exists(), report
    summary = json.loads(summary_path.read_text())
    assert (summary["5xx"], summary["tracebacks"], summary["worker_deaths"]) == (0, 0, 0), report
    assert not [k for k in summary["errors"] if not k.startswith("fcgi")], report
    assert run.returncode == 0, report
    statuses = {int(k): v for k, v in summary["statuses"].items()}
    assert summary["requests"] >= 2000, report
    assert statuses.get(200, 0) >= 200 and statuses.get(400, 0) and statuses.get(404, 0), report
    assert set(statuses) <= {200, 303, 304, 400, 404, 501}, report  # 303, 501: IIIF's
    assert summary["fcgi_statuses"], report  # the raw FastCGI share reached iipy too
