"""The typed state the lifespan yields, the process lifecycle, and the dependencies that expose them.

Resources reach handlers only through these `Annotated` aliases, never module
globals, so a test (or a fork) can build an app with other resources.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, TypedDict, cast

import redis.asyncio as redis
from fastapi import Depends, Request

from service.config import Settings
from service.db import Connection, Pool, acquire


@dataclass
class Lifecycle:
    """Where the process is in its life; `service.server` flips `draining` on SIGTERM."""

    drain_seconds: float = 0.0
    shutdown_budget_seconds: float = 30.0
    started: bool = False
    draining: bool = False


class State(TypedDict):
    settings: Settings
    pool: Pool
    redis: redis.Redis


def _state(request: Request) -> State:
    # The lifespan's state, copied into each request's scope by the server.
    return cast(State, request.scope["state"])


def get_settings(request: Request) -> Settings:
    return _state(request)["settings"]


def get_pool(request: Request) -> Pool:
    return _state(request)["pool"]


def get_redis(request: Request) -> redis.Redis:
    return _state(request)["redis"]


async def get_connection(request: Request) -> AsyncIterator[Connection]:
    state = _state(request)
    async with acquire(state["pool"], state["settings"].db_pool_acquire_timeout_seconds) as connection:
        yield connection


SettingsDep = Annotated[Settings, Depends(get_settings)]
PoolDep = Annotated[Pool, Depends(get_pool)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
ConnectionDep = Annotated[Connection, Depends(get_connection)]
