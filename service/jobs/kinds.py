"""The job kinds: what each one accepts and the plain function that does the work.

To add a kind: write a pydantic model for its params and a function
`(params, context) -> dict` (JSON-serialisable result), and add a `JobKind` to
`KINDS`. The API validates params against the model before enqueueing; the
worker validates again and runs the function in a child process, where it may
burn CPU for as long as its timeout allows without touching any event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
import unicodedata
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Final

import asyncpg
from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True)
class JobContext:
    """What a job function may know about its run, besides its params."""

    job_id: str
    attempt: int
    database_url: str
    request_id: str | None = None
    # DATABASE_POOL_MODE=transaction: no statement cache (named statements cannot cross a transaction-mode pooler).
    transaction_pooled: bool = False


class PermanentJobError(Exception):
    """Raised by a job that can never succeed: it goes to `dead` without further attempts."""


@dataclass(frozen=True)
class JobKind:
    name: str
    params: type[BaseModel]
    run: Callable[[Any, JobContext], dict[str, Any]]
    description: str
    # Per-kind cap on one attempt; the worker's JOB_TIMEOUT_SECONDS applies when lower or None.
    timeout_seconds: float | None = None


# --- cpu.burn: a tunable amount of pure CPU work, for load and autoscaling demos ---------


class CpuBurnParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    milliseconds: int = Field(ge=0, le=600_000, description="CPU time to burn; 0 is a no-op job.")
    fail_attempts: int = Field(
        0, ge=0, le=100, description="Fault injection: raise on attempts 1..n (for retry and dead-letter drills)."
    )


def cpu_burn(params: CpuBurnParams, context: JobContext) -> dict[str, Any]:
    if context.attempt <= params.fail_attempts:
        raise RuntimeError(f"injected failure on attempt {context.attempt} of {params.fail_attempts}")
    deadline = time.process_time() + params.milliseconds / 1000
    digest = b"catalog"
    rounds = 0
    # Hash in small batches: CPU time only advances while we work, so a starved
    # process still does the full amount of work, not just the wall time.
    while time.process_time() < deadline:
        for _ in range(200):
            digest = hashlib.sha256(digest).digest()
        rounds += 200
    return {"milliseconds": params.milliseconds, "rounds": rounds, "digest": digest.hex()[:16]}


# --- catalog.report: statistics and percentiles of prices per category ------------------


class CatalogReportParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    percentiles: list[Annotated[float, Field(ge=0, le=100)]] = Field(
        default=[50.0, 90.0, 99.0], min_length=1, max_length=10, description="Percentiles of price_cents, 0-100."
    )
    batch_size: int = Field(5000, ge=100, le=50_000, description="Rows read per round trip.")


MAX_REPORT_CATEGORIES: Final = 1000


def _percentile(sorted_values: array[int], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    rank = (len(sorted_values) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


async def _read_prices(context: JobContext, batch_size: int) -> tuple[dict[str, array[int]], dict[str, int], int]:
    prices: dict[str, array[int]] = {}
    stock_value: dict[str, int] = {}
    rows = 0
    conn = await asyncpg.connect(
        context.database_url,
        timeout=10,
        server_settings={"application_name": "catalog-job"},
        statement_cache_size=0 if context.transaction_pooled else 100,
    )
    try:
        # One snapshot for the whole report, read by a server-side cursor in batches.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            # A cursor declared in SQL: asyncpg's cursor() leaves a named statement on the server
            # connection, which a transaction-mode pooler hands to other clients (items/repository.py).
            await conn.execute("DECLARE report NO SCROLL CURSOR FOR SELECT category, price_cents, stock FROM items")
            while batch := await conn.fetch(f"FETCH FORWARD {int(batch_size)} FROM report"):
                rows += len(batch)
                for stored, price, stock in batch:
                    # Grouped by the NFC form: rows stored before the API normalised text
                    # (service/items/schemas.py) may hold one category in two Unicode forms.
                    category = unicodedata.normalize("NFC", stored)
                    prices.setdefault(category, array("q")).append(price)
                    stock_value[category] = stock_value.get(category, 0) + price * stock
    finally:
        await conn.close()
    return prices, stock_value, rows


def catalog_report(params: CatalogReportParams, context: JobContext) -> dict[str, Any]:
    prices, stock_value, rows = asyncio.run(_read_prices(context, params.batch_size))
    categories = []
    for category in sorted(prices, key=lambda name: (-len(prices[name]), name))[:MAX_REPORT_CATEGORIES]:
        values = array("q", sorted(prices[category]))
        count = len(values)
        mean = sum(values) / count
        variance = sum((value - mean) ** 2 for value in values) / count
        categories.append(
            {
                "category": category,
                "items": count,
                "price_cents": {
                    "min": values[0],
                    "max": values[-1],
                    "mean": round(mean, 2),
                    "stddev": round(math.sqrt(variance), 2),
                    "percentiles": {f"p{p:g}": round(_percentile(values, p), 2) for p in params.percentiles},
                },
                "stock_value_cents": stock_value[category],
            }
        )
    return {
        "items": rows,
        "categories": len(prices),
        "truncated": len(prices) > MAX_REPORT_CATEGORIES,
        "by_category": categories,
    }


KINDS: Final[dict[str, JobKind]] = {
    kind.name: kind
    for kind in (
        JobKind(
            "catalog.report",
            CatalogReportParams,
            catalog_report,
            "Price statistics and percentiles per category, over the whole catalog.",
        ),
        JobKind("cpu.burn", CpuBurnParams, cpu_burn, "Burn the given CPU time (load and autoscaling demos)."),
    )
}
