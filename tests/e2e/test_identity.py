"""Access tokens through the real server: gunicorn + uvicorn against Dex, then nginx in front (`make up`).

Every request of a test goes over one keep-alive connection, the way a client and
the edge talk to a pod, so a refused token must not poison the connection for the
next request.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import jwt
import orjson
import pytest
import servers

from tests.fixtures.identity import AUDIENCE, READER, SCOPE_MAP, Dex, KeyServer, SigningKeyPair, dex_binary
from tests.fixtures.keys import WRITER, WRITER_KEY
from tests.fixtures.paths import ROOT
from tests.fixtures.processes import ApiProcess

pytestmark = pytest.mark.e2e

ITEM = {"name": "Widget", "category": "tools", "price_cents": 500, "stock": 5}


def item() -> dict[str, object]:
    """An item with a SKU of its own: the session's database outlives each test."""
    return {**ITEM, "sku": f"idp-{uuid.uuid4()}"}


def token_env(dex: Dex, **extra: str) -> dict[str, str]:
    return {
        "OIDC_ISSUER_URL": dex.issuer,
        "OIDC_AUDIENCE": AUDIENCE,
        "OIDC_SCOPE_CLAIMS": "groups",
        "OIDC_SCOPE_MAP": orjson.dumps(SCOPE_MAP).decode(),
        "READS_REQUIRE_KEY": "true",
        **extra,
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def attacks(dex: Dex) -> dict[str, tuple[str, int]]:
    """name: (token, expected status) for the cases that need no key server."""
    now = int(time.time())
    good = {"iss": dex.issuer, "aud": AUDIENCE, "sub": "x", "exp": now + 60, "groups": ["catalog-editors"]}
    forger = SigningKeyPair.generate("forged")
    real = dex.token()
    header, payload, _ = real.split(".")
    return {
        "alg none": (f"{b64({'alg': 'none', 'kid': jwt.get_unverified_header(real)['kid']})}.{payload}.", 401),
        "unknown key": (forger.sign(good), 401),
        "tampered payload": (f"{header}.{b64({**good, 'sub': 'someone-else'})}.{real.split('.')[2]}", 401),
        "oversized": (forger.sign({**good, "padding": "x" * 9000}), 401),
        "not a JWT": ("a.b.c", 401),
    }


def test_tokens_through_gunicorn_on_one_keep_alive_connection(start_api: Callable[..., ApiProcess], dex: Dex) -> None:
    api = start_api(**token_env(dex))
    editor, reader = dex.token(), dex.token(READER)
    with httpx.Client(base_url=api.url, timeout=10) as http:
        created = http.post("/v1/items", json=item(), headers=bearer(editor))
        assert created.status_code == 201, created.text
        denied = http.post("/v1/items", json=item(), headers=bearer(reader))
        assert denied.status_code == 403
        assert denied.headers["www-authenticate"].startswith('Bearer error="insufficient_scope"')
        assert 'scope="items:write"' in denied.headers["www-authenticate"]
        for name, (token, status) in attacks(dex).items():
            response = http.post("/v1/items", json=item(), headers=bearer(token))
            assert response.status_code == status, name
            assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"'), name
        query = http.get("/v1/items", params={"access_token": editor}, headers=bearer(editor))
        assert query.status_code == 400
        assert http.get("/v1/items", headers=bearer(reader)).status_code == 200  # the connection still serves
        assert http.post("/v1/items", json=item(), headers=WRITER).status_code == 201


def test_tokens_never_reach_the_logs(start_api: Callable[..., ApiProcess], dex: Dex) -> None:
    api = start_api(**token_env(dex))
    editor = dex.token()
    signature = editor.split(".")[2]
    with httpx.Client(base_url=api.url, timeout=10) as http:
        assert http.post("/v1/items", json=item(), headers=bearer(editor)).status_code == 201
        forged = editor[:-4] + "AAAA"
        assert http.post("/v1/items", json=item(), headers=bearer(forged)).status_code == 401
        assert http.get("/v1/items", params={"access_token": editor}).status_code == 400
        assert http.get("/v1/items/1", headers=WRITER).status_code == 403  # the last request
    api.logs(until=lambda line: line.get("path") == "/v1/items/1")
    log = api.logfile.read_text()
    for secret in (editor, signature, forged[-40:], WRITER_KEY):
        assert secret not in log
    subject = jwt.decode(editor, options={"verify_signature": False})["sub"]
    assert f'"principal":"sub:{subject}"' in log  # who did it is logged, by subject


def test_unknown_kid_flood_through_gunicorn_costs_dex_one_fetch_per_interval(
    start_api: Callable[..., ApiProcess], dex: Dex
) -> None:
    interval = 1.0
    api = start_api(**token_env(dex, OIDC_JWKS_MIN_REFETCH_SECONDS=str(interval)))
    forger = SigningKeyPair.generate("x")
    claims = {"iss": dex.issuer, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 120}
    time.sleep(interval)
    before, started = dex.key_fetches(), time.monotonic()
    with httpx.Client(base_url=api.url, timeout=10) as http:
        statuses = [
            http.get(
                "/v1/items", headers=bearer(jwt.encode(claims, forger.private, "RS256", {"kid": f"k{i}"}))
            ).status_code
            for i in range(200)
        ]
    elapsed, fetches = time.monotonic() - started, dex.key_fetches() - before
    assert statuses == [401] * 200
    assert 1 <= fetches <= 1 + int(elapsed / interval), (fetches, elapsed)
    print(f"through gunicorn: 200 unknown kids in {elapsed:.2f} s, {fetches} JWKS fetches at Dex")


def test_issuer_down_at_startup_the_server_starts_keys_work_tokens_get_503(
    start_api: Callable[..., ApiProcess], dex: Dex
) -> None:
    nobody = f"http://127.0.0.1:{servers.free_port()}/dex"  # nothing listens there
    api = start_api(
        OIDC_ISSUER_URL=nobody, OIDC_AUDIENCE=AUDIENCE, OIDC_HTTP_TIMEOUT_SECONDS="0.5", READS_REQUIRE_KEY="true"
    )
    with httpx.Client(base_url=api.url, timeout=10) as http:
        assert http.get("/readyz").status_code == 200
        assert http.post("/v1/items", json=item(), headers=WRITER).status_code == 201
        response = http.get("/v1/items", headers=bearer(dex.token()))  # a real token, from another issuer
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert "retry-after" in response.headers
    assert any("could not fetch the issuer's signing keys" in line.get("msg", "") for line in api.logs())


def test_key_rotation_through_gunicorn_without_a_restart(
    start_api: Callable[..., ApiProcess], key_server: KeyServer
) -> None:
    old, new = key_server.published[0], SigningKeyPair.generate("key-2")
    api = start_api(
        OIDC_ISSUER_URL=key_server.issuer,
        OIDC_AUDIENCE=AUDIENCE,
        OIDC_JWKS_REFRESH_SECONDS="1",
        OIDC_JWKS_MIN_REFETCH_SECONDS="0.2",
        READS_REQUIRE_KEY="true",
    )
    old_token = old.sign(key_server.claims())
    with httpx.Client(base_url=api.url, timeout=10) as http:
        assert http.get("/v1/items", headers=bearer(old_token)).status_code == 200
        time.sleep(0.3)
        key_server.published = [old, new]  # the issuer rotates in key-2 and signs with it
        assert http.get("/v1/items", headers=bearer(new.sign(key_server.claims()))).status_code == 200
        key_server.published = [new]  # and retires key-1
        time.sleep(2.5)  # more than two refresh intervals
        retired = http.get("/v1/items", headers=bearer(old_token))
        assert retired.status_code == 401
        assert retired.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
        assert http.get("/v1/items", headers=bearer(new.sign(key_server.claims()))).status_code == 200


def test_cached_keys_keep_working_through_gunicorn_while_dex_is_down(
    start_api: Callable[..., ApiProcess], tmp_path: Path
) -> None:
    own = Dex(dex_binary(), tmp_path).start()  # the session's Dex stays up for the other tests
    try:
        api = start_api(**token_env(own, OIDC_JWKS_REFRESH_SECONDS="0.5", OIDC_JWKS_MIN_REFETCH_SECONDS="0.2"))
        token = own.token()
        with httpx.Client(base_url=api.url, timeout=10) as http:
            assert http.post("/v1/items", json=item(), headers=bearer(token)).status_code == 201
            own.stop()
            time.sleep(1.5)  # background refreshes fail meanwhile; the pod keeps its keys
            assert http.post("/v1/items", json=item(), headers=bearer(token)).status_code == 201
            assert http.get("/readyz").status_code == 200  # the issuer is not a readiness dependency
    finally:
        own.stop()
    assert any("could not fetch the issuer's signing keys" in line.get("msg", "") for line in api.logs())


# --- through nginx: the `make up` stack ------------------------------------------------------------


@pytest.fixture(scope="module")
def stack_with_tokens(dex: Dex) -> Iterator[dict[str, str]]:
    run_dir = Path(tempfile.mkdtemp(prefix="catalog-idp-stack-"))
    run_dir.chmod(0o755)  # PostgreSQL runs as `postgres` and must reach its directory
    env = {key: value for key, value in os.environ.items() if key not in {"DATABASE_URL", "REDIS_URL", "API_KEYS"}}
    ports = [servers.free_port() for _ in range(9)]
    env.update(
        RUN_DIR=str(run_dir),
        API_PORT=str(ports[0]),
        API_POD_PORTS=f"{ports[1]},{ports[2]}",
        POSTGRES_PORT=str(ports[3]),
        REDIS_PORT=str(ports[4]),
        API_POD_METRICS_PORTS=f"{ports[5]},{ports[6]}",
        PROMETHEUS_PORT=str(ports[7]),
        WORKER_METRICS_PORT=str(ports[8]),
        SHUTDOWN_DRAIN_SECONDS="1",
        **token_env(dex),
    )
    stack = [sys.executable, str(ROOT / "deploy" / "local" / "stack.py")]
    up = subprocess.run([*stack, "up"], env=env, capture_output=True, text=True, timeout=240, check=False)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield env
    finally:
        subprocess.run([*stack, "down"], env=env, capture_output=True, text=True, timeout=120, check=False)
        shutil.rmtree(run_dir, ignore_errors=True)


def test_tokens_through_nginx_and_both_pods(stack_with_tokens: dict[str, str], dex: Dex) -> None:
    url = f"http://127.0.0.1:{stack_with_tokens['API_PORT']}"
    editor, reader = dex.token(), dex.token(READER)
    with httpx.Client(base_url=url, timeout=10) as http:
        for _ in range(4):  # nginx spreads these over both pods; each verifies on its own
            created = http.post("/v1/items", json=item(), headers=bearer(editor))
            assert created.status_code == 201, created.text
        denied = http.post("/v1/items", json=item(), headers=bearer(reader))
        assert denied.status_code == 403
        assert 'error="insufficient_scope"' in denied.headers["www-authenticate"]  # nginx passes the challenge on
        cases = attacks(dex)
        oversized, _ = cases.pop("oversized")
        for name, (token, status) in cases.items():
            response = http.get("/v1/items", headers=bearer(token))
            assert response.status_code == status, name
            assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"'), name
        assert http.get("/v1/items", params={"access_token": editor}).status_code == 400
        assert http.get("/v1/items", headers=bearer(reader)).status_code == 200
    # A header line over nginx's 8 kB buffer (large_client_header_buffers) never reaches a pod:
    # nginx answers 431 itself, as problem+json like the API's own 431.
    with httpx.Client(base_url=url, timeout=10) as http:
        refused = http.get("/v1/items", headers=bearer(oversized))
        assert refused.status_code == 431
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["status"] == 431
    with httpx.Client(base_url=url, timeout=10) as http:  # any header line that long, not only a token
        assert http.get("/v1/items", headers={"Cookie": "session=" + "x" * 9000}).status_code == 431
