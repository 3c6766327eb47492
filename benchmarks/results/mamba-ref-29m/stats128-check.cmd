# 2026-11-28, 2-core AMD EPYC CPU (x86_64), from the repo root; table in stats128-check.md
python -m mq_deploy compare ../shared/models/mamba-ref-29m --tokenizer ../shared/data/tokenizer/gpt-neox-20b.json \
  --recipes benchmarks/ablation/mq-w8a8-stats128.yaml,benchmarks/ablation/mq-w4a8-stats128.yaml --tasks text \
  --data text=../shared/data/text/ref_corpus_heldout.txt --calib ../shared/data/train/corpus.txt.xz \
  --calib-samples 128 --calib-seq-len 512 --seq-len 512 --windows 24 -o benchmarks/results/mamba-ref-29m/stats128
# recorded with the same two recipes saved as /tmp/.../mambaquant-w{8,4}a8-s128.yaml (identical but for the name)
