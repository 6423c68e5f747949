#!/usr/bin/env bash
# Builds llama.cpp's llama-server (the peer `specdecode bench` measures) from the llama.cpp source vendored
# in the llama-cpp-python sdist we pin, into build/llama-server/ (about 5 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
VERSION=${LLAMA_CPP_VERSION:-0.3.36}
OUT=build/llama-server
if [ -x "$OUT/bin/llama-server" ]; then echo "$OUT/bin/llama-server is built"; exit 0; fi
SRC=build/llama-cpp-python-src
mkdir -p "$SRC"
if [ ! -d "$SRC/llama_cpp_python-$VERSION" ]; then
  "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$SRC"
  tar -xzf "$SRC/llama_cpp_python-$VERSION.tar.gz" -C "$SRC"
fi
LLAMA="$SRC/llama_cpp_python-$VERSION/vendor/llama.cpp"
source scripts/llama-cpp-flags.sh
CFLAGS="$LLAMA_EXTRA_FLAGS" CXXFLAGS="$LLAMA_EXTRA_FLAGS" cmake -S "$LLAMA" -B "$OUT" -DLLAMA_CURL=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$OUT" --target llama-server -j"$(nproc)"
echo "built $OUT/bin/llama-server"
