"""`make capacity` (bench/loadtest/capacity.py): the request mix it offers, how it finds the knee, what it
derives, and that the chart's scaling defaults and the recorded run agree."""

from __future__ import annotations

import base64
import json
import math
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from loadtest import capacity

from tests.fixtures.paths import ROOT

RECORDED = ROOT / "bench" / "results"
EDGE = "http://127.0.0.1:8000"


def _fixture() -> capacity.Fixture:
    return capacity.Fixture("cat_key", list(range(1, 2001)), [f"cursor{n}" for n in range(10)], ["j1", "j2"])


def _kind(target: dict[str, Any]) -> str:
    url = target["url"].removeprefix(EDGE)
    if target["method"] != "GET" or url.startswith("/v1/jobs"):
        return "write"
    if url.startswith("/v1/items?"):
        return "list"
    if url.startswith("/v1/items:batch"):
        return "batch"
    if url == "/v1/items/export.csv":
        return "export"
    return "hot" if int(url.rsplit("/", 1)[1]) <= 20 else "cold"


def test_the_offered_mix_is_the_load_tests_with_writes_at_their_own_rate() -> None:
    lines = capacity.targets(EDGE, _fixture(), rate=1000, write_rate=2, seconds=20, seed=7)
    assert len(lines) == 20_000  # rate x seconds: vegeta sends them in this order
    targets = [json.loads(line) for line in lines]
    kinds = Counter(_kind(t) for t in targets)
    assert kinds["write"] == 20_000 // 500  # one in rate / write_rate
    reads = sum(n for kind, n in kinds.items() if kind != "write")
    weights = sum(capacity.READ_MIX.values())
    for kind in ("list", "batch", "cold"):  # cold reads of ids 1..20 count as hot here: a few
        share = capacity.READ_MIX[kind] / weights
        assert abs(kinds[kind] / reads - share) < 0.02, (kind, kinds)
    hot = capacity.READ_MIX["hot"] / weights
    assert kinds["hot"] / reads >= hot - 0.02
    assert kinds["export"] > 0


def test_writes_carry_the_key_and_unique_bodies_and_reads_their_own_client_address() -> None:
    targets = [
        json.loads(line) for line in capacity.targets(EDGE, _fixture(), rate=300, write_rate=3, seconds=30, seed=1)
    ]
    writes = [t for t in targets if _kind(t) == "write"]
    reads = [t for t in targets if _kind(t) != "write"]
    assert {t["method"] for t in writes} == {"POST", "PATCH", "GET"}
    assert all(t["header"]["Authorization"] == ["Bearer cat_key"] for t in writes)
    skus = [json.loads(base64.b64decode(t["body"]))["sku"] for t in writes if t["url"].endswith("/v1/items")]
    assert skus
    assert len(set(skus)) == len(skus)
    assert all("Authorization" not in t["header"] for t in reads)
    addresses = [t["header"]["X-Forwarded-For"][0] for t in reads]
    assert set(addresses) <= set(capacity.ADDRESSES)
    assert len(set(addresses)) > 700  # spread over people: the per-client read limit never answers 429
    assert all(t["url"].startswith(EDGE) for t in targets)


def test_a_different_seed_offers_a_different_sequence_of_the_same_mix() -> None:
    first = capacity.targets(EDGE, _fixture(), rate=100, write_rate=1, seconds=10, seed=1)
    again = capacity.targets(EDGE, _fixture(), rate=100, write_rate=1, seconds=10, seed=1)
    other = capacity.targets(EDGE, _fixture(), rate=100, write_rate=1, seconds=10, seed=2)
    assert first == again
    assert first != other


def _step(rate: float, *, held: bool, cpu: float = 0.5, pool: int = 3) -> capacity.Step:
    return capacity.Step(
        offered_rps=rate,
        achieved_rps=rate,
        requests=int(rate * 20),
        p50_seconds=0.002,
        p99_seconds=0.05 if held else 0.4,
        error_share=0.0,
        statuses={"200": int(rate * 20)},
        cpu_cores=cpu,
        rss_bytes=80 * 2**20,
        pool_in_use_peak=pool,
        pool_max=10,
        server_errors={},
        pool_waits=0.0,
        machine_busy=[0.3, 0.6],
        held=held,
    )


def test_the_knee_is_the_highest_rate_that_held_even_after_a_narrowing_step() -> None:
    steps = [_step(100, held=True), _step(130, held=True), _step(169, held=False), _step(150, held=True)]
    best = capacity.knee(steps)
    assert best is not None
    assert best.offered_rps == 150
    assert capacity.knee([_step(100, held=False)]) is None


