"""The worker tier: `python -m service.worker` claims jobs from PostgreSQL and runs them in child processes.

Our own queue rather than a library's: service/jobs/repository.py says why.
"""
