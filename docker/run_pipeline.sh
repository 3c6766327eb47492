#!/usr/bin/env bash
# compile → build → validate, the default command of docker/Dockerfile.{x86,jetson}; also runs on a
# host with mq-deploy, TensorRT and the plugin library installed. A quantized recipe with int8 activations also builds
# OUTDIR/model.validate.engine (`mq-deploy build --validation-engine`) and validates with that one; a weight-only
# one (the -w4a16 recipes: no QuantizeLinear) is built with --fp16 unless FP16 or STRONGLY_TYPED say otherwise. A language
# model's prefill and decode-step engines are built and validated too (a quantized recipe's also layer by layer,
# on model.<graph>.validate.engine); a failing validate stops the script.
#
# Environment (all optional):
#   OUT            where OUTDIRs go (default /work/out; mount a host folder there to keep them)
#   RECIPE         compile recipe (default fp32); quantized recipes need CALIB (not the RTN weight-only ones:
#                  rtn-w4a16, quarot-w4a16, vim-rtn-w4a16, vim-quarot-w4a16 read no calibration data)
#   MODEL          checkpoint directory or Hugging Face Hub id owner/name[@REVISION] (default: the bundled model;
#                  a Hub id needs network in the container: mount a host folder on /root/.cache/huggingface to keep
#                  the download); a Vision Mamba (Vim) directory takes
#                  the vim-* recipes, e.g. MODEL=/opt/mq-deploy/src/mq_deploy/assets/vim-fmnist RECIPE=vim-mambaquant-w8a8
#                  (in the images; a path relative to the working directory, /work there)
#   CALIB          calibration text for quantized recipes. Vim: the Fashion-MNIST folder (default: the
#                  dataset-fashion-mnist package's)
#   CALIB_SAMPLES  calibration windows (Vim: images); default: 16 windows where CALIB is set, else the recipe's
#   TOKENIZER      tokenizer.json (path or Hub id) for a checkpoint without one, e.g. a state-spaces checkpoint:
#                  TOKENIZER=EleutherAI/gpt-neox-20b (or a mounted file)
#   MQ_DEPLOY_PLUGINS   the plugin library (the images set it)
#   MIN_SHAPES OPT_SHAPES MAX_SHAPES   engine profile as B,L (default 1,1 / 1,128 / 4,512); Vim: batch only
#                  (default 1 / 4 / 32)
#   FP16=1         allow FP16 kernels (default for a weight-only recipe; FP16=0 turns it off there);
#                  STRONGLY_TYPED=1  build strongly typed instead (TensorRT 10; not with FP16)
#   BATCH, SEQ     validate's input (default 2, 64; Vim: BATCH images)
#   STATEFUL=0     language models: skip the prefill and decode-step engines (default: also build
#                  OUTDIR/model.prefill.engine and model.decode.engine, `mq-deploy build --graph`, for generation,
#                  and validate each: validate.<graph>.txt; a quantized recipe's also on its validation engine,
#                  model.<graph>.validate.engine: validate.<graph>.layers.txt)
#   BENCH=1        time the engine with trtexec afterwards, and one decode step of model.decode.engine where it
#                  was built (trtexec: TRTEXEC=PATH, else the PATH, /opt/tensorrt/bin, /usr/src/tensorrt/bin)
set -euo pipefail

OUT="${OUT:-/work/out}"
RECIPE="${RECIPE:-fp32}"
DIR="$OUT/$(basename "$RECIPE" .yaml)"
: "${MQ_DEPLOY_PLUGINS:?set MQ_DEPLOY_PLUGINS to libmq_trt_plugins.so (cmake -S plugins -B build/plugins)}"
# trtexec: $TRTEXEC, else the PATH, else where the NGC container (/opt/tensorrt/bin) and JetPack (/usr/src/tensorrt/bin)
# keep it
trtexec="${TRTEXEC:-}"
if [ -n "$trtexec" ] && [ "${BENCH:-0}" = 1 ] && ! command -v "$trtexec" >/dev/null; then
  echo "run_pipeline.sh: TRTEXEC=$trtexec is not an executable" >&2
  exit 2
fi
if [ -z "$trtexec" ] && [ "${BENCH:-0}" = 1 ]; then
  for t in "$(command -v trtexec || true)" /opt/tensorrt/bin/trtexec /usr/src/tensorrt/bin/trtexec; do
    if [ -n "$t" ] && [ -x "$t" ]; then trtexec="$t"; break; fi
  done
  [ -n "$trtexec" ] || echo "run_pipeline.sh: BENCH=1, but no trtexec on the PATH, in /opt/tensorrt/bin or" \
    "/usr/src/tensorrt/bin (set TRTEXEC=PATH): no timing" >&2
fi
VIM=0
if [ -n "${MODEL:-}" ] && python3 -c "import sys; from mq_deploy.vision.model import is_vim_dir; sys.exit(0 if is_vim_dir(sys.argv[1]) else 1)" "$MODEL"; then
  VIM=1
fi

step() { printf '\n== %s\n' "$*" >&2; }

compile=(mq-deploy compile)
[ -n "${MODEL:-}" ] && compile+=("$MODEL")
compile+=(--recipe "$RECIPE" -o "$DIR")
[ -n "${TOKENIZER:-}" ] && compile+=(--tokenizer "$TOKENIZER")
[ -n "${CALIB:-}" ] && compile+=(--calib "$CALIB")
if [ -n "${CALIB_SAMPLES:-}" ]; then
  compile+=(--calib-samples "$CALIB_SAMPLES")
elif [ -n "${CALIB:-}" ] && [ "$VIM" = 0 ] && [[ "$(basename "$RECIPE")" != vim-* ]]; then
  # (a Vim's calibration is its images, as many as its recipe says: Vim by the model, or by the recipe where MODEL
  # is a Hub id)
  compile+=(--calib-samples 16)
