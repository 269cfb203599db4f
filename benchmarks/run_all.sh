#!/usr/bin/env bash
# Every CPU benchmark, one after the other (never in parallel: they would time each other).
#   bash benchmarks/run_all.sh [results-dir]        (make bench)
# Each writes a table to the terminal and a JSON file to results-dir (default
# benchmarks/results/<date>). About 15-20 minutes on an idle 2-core machine.
# The GPU benchmark is separate: python benchmarks/gpu/bench_mae_gpu.py (needs CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
OUT=${1:-benchmarks/results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
export KINETO_LOG_LEVEL=5 WANDB_MODE=offline
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a) (figures are only as quiet as the machine)"
run() { name=$1; shift; echo "== $name"; "$PY" "$@" --json "$OUT/$name.json" 2>&1 | grep -v '^{' | tee "$OUT/$name.log"; }
run mae       benchmarks/bench_mae.py
run attention benchmarks/bench_attention.py
run loop      benchmarks/bench_loop.py
run data      benchmarks/bench_data.py
run scale     benchmarks/bench_data_scale.py      # SA-1B-like conversion; mixture / HTTP readers
run decoder   benchmarks/bench_sam.py --decoder   # the full stage-2 steps: bench_sam.py (30+ min)
run amg       benchmarks/bench_amg.py --points 16   # segment everything; --points 32: 20+ min
run rounds    benchmarks/bench_interactive.py     # the demo step, checkpoint_rounds on vs off
echo "results in $OUT"
