#!/usr/bin/env bash
# Accuracy of every recipe side by side (issue 3), on the reference model and on the bundled model.
#   bash benchmarks/quant_accuracy.sh [ref|bundled] [w4a16]
# Writes benchmarks/results/<model>/compare.{md,json} and a log beside them; with `w4a16`, the weight-only recipes
# (and two ablations of mambaquant-w4a16) beside fp16 in benchmarks/results/<model>/w4a16/ instead.
set -euo pipefail
cd "$(dirname "$0")/.."
S=../shared
RECIPES=fp16,rtn-w8a8,smoothquant-w8a8,gptq-w8a8,quarot-w8a8,mambaquant-w8a8,rtn-w4a8,smoothquant-w4a8,gptq-w4a8,quarot-w4a8,mambaquant-w4a8,rtn-w4a8-b64,mambaquant-w4a8-b64
TASKS=text,wikitext2,lambada_openai,arc_easy,arc_challenge,piqa,winogrande,hellaswag
export MQ_DEPLOY_DATA_DIR=$S/data
which=${1:-ref}
if [ "$which" = ref ]; then
  model=$S/models/mamba-ref-29m; tok=$S/data/tokenizer/gpt-neox-20b.json; out=benchmarks/results/mamba-ref-29m
else
  model=""; tok=src/mq_deploy/assets/mamba-tiny/tokenizer.json; out=benchmarks/results/mamba-tiny
fi
if [ "${2:-}" = w4a16 ]; then
  RECIPES=fp16,rtn-w4a16,gptq-w4a16,quarot-w4a16,mambaquant-w4a16,benchmarks/ablation/mq-w4a16-noh.yaml,benchmarks/ablation/mq-w4a16-b128.yaml
  out=$out/w4a16
elif [ -n "${2:-}" ]; then
  echo "usage: bash benchmarks/quant_accuracy.sh [ref|bundled] [w4a16]" >&2; exit 2
fi
mkdir -p "$out"
# calibration: 128 x 512 tokens (the default) of the training corpus (in-domain, disjoint from the held-out text)
# evaluation: 24 x 512-token windows of the held-out text (primary) and of WikiText-2 test, first 40 items per zero-shot task
{ echo "# $(date -u +%FT%TZ) on $(nproc) CPU cores ($(uname -m)), plugin graphs (onnxruntime + native CPU kernels)"
  set -x
  python -m mq_deploy compare $model --tokenizer "$tok" --recipes "$RECIPES" --tasks "$TASKS" \
    --data text=$S/data/text/ref_corpus_heldout.txt --calib $S/data/train/corpus.txt.xz \
    --calib-samples 128 --calib-seq-len 512 --seq-len 512 --windows 24 --limit 40 -o "$out"
} 2>&1 | tee "$out/log.txt"
