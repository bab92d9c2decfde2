# The two commands of the README: `make demo` (the main job) and `make test` (the whole suite).
# Both create .venv with the project and its dev tools on first use; nothing else is needed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow bench bench-gate bench-ci benchmarks reliability clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m wfstate demo

test: $(STAMP)
	$(PY) -m pytest -q
	$(PY) -m mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(MAKE) --no-print-directory bench-ci

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# Benchmarks (bench/README.md). BENCH_JSON: where a run keeps its numbers.
BENCH_JSON ?= .benchmarks
BENCH   := $(PY) -m pytest bench -q -p no:cacheprovider --benchmark-only

bench: $(STAMP)
	$(BENCH)

# The seed-target gate: the quick mode, failing when a seed target of BENCHMARKS.md is missed or
# not measured; no miss is allowed (bench/README.md). bench-ci, the last step of `make test` (so
# of CI), is this same strict gate under the name CI calls.
bench-gate: $(STAMP)
	mkdir -p $(BENCH_JSON)
	WFSTATE_BENCH_QUICK=1 $(BENCH) --benchmark-json=$(BENCH_JSON)/quick.json
	$(PY) -m bench.gate $(BENCH_JSON)/quick.json

bench-ci: bench-gate

# The one command that rewrites docs/benchmarks.md and its plot from a full run.
benchmarks: $(STAMP)
	mkdir -p $(BENCH_JSON)
	$(BENCH) --benchmark-json=$(BENCH_JSON)/full.json
	$(PY) -m bench.docs $(BENCH_JSON)/full.json docs/benchmarks.md docs/benchmarks-scaling.png

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .benchmarks

reliability: $(STAMP)
	$(PY) -m tests.reliability
