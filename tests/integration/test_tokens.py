"""Access tokens beside API keys, in-process: real Dex tokens, and each attack as its own test.

Tokens Dex can issue come from Dex (tests/fixtures/identity.py). An attack needs a
token signed by a key we hold, so those are forged with keys the test generates and
published (or not) by `KeyServer`, an issuer on loopback whose keys the test controls.
Each case names the RFC 6750 answer it expects.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from service.app import create_app
from service.metrics import TOKEN_REJECTIONS
from tests.fixtures.app import lifespan_client, make_settings
from tests.fixtures.backends import Backends
from tests.fixtures.identity import AUDIENCE, READER, SCOPE_MAP, Dex, KeyServer, SigningKeyPair, dex_binary
from tests.fixtures.items import ITEM
from tests.fixtures.keys import WRITER

INVALID = 'Bearer error="invalid_token"'


@asynccontextmanager
async def token_client(backends: Backends, issuer: str, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        backends,
        oidc_issuer_url=issuer,
        oidc_audience=AUDIENCE,
        reads_require_key=True,
        **overrides,
    )
    async with lifespan_client(create_app(settings)) as http:
        yield http


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def refused(http: httpx.AsyncClient, token: str, reason: str) -> httpx.Response:
    """POST with `token`: a 401 invalid_token problem, counted under `reason`, and nothing written."""
    before = TOKEN_REJECTIONS.labels(reason)._value.get()
    response = await http.post("/v1/items", json={**ITEM, "sku": f"attack-{uuid.uuid4()}"}, headers=bearer(token))
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith(INVALID)
    assert TOKEN_REJECTIONS.labels(reason)._value.get() == before + 1
    return response


def b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# --- real tokens from Dex ---------------------------------------------------------------------------


@pytest.fixture
async def dex_client(backends: Backends, dex: Dex, db: asyncpg.Connection) -> AsyncIterator[httpx.AsyncClient]:
    async with token_client(backends, dex.issuer, oidc_scope_claims=["groups"], oidc_scope_map=SCOPE_MAP) as http:
        yield http


async def test_a_dex_token_writes_and_the_subject_is_the_principal(
    dex_client: httpx.AsyncClient, dex: Dex, db: asyncpg.Connection
) -> None:
    token = dex.token()
    created = await dex_client.post("/v1/items", json=ITEM, headers=bearer(token))
    assert created.status_code == 201, created.text
    assert (await dex_client.get(f"/v1/items/{created.json()['id']}", headers=bearer(token))).status_code == 200
    job = await dex_client.post(
        "/v1/jobs", json={"kind": "cpu.burn", "params": {"milliseconds": 1}}, headers=bearer(token)
    )
    assert job.status_code == 202
    subject = jwt.decode(token, options={"verify_signature": False})["sub"]
    created_by = await db.fetchval("SELECT created_by FROM jobs WHERE id = $1", uuid.UUID(job.json()["id"]))
    assert created_by == f"sub:{subject}"  # the subject, never the token


async def test_a_dex_token_without_the_scope_is_403_naming_it(dex_client: httpx.AsyncClient, dex: Dex) -> None:
    token = dex.token(READER)
    assert (await dex_client.get("/v1/items", headers=bearer(token))).status_code == 200
    response = await dex_client.post("/v1/items", json=ITEM, headers=bearer(token))
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="insufficient_scope"')
    assert 'scope="items:write"' in challenge


async def test_api_keys_keep_working_beside_tokens(dex_client: httpx.AsyncClient) -> None:
    assert (await dex_client.post("/v1/items", json=ITEM, headers=WRITER)).status_code == 201


async def test_a_token_is_refused_where_no_issuer_is_configured(backends: Backends, dex: Dex) -> None:
    async with lifespan_client(create_app(make_settings(backends))) as http:
        response = await http.post("/v1/items", json=ITEM, headers=bearer(dex.token()))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith(INVALID)


async def test_a_flood_of_unknown_kids_costs_dex_one_jwks_fetch_per_interval(
    backends: Backends, dex: Dex, db: asyncpg.Connection
) -> None:
    interval = 1.0
    forger = SigningKeyPair.generate("unused")
    async with token_client(backends, dex.issuer, oidc_jwks_min_refetch_seconds=interval) as http:
        await asyncio.sleep(interval)  # the startup fetch is older than one interval: the flood may fetch
        before, started = dex.key_fetches(), time.monotonic()

        async def attempt(index: int) -> int:
            claims = {"iss": dex.issuer, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60}
            token = jwt.encode(claims, forger.private, algorithm="RS256", headers={"kid": f"flood-{index}"})
            return (await http.get("/v1/items", headers=bearer(token))).status_code

        statuses: list[int] = []
        for wave in range(5):  # 5 waves of 60 concurrent requests, spread over about 2 s
            statuses += await asyncio.gather(*(attempt(wave * 60 + i) for i in range(60)))
            await asyncio.sleep(0.4)
        elapsed = time.monotonic() - started
        fetches = dex.key_fetches() - before
    assert statuses == [401] * 300
    # One fetch may start at once, then at most one per interval after it.
    assert 1 <= fetches <= 1 + int(elapsed / interval), (fetches, elapsed)
    print(f"unknown-kid flood: 300 requests in {elapsed:.2f} s, {fetches} JWKS fetches at Dex (interval {interval} s)")


async def test_cached_keys_keep_working_while_the_issuer_is_down(
    backends: Backends, db: asyncpg.Connection, tmp_path_factory: pytest.TempPathFactory
) -> None:
    own = Dex(dex_binary(), tmp_path_factory.mktemp("dex-down")).start()  # the session's Dex stays up
    try:
        token = own.token()
        async with token_client(
            backends, own.issuer, oidc_scope_claims=["groups"], oidc_scope_map=SCOPE_MAP,
            oidc_jwks_min_refetch_seconds=0.2, oidc_jwks_refresh_seconds=0.5,
        ) as http:  # fmt: skip
            assert (await http.post("/v1/items", json=ITEM, headers=bearer(token))).status_code == 201
            own.stop()
            await asyncio.sleep(1.2)  # two background refreshes fail meanwhile; the keys are kept
            again = await http.post("/v1/items", json={**ITEM, "sku": "during-outage"}, headers=bearer(token))
            assert again.status_code == 201, again.text
            # A token naming a key we never saw cannot be checked now: refused as invalid, not a 5xx.
            stranger = SigningKeyPair.generate("new-key").sign({"iss": own.issuer, "aud": AUDIENCE, "sub": "x",
                                                                "exp": int(time.time()) + 60})  # fmt: skip
            assert (await http.get("/v1/items", headers=bearer(stranger))).status_code == 401
    finally:
        own.stop()


# --- attacks, with keys the test holds ----------------------------------------------------------------


@pytest.fixture
async def forged_client(
    backends: Backends, key_server: KeyServer, db: asyncpg.Connection
) -> AsyncIterator[httpx.AsyncClient]:
    async with token_client(backends, key_server.issuer, oidc_leeway_seconds=5) as http:
        yield http


async def test_a_forged_token_signed_by_a_published_key_is_accepted(
    forged_client: httpx.AsyncClient, key_server: KeyServer
) -> None:
    # The control for every attack below: same issuer, same key, honest claims.
    token = key_server.published[0].sign(key_server.claims())
    assert (await forged_client.post("/v1/items", json=ITEM, headers=bearer(token))).status_code == 201


async def test_attack_alg_none(forged_client: httpx.AsyncClient, key_server: KeyServer) -> None:
    token = f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': 'key-1'})}.{b64(key_server.claims())}."
    await refused(forged_client, token, "algorithm")


async def test_attack_hs256_signed_with_the_issuers_public_key(
    forged_client: httpx.AsyncClient, key_server: KeyServer
) -> None:
    public_pem = (
        key_server.published[0]
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = b64({"alg": "HS256", "typ": "JWT", "kid": "key-1"})
    payload = b64(key_server.claims())
    # Signed by hand: PyJWT itself refuses to use a PEM public key as an HMAC secret.
    signature = b64(hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    await refused(forged_client, f"{header}.{payload}.{signature}", "algorithm")


async def test_attack_expired(forged_client: httpx.AsyncClient, key_server: KeyServer) -> None:
    now = int(time.time())
    token = key_server.published[0].sign(key_server.claims(iat=now - 600, exp=now - 60))  # past the 5 s leeway
    await refused(forged_client, token, "expired")


async def test_attack_not_yet_valid(forged_client: httpx.AsyncClient, key_server: KeyServer) -> None:
    token = key_server.published[0].sign(key_server.claims(nbf=int(time.time()) + 600))
    await refused(forged_client, token, "not_yet_valid")


async def test_attack_wrong_issuer(forged_client: httpx.AsyncClient, key_server: KeyServer) -> None:
    token = key_server.published[0].sign(key_server.claims(iss="https://attacker.example/"))
    await refused(forged_client, token, "issuer")


async def test_attack_wrong_audience(forged_client: httpx.AsyncClient, key_server: KeyServer) -> None:
    token = key_server.published[0].sign(key_server.claims(aud="another-application"))
    await refused(forged_client, token, "audience")


async def test_attack_signature_from_an_unknown_key_under_a_published_kid(
    forged_client: httpx.AsyncClient, key_server: KeyServer
) -> None:
    impostor = SigningKeyPair.generate("key-1")  # claims to be key-1, is not
    await refused(forged_client, impostor.sign(key_server.claims()), "signature")


async def test_attack_signature_from_an_unpublished_kid(
    forged_client: httpx.AsyncClient, key_server: KeyServer
) -> None:
    stranger = SigningKeyPair.generate("never-published")
    await refused(forged_client, stranger.sign(key_server.claims()), "unknown_key")


async def test_attack_tampered_payload(forged_client: httpx.AsyncClient, key_server: KeyServer) -> None:
    header, _, signature = key_server.published[0].sign(key_server.claims(scope="items:read")).split(".")
    await refused(forged_client, f"{header}.{b64(key_server.claims(scope='items:write'))}.{signature}", "signature")


async def test_attack_token_in_the_query_string(forged_client: httpx.AsyncClient, key_server: KeyServer) -> None:
    token = key_server.published[0].sign(key_server.claims())
    for method, path in [("POST", "/v1/items"), ("GET", "/v1/items"), ("GET", "/v1/items/1")]:
        response = await forged_client.request(method, path, params={"access_token": token}, json=ITEM)
        assert response.status_code == 400, (method, path)
        assert response.headers["www-authenticate"].startswith('Bearer error="invalid_request"')
        assert response.json()["type"] == "/problems/credential-in-query"
    # Also beside a valid header: the URL would still carry the token into logs.
    response = await forged_client.get("/v1/items", params={"access_token": token}, headers=bearer(token))
    assert response.status_code == 400


async def test_attack_oversized_token(forged_client: httpx.AsyncClient, key_server: KeyServer) -> None:
    token = key_server.published[0].sign(key_server.claims(padding="x" * 9000))
    fetches = key_server.jwks_requests
    response = await refused(forged_client, token, "too_large")
    assert "8192" in response.json()["detail"]
    assert key_server.jwks_requests == fetches  # refused before any key lookup


async def test_attack_a_flood_of_unknown_kids_fetches_once_per_interval(
    backends: Backends, key_server: KeyServer, db: asyncpg.Connection
) -> None:
    interval = 0.5
    async with token_client(backends, key_server.issuer, oidc_jwks_min_refetch_seconds=interval) as http:
        await asyncio.sleep(interval)
        before, started = key_server.jwks_requests, time.monotonic()
        forger = SigningKeyPair.generate("x")
        for wave in range(4):
            tokens = [
                jwt.encode(key_server.claims(), forger.private, algorithm="RS256", headers={"kid": f"k{wave}-{i}"})
                for i in range(100)
            ]
            answers = await asyncio.gather(*(http.get("/v1/items", headers=bearer(t)) for t in tokens))
            assert {a.status_code for a in answers} == {401}
            await asyncio.sleep(0.2)
        elapsed = time.monotonic() - started
        fetches = key_server.jwks_requests - before
    assert 1 <= fetches <= 1 + int(elapsed / interval), (fetches, elapsed)
    print(f"unknown-kid flood: 400 requests in {elapsed:.2f} s, {fetches} JWKS fetches (interval {interval} s)")


async def test_key_rotation_new_key_accepted_without_restart_removed_key_refused_after_the_cache(
    backends: Backends, key_server: KeyServer, db: asyncpg.Connection
) -> None:
    old = key_server.published[0]
    new = SigningKeyPair.generate("key-2")
    refresh = 1.0
    async with token_client(
        backends, key_server.issuer, oidc_jwks_refresh_seconds=refresh, oidc_jwks_min_refetch_seconds=0.2
    ) as http:
        old_token = old.sign(key_server.claims())
        assert (await http.get("/v1/items", headers=bearer(old_token))).status_code == 200
        # The issuer publishes key-2 beside key-1 and starts signing with it: the first key-2 token
        # finds an unknown kid, the JWKS is refetched, and it is accepted. No restart.
        await asyncio.sleep(0.3)
        key_server.published = [old, new]
        assert (await http.get("/v1/items", headers=bearer(new.sign(key_server.claims())))).status_code == 200
        assert (await http.get("/v1/items", headers=bearer(old_token))).status_code == 200  # still published
        # key-1 is retired: it is refused once the cached set is refreshed (at most `refresh` later),
        # even for a token that was accepted (and remembered) before.
        key_server.published = [new]
        await asyncio.sleep(refresh * 2.5)
        response = await http.get("/v1/items", headers=bearer(old_token))
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith(INVALID)
        assert (await http.get("/v1/items", headers=bearer(new.sign(key_server.claims())))).status_code == 200


async def test_issuer_down_at_startup_keys_work_tokens_get_503_until_it_is_back(
    backends: Backends, key_server: KeyServer, db: asyncpg.Connection
) -> None:
    key_server.down = True
    async with token_client(backends, key_server.issuer, oidc_jwks_min_refetch_seconds=0.3) as http:
        assert (await http.post("/v1/items", json=ITEM, headers=WRITER)).status_code == 201  # the service started
        token = key_server.published[0].sign(key_server.claims())
        response = await http.get("/v1/items", headers=bearer(token))
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert int(response.headers["retry-after"]) >= 1
        # A forged token is no better off: still no key to judge it by.
        assert (await http.get("/v1/items", headers=bearer("a.b.c"))).status_code == 401  # malformed first
        key_server.down = False
        await asyncio.sleep(0.4)
        assert (await http.get("/v1/items", headers=bearer(token))).status_code == 200


async def test_what_the_client_chose_is_echoed_short(forged_client: httpx.AsyncClient, key_server: KeyServer) -> None:
    # The kid and alg come from the attacker; the answer quotes at most 40 characters of them.
    long_kid = SigningKeyPair.generate("k" * 5000).sign(key_server.claims())
    response = await refused(forged_client, long_kid, "unknown_key")
    assert len(response.headers["www-authenticate"]) < 200
    for alg in ["X" * 3000, "\r\nSet-Cookie: a=b"]:
        header = b64({"alg": alg, "kid": "key-1"})
        response = await refused(forged_client, f"{header}.{b64(key_server.claims())}.sig", "algorithm")
        assert len(response.headers["www-authenticate"]) < 200
        assert "set-cookie" not in response.headers
