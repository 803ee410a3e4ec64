"""Peers for the request-path benchmark. They import nothing from `service`: each stands alone.

- raw_asgi.py:   the ceiling: a bare ASGI callable on uvicorn, the same asyncpg
                 queries, the same response bytes, nothing else.
- idiomatic.py:  FastAPI as most tutorials write it: response_model and the
                 default (Pydantic + jsonable_encoder) serialisation.
- trivial.py:    FastAPI's no-I/O floor: `return {"ok": True}`.

All three need only fastapi, uvicorn (with uvloop and httptools), asyncpg and
orjson, which the project's lock file already pins; they run as
`uvicorn bench.peers.<name>:app` with DATABASE_URL set.
"""
