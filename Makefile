# One command sets up and runs the demo (`make demo`), one runs the tests (`make test`).
# Both work on a fresh offline machine that reaches only PyPI and Debian's package archive.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
FMNIST  := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# torch 2.13.0 CPU: the build that installs offline here without CUDA; pinned first so the project's
# range (torch<2.14) is already satisfied and pip never pulls a multi-GB CUDA wheel.
TORCH   ?= torch==2.13.0

.PHONY: setup demo test test-fast bench clean

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

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python benchmarks/bench_labeling.py
	$(BIN)/python benchmarks/bench_speed.py

clean:
	rm -rf $(VENV) flywheel-workspace
