#!/usr/bin/env bash
# Every CPU table of benchmarks/README.md, one command each, one after the other (never in
# parallel: they would time each other).
#   bash benchmarks/run_all.sh [results-dir] [name ...]        (make bench)
# With names, only those (e.g. `bash benchmarks/run_all.sh out mae_bf16 amg_trained`).
# Each writes its table to the terminal and results-dir/<name>.log, its JSON (where the script
# writes one) to results-dir/<name>.json, and the load average before and after to the log, so
# a table can say how quiet the machine was. About 2.5 hours on an idle 2-core machine; the
# two stage-2 rows at 1024 (sam_1024, sam_bf16_1024) and fine-tuning take most of it.
# The GPU figures are separate: make bench-gpu.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
OUT=${1:-benchmarks/results/$(date +%Y%m%d-%H%M%S)}
shift || true
mkdir -p "$OUT"
export KINETO_LOG_LEVEL=5 WANDB_MODE=offline
{
  grep -m1 'model name' /proc/cpuinfo || true
  echo "bf16 units: $(grep -o 'amx_bf16\|avx512_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  "$PY" -c 'import torch; print("torch", torch.__version__)'
} | tee "$OUT/machine.txt"

# name | command (without --json; the JSON path is added where the script takes one)
TABLES=(
  "mae_bf16|benchmarks/bench_mae.py --precisions fp32,bf16 --reps 5 --warmup 1"
  "sam_bf16_256|benchmarks/bench_sam.py --model tiny --sizes 256 --reps 3 --precisions fp32,bf16"
  "sam_bf16_1024|benchmarks/bench_sam.py --model b --sizes 1024 --reps 1 --precisions fp32,bf16"
  "finetune|benchmarks/bench_finetune.py --reps 0 --contenders full,frozen,lora,lora_ckpt,lora_ckpt2"
  "amg_trained|benchmarks/bench_amg.py --trained --image-size 1024 --points 32,16 --reps 3"
  "amg|benchmarks/bench_amg.py --points 16"
  "mae|benchmarks/bench_mae.py"
  "attention|benchmarks/bench_attention.py"
  "loop|benchmarks/bench_loop.py"
  "data|benchmarks/bench_data.py --images 96 --big 4 --no-read"
  "scale|benchmarks/bench_data_scale.py --images 24 --masks 100 --reps 3"
  "decoder|benchmarks/bench_sam.py --decoder --masks 16"
  "rounds|benchmarks/bench_interactive.py --reps 11"
  "text|benchmarks/bench_text.py"
  "deploy|benchmarks/bench_deploy.py"
  "teacher|benchmarks/bench_teacher.py --teacher b --reps 5"
  "tiny_vit|benchmarks/bench_tiny_vit.py --memory"
  "tiny_vit_speed|benchmarks/bench_tiny_vit.py --reps 3"
  "sam_1024|benchmarks/bench_sam.py --threads 2"
  "scaling|benchmarks/bench_sam.py --scaling --threads 2"
)

wanted() { [ $# -eq 0 ] && return 0; local n; for n in "${@:2}"; do [ "$n" = "$1" ] && return 0; done; return 1; }

for entry in "${TABLES[@]}"; do
  name=${entry%%|*}
  cmd=${entry#*|}
  if [ $# -gt 0 ] && ! wanted "$name" "$@"; then continue; fi
  json=()
  if grep -q '"--json"' "${cmd%% *}"; then json=(--json "$OUT/$name.json"); fi
  {
    echo "== $name: python $cmd"
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    # shellcheck disable=SC2086
    if [ ${#json[@]} -gt 0 ]; then  # the JSON goes to its file; the table stays on screen
      { "$PY" $cmd "${json[@]}" 2>&1 || echo "$name FAILED"; } | { grep -v '^{' || true; }
    else  # the script's own output is its result
      "$PY" $cmd 2>&1 || echo "$name FAILED"
    fi
    echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
  } | tee "$OUT/$name.log"
done
echo "results in $OUT"
