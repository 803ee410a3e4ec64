"""Registers tests/fixtures/cluster.py's fixtures for this package, so `package` scope is this package.

The cluster started here (when none was up) is taken down when the package's last test ends;
tests/tilt registers `local_cluster` the same way and starts its own when it needs one.
"""

from tests.fixtures.cluster import cluster_backends, cluster_image, local_cluster, platform, release
from tests.fixtures.gateway import edge_release, gateway

__all__ = ["cluster_backends", "cluster_image", "edge_release", "gateway", "local_cluster", "platform", "release"]