def test_derive_turns_the_knee_into_the_hpa_target_replicas_and_the_worker_queue_target() -> None:
    chart = capacity.chart_settings([])
    knees = [_step(900, held=True, cpu=0.6), _step(1000, held=True, cpu=0.7, pool=9), _step(1100, held=True, cpu=0.8)]
    worker = [capacity.WorkerRun(jobs=100, milliseconds=20, seconds=4.0, succeeded=100, slots=1)]
    derived = capacity.derive(knees, worker, chart, headroom=0.3, peak_rps=2000)
    assert derived["knee_rps"] == 1000  # the median run
    assert derived["cpu_at_knee_cores"] == pytest.approx(0.7)
    assert derived["api_cpu_request_cores"] == pytest.approx(0.7)  # already a multiple of 50 m
    assert derived["hpa_target_percent"] == 70  # 1 - headroom
    assert derived["hpa_target_cpu_cores"] == pytest.approx(0.49)
    assert derived["rps_per_pod_at_target"] == 700
    assert derived["replicas_for_peak"] == math.ceil(2000 / 700) + 1
    assert derived["pool_in_use_peak_at_knee"] == 9
    assert derived["worker_jobs_per_second"] == 25.0
    assert derived["queue_wait_target_seconds"] == 30  # half of slo.toml's queue_wait_alert_seconds (60)
    assert derived["jobs_per_replica"] == 750
    assert derived["minutes_between_recycles_at_target"] == round(200_000 / 700 / 60, 1)  # MAX_REQUESTS's default
    odd = capacity.derive([_step(1000, held=True, cpu=0.712)], worker, chart, headroom=0.25, peak_rps=100)
    assert odd["api_cpu_request_cores"] == pytest.approx(0.75)  # rounded up, never down
    assert odd["hpa_target_percent"] == 75
    assert odd["replicas_for_peak"] == chart.min_replicas  # a small peak still gets two pods


def test_the_pod_gets_the_charts_settings_and_your_values_change_them(tmp_path: Path) -> None:
    defaults = capacity.chart_settings([])
    assert defaults.api_env["ENVIRONMENT"] == "production"
    assert defaults.api_env["WEB_CONCURRENCY"] == "1"
    assert {"PORT", "METRICS_PORT", "DATABASE_URL", "SECRET_KEY"}.isdisjoint(defaults.api_env)
    assert defaults.worker_env["WORKER_CONCURRENCY"] == "1"
    mine = tmp_path / "mine.yaml"
    mine.write_text("settings:\n  dbPoolMaxSize: 6\napi:\n  resources:\n    requests:\n      cpu: 750m\n")
    changed = capacity.chart_settings([mine])
    assert changed.api_env["DB_POOL_MAX_SIZE"] == "6"
    assert changed.api_cpu_request == pytest.approx(0.75)


def test_values_the_chart_refuses_stop_the_run_with_helms_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("database:\n  connectionBudget: 5\n")
    with pytest.raises(capacity.CapacityError, match="connectionBudget"):
        capacity.chart_settings([bad])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--runs", "0"], "--runs >= 1"),
        (["--factor", "1"], "--factor > 1"),
        (["--headroom", "1"], "--headroom is a share"),
        (["--values", "/nonexistent.yaml"], "no such file"),
    ],
)
def test_bad_flags_are_refused_naming_the_flag(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        capacity.parse_arguments(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The recorded run and the chart's defaults


def _recorded() -> dict[str, Any]:
    recorded: dict[str, Any] = json.loads((RECORDED / "capacity.json").read_text())
    return recorded


def test_the_recorded_run_has_three_searches_each_with_a_knee_and_a_failed_step_above_it() -> None:
    recorded = _recorded()
    assert len(recorded["runs"]) == 3
    for steps in recorded["runs"]:
        best = capacity.knee([capacity.Step(**s) for s in steps])
        assert best is not None
        assert any(not s["held"] and s["offered_rps"] > best.offered_rps for s in steps)  # the search went past it
    assert recorded["knees_rps"] == [
        capacity.knee([capacity.Step(**s) for s in steps]).offered_rps  # type: ignore[union-attr]
        for steps in recorded["runs"]
    ]


def test_the_recorded_report_is_what_its_data_and_the_current_chart_give(tmp_path: Path) -> None:
    shutil.copy(RECORDED / "capacity.json", tmp_path / "capacity.json")
    text = capacity.redraw(tmp_path, [])
    assert text == (RECORDED / "capacity.md").read_text(), "rerun: python -m loadtest.capacity --redraw bench/results"
    assert json.loads((tmp_path / "capacity.json").read_text()) == _recorded()
    assert (tmp_path / "capacity.png").read_bytes().startswith(b"\x89PNG")


def test_the_charts_scaling_defaults_are_the_ones_the_recorded_run_derives() -> None:
    derived = _recorded()["derived"]
    values = yaml.safe_load((ROOT / "deploy" / "helm" / "catalog" / "values.yaml").read_text())
    assert values["api"]["autoscaling"]["targetCPUUtilizationPercentage"] == derived["hpa_target_percent"]
    assert capacity._quantity(values["api"]["resources"]["requests"]["cpu"]) == pytest.approx(
        derived["api_cpu_request_cores"]
    )
    assert values["worker"]["keda"]["jobsPerReplica"] == derived["jobs_per_replica"]
    assert derived["connections_at_max"] <= derived["connection_budget"]
    assert derived["pool_in_use_peak_at_knee"] <= derived["pool_max"]
    values_text = (ROOT / "deploy" / "helm" / "catalog" / "values.yaml").read_text()
    assert "make capacity" in values_text
    assert "bench/results/capacity.md" in values_text
