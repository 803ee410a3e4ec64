"""The chart's HTTPRoute on the cluster's edge: Traefik serving Gateway API (deploy/platform/gateway.py).

Every request here goes client -> the edge's Service (ClusterIP, from the node) -> Traefik ->
an API pod, with the Host the route matches, as a user's traffic would. What is checked:

- smoke: /readyz, and an item written with a key and read back, through the edge;
- the Host match: a Host the route does not name gets the edge's own 404, never the app;
- a rolling update under load through the edge: no request fails, no acknowledged write is lost;
- the timeout chain: a request held past the app's budget gets the app's 503 problem+json,
  never the edge's 504 (the edge waits 30 s for a response head, the chart's
  proxy.readTimeoutSeconds; the app's budget is settings.requestTimeoutSeconds, 10 s). Last,
  as its failures open the pods' database breakers for a moment.

NGINX Gateway Fabric could not be built here (docs/edge-cluster.md says why); the NGINX-only
chart settings are not exercised by these tests.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
import httpx
import pytest

from tests.fixtures.backends import TableLock
from tests.fixtures.cluster import Release, eventually, query
from tests.fixtures.gateway import EDGE_HOST, GATEWAY_NAMESPACE, STATEMENT_TIMEOUT, Gateway, route_conditions
from tests.fixtures.items import new_item

# The first test also waits for the cluster, the edge's build, the image and the install.
pytestmark = pytest.mark.timeout(3600)

RATE = 20.0  # requests per second during the rollout, half writes, half reads of the item just written
DEADLINE = 600  # the rollout's load is bounded in time, whatever happens
HOST = {"Host": EDGE_HOST}
BUDGET = 10  # settings.requestTimeoutSeconds, the chart's default
STATEMENT = STATEMENT_TIMEOUT  # settings.dbStatementTimeoutSeconds of the edge release


def _edge(gateway: Gateway, **headers: str) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, headers={**HOST, **headers}, timeout=60)


def test_route_is_accepted_and_smoke_passes_through_the_edge(gateway: Gateway, edge_release: Release) -> None:
    conditions = route_conditions(edge_release.cluster, edge_release.namespace, edge_release.resource("api"))
    assert conditions.get("Accepted") == "True", conditions
    assert conditions.get("ResolvedRefs") == "True", conditions
    with _edge(gateway) as http:
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
        sku = f"edge-{uuid.uuid4().hex[:8]}"
        created = http.post(
            "/v1/items", json=new_item(1, sku=sku), headers={"Authorization": f"Bearer {edge_release.writer_key}"}
        )
        assert created.status_code == 201, created.text
        read = http.get(f"/v1/items/{created.json()['id']}")
    assert read.status_code == 200, read.text
    assert read.json()["sku"] == sku
    assert read.headers.get("x-request-id")  # the app's answer, through the edge


def test_a_host_the_route_does_not_name_gets_the_edges_404(gateway: Gateway, edge_release: Release) -> None:
    with _edge(gateway, Host="other.example") as http:
        stray = http.get("/readyz")
    with _edge(gateway) as http:
        missing = http.get("/v1/items/999999999")
    # Traefik's own answer: no route matched. Not the app's (problem+json, with a request id).
    assert stray.status_code == 404
    assert stray.headers["content-type"].startswith("text/plain"), stray.headers
    assert stray.text == "404 page not found\n"
    assert "x-request-id" not in stray.headers
    # The right Host reaches the app, whose 404 is a problem.
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert "x-request-id" in missing.headers


@dataclass
class Load:
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)  # skus the API acknowledged with 201
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, url: str, key: str) -> None:
        """Writes then reads back, RATE requests/s on keep-alive connections to the edge, as a browser would."""
        started = time.monotonic()
        n = 0
        with httpx.Client(base_url=url, headers={**HOST, "Authorization": f"Bearer {key}"}, timeout=30) as http:
            while not self.stop.is_set() and time.monotonic() - started < DEADLINE:
                n += 1
                sku = f"edge-roll-{uuid.uuid4().hex[:12]}"
                created = self._request(functools.partial(http.post, "/v1/items", json=new_item(n, sku=sku)), 201, sku)
                path = f"/v1/items/{created.json()['id']}" if created is not None else "/v1/items?limit=1"
                self._request(functools.partial(http.get, path), 200)
                time.sleep(max(0.0, started + n * 2 / RATE - time.monotonic()))

    def _request(
        self, send: Callable[[], httpx.Response], expected: int, sku: str | None = None
    ) -> httpx.Response | None:
        self.sent += 1
        try:
            response = send()
        except httpx.HTTPError as error:
            self.failed += 1
            self.errors.append(repr(error))
            return None
        if response.status_code != expected:
            self.failed += 1
            self.errors.append(f"{response.status_code} {response.text[:200]}")
            return None
        if sku is not None:
            self.written.append(sku)
        return response


def test_rolling_update_under_load_through_the_edge_loses_nothing(gateway: Gateway, edge_release: Release) -> None:
    old = {pod["metadata"]["name"] for pod in edge_release.pods("api") if not pod["metadata"].get("deletionTimestamp")}
    grace = float(str(edge_release.values.get("api.terminationGracePeriodSeconds", 45)))
    load = Load()
    client = threading.Thread(target=load.run, args=(gateway.url, edge_release.writer_key))
    client.start()
    try:
        time.sleep(5)  # steady traffic before the rollout starts
        started = time.monotonic()
        upgraded = edge_release.upgrade({"api.podAnnotations": {"edge-test/rollout": uuid.uuid4().hex}})
        rollout_seconds = time.monotonic() - started
        assert upgraded.returncode == 0, upgraded.stderr
        # helm returns once the new pods are ready; the old ones still drain: keep the load on until they exit.
        eventually(
            lambda: (
                None if not (old & {p["metadata"]["name"] for p in edge_release.pods("api")}) else "old pods remain"
            ),
            "the old API pods to exit",
            timeout=grace + 60,
        )
        time.sleep(2)
    finally:
        load.stop.set()
        client.join(timeout=60)
    new = {pod["metadata"]["name"] for pod in edge_release.pods("api") if not pod["metadata"].get("deletionTimestamp")}
    assert not (new & old), "every API pod was replaced"
    print(
        f"rolling update through the edge: {load.sent} requests, {load.failed} failed, rollout {rollout_seconds:.1f} s"
    )
    assert load.failed == 0, load.errors[:20]
    assert load.sent >= 100, "the load ran through the rollout"
    stored = {
        row["sku"] for row in query(edge_release.database_url, "SELECT sku FROM items WHERE sku LIKE 'edge-roll-%'")
    }
    lost = [sku for sku in load.written if sku not in stored]
    print(f"writes acknowledged {len(load.written)}, lost {len(lost)}")
    assert not lost, lost[:20]


@dataclass
class Held:
    status: int
    content_type: str
    body: str
    seconds: float


async def _held_requests(gateway: Gateway, database_url: str, item_id: int, count: int) -> list[Held]:
    """`count` reads sent at once while `items` is locked: each pod's 2 pool connections wait on the
    lock until their statement times out (STATEMENT s, a 503); the rest wait for a connection (the
    release lets them wait 9 s), get one at STATEMENT s, and are cut by the request budget at BUDGET s
    (a 503 too), before their own statement would end at 2 x STATEMENT."""

    async def one(http: httpx.AsyncClient) -> Held:
        started = time.monotonic()
        response = await http.get("/v1/items:batch", params={"ids": str(item_id)})
        return Held(response.status_code, response.headers.get("content-type", ""), response.text,
                    time.monotonic() - started)  # fmt: skip

    db = await asyncpg.connect(database_url)
    try:
        limits = httpx.Limits(max_keepalive_connections=0)  # a connection each, so none queues in the client
        async with (
            httpx.AsyncClient(base_url=gateway.url, headers=HOST, timeout=60, limits=limits) as http,
            TableLock(db),
        ):
            return list(await asyncio.gather(*(one(http) for _ in range(count))))
    finally:
        await db.close()


def test_timeout_chain_a_request_held_past_the_apps_budget_gets_the_apps_503(
    gateway: Gateway, edge_release: Release
) -> None:
    # The chain as configured: the edge's wait for a response head is the chart's
    # proxy.readTimeoutSeconds and outlasts the app's budget (deploy/platform/gateway.yaml).
    edge = edge_release.cluster.json("-n", GATEWAY_NAMESPACE, "get", "deployment", "traefik")
    args = edge["spec"]["template"]["spec"]["containers"][0]["args"]
    flag = "--serversTransport.forwardingTimeouts.responseHeaderTimeout="
    edge_seconds = float(next(a for a in args if a.startswith(flag)).removeprefix(flag).removesuffix("s"))
    assert edge_seconds == edge_release.values.get("proxy.readTimeoutSeconds", 30)
    assert edge_seconds > BUDGET
    with _edge(gateway, Authorization=f"Bearer {edge_release.writer_key}") as http:
        created = http.post("/v1/items", json=new_item(2, sku=f"held-{uuid.uuid4().hex[:8]}"))
    assert created.status_code == 201, created.text
    held = asyncio.run(_held_requests(gateway, edge_release.database_url, created.json()["id"], count=8))
    for response in held:
        print(f"held: {response.status} {response.seconds:.1f} s {response.body[:160]}")
    assert all(r.status == 503 and r.content_type == "application/problem+json" for r in held), held
    budget = [r for r in held if f"did not complete within {BUDGET} s" in r.body]
    assert budget, "no request waited past the budget: each pod's pool should have queued some"
    assert all(BUDGET - 0.5 < r.seconds < 2 * STATEMENT for r in budget), budget
    # The failures opened the pods' database breakers (service/db.py): leave them closed again.
    with _edge(gateway) as http:
        eventually(
            lambda: (
                None
                if all(http.get(f"/v1/items/{created.json()['id']}").status_code == 200 for _ in range(4))
                else "reads still refused"
            ),
            "the app to read again through the edge",
            timeout=30,
        )
