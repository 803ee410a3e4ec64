"""Test harness: the shared fixtures live in tests/fixtures/ and are registered here.

Test modules import helpers from tests.fixtures.*, never from another test
module or from this file (tests/unit/test_layout.py checks).
"""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures.backends",
    "tests.fixtures.app",
    "tests.fixtures.processes",
    "tests.fixtures.image",
    "tests.fixtures.cluster",
]
