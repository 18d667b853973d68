#!/usr/bin/env bash
# The SmolLM2 drafter training of `graphrt train --adapter-rank` on a lent GPU, in the
# device tool's limits: 64 MiB travels per call (the Q4_1 GGUF is 93 MB, so it goes in two
# halves over two calls on the same warm machine) and 16 MiB per file comes back (the adapter
# returns in 15 MiB pieces).
#
#   here:        bash bench/gpu_train_drafter.sh stage [RUN_DIR]
#                  -> .gpu/ (git-ignored): GGUF halves, the run's token streams and
#                     tokenizer (RUN_DIR/data, RUN_DIR/tokenizer), the gguf wheel
#   call 1:      run  carry=[".gpu/a"]                        command="bash bench/gpu_train_drafter.sh receive"
#   call 2:      run  carry=[".gpu/b", ".gpu/run", ".gpu/whl"] command="MINUTES=8 bash bench/gpu_train_drafter.sh train"
#                  (within the machine's warm window after call 1)
#   here:        bash bench/gpu_train_drafter.sh unpack FILES_AT OUT_DIR
#                  -> OUT_DIR/drafter (adapter_config.json, adapter_model.safetensors,
#                     training_record.json) and OUT_DIR/train_log.csv
#
# The run resumes from nothing on the GPU (Adam state does not come back: 3x the adapter);
# its arguments are those of the CPU run in bench/results/smollm2_drafter.md, with the
# batch scaled to the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:?usage: gpu_train_drafter.sh stage|receive|train|unpack}
case "$cmd" in
stage)
    run=${2:-runs/drafter}
    gguf=$(python3 -c "from graphrt.frontends.models.named_models import named_model_file; print(named_model_file('smollm2'))")
    rm -rf .gpu && mkdir -p .gpu/a .gpu/b .gpu/run .gpu/whl
    grep -qx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
    half=$(( ($(stat -c %s "$gguf") + 1) / 2 ))
    head -c "$half" "$gguf" > .gpu/a/smollm2.gguf.0
    tail -c +"$((half + 1))" "$gguf" > .gpu/b/smollm2.gguf.1
    cp -r "$run/data" "$run/tokenizer" .gpu/run/
    python3 -m pip download -q --no-deps --only-binary=:all: -d .gpu/whl "gguf==$(python3 -c 'import importlib.metadata as m; print(m.version("gguf"))')"
    du -sh .gpu/*
    ;;
receive)
    mkdir -p /tmp/graphrt-stage && cp .gpu/a/smollm2.gguf.0 /tmp/graphrt-stage/
    ls -la /tmp/graphrt-stage
    ;;
train)
    test -f /tmp/graphrt-stage/smollm2.gguf.0 || { echo "gpu_train_drafter: expected the first half from the 'receive' call, found none (run it first, on the same warm machine)" >&2; exit 2; }
    cat /tmp/graphrt-stage/smollm2.gguf.0 .gpu/b/smollm2.gguf.1 > /tmp/smollm2.gguf
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD/.gpu/pkg
    mkdir -p .gpu/pkg && rm -rf .gpu/pkg/graphrt && cp -r graphrt .gpu/pkg/graphrt
    for d in passes cuda_kernels frontends; do cp -r "$d" ".gpu/pkg/graphrt/$d"; done
    mkdir -p /tmp/run && cp -r .gpu/run/data .gpu/run/tokenizer /tmp/run/
    python3 -m graphrt.frontends.training.command --out /tmp/run --init-from /tmp/smollm2.gguf --device cuda \
        --adapter-rank 32 --mask-token 7 --seq-len 256 --batch-size 64 --chat-rows 32 --blocks-per-seq 8 --block-sizes 4,8 \
        --seedless-prob 0.25 --distill 0.8 --distill-after 0 --lr 1e-3 --weight-decay 0 --warmup 50 \
        --steps 1000000 --minutes "${MINUTES:-8}" --decay-frac 0.15 --eval-every 200 --log-every 20 \
        --ckpt-every 1000000 --eval-windows 16 --draft-prompts 64 --no-autocast --no-progress --threads 8
    split -b 15M /tmp/run/drafter/adapter_model.safetensors "$OUT/adapter_model.safetensors.part-"
    cp /tmp/run/drafter/adapter_config.json /tmp/run/drafter/training_record.json /tmp/run/train_log.csv "$OUT/"
    ;;
unpack)
    src=${2:?FILES_AT}; out=${3:?OUT_DIR}
    mkdir -p "$out/drafter"
    cat "$src"/adapter_model.safetensors.part-* > "$out/drafter/adapter_model.safetensors"
    cp "$src/adapter_config.json" "$src/training_record.json" "$out/drafter/"
    cp "$src/train_log.csv" "$out/"
    ;;
*) echo "gpu_train_drafter: expected stage|receive|train|unpack, found '$cmd'" >&2; exit 2 ;;
esac
