"""The committed Prometheus configuration is valid for the Prometheus we run."""

from __future__ import annotations

import shutil
import subprocess

from tests.fixtures.paths import ROOT


def test_promtool_accepts_the_local_prometheus_config() -> None:
    config = ROOT / "monitoring" / "prometheus" / "prometheus.yml"
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool comes with Debian's prometheus package (make install installs it)"
    result = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
