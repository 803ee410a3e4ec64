"""Kubernetes probes. Kept off the access log (and, later, metrics and traces).

- `/livez`: the event loop answers; no I/O, so a slow database never gets a
  healthy pod restarted.
- `/readyz`: a writable PostgreSQL (the primary, not a server in recovery)
  answers within READINESS_TIMEOUT_SECONDS (else 503),
  asked on a connection of the probe's own, never one of the request pool's:
  a saturated pool is load, and must not turn every pod unready at once;
  Redis is checked too but only reported (`degraded`): without it the pod
  still serves, from PostgreSQL. 503 as soon as the pod starts draining so
  the load balancer stops routing to it. During a failover the probe's
  connection to a server that turned read-only is closed, so the next probe
  connects anew (to the new primary, with `target_session_attrs=read-write`).
- `/startupz`: the lifespan has finished (pools open, settings valid).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.db import Pool
from service.responses import json_response
from service.state import ProbePoolDep, RedisDep, SettingsDep, lifecycle

router = APIRouter(include_in_schema=False)


def _probe(status: int, body: dict[str, Any]) -> Response:
    return json_response(body, status, headers={"Cache-Control": "no-store"})


@router.get("/livez")
async def livez() -> Response:
    return _probe(200, {"status": "ok"})


@router.get("/startupz")
async def startupz(request: Request) -> Response:
    started = lifecycle(request).started
    return _probe(200 if started else 503, {"status": "ok" if started else "starting"})


async def _check(probe: Any, within_seconds: float) -> str:
    try:
        async with asyncio.timeout(within_seconds):
            await probe
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"; the body names it
        return f"error: {type(exc).__name__}"
    return "ok"


class ReadOnlyServer(Exception):
    """The probe's connection reached a server in recovery: no writes can be served through it."""


async def _writable_primary(pool: Pool) -> None:
    async with pool.acquire() as connection:
        if await connection.fetchval("SELECT pg_is_in_recovery()"):
            connection.terminate()
            raise ReadOnlyServer


@router.get("/readyz")
async def readyz(request: Request, settings: SettingsDep, probe_pool: ProbePoolDep, redis: RedisDep) -> Response:
    """PostgreSQL is hard (503 without it); Redis is soft (200, reported as degraded)."""
    if lifecycle(request).draining:
        return _probe(503, {"status": "draining"})
    timeout = settings.readiness_timeout_seconds
    # The probes bypass the circuit breakers: they are how recovery gets noticed. PostgreSQL
    # is asked on the probe's own connection: a busy request pool is load, not unreadiness.
    postgres, cache = await asyncio.gather(
        _check(_writable_primary(probe_pool), timeout),
        _check(redis.ping(), timeout),
    )
    checks = {"postgres": postgres, "redis": cache}
    if postgres != "ok":
        return _probe(503, {"status": "unavailable", "checks": checks})
    return _probe(200, {"status": "ok" if cache == "ok" else "degraded", "checks": checks})