fi
step "${compile[*]}"
"${compile[@]}"
# (a Hugging Face Hub id as MODEL is a Vim or not by what compile fetched: its manifest says)
if python3 -c "import json, sys; sys.exit(0 if json.load(open(sys.argv[1])).get('model', {}).get('family') == 'vim' else 1)" "$DIR/manifest.json"; then
  VIM=1
fi
if [ "$VIM" = 1 ]; then
  MIN_SHAPES="${MIN_SHAPES:-1}" OPT_SHAPES="${OPT_SHAPES:-4}" MAX_SHAPES="${MAX_SHAPES:-32}"
else
  MIN_SHAPES="${MIN_SHAPES:-1,1}" OPT_SHAPES="${OPT_SHAPES:-1,128}" MAX_SHAPES="${MAX_SHAPES:-4,512}"
fi

# int8 activations (QuantizeLinear nodes), or weight-only (dequantized weights, float activations: TensorRT's INT4
# GEMMs take fp16 activations, so FP16 defaults to on)
kind="$(python3 -c "import json, sys; q = json.load(open(sys.argv[1])).get('quantization'); print('float' if not q else 'int8' if q.get('act_scales') else 'weights')" "$DIR/manifest.json")"
if [ "$kind" = weights ] && [ "${STRONGLY_TYPED:-0}" != 1 ]; then
  FP16="${FP16:-1}"
fi
build=(mq-deploy build "$DIR" --plugins "$MQ_DEPLOY_PLUGINS" --min-shapes "$MIN_SHAPES" --opt-shapes "$OPT_SHAPES"
       --max-shapes "$MAX_SHAPES" --timing-cache "$OUT/timing.cache")
[ "${FP16:-0}" = 1 ] && build+=(--fp16)
[ "${STRONGLY_TYPED:-0}" = 1 ] && build+=(--strongly-typed)
step "${build[*]}"
"${build[@]}"

validate=(mq-deploy validate "$DIR" --plugins "$MQ_DEPLOY_PLUGINS" --batch "${BATCH:-2}")
# a quantized OUTDIR with int8 activations is validated on a validation engine (the same build with the tensors
# before its QuantizeLinear nodes as outputs too), whose rounding decisions validate can follow (docs/deploy.md)
QUANTIZED=0
if [ "$kind" = int8 ]; then
  QUANTIZED=1
  step "${build[*]} --validation-engine"
  "${build[@]}" --validation-engine
  validate+=(--engine "$DIR/model.validate.engine")
fi
if [ "$VIM" = 1 ]; then
  validate+=(--torch)
else
  validate+=(--seq "${SEQ:-64}")
  [ -n "${CALIB:-}" ] && validate+=(--simulate --calib "$CALIB")
fi
step "${validate[*]}"
"${validate[@]}" | tee "$DIR/validate.txt"

if [ "$VIM" = 0 ] && [ "${STATEFUL:-1}" = 1 ]; then  # the graphs `mq-deploy generate` runs, as engines (after validate)
  for graph in prefill decode; do
    step "${build[*]} --graph $graph"
    "${build[@]}" --graph "$graph"
    check=(mq-deploy validate "$DIR" --graph "$graph" --plugins "$MQ_DEPLOY_PLUGINS" --batch "${BATCH:-2}" --seq "${SEQ:-64}")
    step "${check[*]}"  # the engine generate runs (a quantized OUTDIR's: gross errors only)
    "${check[@]}" | tee "$DIR/validate.$graph.txt"
    if [ "$QUANTIZED" = 1 ]; then  # and layer by layer, on its validation engine, as model.onnx
      step "${build[*]} --graph $graph --validation-engine"
      "${build[@]}" --graph "$graph" --validation-engine
      step "${check[*]} --engine $DIR/model.$graph.validate.engine"
      "${check[@]}" --engine "$DIR/model.$graph.validate.engine" | tee "$DIR/validate.$graph.layers.txt"
    fi
  done
fi

if [ "${BENCH:-0}" = 1 ] && [ -n "$trtexec" ]; then
  if [ "$VIM" = 1 ]; then  # pixel_values BxCxHxW from the manifest
    shape="pixel_values:$(python3 -c "import json, sys; s = json.load(open(sys.argv[1]))['io']['inputs'][0]['shape']; print('x'.join(map(str, [sys.argv[2].split(',')[0]] + s[1:])))" "$DIR/manifest.json" "$OPT_SHAPES")"
  else
    shape="input_ids:${OPT_SHAPES/,/x}"
  fi
  step "trtexec timing of $DIR/model.engine at $shape"
  "$trtexec" --loadEngine="$DIR/model.engine" --dynamicPlugins="$MQ_DEPLOY_PLUGINS" \
          --shapes="$shape" --warmUp=200 --duration=5
  if [ -f "$DIR/model.decode.engine" ]; then  # one decode step (a token per sequence) at the opt batch, every state
    shape="$(mq-deploy build "$DIR" --graph decode --dry-run --plugins "$MQ_DEPLOY_PLUGINS" --min-shapes "$MIN_SHAPES" \
             --opt-shapes "$OPT_SHAPES" --max-shapes "$MAX_SHAPES" 2>/dev/null | grep -o -- '--optShapes=[^ ]*' | cut -d= -f2)"
    step "trtexec timing of $DIR/model.decode.engine (one decode step, batch ${OPT_SHAPES%%,*})"
    "$trtexec" --loadEngine="$DIR/model.decode.engine" --dynamicPlugins="$MQ_DEPLOY_PLUGINS" \
            --shapes="$shape" --warmUp=200 --duration=5
  fi
fi
