#!/usr/bin/env bash
# One prepared GPU check: the CUDA tests, throughput/MFU of the GPT-2-small shape, and the trainer
# end to end (bf16 autocast + torch.compile) on the char Shakespeare recipe.
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:${EXTRA_SITE:-}${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 GROUNDUP_CACHE="$OUT/cache"
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
echo "== tests on CUDA"
$PY -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_model.py tests/test_sample.py 2>&1 | tail -5
echo "== the fused CPU kernels on this machine's CPU ($(nproc) cores)"
$PY -m pytest -q -p no:cacheprovider tests/test_kernels.py 2>&1 | tail -3
echo "== GPT-2-small shape: tokens/s and MFU"
$PY benchmarks/gpu_train.py --steps ${STEPS:-20} 2>&1 | grep -v Warning
echo "== trainer: shakespeare_char on CUDA, bf16 autocast + compile"
$PY -m groundup train --config configs/shakespeare_char.toml --out "$OUT/run" --device cuda --compile \
  --set eval_interval=500 --set log_interval=100 2>&1 | tail -8
cp "$OUT/run/metrics.jsonl" "$OUT/run/loss.png" "$OUT/" 2>/dev/null || true
