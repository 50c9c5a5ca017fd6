#!/usr/bin/env bash
# One prepared GPU check of the fault-tolerance path (docs/fault-tolerance.md) on CUDA: guards under
# bf16 autocast (NaN skip, rollbacks), the divergence stop (exit 3), and SIGKILL mid-checkpoint then
# --resume compared with an uninterrupted run. Needs no corpus package: trains on the repo's own text.
#   OUT=/tmp/gpu bash benchmarks/gpu_faults_check.sh
set -u
OUT=${OUT:-/tmp/gpu-faults}
W="$OUT/work"
mkdir -p "$W"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 GROUNDUP_CACHE="$W/cache"
PY=${PY:-python3}
cat src/groundup/*.py src/groundup/*/*.py docs/*.md > "$W/corpus.txt"
$PY -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA")'
A=(--set "corpus=$W/corpus.txt" --set n_layer=2 --set n_head=2 --set n_embd=64 --set block_size=64 --set batch_size=8
   --set max_steps=60 --set eval_interval=20 --set eval_iters=2 --set log_interval=5 --set checkpoint_interval=10
   --set warmup_steps=5 --set threads=1 --device "${DEVICE:-cuda}")

echo "== guards on CUDA, bf16 autocast: nan@13-15 (3 in a row -> rollback), spike@35 (-> rollback)"
$PY -m groundup train "${A[@]}" --inject nan@13-15 --inject spike@35 --out "$W/g" > "$W/g.log" 2>&1
echo "exit $?"; grep -E "^warning|^done|^error|Traceback" "$W/g.log" | cut -c1-200; grep '"event"' "$W/g/metrics.jsonl"

echo "== divergence: the same spike twice with max_rollbacks=1 -> stop, exit 3"
$PY -m groundup train "${A[@]}" --set max_rollbacks=1 --inject spike@25 --inject spike@25 --out "$W/d" > "$W/d.log" 2>&1
echo "exit $?"; grep -E "^error|Traceback" "$W/d.log" | cut -c1-240

echo "== SIGKILL while publishing checkpoint 30, then --resume; compare with an uninterrupted run (float32)"
$PY -m groundup train "${A[@]}" --set dtype=float32 --out "$W/ref" > "$W/ref.log" 2>&1; echo "reference exit $?"
$PY -m groundup train "${A[@]}" --set dtype=float32 --inject kill@30:publish --out "$W/k" > "$W/k.log" 2>&1; echo "killed: exit $?"
$PY -m groundup train --resume "$W/k" > "$W/k2.log" 2>&1; echo "resumed: exit $?"; grep -E "^warning|^resuming|Traceback" "$W/k2.log" | cut -c1-200
$PY - "$W/ref" "$W/k" <<'EOF'
import sys
from groundup.train import checkpoint as ckpt
a, b = (ckpt.read_tensors(ckpt.Path(d) / "model.safetensors") for d in sys.argv[1:])
same = all((a[k] == b[k]).all() for k in a)
diff = max(float((a[k] - b[k]).abs().max()) for k in a)
print(f"final weights bit-identical: {same}; max |difference| {diff:.3g}")
EOF
