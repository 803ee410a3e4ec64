"""deploy/nginx states the edge settings the chart assumes; they agree with the chart and the app."""

from __future__ import annotations

from typing import Any

import yaml

from service.config import Settings
from tests.fixtures.chart import CHART
from tests.fixtures.paths import ROOT

NGINX = ROOT / "deploy" / "nginx"
CHART_VALUES: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
APP_KEEPALIVE = Settings.model_fields["keepalive_seconds"].default


def test_ingress_nginx_settings_match_the_chart() -> None:
    config = yaml.safe_load((NGINX / "ingress-nginx-values.yaml").read_text())["controller"]["config"]
    keepalive = int(config["upstream-keepalive-timeout"])
    assert keepalive == CHART_VALUES["proxy"]["upstreamKeepaliveTimeoutSeconds"]
    assert keepalive < APP_KEEPALIVE
    assert config["limit-req-status-code"] == "429"
    assert config["generate-request-id"] == "true"
    assert config["allow-snippet-annotations"] == "false"
    for field in ("upstream_connect_time", "upstream_header_time", "upstream_response_time", "$req_id"):
        assert field in config["log-format-upstream"]


def test_gateway_fabric_policies_match_the_chart() -> None:
    policies = {
        doc["kind"]: doc for doc in yaml.safe_load_all((NGINX / "nginx-gateway-fabric-policies.yaml").read_text())
    }
    timeout = policies["UpstreamSettingsPolicy"]["spec"]["keepAlive"]["timeout"]
    assert int(timeout.rstrip("s")) == CHART_VALUES["proxy"]["upstreamKeepaliveTimeoutSeconds"]
    assert policies["ClientSettingsPolicy"]["spec"]["body"]["maxSize"] == "1m"
    assert CHART_VALUES["settings"]["maxBodyBytes"] == 1024 * 1024
