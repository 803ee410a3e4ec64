"""A rolling update under steady load on the local cluster: `helm upgrade` changes the API's pod
template while a client sends reads and writes through the Service (its ClusterIP, from the node,
through kube-proxy). Every request must succeed and every acknowledged write must be in PostgreSQL.

The client opens a new connection per request, as a Service client without an edge proxy does, so
each request meets kube-proxy's current endpoints; the pods' preStop sleep covers the time the
endpoint removal takes to reach kube-proxy, and the drain covers requests already in flight.
"""

from __future__ import annotations

import functools
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import httpx
import pytest

from tests.fixtures.cluster import Release, eventually, kubectl_binary, query
from tests.fixtures.items import new_item

# The first test also waits for the cluster, the image and the install (tests/fixtures/cluster.py).
pytestmark = pytest.mark.timeout(1500)

RATE = 20.0  # requests per second, half writes, half reads of the item just written
DEADLINE = 600  # the whole load is bounded in time, whatever happens


@dataclass
class Load:
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)  # skus the API acknowledged with 201
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, url: str, key: str) -> None:
        headers = {"Authorization": f"Bearer {key}"}
        started = time.monotonic()
        n = 0
        with httpx.Client(
            base_url=url, headers=headers, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)
        ) as http:
            while not self.stop.is_set() and time.monotonic() - started < DEADLINE:
                n += 1
                sku = f"roll-{uuid.uuid4().hex[:12]}"
                item = new_item(n, sku=sku)
                created = self._request(functools.partial(http.post, "/v1/items", json=item), 201, sku)
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


# One line per watch event: name, deletionTimestamp (or -), then container=exitCode@finishedAt for terminated ones.
TEMPLATE = (
    "{{.metadata.name}} "
    "{{if .metadata.deletionTimestamp}}{{.metadata.deletionTimestamp}}{{else}}-{{end}} "
    "{{range .status.containerStatuses}}{{if .state.terminated}}"
    "{{.name}}={{.state.terminated.exitCode}}@{{.state.terminated.finishedAt}} "
    "{{end}}{{end}}\n"
)


def _stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_rolling_update_under_load_loses_nothing(release: Release) -> None:
    old = {pod["metadata"]["name"] for pod in release.pods("api") if not pod["metadata"].get("deletionTimestamp")}
    grace = release.values.get("api.terminationGracePeriodSeconds", 45)
    selector = f"app.kubernetes.io/instance={release.name},app.kubernetes.io/component=api"
    argv = [kubectl_binary(), f"--kubeconfig={release.cluster.kubeconfig}", "-n", release.namespace]
    watch = subprocess.Popen([*argv, "get", "pods", "-l", selector, "--watch", "-o", f"go-template={TEMPLATE}"],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    # Each log is read as it comes, by a thread of its own: a pipe left unread fills (64 KiB) and
    # stalls kubectl, and the drain at the end never arrives. The earlier tests leave long logs behind,
    # so only their last lines are asked for.
    logs = {name: subprocess.Popen([*argv, "logs", "--follow", "--tail=50", name, "-c", "api"],
                                   stdout=subprocess.PIPE, text=True) for name in old}  # fmt: skip
    read: dict[str, list[str]] = {name: [] for name in old}
    readers = [threading.Thread(target=lambda n=name, p=process: read[n].extend(p.stdout or []), daemon=True)
               for name, process in logs.items()]  # fmt: skip
    for reader in readers:
        reader.start()
    load = Load()
    client = threading.Thread(target=load.run, args=(release.service_url(), release.writer_key))
    client.start()
    try:
        time.sleep(5)  # steady traffic before the rollout starts
        started = time.monotonic()
        upgraded = release.upgrade({"api.podAnnotations": {"cluster-test/rollout": uuid.uuid4().hex}})
        rollout_seconds = time.monotonic() - started
        assert upgraded.returncode == 0, upgraded.stderr
        # helm returns once the new pods are ready; the old ones are still draining. Keep the load on
        # until the last of them has exited, so the whole drain happens under traffic.
        eventually(
            lambda: None if not (old & {p["metadata"]["name"] for p in release.pods("api")}) else "old pods remain",
            "the old API pods to exit",
            timeout=float(str(grace)) + 60,
        )
        time.sleep(2)
    finally:
        load.stop.set()
        client.join(timeout=30)
    # The old pods are gone once their last watch line says so: give the watch a moment, then read it.
    time.sleep(3)
    watch.terminate()
    watched = watch.communicate(timeout=10)[0]
    for process in logs.values():
        process.terminate()
        process.wait(timeout=10)
    for reader in readers:
        reader.join(timeout=10)
    for process in logs.values():
        if process.stdout is not None:
            process.stdout.close()
    texts = {name: "".join(lines) for name, lines in read.items()}

    new = {pod["metadata"]["name"] for pod in release.pods("api") if not pod["metadata"].get("deletionTimestamp")}
    assert not (new & old), "every API pod was replaced"
    print(f"rolling update: {load.sent} requests, {load.failed} failed, rollout {rollout_seconds:.1f} s")
    assert load.failed == 0, load.errors[:20]
    assert load.sent >= 100, "the load ran through the rollout"
    stored = {row["sku"] for row in query(release.database_url, "SELECT sku FROM items WHERE sku LIKE 'roll-%'")}
    lost = [sku for sku in load.written if sku not in stored]
    print(f"writes acknowledged {len(load.written)}, lost {len(lost)}")
    assert not lost, lost[:20]

    for name in old:
        # service/server.py's line when the pod's SIGTERM starts the drain (a recycle or reload says another reason).
        drained = [line for line in texts[name].splitlines() if "closing connections before the worker stops" in line]
        assert any('"reason":"SIGTERM"' in line for line in drained), (
            f"{name} log did not show its drain:\n{texts[name][-3000:]}"
        )
        lines = [line.split() for line in watched.splitlines() if line.startswith(name + " ")]
        ended = [line for line in lines if len(line) > 2 and line[2].startswith("api=")]
        assert ended, f"{name}: the watch never saw the api container terminate:\n{watched[-3000:]}"
        code, finished = ended[-1][2].removeprefix("api=").split("@")
        # deletionTimestamp is when the grace period ends (deletion request + grace), not the request.
        deadline = _stamp(next(line[1] for line in lines if line[1] != "-"))
        took = float(str(grace)) - (deadline - _stamp(finished)).total_seconds()
        print(f"{name}: exit {code} {took:.0f} s after deletion (grace {grace} s)")
        assert code == "0"
        assert took <= float(str(grace))
