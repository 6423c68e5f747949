#!/usr/bin/env bash
# Installs llama-cpp-python ($LLAMA_CPP_VERSION) into the given Python's environment, compiled from source
# with this CPU's native flags (about 8 minutes on 2 cores). The wheel is kept per CPU model and ISA flags
# in ~/.cache/specdecode/wheels, so a fresh venv on the same machine installs it in seconds and a machine
# with another CPU never gets a wheel built for different instructions.
set -euo pipefail
PY=${1:?usage: install-llama-cpp.sh PYTHON}
VERSION=${LLAMA_CPP_VERSION:-0.3.36}
source "$(dirname "$0")/llama-cpp-flags.sh"
CPU_KEY=$( (grep -m1 '^model name' /proc/cpuinfo; grep -m1 -E '^(flags|Features)' /proc/cpuinfo; \
  echo "$LLAMA_EXTRA_FLAGS") 2>/dev/null | sha256sum | cut -c1-16)
DIR=${SPECDECODE_WHEELS:-$HOME/.cache/specdecode/wheels}/llama-cpp-python-$VERSION-$CPU_KEY
if ! ls "$DIR"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
  echo "compiling llama-cpp-python $VERSION with native CPU flags (about 8 min on 2 cores) ..."
  mkdir -p "$DIR.tmp"
  CFLAGS="$LLAMA_EXTRA_FLAGS" CXXFLAGS="$LLAMA_EXTRA_FLAGS" \
  CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$PY" -m pip wheel -q --no-cache-dir --no-deps --no-binary llama-cpp-python \
    "llama-cpp-python==$VERSION" -w "$DIR.tmp"
  rm -rf "$DIR" && mv "$DIR.tmp" "$DIR"
fi
"$PY" -m pip install -q --force-reinstall --no-deps "$DIR"/llama_cpp_python-"$VERSION"-*.whl
