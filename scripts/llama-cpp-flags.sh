#!/usr/bin/env bash
# Sourced by the llama.cpp build scripts: extra C/C++ flags for this CPU on top of GGML_NATIVE.
# ggml's AMX matmul (built whenever -march=native reports AMX) crashed with a segmentation fault on every
# model tried here (Q4_K_M, Q4_1; Intel Xeon with AMX, llama-cpp-python 0.3.36, 2026-12-03), so AMX is
# left out: those CPUs run the AVX-512 kernels.
LLAMA_EXTRA_FLAGS=""
if [ "$(uname -m)" = "x86_64" ] && grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then
  LLAMA_EXTRA_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi
export LLAMA_EXTRA_FLAGS
