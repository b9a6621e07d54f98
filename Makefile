# The two commands a newcomer runs: `make demo` and `make test`.
# Both bootstrap uv (into .tools/ if it is not on PATH) and use the system Python 3.11.
export UV_PYTHON_DOWNLOADS := never
PYTHON ?= python3.11
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
# tpm2-pytss compiles against the TSS2 headers; take the TPM extra only where they exist.
EXTRAS := --extra hsm $(shell pkg-config --exists tss2-esys 2>/dev/null && echo --extra tpm)
RUN := $(UV) run --frozen --no-sync
PACKAGES := agent attestation benchmarks capsules cloud_sync factoryops fuzz hil_tests models_onnx provisioning tests
DEMO_ARGS ?=
PYTEST_ARGS ?=
# Test processes (pytest-xdist). Much of the suite waits on real peers, brokers, HIL rigs
# and subprocesses rather than on a core: with two workers on two cores the suite took
# 20.8 min wall for 22.7 CPU-min (the cores half idle). Each test file runs whole on one
# worker (--dist loadfile), in order, as it would alone, so module-scoped hubs and rigs
# keep their state and one file's HIL rigs never run at the same time.
# PYTEST_WORKERS=0 runs it in one process (what a debugger wants).
PYTEST_WORKERS ?= 4

.PHONY: help sync demo test slow lint typecheck pytest bench clean

help:
	@echo "make demo   - simulated pump plant + agent + hub on 127.0.0.1 (Ctrl-C to stop)"
	@echo "make test   - ruff, mypy --strict and the full pytest suite"
	@echo "make slow   - the long runs (300 agent kills, 30 hub kills, 200 agent stops, a 1,000-kill soak rig)"
	@echo "make bench  - the benchmarks (figures and ratios; see docs/performance.md)"

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv

# Bytecode is compiled at install: where PYTHONDONTWRITEBYTECODE is set (as on some CI
# machines) every process would otherwise compile its imports again (~12 s for `factoryops`).
sync: $(UV)
	$(UV) sync --frozen --compile-bytecode --python $(PYTHON) $(EXTRAS)
	$(RUN) python -m compileall -q $(PACKAGES) >/dev/null

demo: sync
	$(RUN) factoryops demo $(DEMO_ARGS)

lint: sync
	$(RUN) ruff check .
	$(RUN) ruff format --check .

typecheck: sync
	$(RUN) mypy

pytest: sync
	$(RUN) pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test: lint typecheck pytest

# the long reliability run: 300 kill -9 of the agent, 30 of the hub, 200 clean stops
slow: sync
	FACTORYOPS_KILLS=300 FACTORYOPS_HUB_KILLS=30 $(RUN) pytest tests/integration/test_agent_crash.py tests/integration/test_hub_crash.py
	FACTORYOPS_STOPS=200 $(RUN) pytest tests/integration/test_agent_stops.py
	$(RUN) factoryops hil run hil_tests/rigs/soak_kill9.toml --out hil-report/soak_kill9

bench: sync
	$(RUN) factoryops bench pipeline

clean:
	rm -rf .venv .tools .mypy_cache .ruff_cache .pytest_cache
