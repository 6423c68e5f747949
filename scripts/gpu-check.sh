#!/usr/bin/env bash
# The whole GPU measurement in one command (issue 24): cost curves T(k) of Qwen2.5-Coder 0.5B, 1.5B and 7B
# (random bf16 weights, specdecode's transformers backend) at 128, 1k and 4k cached tokens, batch 1 and 8.
#   scripts/gpu-check.sh OUTDIR           on a CUDA GPU (H100/H200: about 2-4 minutes, capped at 8)
#   scripts/gpu-check.sh --tiny OUTDIR    the same path on the CPU with tiny configs (seconds; in the tests)
# Writes OUTDIR/gpu_cost.json, OUTDIR/gpu_cost.png, OUTDIR/env.txt and OUTDIR/log.txt.
# Then, on any machine: python benchmarks/predict_gpu.py --traces TRACES.json --curves OUTDIR/gpu_cost.json
set -euo pipefail

tiny=0
out=""
for arg in "$@"; do
  case "$arg" in
    --tiny) tiny=1 ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "error: unknown option $arg (usage: scripts/gpu-check.sh [--tiny] OUTDIR)" >&2; exit 2 ;;
    *) out="$arg" ;;
  esac
done
if [ -z "$out" ]; then
  echo "error: no output directory (usage: scripts/gpu-check.sh [--tiny] OUTDIR)" >&2
  exit 2
fi

root="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
export TRANSFORMERS_VERBOSITY=error HF_HUB_OFFLINE=1
mkdir -p "$out"

if [ "$tiny" = 0 ]; then
  if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "error: no CUDA GPU found (torch.cuda.is_available() is False or torch is missing for $PY)." >&2
    echo "       This check needs an NVIDIA GPU; scripts/gpu-check.sh --tiny OUTDIR runs the same path on the CPU." >&2
    exit 3
  fi
  {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    if command -v nvidia-smi >/dev/null 2>&1; then
      nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    fi
    "$PY" -c 'import torch, transformers; print("gpu:", torch.cuda.get_device_name(0)); print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
  } | tee "$out/env.txt"
  args=(--out "$out" --budget-s 400)
  limit=470
else
  {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    "$PY" -c 'import torch, transformers; print("cpu (--tiny); torch", torch.__version__, "transformers", transformers.__version__)'
  } | tee "$out/env.txt"
  args=(--out "$out" --tiny)
  limit=120
fi

# a hard cap: the budget above skips the cells left, this stops anything that hangs
if timeout "$limit" "$PY" "$root/benchmarks/gpu_cost.py" "${args[@]}" 2>&1 | tee "$out/log.txt"; then
  echo "done: $out/gpu_cost.json"
else
  echo "error: the measurement failed or ran past ${limit} s (see $out/log.txt)" >&2
  exit 1
fi
