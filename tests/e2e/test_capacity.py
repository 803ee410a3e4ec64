"""`make capacity` for real, shortened: its own stack, vegeta through nginx, a knee, the worker, the report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.paths import ROOT

pytestmark = pytest.mark.e2e


@pytest.mark.skipif(shutil.which("go") is None, reason="vegeta is built with Go (bench/tools/vegeta.sh)")
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the pod gets one CPU and the rest the other")
def test_a_short_capacity_run_finds_a_knee_and_writes_the_report(tmp_path_factory: pytest.TempPathFactory) -> None:
    run_dir = Path(tmp_path_factory.mktemp("capacity", numbered=True))
    run_dir.chmod(0o755)  # PostgreSQL runs as `postgres` and must reach its data directory
    flags = ["--runs", "1", "--step-seconds", "3", "--start-rate", "60", "--factor", "4", "--max-rate", "4000"]
    flags += ["--pause-seconds", "0", "--worker-seconds", "1", "--seed-items", "100"]
    completed = subprocess.run(
        [sys.executable, "-m", "loadtest.capacity", *flags],
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT / "bench"), "RUN_DIR": str(run_dir)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    print(completed.stdout[-3000:], completed.stderr[-3000:])
    assert completed.returncode == 0, completed.stderr
    [directory] = (run_dir / "capacity" / "results").iterdir()
    result = json.loads((directory / "capacity.json").read_text())
    [steps] = result["runs"]
    assert steps[0]["offered_rps"] == 60
    assert steps[0]["held"], steps[0]
    # The search went past the knee (a failed step above it; the last step may be the narrowing one, held).
    knee = max(s["offered_rps"] for s in steps if s["held"])
    assert any(not s["held"] and s["offered_rps"] > knee for s in steps), steps
    for step in steps:
        # vegeta sent the offered rate (rate x seconds requests, each answered or counted as failed) unless
        # all its 400 workers waited on answers: then the step failed for the arrivals it could not keep.
        assert step["requests"] <= step["offered_rps"] * 3 * 1.02, step
        if step["held"]:
            assert step["requests"] == pytest.approx(step["offered_rps"] * 3, rel=0.05), step
        if step["achieved_rps"] < 0.95 * step["offered_rps"]:
            assert not step["held"], step
            assert "arrivals" in step["why"], step
        assert sum(step["statuses"].values()) == step["requests"]
        assert 0 < step["cpu_cores"] < 1.5  # one process pinned to one core (plus its helper threads)
        assert step["rss_bytes"] > 20 * 2**20
        assert step["pool_max"] == 10  # the chart's DB_POOL_MAX_SIZE, read from the pod's /metrics
    assert result["knees_rps"] == [max(s["offered_rps"] for s in steps if s["held"])]
    cpu = [s["cpu_cores"] for s in sorted(steps, key=lambda s: s["offered_rps"])]
    assert cpu[-1] > cpu[0]  # more offered load, more of the pod's CPU
    [worker] = result["worker"]
    assert worker["succeeded"] == worker["jobs"]
    assert worker["jobs_per_second"] > 1
    assert result["derived"]["jobs_per_replica"] == int(worker["jobs_per_second"] * 30)
    assert (directory / "capacity.png").read_bytes().startswith(b"\x89PNG")
    report = (directory / "report.md").read_text()
    assert "## The knee" in report
    assert "## What follows" in report
    # Nothing of its stack is left running
    stack = json.loads((run_dir / "capacity" / "stack" / "stack.json").read_text())
    for pid in stack["pids"].values():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
