"""Test harness: the shared fixtures live in tests/fixtures/ and are registered here.

Test modules import helpers from tests.fixtures.*, never from another test
module or from this file (tests/unit/test_layout.py checks).
"""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures.backends",
    "tests.fixtures.app",
    "tests.fixtures.processes",
    "tests.fixtures.edge",
    "tests.fixtures.image",
    "tests.fixtures.identity",
    "tests.fixtures.browser",
]
# tests.fixtures.cluster is registered by tests/cluster/conftest.py and tests/tilt/conftest.py,
# so its `package` scope means each of those packages (a fixture registered here would be
# session-wide: the cluster tests/cluster takes down would still be handed to tests/tilt).
