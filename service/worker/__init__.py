"""The worker tier: `python -m service.worker` claims jobs from PostgreSQL and runs them in child processes."""
