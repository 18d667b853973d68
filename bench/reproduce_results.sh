#!/usr/bin/env bash
# Reproduce the figures quoted in the README for the shipped model (about 25 minutes on 2 cores).
#   bash bench/reproduce_results.sh            # evaluates frontends/model (the shipped model)
#   RUN=runs/long bash bench/reproduce_results.sh   # first ships a finished training run
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
mkdir -p bench/results docs/img
if [ -n "${RUN:-}" ]; then python -m graphrt.frontends.training.ship_model "$RUN"; fi
graphrt eval --prompts 200 --near-ties --json bench/results/eval.json --markdown bench/results/eval.md \
    --plot docs/img/eval_front.png
graphrt eval --prompts 200 --dtype float64 --modes ar,self-spec,self-spec-quadratic --speed-prompts 2 \
    --json bench/results/eval_float64.json --markdown bench/results/eval_float64.md
python bench/host_syncs.py --model frontends/model --out bench/results/host_syncs_shipped.md
graphrt bench --prompts 3 --json bench/results/bench.json --markdown bench/results/bench.md \
    --plot docs/img/bench_side_by_side.png
