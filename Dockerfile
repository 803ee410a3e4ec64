# One image for the API (gunicorn, the default command), the worker
# (`python -m service.worker`) and migrations (`python -m service.migrate`);
# the Helm chart picks the command per Deployment/Job.
#
#   make image                       (docker build -t catalog:dev .)
#
# Stages: `uv` (the uv binary), `build` (the virtualenv and the compiled
# source), `runtime` (what runs: no uv, no build tools, uid 10001).
#
# The two base images are build arguments whose defaults are the real, pinned
# ones; point them at a mirror or at stand-ins with --build-arg (README "The image").
# Both Python stages use PYTHON_IMAGE so the virtualenv's interpreter path
# (/usr/local/bin/python3 in the official image) is valid in the final stage.
# checkov:skip=CKV_DOCKER_7: checkov reads FROM ${...} as an untagged image; the base images are build arguments whose defaults are pinned versions (tests/deploy/test_dockerfile.py checks them)
# Python 3.11: the minor version every test runs (Debian 12's python3, which `make test` uses) and
# the image test's stand-in base has; tests/deploy/test_dockerfile.py keeps the three equal (the
# image once shipped 3.12, whose JSON parser accepts deeper nesting than any test had seen).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
# uv, pinned to the version deploy/local/bootstrap.sh installs.
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
# Compile bytecode at build time (the runtime filesystem is read-only);
# copy rather than hardlink out of uv's cache; never fetch another Python;
# trust the base image's system CA store (/etc/ssl/certs), not only uv's
# bundled roots, so a company's TLS-intercepting proxy or mirror works.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_SYSTEM_CERTS=1 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
# Dependencies first: this layer is reused until pyproject.toml or uv.lock change.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project
COPY service ./service
RUN python -m compileall -q service
# Stage "dev": the image `tilt up` builds (the Tiltfile asks for target dev);
# production never runs it, and `docker build .` still makes the last stage.
# Same interpreter, virtualenv and source, but /app/service belongs to the
# container user so Tilt's live update can write changed files into a running
# pod (the chart makes the root filesystem writable only with
# development.liveUpdate, which it refuses outside ENVIRONMENT=development).
FROM build AS dev
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PATH=/app/.venv/bin:$PATH
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app \
    && chown -R 10001:10001 /app/service
USER 10001:10001
CMD ["gunicorn", "-c", "python:service.gunicorn_conf"]

FROM ${PYTHON_IMAGE} AS runtime
# No .pyc writes at runtime (they were compiled above), and logs leave unbuffered.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PATH=/app/.venv/bin:$PATH
# A fixed uid/gid so the pod's runAsUser and file ownership agree everywhere.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app
WORKDIR /app
# Code and packages stay owned by root: the app cannot modify itself.
COPY --from=build /app/.venv /app/.venv
COPY --from=build /app/service /app/service
USER 10001:10001
EXPOSE 8000 9464
# Kubernetes probes the three health endpoints itself, and the worker has no
# port 8000, so an image-level check would be wrong for one of the two.
# checkov:skip=CKV_DOCKER_2: Kubernetes probes (startup/readiness/liveness) replace HEALTHCHECK, which Kubernetes ignores
# Exec form: gunicorn is PID 1 and receives SIGTERM itself.
CMD ["gunicorn", "-c", "python:service.gunicorn_conf"]
