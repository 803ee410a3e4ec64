# The gates, the same ones CI runs (.ci/run calls `make test`).
#   make up      start the whole system locally (nginx -> 2 API pods, a job worker, PostgreSQL, Redis, Prometheus); PGBOUNCER=1 puts PgBouncer (transaction mode) in front of PostgreSQL
#   make down    stop it (data stays in .run/; `make clean` removes it)
#   make restart-api  replace the API pods one at a time, as a rolling update does (no request fails)
#   make test    lint + type check + the whole test suite
#   make lint    ruff (lint and format check) + mypy --strict
#   make bench   benchmarks under bench/, results in bench/results/
#   make drill   fault drills under steady load against the `make up` stack (ONLY="redis-stop ..." picks some; RECORD=1 keeps them in bench/results)
#   make profile  a py-spy flame graph (SVG) of API pod 1 while the load test runs (RATE=60 DURATION=60s)
#   make loadtest  locust against the `make up` stack with an SLO verdict and a report (RATE=60 DURATION=2m, or HOST=... PROMETHEUS=...; RECORD=1 keeps it in bench/results)
#   make capacity  how many req/s one API pod carries at the SLO, and the HPA/KEDA numbers that follow (docs/capacity.md; ~17 min; VALUES=my.yaml for yours; RECORD=1 keeps it)
#   make docs-images  redraw the docs' pictures (topology, drill timelines, load-test charts) from the data they show
#   make monitoring  regenerate Prometheus rules, their promtool tests and the Grafana dashboards from service/slo.toml
#   make tools   helm (v4, or a v3.15+/v4 already on PATH) into .tools/bin for the chart tests
#   make chart-sync  copy monitoring/ rules and dashboards into the chart (a test fails when they differ)
#   make chart   the chart and Dockerfile tests only (tests/deploy): helm lint/render, schemas, guards, checkov
#   make image   build the image (docker, or podman when that is what you have); IMAGE=catalog:dev, BUILD_ARGS="--build-arg ..."
#   make cluster  a single-node Kubernetes built from upstream source on this machine (docs/cluster.md; root, Go)
#   make cluster-build  only build its binaries into ~/.cache/catalog-cluster (make test does it first)
#   make cluster-down  stop it; nothing of it is left on the host
#   make cluster-status  what of it runs, and what of it is left on the host
#   make cluster-test  the chart installed on it with helm, and the tests in tests/cluster
#   make gateway  the cluster's edge: Traefik serving Gateway API, built from its Go module (docs/edge-cluster.md); gateway-down removes it
#   make platform  metrics-server, the Prometheus Operator and a Prometheus in that cluster (docs/platform.md); PLATFORM="monitoring" picks
#   make platform-down  remove them (the monitoring CRDs stay)
#   make platform-keda  KEDA (operator + metrics API server) in that cluster, built from its Go module (docs/keda.md; long cold build, not in make test)
#   make cluster-test-keda  the worker scaled by KEDA on queue depth (tests/cluster/test_keda.py; builds KEDA when not cached)
#   make platform-status  what of them runs
#   make kind-up    a kind cluster with a local registry for `tilt up` (deploy/kind/cluster.yaml; needs docker, kind, ctlptl, kubectl)
#   make kind-down  delete that cluster and its registry
#   make tilt    Tilt (built from its Go module) against `make cluster`'s cluster: TILT_ARGS="up" (default), "ci", "down --delete-namespaces"
.DEFAULT_GOAL := help
SHELL := /bin/bash
UV := $(or $(shell command -v uv 2>/dev/null),$(CURDIR)/.tools/uv/bin/uv)

.PHONY: help install tools chart-sync chart image test lint format up down restart-api status clean bench monitoring \
	loadtest drill profile capacity docs-images kind-up kind-down \
	cluster cluster-build cluster-down cluster-status cluster-test tilt gateway gateway-down \
	platform platform-down platform-status platform-keda cluster-test-keda

