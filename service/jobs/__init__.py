"""Jobs: CPU-heavy work the API records and the worker tier runs (see service/worker)."""
