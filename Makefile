# kiln: `make demo` compiles a small model and compares it with eager and torch.compile;
# `make test` runs the whole test suite. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch 2.13.0 is the CPU build on this project's machines; override for others
# (e.g. make test TORCH_SPEC='torch>=2.11,<2.15').
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: demo test test-aot-everywhere test-kiln-everywhere test-frame-cache-everywhere lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m examples.demo

test: $(VENV)/.installed
	$(PY) -m ruff check kiln tests benchmarks examples
	$(PY) -m pytest -q $(PYTEST_ARGS)

# the capture corpora, seeds and models with every counted graph run through AOT autograd
test-aot-everywhere: $(VENV)/.installed
	$(PY) -m pytest -q tests/capture tests/seeds tests/models -p tests.plugins.aot_everywhere

# the same with every counted graph run through backend "kiln" (AOT autograd + C++ codegen)
test-kiln-everywhere: $(VENV)/.installed
	$(PY) -m pytest -q tests/capture tests/seeds tests/models -p tests.plugins.kiln_everywhere

# every capture-corpus program also compiled with "kiln", reloaded from its persisted frame
# after kiln.reset(), and checked against eager again
test-frame-cache-everywhere: $(VENV)/.installed
	$(PY) -m pytest -q tests/capture/test_corpus_*.py -p tests.plugins.frame_cache_everywhere

lint: $(VENV)/.installed
	$(PY) -m ruff check kiln tests benchmarks examples

bench: $(VENV)/.installed
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) build *.egg-info
