# creditnet — two quick-start commands: `make demo` and `make test`.
# Every target sets itself up: a virtualenv in .venv, the package installed in
# editable mode, and the protobuf code generated from protos/.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
GEN    := services/creditnet/v2/__init__.py services/creditnet/internal/v1/__init__.py
PROTOS := $(wildcard protos/creditnet/v2/*.proto protos/creditnet/internal/v1/*.proto)
BUF    := node_modules/.bin/buf

.PHONY: setup proto vectors demo test lint typecheck buf-lint bench clean help

help:
	@echo "make demo   - run the five-city network on SQLite and show a federated query"
	@echo "make test   - lint, type-check and run the whole test suite"
	@echo "make bench  - benchmarks, as ratios against baselines measured in the same run; writes bench.json"
	@echo "make proto  - regenerate Python code from protos/"
	@echo "make vectors - regenerate docs/test-vectors/v2/ (byte-identical unless the protocol changed)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

# One run generates every version; a grouped target so make runs it once.
$(GEN) &: $(STAMP) $(PROTOS) protos/generate.py
	$(BIN)/python protos/generate.py

setup: $(GEN)

proto: $(STAMP)
	$(BIN)/python protos/generate.py

vectors: setup
	$(BIN)/python -m creditnet_devkit.vectors

demo: setup
	$(BIN)/creditnet demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

# buf comes from the npm registry; without npm the lint is skipped, loudly.
buf-lint:
	@if command -v npm >/dev/null 2>&1; then \
	  test -x $(BUF) || npm install --silent --no-audit --no-fund --no-save @bufbuild/buf@1 >/dev/null; \
	  cd protos && ../$(BUF) lint && echo "buf lint: protos/ clean"; \
	else echo "buf lint SKIPPED: npm is not installed"; fi

test: setup lint typecheck buf-lint
	$(BIN)/python -m pytest -q -rs $(PYTEST_ARGS)

# Every benchmark against its baseline in one run, issue 11's targets met or missed;
# prints a table and writes bench.json here. About 10 minutes on 2 cores;
# BENCH_ARGS="--quick" checks the harness in about a minute (its figures mean nothing).
bench: setup
	$(BIN)/python -m creditnet_devkit.bench $(BENCH_ARGS)

# Sealed answers alone: seal + open per HPKE suite and sealing's share of federated server CPU;
# prints a table and writes bench-sealing.json here.
.PHONY: bench-sealing
bench-sealing: setup
	$(BIN)/python -m creditnet_devkit.bench.sealing

# Network directory verification time and size at 5, 50 and 333 cities;
# prints a table and writes bench-directory.json here.
.PHONY: bench-directory
bench-directory: setup
	$(BIN)/python -m creditnet_devkit.bench.directory

# 5, 50 and 333 real city nodes on this machine: cities asked per query, federated latency
# against N=5, aggregator memory, witnessing and background rounds, filters, network up time;
# prints a table and writes bench-national.json here. About 10 minutes on 2 cores.
.PHONY: bench-national
bench-national: setup
	$(BIN)/python -m creditnet_devkit.bench.national

# Time from `pki revoke` to refusal at every server, in refresh intervals;
# prints a table and writes bench-revocation.json here.
.PHONY: bench-revocation
bench-revocation: setup
	$(BIN)/python -m creditnet_devkit.bench.revocation

# A Shanghai-sized node store (3,000,000 enterprises, 30,000,000 records) on
# SQLite and PostgreSQL: ingestion rate, memory as it grows, read latency.
# About an hour on 2 cores; scale down with
# BENCH_SCALE_ARGS="--enterprises 100000 --records 1000000".
.PHONY: bench-scale
bench-scale: setup
	$(BIN)/python -m creditnet_devkit.bench.scale $(BENCH_SCALE_ARGS)

clean:
	rm -rf $(VENV) services/creditnet/v1 services/creditnet/v2 node_modules .mypy_cache .ruff_cache .pytest_cache
