"""`make profile`: a py-spy flame graph (SVG) of one API pod while the load test runs against the stack.

    PYTHONPATH=bench uv run python -m loadtest.profile [--pod 1] [--rate 60] [--duration 60s]

py-spy samples the pod's gunicorn master and its uvicorn worker
(--subprocesses) from outside, at 100 samples a second, without changing the
code or restarting the pod; the load test (bench/loadtest/run.py) drives the
same traffic it always does and writes its report beside the graph. py-spy
reads another process's memory, so it needs root or CAP_SYS_PTRACE.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from loadtest import run as loadtest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "local"))
import stack as local_stack  # noqa: E402  (deploy/local/stack.py: stdlib only)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="make profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pod", type=int, default=1, help="which API pod to sample (1)")
    parser.add_argument("--rate", type=loadtest.positive_float, default=60.0, help="offered requests per second (60)")
    parser.add_argument("--duration", type=loadtest.duration_seconds, default=60, help="how long: 30s, 1m, ... (60s)")
    arguments = parser.parse_args(argv)
    run_dir = Path(os.environ.get("RUN_DIR", ROOT / ".run"))
    stack = local_stack.Stack.load(run_dir)
    pid = stack.pids.get(f"api-{arguments.pod}") if stack else None
    if stack is None or pid is None or not local_stack.alive(pid):
        print(f"profile: no running api-{arguments.pod} in {run_dir}: run `make up` first", file=sys.stderr)
        return 2
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        print("profile: py-spy not found (it is in the dev dependency group: `make install`)", file=sys.stderr)
        return 2
    directory = run_dir / "profile" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    directory.mkdir(parents=True)
    svg = directory / f"api-{arguments.pod}.svg"
    # Sampling starts first and lasts the whole load test (seeding and warm-up included, ~15 s more).
    record = subprocess.Popen(
        [
            *(py_spy, "record", "--pid", str(pid), "--subprocesses", "--rate", "100", "--format", "flamegraph"),
            *("--output", str(svg), "--duration", str(arguments.duration + 15), "--nonblocking"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    status = loadtest.main(
        [
            *("--rate", str(arguments.rate), "--duration", f"{arguments.duration}s", "--seed-items", "500"),
            *("--results", str(directory)),
        ]
    )
    output, _ = record.communicate(timeout=120)
    if record.returncode != 0 or not svg.exists():
        print(f"profile: py-spy failed (exit {record.returncode}):\n{output}", file=sys.stderr)
        return 2
    print(f"profile: flame graph {svg} (load test verdict exit {status})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
