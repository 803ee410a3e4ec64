"""The worker's pure parts: CPU sizing from the cgroup, retry backoff, its settings' invariants."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from service.config import ConfigurationError, load_worker_settings
from service.worker import metrics as worker_metrics
from service.worker.__main__ import available_cpus
from service.worker.runner import retry_delay
from tests.fixtures.paths import ROOT


def test_available_cpus_follows_the_cgroup_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == affinity  # no limit: every CPU we may run on
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert available_cpus(tmp_path) == min(affinity, 2)  # 1.5 CPUs of quota: two slots, rounded up
    (tmp_path / "cpu.max").write_text("10000 100000\n")
    assert available_cpus(tmp_path) == 1  # never zero
    assert available_cpus(tmp_path / "missing") == affinity  # cgroup v1 or no cgroup: affinity alone


def test_retry_delay_doubles_is_capped_and_jittered() -> None:
    for attempt, step in [(1, 2.0), (2, 4.0), (3, 8.0), (10, 60.0)]:
        delays = [retry_delay(attempt, base=2.0, cap=60.0) for _ in range(500)]
        assert min(delays) >= step / 2
        assert max(delays) <= step
        assert max(delays) - min(delays) > step / 4  # spread out, not one instant


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db.internal:5432/catalog")
    return monkeypatch


def test_worker_settings_need_no_redis_and_default_sensibly(env: pytest.MonkeyPatch) -> None:
    settings = load_worker_settings()
    assert settings.service_name == "catalog-worker"
    assert settings.worker_concurrency == 0
    assert settings.job_lease_seconds == 30
    assert settings.worker_shutdown_grace_seconds == 60


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"JOB_LEASE_SECONDS": "1", "WORKER_POLL_INTERVAL_SECONDS": "2"}, "JOB_LEASE_SECONDS must be at least 1.5 x"),
        ({"JOB_RETRY_BASE_SECONDS": "60", "JOB_RETRY_MAX_SECONDS": "10"}, "JOB_RETRY_BASE_SECONDS must not exceed"),
        ({"WORKER_CONCURRENCY": "-1"}, "WORKER_CONCURRENCY is invalid"),
        ({"JOB_TIMEOUT_SECONDS": "0"}, "JOB_TIMEOUT_SECONDS is invalid"),
    ],
)
def test_bad_worker_settings_name_the_variable(
    env: pytest.MonkeyPatch, variables: dict[str, str], message: str
) -> None:
    for name, value in variables.items():
        env.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        load_worker_settings()
    assert message in str(caught.value.code)


def test_a_job_process_whose_parent_is_already_gone_exits_at_once() -> None:
    """The death signal only covers deaths after prctl: a process already orphaned must not go on."""
    code = "import os; from service.worker.pool import die_with; die_with(os.getppid() + 1); print('still running')"
    orphan = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    assert (orphan.returncode, orphan.stdout) == (1, "")
    code = "import os; from service.worker.pool import die_with; die_with(os.getppid()); print('still running')"
    child = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    assert (child.returncode, child.stdout) == (0, "still running\n")


def test_every_queue_operation_the_runner_names_is_created_at_zero() -> None:
    """worker_database_errors_total{operation} children exist before the first failure (a first failed
    statement would otherwise be no increase): the runner may name only operations in DB_OPERATIONS."""
    source = (ROOT / "service" / "worker" / "runner.py").read_text()
    named = set(re.findall(r'(?:_db|_write|DB_ERRORS\.labels)\(\s*"([a-z_]+)"', source))
    assert len(named) >= 8
    assert named <= set(worker_metrics.DB_OPERATIONS), named - set(worker_metrics.DB_OPERATIONS)
