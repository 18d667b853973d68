#!/usr/bin/env bash
# The block-size / model-size / objective experiments of bench/training_experiments.md.
# Each run: same tokenizer and data, same seed, 4 minutes of training time on 2 cores.
# Usage: bash bench/run_training_experiments.sh [NAME ...]   (default: all, one after another)
set -euo pipefail
export OMP_WAIT_POLICY=PASSIVE  # the machine is shared: do not spin-wait
BASE="--minutes 4 --steps 100000 --eval-every 150 --log-every 10 --draft-prompts 128 --distill-after 100 --no-progress"
M="--hidden 256 --layers 6 --heads 4 --kv-heads 2 --head-dim 64 --intermediate 768"
S="--hidden 192 --layers 4 --heads 4 --kv-heads 2 --head-dim 48 --intermediate 512"
declare -A EXP=(
  [m_b8_d05]="$M --block-size 8 --distill 0.5"
  [m_b8_d0]="$M --block-size 8 --distill 0"
  [m_b4_d05]="$M --block-size 4 --distill 0.5"
  [s_b8_d05]="$S --block-size 8 --distill 0.5"
  [m_b8_d1]="$M --block-size 8 --distill 1.0"
  [m_b8_d05_f075]="$M --block-size 8 --distill 0.5 --full-mask-prob 0.75"
)
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(m_b8_d05 m_b8_d0 m_b4_d05 s_b8_d05)
for n in "${names[@]}"; do
  out=runs/exp/$n
  mkdir -p "$out"
  # share the tokenizer and the encoded corpus of the first run
  if [ -d runs/exp/_shared/data ] && [ ! -d "$out/data" ]; then cp -r runs/exp/_shared/data runs/exp/_shared/tokenizer "$out/"; fi
  python -m graphrt.frontends.train --out "$out" $BASE ${EXP[$n]} > "$out/log.txt" 2>&1
  if [ ! -d runs/exp/_shared/data ]; then mkdir -p runs/exp/_shared && cp -r "$out/data" "$out/tokenizer" runs/exp/_shared/; fi
  python - "$out" <<'PY'
import json,sys
r=json.load(open(sys.argv[1]+"/model/training_record.json"))
f=r["final"]; print(sys.argv[1], r["steps"], r["tokens_seen"], r["n_params"], f["heldout_ar_loss"], f["heldout_diff_loss"], f["drafts"]["slot_agree"], f["drafts"]["mean_accepted"], f["drafts"]["linear_tpf_estimate"])
PY
done
