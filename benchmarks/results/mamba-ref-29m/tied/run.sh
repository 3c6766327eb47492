#!/usr/bin/env bash
# fold_norms keep_tied (benchmarks/ablation/mq-w{8,4}a8-tied.yaml) on mamba-ref-29m, with the settings of
# benchmarks/quant_accuracy.sh (so the rows compare with mambaquant-w8a8 / -w4a8 in ../compare.md), held-out text only.
#   bash benchmarks/results/mamba-ref-29m/tied/run.sh      (from the repo root)
set -euo pipefail
S=../shared
out=benchmarks/results/mamba-ref-29m/tied
export MQ_DEPLOY_DATA_DIR=$S/data
{ echo "# $(date -u +%FT%TZ) on $(nproc) CPU cores ($(uname -m)), commit $(git rev-parse --short HEAD)"
  set -x
  python -m mq_deploy compare $S/models/mamba-ref-29m --tokenizer $S/data/tokenizer/gpt-neox-20b.json \
    --recipes benchmarks/ablation/mq-w8a8-tied.yaml,benchmarks/ablation/mq-w4a8-tied.yaml --tasks text \
    --data text=$S/data/text/ref_corpus_heldout.txt --calib $S/data/train/corpus.txt.xz \
    --calib-samples 128 --calib-seq-len 512 --seq-len 512 --windows 24 -o "$out"
} 2>&1 | tee "$out/log.txt"
