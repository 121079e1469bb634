# Two entry points on a fresh machine: `make serve` and `make test` (and `make bench`).
# Each creates (or reuses) its own virtualenv in .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?=
HOST ?=
PORT ?=
# e.g. BENCH_ARGS=--quick (a smoke check), or --only startup latency
BENCH_ARGS ?=
# e.g. SHAPES_ARGS="--device cuda" or --resume
SHAPES_ARGS ?=

.PHONY: serve test venv clients services lint bench shapes

$(STAMP): pyproject.toml
	@echo "setting up $(VENV) (torch first, then the package; a few minutes on a new machine)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -U pip
	@# torch and torchvision come from the pip index or this machine's wheel cache; pip only.
	@$(PY) -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

serve: venv
	$(PY) -m localstability serve $(if $(CONFIG),--config $(CONFIG)) $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

clients:
	@bash scripts/setup-clients.sh

services:
	@bash scripts/setup-services.sh

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: venv clients services lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS)

# Every benchmark in bench/ one after another (python -m bench; about half an hour on 2 cores):
# results in bench/results/, and the README's benchmark table rewritten from them.
bench: venv
	HF_HUB_OFFLINE=1 $(PY) -m bench $(BENCH_ARGS)

# Retrain our own shapes model (about 3.6 hours on 2 CPU cores; SHAPES_ARGS=--resume goes on
# from the last saved state) and evaluate it; copy
# build/shapes/localstability-shapes-v1 into src/localstability/models/ to ship it.
shapes: venv
	$(PY) -m localstability.shapes.train --out build/shapes $(SHAPES_ARGS)
	$(PY) -m localstability.shapes.evaluate --model build/shapes/localstability-shapes-v1 \
		--json build/shapes/evaluation.json --grid build/shapes/grid.png
