#!/usr/bin/env bash
# OUTDIR sizes of mamba-ref-29m compiled with mq-w8a8-untied (the built-in mambaquant-w8a8 when sizes.txt was written) and mq-w8a8-tied (compile defaults; the OUTDIRs
# are not kept).   bash benchmarks/results/mamba-ref-29m/tied/sizes.sh      (from the repo root)
set -euo pipefail
S=../shared
out=benchmarks/results/mamba-ref-29m/tied
echo "# $(date -u +%FT%TZ) on $(nproc) CPU cores ($(uname -m)), commit $(git rev-parse --short HEAD)" | tee "$out/sizes.txt"
# OUTDIR sizes, with and without keep_tied (compile defaults; the OUTDIRs are not kept)
for r in benchmarks/ablation/mq-w8a8-untied.yaml benchmarks/ablation/mq-w8a8-tied.yaml; do
  d="/tmp/mq-tied-size/$(basename "$r" .yaml)"
  python -m mq_deploy compile $S/models/mamba-ref-29m --tokenizer $S/data/tokenizer/gpt-neox-20b.json --recipe "$r" \
    --calib $S/data/train/corpus.txt.xz -o "$d" > /dev/null 2>&1
  echo "$r: weights.bin $(stat -c %s "$d/weights.bin") bytes, OUTDIR $(du -sb "$d" | cut -f1) bytes"
done | tee -a "$out/sizes.txt"
rm -rf /tmp/mq-tied-size
