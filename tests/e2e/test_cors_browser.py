"""CORS in a real browser: a page on another loopback origin calls the API with a bearer token from Dex.

The API (gunicorn) allows one origin (CORS_ALLOW_ORIGINS). Headless chromium loads a
page from that origin and one from another; each page's script sends
`POST /v1/items` with `Authorization: Bearer <token>` and a JSON body, which needs a
preflight. For the allowed origin the preflight and the call succeed and the script
reads the exposed headers; for the other, chromium blocks the call and the server
sees only the refused preflight.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.fixtures.browser import Browser, Pages
from tests.fixtures.identity import AUDIENCE, SCOPE_MAP, Dex
from tests.fixtures.processes import ApiProcess

pytestmark = pytest.mark.e2e

EXPOSED = ["Location", "Retry-After", "X-Request-ID", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"]
NOT_EXPOSED = ["X-Content-Type-Options", "Cross-Origin-Resource-Policy", "Referrer-Policy"]

PAGE = """<!doctype html>
<meta charset="utf-8"><title>catalog CORS probe</title>
<script>
const NAMES = %(names)s;
async function call(api, token, method, path, body) {
  try {
    const response = await fetch(api + path, {
      method,
      headers: {"Authorization": "Bearer " + token, "Content-Type": "application/json"},
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const headers = {};
    for (const name of NAMES) headers[name] = response.headers.get(name);
    return {status: response.status, headers, readable: [...response.headers.keys()]};
  } catch (error) {
    return {error: String(error)};
  }
}
</script>
"""


def page() -> str:
    return PAGE % {"names": json.dumps(EXPOSED + NOT_EXPOSED)}


def post_item(browser: Browser, api: str, token: str) -> dict[str, Any]:
    item = {"sku": f"cors-{uuid.uuid4()}", "name": "Widget", "category": "tools", "price_cents": 1, "stock": 1}
    result: dict[str, Any] = browser.evaluate(
        f"call({json.dumps(api)}, {json.dumps(token)}, 'POST', '/v1/items', {json.dumps(item)})"
    )
    return result


def cors_api(start_api: Callable[..., ApiProcess], dex: Dex, allowed: str) -> ApiProcess:
    return start_api(
        CORS_ALLOW_ORIGINS=allowed,
        OIDC_ISSUER_URL=dex.issuer,
        OIDC_AUDIENCE=AUDIENCE,
        OIDC_SCOPE_CLAIMS="groups",
        OIDC_SCOPE_MAP=json.dumps(SCOPE_MAP),
        RATE_LIMIT_WRITES="3/minute",  # so the page also meets a 429 and its Retry-After
    )


def test_an_allowed_origin_calls_the_api_with_a_token_and_reads_the_exposed_headers(
    browser: Browser, pages: Pages, start_api: Callable[..., ApiProcess], dex: Dex
) -> None:
    allowed = pages.serve(page())
    api = cors_api(start_api, dex, allowed)
    browser.open(allowed + "/")
    token = dex.token()

    created = post_item(browser, api.url, token)
    assert created.get("status") == 201, created
    headers = created["headers"]
    assert headers["Location"].startswith("/v1/items/")
    assert headers["X-Request-ID"]
    assert headers["X-RateLimit-Limit"] == "3"
    assert headers["X-RateLimit-Remaining"] is not None
    assert headers["X-RateLimit-Reset"] is not None
    for name in NOT_EXPOSED:  # sent by the server, withheld from the script by the browser
        assert headers[name] is None, name
    limited = [post_item(browser, api.url, token) for _ in range(4)][-1]
    assert limited.get("status") == 429, limited
    assert int(limited["headers"]["Retry-After"]) >= 1
    print(f"page at {allowed} read: {sorted(created['readable'])}; on the 429 also Retry-After")

    access = api.logs(until=lambda line: line.get("status") == 429)
    preflights = [line for line in access if line.get("method") == "OPTIONS"]
    assert preflights, "chromium sent no preflight"
    assert {line["status"] for line in preflights} == {200}


def test_another_origin_is_blocked_by_the_browser(
    browser: Browser, pages: Pages, start_api: Callable[..., ApiProcess], dex: Dex
) -> None:
    allowed = pages.serve(page())
    other = pages.serve(page())
    api = cors_api(start_api, dex, allowed)
    browser.open(other + "/")

    blocked = post_item(browser, api.url, dex.token())
    assert "error" in blocked, blocked  # fetch rejects: the script learns nothing, not even a status
    assert "Failed to fetch" in blocked["error"]

    access = api.logs(until=lambda line: line.get("method") == "OPTIONS")
    preflights = [line for line in access if line.get("method") == "OPTIONS"]
    assert [line["status"] for line in preflights] == [400]  # Starlette refuses the preflight
    assert not [line for line in access if line.get("method") == "POST"], "the POST itself must never be sent"
    print(f"page at {other} (API allows only {allowed}): {blocked['error']}")
