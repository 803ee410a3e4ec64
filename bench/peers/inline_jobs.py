"""The anti-example: our API, plus a route that runs the same CPU job inline, on the event loop.

This is what the worker tier exists to prevent: while `POST /v1/inline-jobs`
burns 200 ms of CPU, every other request on the pod waits. Served as
`gunicorn -c python:service.gunicorn_conf 'bench.peers.inline_jobs:create_app()'`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from service.app import create_app as create_service_app
from service.jobs.kinds import CpuBurnParams, JobContext, cpu_burn


def create_app() -> FastAPI:
    app = create_service_app()

    @app.post("/v1/inline-jobs")
    async def run_inline(milliseconds: int = 200) -> dict[str, Any]:
        # Deliberately wrong: CPU work in an async handler blocks the pod's only event loop.
        return cpu_burn(CpuBurnParams(milliseconds=milliseconds, fail_attempts=0), JobContext("inline", 1, ""))

    return app
