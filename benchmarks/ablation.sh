#!/usr/bin/env bash
# Ablations of MambaQuant on the reference model (paper Tables 3-4), held-out perplexity + KL only. Each ablation is
# the default recipe (with the Δ shift and the tied head since 2026-11-28) minus one component; `-noshift` is the
# default before the shift, `-untied` the default without keep_tied.
#   bash benchmarks/ablation.sh
set -euo pipefail
cd "$(dirname "$0")/.."
S=../shared
out=benchmarks/results/ablation-ref-29m
mkdir -p "$out"
A=benchmarks/ablation
R=mambaquant-w8a8,$A/mq-w8a8-no-klt.yaml,$A/mq-w8a8-no-smooth.yaml,$A/mq-w8a8-max-scales.yaml,$A/mq-w8a8-noshift.yaml,$A/mq-w8a8-untied.yaml,quarot-w8a8
R=$R,mambaquant-w4a8,$A/mq-w4a8-no-klt.yaml,$A/mq-w4a8-no-smooth.yaml,$A/mq-w4a8-max-scales.yaml,$A/mq-w4a8-noshift.yaml,$A/mq-w4a8-untied.yaml
{ echo "# $(date -u +%FT%TZ) on $(nproc) CPU cores ($(uname -m))"
  set -x
  python -m mq_deploy compare $S/models/mamba-ref-29m --tokenizer $S/data/tokenizer/gpt-neox-20b.json --recipes "$R" \
    --tasks text --data text=$S/data/text/ref_corpus_heldout.txt --calib $S/data/train/corpus.txt.xz \
    --calib-samples ${CALIB_SAMPLES:-128} --seq-len 512 --windows 40 -o "$out"
} 2>&1 | tee "$out/log.txt"
