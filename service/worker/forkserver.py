"""Preloaded by the job fork server (service.worker.pool): from here on it dies with the worker.

Importing this module is the only way to run code in the fork server before it
forks anything; it does nothing else. See the guarantee in service.worker.pool.
"""

from service.worker.pool import guard_fork_server

guard_fork_server()
