"""Registers tests/fixtures/cluster.py's `local_cluster` for this package, so `package` scope is this package.

tests/cluster takes its cluster down at its end (and checks nothing is left behind); this
package then starts one of its own, and takes it down when its last test ends.
"""

from tests.fixtures.cluster import local_cluster

__all__ = ["local_cluster"]
