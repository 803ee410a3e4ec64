"""API keys: 401 without a valid key, 403 without the scope, reads public unless configured."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import asyncpg
import httpx
import orjson
import pytest

from service.app import create_app
from service.auth import KeyRing, bearer_token
from service.config import ApiKeySpec
from tests.fixtures.app import lifespan_client, make_settings
from tests.fixtures.backends import Backends
from tests.fixtures.items import ITEM, snapshot
from tests.fixtures.keys import READER_KEY, TEST_API_KEYS, WRITER, WRITER_KEY
from tests.fixtures.paths import ROOT

WRITES = [
    ("POST", "/v1/items", ITEM),
    ("PATCH", "/v1/items/1", {"stock": 1}),
    ("DELETE", "/v1/items/1", None),
]


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("Bearer cat_not-a-real-key", 401),
        (f"Basic {WRITER_KEY}", 401),
        ("Bearer ", 401),
        (f"Bearer {READER_KEY}", 403),
    ],
)
async def test_writes_need_a_key_with_the_scope(
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    method: str,
    path: str,
    body: object,
    authorization: str | None,
    status: int,
) -> None:
    assert (await client.post("/v1/items", json={**ITEM, "sku": "keep"})).status_code == 201
    before = await snapshot(db)
    headers = {"Authorization": authorization} if authorization is not None else {}
    client.headers.pop("Authorization")
    response = await client.request(method, path, json=body, headers=headers)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    challenge = response.headers.get("www-authenticate", "")
    if status == 401 and authorization == "Bearer cat_not-a-real-key":  # a credential, and not a valid one
        assert challenge.startswith('Bearer error="invalid_token"')
    elif status == 401:  # no bearer credential at all: RFC 6750, 3 says no error code
        assert challenge == "Bearer"
    else:
        assert challenge.startswith('Bearer error="insufficient_scope"')
        assert 'scope="items:write"' in challenge
    assert await snapshot(db) == before


async def test_authentication_comes_before_body_validation(client: httpx.AsyncClient) -> None:
    client.headers.pop("Authorization")
    response = await client.post("/v1/items", content=b"not json", headers={"content-type": "text/plain"})
    assert response.status_code == 401


async def test_reads_are_public_by_default(client: httpx.AsyncClient) -> None:
    client.headers.pop("Authorization")
    assert (await client.get("/v1/items")).status_code == 200


async def test_reads_can_require_a_key(backends: Backends, db: asyncpg.Connection) -> None:
    app = create_app(make_settings(backends, reads_require_key=True))
    async with lifespan_client(app) as client:
        assert (await client.get("/v1/items")).status_code == 401
        assert (await client.get("/v1/items/export.csv")).status_code == 401
        assert (await client.get("/v1/items", headers={"Authorization": f"Bearer {READER_KEY}"})).status_code == 200
        assert (await client.get("/v1/items", headers=WRITER)).status_code == 403  # write scope only
        assert (await client.get("/livez")).status_code == 200  # probes never need a key


def test_keyring_matches_only_the_exact_key() -> None:
    token = "cat_exact"
    ring = KeyRing([ApiKeySpec(name="one", sha256=hashlib.sha256(token.encode()).hexdigest(), scopes=frozenset())])
    assert ring.authenticate(token) is not None
    assert ring.authenticate(token + " ") is None
    assert ring.authenticate(token.upper()) is None
    assert ring.authenticate("") is None


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc", "abc"), ("bearer abc", "abc"), ("Bearer  abc ", "abc"), ("Basic abc", None), ("", None)],
)
def test_bearer_token_parsing(header: str, token: str | None) -> None:
    assert bearer_token(header) == token


def test_apikeys_command_prints_a_key_and_only_its_hash_for_the_settings() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.apikeys", "ci", "items:write"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    key_line, entry_line = result.stdout.splitlines()
    key = key_line.split()[-1]
    entry = orjson.loads(entry_line.split(":", 1)[1])
    assert key.startswith("cat_")
    assert entry == {"name": "ci", "sha256": hashlib.sha256(key.encode()).hexdigest(), "scopes": ["items:write"]}
    assert key not in entry_line
    bad = subprocess.run(
        [sys.executable, "-m", "service.apikeys", "ci", "root"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2
    assert "unknown scopes" in bad.stderr


async def test_job_reads_have_a_scope_of_their_own(backends: Backends, db: asyncpg.Connection) -> None:
    job_reader = "cat_test-job-reader"
    digest = hashlib.sha256(job_reader.encode()).hexdigest()
    keys = [*TEST_API_KEYS, {"name": "test-job-reader", "sha256": digest, "scopes": ["jobs:read"]}]
    app = create_app(make_settings(backends, reads_require_key=True, api_keys=keys))
    async with lifespan_client(app) as client:
        created = await client.post(
            "/v1/jobs", json={"kind": "cpu.burn", "params": {"milliseconds": 0}}, headers=WRITER
        )
        assert created.status_code == 202, created.text
        job = created.headers["location"]
        assert (await client.get(job)).status_code == 401
        items_reader = {"Authorization": f"Bearer {READER_KEY}"}
        assert (await client.get(job, headers=items_reader)).status_code == 403  # items:read reads no job
        jobs_reader = {"Authorization": f"Bearer {job_reader}"}
        assert (await client.get(job, headers=jobs_reader)).status_code == 200
        assert (await client.get("/v1/items", headers=jobs_reader)).status_code == 403  # nor jobs:read an item
