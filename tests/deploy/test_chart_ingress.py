"""The ways in (ingress-nginx, F5 NGINX Ingress, Gateway API HTTPRoute) follow the timeout chain."""

from __future__ import annotations

from tests.fixtures.chart import CI, name, render


def test_ingress_nginx_annotations_follow_the_timeout_chain() -> None:
    rendered = render([CI / "production-values.yaml"])
    ingress = rendered.get("Ingress", name("api"))
    annotations = ingress["metadata"]["annotations"]
    config = rendered.get("ConfigMap", name("settings"))["data"]
    read = int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"])
    assert read > float(config["REQUEST_TIMEOUT_SECONDS"]) > float(config["DB_STATEMENT_TIMEOUT_SECONDS"])
    assert float(config["REQUEST_TIMEOUT_SECONDS"]) > float(config["REDIS_COMMAND_TIMEOUT_SECONDS"])
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-connect-timeout"]) < read
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "1024k"  # MAX_BODY_BYTES
    assert int(annotations["nginx.ingress.kubernetes.io/limit-rps"]) > 0
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"][0]["secretName"] == "catalog-tls"


def test_f5_nginx_ingress_annotations() -> None:
    ingress = render([CI / "nginx-inc-values.yaml"]).get("Ingress", name("api"))
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.org/proxy-read-timeout"] == "30s"
    assert annotations["nginx.org/client-max-body-size"] == "1024k"
    assert not any(key.startswith("nginx.ingress.kubernetes.io/") for key in annotations)


def test_httproute_timeouts_follow_the_chain() -> None:
    rendered = render([CI / "httproute-values.yaml"])
    route = rendered.get("HTTPRoute", name("api"))
    [rule] = route["spec"]["rules"]
    assert rule["timeouts"]["backendRequest"] == "30s"
    assert int(rule["timeouts"]["request"].rstrip("s")) >= 30
    assert route["spec"]["parentRefs"][0]["name"] == "public"
    assert "Ingress" not in rendered.kinds()
    without = render(set_values={"httpRoute.enabled": True})
    [plain_rule] = without.get("HTTPRoute", name("api"))["spec"]["rules"]
    assert "timeouts" not in plain_rule, "off by default: NGINX Gateway Fabric does not implement them"


def test_response_buffering_is_off_unless_asked_for_on_both_flavors() -> None:
    """Exports stream through the edge (values.yaml says why); ingress.responseBuffering turns buffering on."""
    for values, key, off, on in (
        ("production-values.yaml", "nginx.ingress.kubernetes.io/proxy-buffering", "off", "on"),
        ("nginx-inc-values.yaml", "nginx.org/proxy-buffering", "False", "True"),
    ):
        default = render([CI / values]).get("Ingress", name("api"))["metadata"]["annotations"]
        assert default[key] == off
        buffered = render([CI / values], {"ingress.responseBuffering": True}).get("Ingress", name("api"))
        assert buffered["metadata"]["annotations"][key] == on
