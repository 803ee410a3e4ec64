"""Deeply nested JSON bodies through the real server: a 4xx problem at every depth, never a 500.

The fault: a job's params check recursed over the parsed body. Python 3.11's parser refuses
about 990 levels before that check runs; 3.12's (the image's Python then) accepted them and
the check raised RecursionError (500). The tests run the image's Python now
(tests/deploy/test_dockerfile.py); tests/unit/test_json_depth.py feeds the check what 3.12's
parser accepts. Every body with JSON goes through here: jobs and items, create and update.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from service.guards import MAX_JSON_DEPTH
from tests.fixtures.keys import WRITER
from tests.fixtures.processes import ApiProcess

pytestmark = pytest.mark.e2e
DEPTHS = (MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 500, 960, 5000, 100_000)


def _nested(depth: int, opener: str = '{"a":', closer: str = "}") -> str:
    return opener * depth + "1" + closer * depth


def _bodies(depth: int) -> dict[str, tuple[str, str, str]]:
    """name -> (method, path, body) with one value nested `depth` levels (the body itself adds one)."""
    inner = depth - 2  # the body object and params / the field hold two of the levels
    return {
        "job params (objects)": (
            "POST",
            "/v1/jobs",
            f'{{"kind":"cpu.burn","params":{{"milliseconds":1,"x":{_nested(inner)}}}}}',
        ),
        "job params (arrays)": (
            "POST",
            "/v1/jobs",
            f'{{"kind":"cpu.burn","params":{{"milliseconds":1,"x":{_nested(inner, "[", "]")}}}}}',
        ),
        "job kind": ("POST", "/v1/jobs", f'{{"kind":{_nested(depth - 1, "[", "]")},"params":{{}}}}'),
        "item create": (
            "POST",
            "/v1/items",
            f'{{"sku":"d","name":{_nested(depth - 1, "[", "]")},"category":"c","price_cents":1,"stock":1}}',
        ),
        "item update": ("PATCH", "/v1/items/1", f'{{"name":{_nested(depth - 1)}}}'),
    }


def test_bodies_nested_at_any_depth_answer_a_problem_not_a_500(start_api: Callable[..., ApiProcess]) -> None:
    api = start_api(MAX_BODY_BYTES=str(2 * 1024 * 1024))
    statuses: dict[str, int] = {}
    with httpx.Client(base_url=api.url, headers={**WRITER, "content-type": "application/json"}, timeout=30) as http:
        for depth in DEPTHS:
            for name, (method, path, body) in _bodies(depth).items():
                response = http.request(method, path, content=body)
                statuses[f"{name} at {depth}"] = response.status_code
                assert response.headers["content-type"] == "application/problem+json", (name, depth, response.text)
                if name.startswith("job params") and response.status_code == 422:
                    # Past the limit the depth check answers; within it, the kind's model (unknown field).
                    expected = "too_deep" if depth > MAX_JSON_DEPTH else "extra_forbidden"
                    assert response.json()["errors"][0]["type"] == expected, (depth, response.text)
        assert http.get("/livez").status_code == 200
    assert all(400 <= status < 500 for status in statuses.values()), statuses
    assert statuses[f"job params (objects) at {MAX_JSON_DEPTH}"] == 422
    assert statuses[f"job params (arrays) at {MAX_JSON_DEPTH + 1}"] == 422
