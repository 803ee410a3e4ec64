"""deploy/nginx states the edge settings the chart assumes; they agree with the chart and the app."""

from __future__ import annotations

import json
import re
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


def test_every_error_page_of_the_local_edge_is_a_problem_whose_status_is_the_status_line() -> None:
    template = (NGINX / "local.conf.template").read_text()
    pages = re.findall(r"error_page (\d+) =(\d+) (/_edge/\d+);", template)
    assert {code for code, _, _ in pages} >= {"400", "404", "413", "414", "494", "500", "502", "503", "504"}
    assert "error_page" not in re.sub(r"error_page (\d+) =(\d+) (/_edge/\d+);", "", template)  # no other form
    for code, status, uri in pages:
        location = re.search(re.escape(f"location = {uri} {{") + r"(.*?)\n        }", template, re.S)
        assert location is not None, uri
        body = location[1]
        assert "internal;" in body
        assert "default_type application/problem+json;" in body
        assert "add_header X-Request-ID $edge_request_id always;" in body
        returned = re.search(r"return (\d+) '(.*)';", body)
        assert returned is not None, uri
        problem = json.loads(returned[2])
        assert returned[1] == status == str(problem["status"]), (code, status, returned[1], problem)
        assert problem["type"] == "about:blank"
        assert code == status or (code, status) == ("494", "431")
