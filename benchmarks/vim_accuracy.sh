#!/usr/bin/env bash
# Accuracy of the Vision Mamba recipes side by side on the bundled Vim (Fashion-MNIST, all 10 000 test images).
#   bash benchmarks/vim_accuracy.sh w4a16
# Writes benchmarks/results/vim/w4a16/compare.{md,json} and a log beside them: the weight-only recipes, two ablations
# of vim-mambaquant-w4a16 (no online Hadamard; RTN instead of GPTQ) and vim-mambaquant-w4a8 for reference, beside
# fp32. The W8A8 / W4A8 tables of benchmarks/results/vim/README.md were run with the command written there.
set -euo pipefail
cd "$(dirname "$0")/.."
A=benchmarks/ablation
case "${1:-}" in
  w4a16)
    RECIPES=vim-rtn-w4a16,vim-gptq-w4a16,vim-quarot-w4a16,vim-mambaquant-w4a16,$A/vim-mq-w4a16-noh.yaml,$A/vim-mq-w4a16-rtn.yaml,vim-mambaquant-w4a8
    out=benchmarks/results/vim/w4a16 ;;
  *) echo "usage: bash benchmarks/vim_accuracy.sh w4a16" >&2; exit 2 ;;
esac
mkdir -p "$out"
# calibration: 128 training images (seed 0, the recipes' default); evaluation: every test image
{ echo "# $(date -u +%FT%TZ) on $(nproc) CPU cores ($(uname -m)), plugin graphs (onnxruntime + native CPU kernels), commit $(git rev-parse --short HEAD)"
  set -x
  python -m mq_deploy compare src/mq_deploy/assets/vim-fmnist --tasks fashion_mnist --recipes "$RECIPES" -o "$out"
} 2>&1 | tee "$out/log.txt"
