#!/usr/bin/env bash
# compile → build → validate, the default command of docker/Dockerfile.{x86,jetson}; also runs on a
# host with mq-deploy, TensorRT and the plugin library installed.
#
# Environment (all optional):
#   OUT            where OUTDIRs go (default /work/out; mount a host folder there to keep them)
#   RECIPE         compile recipe (default fp32); quantized recipes need CALIB
#   MODEL          checkpoint directory (default: the bundled model)
#   CALIB          calibration text for quantized recipes; CALIB_SAMPLES windows (default 16)
#   MQ_DEPLOY_PLUGINS   the plugin library (the images set it)
#   MIN_SHAPES OPT_SHAPES MAX_SHAPES   engine profile as B,L (default 1,1 / 1,128 / 4,512)
#   FP16=1         allow FP16 kernels;  BATCH, SEQ  validate's input (default 2, 64)
#   BENCH=1        time the engine with trtexec afterwards (if trtexec is on the PATH)
set -euo pipefail

OUT="${OUT:-/work/out}"
RECIPE="${RECIPE:-fp32}"
DIR="$OUT/$(basename "$RECIPE" .yaml)"
: "${MQ_DEPLOY_PLUGINS:?set MQ_DEPLOY_PLUGINS to libmq_trt_plugins.so (cmake -S plugins -B build/plugins)}"
MIN_SHAPES="${MIN_SHAPES:-1,1}" OPT_SHAPES="${OPT_SHAPES:-1,128}" MAX_SHAPES="${MAX_SHAPES:-4,512}"

step() { printf '\n== %s\n' "$*" >&2; }

compile=(mq-deploy compile)
[ -n "${MODEL:-}" ] && compile+=("$MODEL")
compile+=(--recipe "$RECIPE" -o "$DIR")
[ -n "${CALIB:-}" ] && compile+=(--calib "$CALIB" --calib-samples "${CALIB_SAMPLES:-16}")
step "${compile[*]}"
"${compile[@]}"

build=(mq-deploy build "$DIR" --plugins "$MQ_DEPLOY_PLUGINS" --min-shapes "$MIN_SHAPES" --opt-shapes "$OPT_SHAPES"
       --max-shapes "$MAX_SHAPES" --timing-cache "$OUT/timing.cache")
[ "${FP16:-0}" = 1 ] && build+=(--fp16)
step "${build[*]}"
"${build[@]}"

validate=(mq-deploy validate "$DIR" --plugins "$MQ_DEPLOY_PLUGINS" --batch "${BATCH:-2}" --seq "${SEQ:-64}")
[ -n "${CALIB:-}" ] && validate+=(--simulate --calib "$CALIB")
step "${validate[*]}"
"${validate[@]}" | tee "$DIR/validate.txt"

if [ "${BENCH:-0}" = 1 ] && command -v trtexec >/dev/null; then
  step "trtexec timing of $DIR/model.engine at ${OPT_SHAPES/,/x}"
  trtexec --loadEngine="$DIR/model.engine" --dynamicPlugins="$MQ_DEPLOY_PLUGINS" \
          --shapes="input_ids:${OPT_SHAPES/,/x}" --warmUp=200 --duration=5
fi
