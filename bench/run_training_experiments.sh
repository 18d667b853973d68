#!/usr/bin/env bash
# The experiments of bench/training_experiments.md: block size, objective, model size.
# A proxy setting small enough for several runs on a shared 2-core machine:
# clean length 128, batch 16, 4 diffusion blocks per row, 3.5 minutes of training
# time each, same seed, tokenizer and data; warmup and self-distillation start at
# step 50. Judged by held-out AR loss and by draft quality (128 held-out prefixes).
# Usage: bash bench/run_training_experiments.sh [NAME ...]   (default: all, one after another)
set -euo pipefail
export OMP_WAIT_POLICY=PASSIVE  # the machine is shared: do not spin-wait
BASE="--minutes 3.5 --steps 100000 --seq-len 128 --batch-size 16 --blocks-per-seq 4 --warmup 50 \
  --distill-after 50 --eval-every 150 --log-every 10 --draft-prompts 128 --draft-prefix-len 96 --no-progress"
M="--hidden 256 --layers 6 --heads 4 --kv-heads 2 --head-dim 64 --intermediate 768"
S="--hidden 192 --layers 4 --heads 4 --kv-heads 2 --head-dim 48 --intermediate 512"
declare -A EXP=(
  [s_b8_d05]="$S --block-size 8 --distill 0.5"
  [s_b8_d0]="$S --block-size 8 --distill 0"
  [s_b4_d05]="$S --block-size 4 --distill 0.5"
  [s_b8_d1]="$S --block-size 8 --distill 1.0"
  [m_b8_d05]="$M --block-size 8 --distill 0.5"
  [s_b8_d05_f075]="$S --block-size 8 --distill 0.5 --full-mask-prob 0.75"
)
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(s_b8_d05 s_b8_d0 s_b4_d05 s_b8_d1 m_b8_d05)
for n in "${names[@]}"; do
  out=runs/exp/$n
  mkdir -p "$out"
  # share the tokenizer and the encoded corpus
  if [ -d runs/exp/_shared/data ] && [ ! -d "$out/data" ]; then cp -r runs/exp/_shared/data runs/exp/_shared/tokenizer "$out/"; fi
  python -m graphrt.frontends.train --out "$out" $BASE ${EXP[$n]} > "$out/log.txt" 2>&1
  if [ ! -d runs/exp/_shared/data ]; then mkdir -p runs/exp/_shared && cp -r "$out/data" "$out/tokenizer" runs/exp/_shared/; fi
  python - "$out" <<'PY'
import json,sys
r=json.load(open(sys.argv[1]+"/model/training_record.json"))
f=r["final"]; d=f["drafts"]
print(sys.argv[1], r["steps"], r["tokens_seen"], r["n_params"], f["heldout_ar_loss"], f["heldout_diff_loss"],
      d["slot_agree"], d["accept_hist"], d["mean_accepted"], d["linear_tpf_estimate"], flush=True)
PY
done
