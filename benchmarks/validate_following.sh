#!/usr/bin/env bash
# Direct vs rounding-following rows of `mq-deploy validate --simulate` on quantized OUTDIRs (docs/deploy.md
# "Validating"): the bundled model (mambaquant-w8a8, and the same OUTDIR with a 1 % C_scale error in one scan
# node of model.onnx) and mamba-ref-29m (mambaquant-w8a8). Prints one line per row.
# Usage: bash benchmarks/validate_following.sh [WORKDIR]   (needs ../shared/data and ../shared/models)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
W=${1:-$(mktemp -d)}
CAL=$SHARED/data/text/wikitext2_val_sample.jsonl
echo "workdir $W; $(uname -m), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
mq-deploy compile --recipe mambaquant-w8a8 --calib "$CAL" --calib-samples 8 -o "$W/w8" -q --force
rm -rf "$W/w8bad" && cp -r "$W/w8" "$W/w8bad"
python - "$W/w8bad/model.onnx" <<'PY'
import sys, onnx
m = onnx.load(sys.argv[1], load_external_data=False)
scan = [n for n in m.graph.node if n.op_type == "SelectiveScan"][1]
next(a for a in scan.attribute if a.name == "C_scale").f *= 1.01
onnx.save(m, sys.argv[1])
PY
mq-deploy compile "$SHARED/models/mamba-ref-29m" --recipe mambaquant-w8a8 --tokenizer "$SHARED/data/tokenizer/gpt-neox-20b.json" \
    --calib "$CAL" --calib-samples 16 -o "$W/ref-w8a8" -q --force
for run in "w8 17" "w8bad 17" "ref-w8a8 64"; do
    set -- $run
    echo "== mq-deploy validate $1 --simulate --seq $2"
    mq-deploy validate "$W/$1" --simulate --seq "$2" -q | grep -E " vs |validate:" || true
done
