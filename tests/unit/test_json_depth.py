"""Client JSON is walked with a depth bound, never by recursion Python's frame limit decides (issue: 500 on 3.12)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.exceptions import RequestValidationError

from service.guards import MAX_JSON_DEPTH, too_deep
from service.jobs.router import validate_job
from service.jobs.schemas import JobCreate


def nested(depth: int, leaf: Any = 1, *, key: str | None = "a") -> Any:
    """`depth` levels of objects ({"a": ...}) or, with key=None, arrays, built without recursion."""
    value = leaf
    for _ in range(depth):
        value = {key: value} if key is not None else [value]
    return value


@pytest.mark.parametrize("key", ["a", None], ids=["objects", "arrays"])
def test_params_nested_deeper_than_python_can_recurse_are_a_422_not_a_recursion_error(key: str | None) -> None:
    # What Python 3.12's parser hands over for a body nested 5,000 deep; 3.11's refuses it first,
    # so only the image ever met it. The check used to recurse: RecursionError, a 500.
    body = JobCreate.model_construct(kind="cpu.burn", params={"milliseconds": 1, "x": nested(5000, key=key)})
    with pytest.raises(RequestValidationError) as raised:
        validate_job(body)
    [error] = raised.value.errors()
    assert error["type"] == "too_deep"
    assert error["loc"][:3] == ("body", "params", "x")
    assert len(error["loc"]) == 1 + MAX_JSON_DEPTH  # "body" + the path to the first level too deep


def test_the_depth_limit_is_exact() -> None:
    assert too_deep(nested(MAX_JSON_DEPTH)) is None
    assert too_deep(nested(MAX_JSON_DEPTH + 1)) == ("a",) * MAX_JSON_DEPTH
    assert too_deep({"a": [1, 2, {"b": "x"}], "c": "deep" * 1000}) is None
    assert too_deep(nested(200_000, key=None)) == (0,) * MAX_JSON_DEPTH  # no recursion at any depth


def test_unstorable_text_is_found_at_any_depth_the_bound_allows() -> None:
    params = {"milliseconds": 1, "x": nested(MAX_JSON_DEPTH - 2, "nul\x00")}
    with pytest.raises(RequestValidationError) as raised:
        validate_job(JobCreate.model_construct(kind="cpu.burn", params=params))
    [error] = raised.value.errors()
    assert error["type"] == "string_unicode"
    assert error["loc"] == ("body", "params", "x", *("a",) * (MAX_JSON_DEPTH - 2))