help:
	@sed -n 's/^#   //p' Makefile

install:
	@bash deploy/local/bootstrap.sh

lint: install
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy

format: install
	$(UV) run ruff format .
	$(UV) run ruff check --fix .

tools: install
	@bash deploy/local/tools.sh >/dev/null

# Helm reads nothing outside the chart directory, so the generated rule files and
# dashboards are copied in; tests/deploy/test_chart_monitoring.py fails on drift.
CHART := deploy/helm/catalog
chart-sync:
	@rm -rf $(CHART)/files/prometheus/rules $(CHART)/files/grafana/dashboards
	@mkdir -p $(CHART)/files/prometheus/rules $(CHART)/files/grafana/dashboards
	@for f in monitoring/prometheus/rules/*.yaml; do [ -e "$$f" ] && cp "$$f" $(CHART)/files/prometheus/rules/; done; true
	@for f in monitoring/grafana/dashboards/*.json; do [ -e "$$f" ] && cp "$$f" $(CHART)/files/grafana/dashboards/; done; true
	@touch $(CHART)/files/prometheus/rules/.keep $(CHART)/files/grafana/dashboards/.keep
	@echo "chart-sync: $$(ls $(CHART)/files/prometheus/rules | wc -l) rule file(s), $$(ls $(CHART)/files/grafana/dashboards | wc -l) dashboard(s)"

chart: tools
	$(UV) run pytest tests/deploy -q

IMAGE ?= catalog:dev
image:
	@IMAGE=$(IMAGE) bash deploy/local/image.sh $(BUILD_ARGS)

# `bootstrap.sh image cluster`: docker.io and mmdebstrap for the image test (tests/image), chromium for
# the CORS browser test and Dex for the identity tests (deploy/identity/dex/build.sh), and what the
# local Kubernetes of tests/cluster needs besides Go (docs/cluster.md), as root.
test: lint tools
	@bash deploy/local/bootstrap.sh image cluster
	@$(MAKE) --no-print-directory cluster-build
	$(UV) run pytest

# The cluster's binaries, built once into the cache outside the clone (about 45 minutes cold on
# 2 busy cores, nothing when cached), and the tools tests/cluster and tests/tilt run on it (Tilt;
# Traefik, the edge, about 18 minutes more); skipped, like tests/cluster, without root or Go.
cluster-build:
	@if [ "$$(id -u)" -eq 0 ] && command -v go >/dev/null 2>&1 && [ "$${CATALOG_CLUSTER:-}" != skip ]; then \
		bash deploy/cluster/build.sh && bash deploy/cluster/build.sh tilt traefik metrics-server prometheus-operator prometheus; \
	else echo "cluster-build: skipped (needs root and Go; CATALOG_CLUSTER=skip skips it)"; fi

# A real Kubernetes (docs/cluster.md): binaries built once into ~/.cache/catalog-cluster.
cluster:
	@bash deploy/local/bootstrap.sh cluster >/dev/null
	@python3 deploy/cluster/cluster.py up

cluster-down:
	@python3 deploy/cluster/cluster.py down

cluster-status:
	@python3 deploy/cluster/cluster.py status

# The add-ons a production cluster runs (docs/platform.md): metrics-server, the Prometheus
# Operator and a Prometheus, into the cluster of `make cluster`. PLATFORM="monitoring" picks.
platform:
	@python3 deploy/platform/platform.py up $(PLATFORM)

platform-down:
	@python3 deploy/platform/platform.py down $(PLATFORM)

platform-status:
	@python3 deploy/platform/platform.py status

# KEDA is kept out of `make platform` and `make test`: its cold build (two binaries linking every
# scaler's cloud SDK) is longer than the CI budget leaves; cached, it takes seconds.
platform-keda:
	@python3 deploy/platform/platform.py up keda

cluster-test: tools
	@bash deploy/local/bootstrap.sh image cluster
	$(UV) run pytest tests/cluster -q

# The edge on `make cluster`'s cluster (docs/edge-cluster.md); rerunning it is safe.
gateway:
	@python3 deploy/platform/gateway.py up

gateway-down:
	@python3 deploy/platform/gateway.py down

cluster-test-keda: tools
	@bash deploy/local/bootstrap.sh image cluster
	CATALOG_KEDA=1 $(UV) run pytest tests/cluster/test_keda.py -q

up: install
	$(UV) run python deploy/local/stack.py up

down:
	@python3 deploy/local/stack.py down

restart-api: install
	$(UV) run python deploy/local/stack.py restart-api

status:
	@python3 deploy/local/stack.py status

# Also removes the PostgreSQL data kept outside .run/ when the clone is private (see stack.json).
clean:
	@python3 deploy/local/stack.py clean

bench:
	@bash deploy/local/bootstrap.sh bench
	@# Both run even if the first misses a target; the exit status says whether all were met.
	@status=0; \
	$(UV) run python bench/request_path.py || status=1; \
	$(UV) run python bench/token_auth.py || status=1; \
	$(UV) run python bench/cache_writes.py || status=1; \
	$(UV) run python bench/export_memory.py || status=1; \
	$(UV) run python bench/jobs.py || status=1; \
	$(UV) run python bench/scale.py || status=1; \
	$(UV) run python bench/observability_overhead.py || status=1; \
	$(UV) run python bench/page.py; \
	exit $$status

# RECORD=1 makes the run the recorded one (bench/results/) and redraws the pictures the docs show from it.
LOADTEST_ARGS = $(if $(RATE),--rate $(RATE)) $(if $(DURATION),--duration $(DURATION)) $(if $(HOST),--host $(HOST)) \
	$(if $(PROMETHEUS),--prometheus $(PROMETHEUS)) $(if $(RECORD),--record) $(ARGS)
loadtest: install
	@# A run that misses the SLO is recorded too: the pictures follow it, the exit status still says so.
	PYTHONPATH=bench $(UV) run python -m loadtest $(LOADTEST_ARGS); status=$$?; \
	$(if $(RECORD),$(MAKE) --no-print-directory docs-images || status=1;) exit $$status

# One API pod at a time behind nginx, pinned to cpu 1 (bench/loadtest/capacity.py); vegeta comes from
# bench/tools/vegeta.sh (Go, cached outside the clone). RECORD=1 writes bench/results/capacity.*.
capacity: install tools
	@bash deploy/local/bootstrap.sh bench >/dev/null
	PYTHONPATH=bench $(UV) run python -m loadtest.capacity $(if $(RECORD),--record) \
		$(foreach file,$(VALUES),--values $(file)) $(ARGS)

profile: install
	PYTHONPATH=bench $(UV) run python -m loadtest.profile $(if $(RATE),--rate $(RATE)) $(if $(DURATION),--duration $(DURATION)) $(ARGS)

drill: install
	PYTHONPATH=bench $(UV) run python -m loadtest.drills $(if $(ONLY),--only $(ONLY)) $(if $(RECORD),--record) $(ARGS); \
	status=$$?; $(if $(RECORD),$(MAKE) --no-print-directory docs-images || status=1;) exit $$status

# Every picture a page shows, from the data it shows (docs/images/generate.py; helm renders the chart's).
# tests/unit/test_docs_images.py fails when a committed picture or images.json is not what this writes.
docs-images: tools
	$(UV) run python docs/images/generate.py

monitoring: install
	$(UV) run python monitoring/generate.py

# The developer's cluster for `tilt up` (README "Develop on kind with Tilt").
kind-up:
	@bash deploy/kind/cluster.sh up

kind-down:
	@bash deploy/kind/cluster.sh down

# Tilt on the cluster of `make cluster` (deploy/cluster/tilt.py; docs/tilt.md).
TILT_ARGS ?= up
tilt: tools
	$(UV) run python deploy/cluster/tilt.py $(TILT_ARGS)
