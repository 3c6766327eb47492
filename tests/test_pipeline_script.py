"""docker/run_pipeline.sh (the images' default command) run here with a stand-in `mq-deploy` on the PATH that records
its arguments: which commands the pipeline runs, in which order, for float and quantized recipes, with and without
the stateful engines, and that a failing validate stops it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# `mq-deploy compile ... -o DIR` writes DIR/manifest.json, quantized unless the recipe is fp32 (weight-only, no activation
# scale, for a -w4a16 one), a Vim's when the model
# argument names one (as a Hugging Face Hub id would, which is no local directory); `validate` exits
# $FAIL_VALIDATE_GRAPH's status for that --graph; every call is appended to $LOG
STUB = r"""#!/usr/bin/env bash
printf '%s\n' "$*" >> "$LOG"
if [ "$1" = compile ]; then
  while [ $# -gt 0 ]; do
    case "$1" in
      --recipe) recipe="$2"; shift ;;
      -o) dir="$2"; shift ;;
      *vim*) family=vim ;;
    esac
    shift
  done
  mkdir -p "$dir"
  case "$recipe" in
    fp32) q=null ;;
    *w4a16*) q='{"weight_bits": 4, "act_scales": {}}' ;;
    *) q='{"weight_bits": 8, "act_scales": {"layers.0.in_proj.input": 0.1}}' ;;
  esac
  echo "{\"quantization\": $q, \"model\": {\"family\": \"${family:-mamba}\"}}" > "$dir/manifest.json"
elif [ "$1" = validate ] && [ -n "${FAIL_VALIDATE_GRAPH:-}" ] && [[ " $* " == *" --graph $FAIL_VALIDATE_GRAPH "* ]]; then
  echo "validate: FAILED"; exit 1
elif [ "$1" = validate ]; then
  echo "validate: OK ($*)"
fi
"""
# every variable run_pipeline.sh reads: none may leak in from the calling environment
SCRIPT_ENV = ("OUT", "RECIPE", "MODEL", "CALIB", "CALIB_SAMPLES", "TOKENIZER", "MQ_DEPLOY_PLUGINS", "MIN_SHAPES",
              "OPT_SHAPES", "MAX_SHAPES", "FP16", "STRONGLY_TYPED", "BATCH", "SEQ", "STATEFUL", "BENCH", "TRTEXEC",
              "FAIL_VALIDATE_GRAPH")


def _run(tmp_path: Path, **env) -> tuple[int, list[str], str]:
    if shutil.which("bash") is None:
        pytest.skip("bash not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "mq-deploy"
    stub.write_text(STUB)
    stub.chmod(0o755)
    log = tmp_path / "calls.log"
    log.unlink(missing_ok=True)
    full = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV}
    full.update(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", LOG=str(log), OUT=str(tmp_path / "out"),
                MQ_DEPLOY_PLUGINS="/opt/lib/libmq_trt_plugins.so", **env)
    res = subprocess.run(["bash", str(ROOT / "docker" / "run_pipeline.sh")], env=full, capture_output=True, text=True)
    calls = log.read_text().splitlines() if log.exists() else []
    return res.returncode, calls, res.stderr


def test_pipeline_quantized_recipe_validates_every_engine_on_its_validation_engine(tmp_path):
    rc, calls, err = _run(tmp_path, RECIPE="rtn-w8a8", CALIB="/data/calib.jsonl")
    assert rc == 0, err
    d = tmp_path / "out" / "rtn-w8a8"
    build = (f"build {d} --plugins /opt/lib/libmq_trt_plugins.so --min-shapes 1,1 --opt-shapes 1,128 --max-shapes 4,512 "
             f"--timing-cache {tmp_path / 'out' / 'timing.cache'}")
    assert calls == [
        f"compile --recipe rtn-w8a8 -o {d} --calib /data/calib.jsonl --calib-samples 16",
        build,
        f"{build} --validation-engine",
        f"validate {d} --plugins /opt/lib/libmq_trt_plugins.so --batch 2 --engine {d}/model.validate.engine --seq 64 "
        "--simulate --calib /data/calib.jsonl",
        *[c for g in ("prefill", "decode") for c in (
            f"{build} --graph {g}",
            f"validate {d} --graph {g} --plugins /opt/lib/libmq_trt_plugins.so --batch 2 --seq 64",
            f"{build} --graph {g} --validation-engine",
            f"validate {d} --graph {g} --plugins /opt/lib/libmq_trt_plugins.so --batch 2 --seq 64 "
            f"--engine {d}/model.{g}.validate.engine")],
    ]
    # each validate's report kept in its own file
    for name, engine in (("validate.txt", "model.validate.engine"), ("validate.decode.txt", None),
                         ("validate.decode.layers.txt", "model.decode.validate.engine")):
        text = (d / name).read_text()
        assert text.startswith("validate: OK") and (f"--engine {d}/{engine}" in text if engine else "--engine" not in text)


def test_pipeline_float_recipe_and_stateful_off(tmp_path):
    rc, calls, err = _run(tmp_path, RECIPE="fp32")
    assert rc == 0, err
    d = tmp_path / "out" / "fp32"
    assert [c.split(" --plugins")[0] for c in calls] == [
        f"compile --recipe fp32 -o {d}", f"build {d}", f"validate {d}",
        f"build {d}", f"validate {d} --graph prefill", f"build {d}", f"validate {d} --graph decode"]
    assert not any("--validation-engine" in c or "--engine" in c for c in calls)  # a float engine is compared directly
    assert sum("--graph prefill" in c for c in calls) == 2 and not (d / "validate.prefill.layers.txt").exists()
    rc, calls, err = _run(tmp_path, RECIPE="rtn-w8a8", CALIB="/data/c.jsonl", STATEFUL="0")
    assert rc == 0, err
    assert not any("--graph" in c for c in calls) and len(calls) == 4  # compile, build, its validation engine, validate


def test_pipeline_weight_only_recipe_builds_fp16_without_validation_engines(tmp_path):
    """A -w4a16 OUTDIR (no QuantizeLinear: `build --validation-engine` refuses it) is built with --fp16 (TensorRT's INT4
    GEMMs take fp16 activations) and validated directly, as a float one; FP16=0 or STRONGLY_TYPED=1 leave --fp16 out."""
    rc, calls, err = _run(tmp_path, RECIPE="rtn-w4a16")
    assert rc == 0, err
    d = tmp_path / "out" / "rtn-w4a16"
    builds = [c for c in calls if c.startswith("build")]
    assert len(builds) == 3 and all(c.endswith(" --fp16") or " --fp16 --graph " in c for c in builds), builds
    assert not any("--validation-engine" in c or "--engine" in c for c in calls)
    assert [c.split(" --plugins")[0] for c in calls if c.startswith("validate")] == [
        f"validate {d}", f"validate {d} --graph prefill", f"validate {d} --graph decode"]
    for env in ({"FP16": "0"}, {"STRONGLY_TYPED": "1"}):
        rc, calls, err = _run(tmp_path, RECIPE="rtn-w4a16", **env)
        assert rc == 0, err
        builds = [c for c in calls if c.startswith("build")]
        assert len(builds) == 3 and not any("--fp16" in c for c in builds), env
        assert all("--strongly-typed" in c for c in builds) == ("STRONGLY_TYPED" in env)
    rc, calls, err = _run(tmp_path, RECIPE="rtn-w8a8", CALIB="/data/c.jsonl", STATEFUL="0")
    assert rc == 0 and not any("--fp16" in c for c in calls)  # int8 activations: FP16 stays off unless asked for


def test_pipeline_stops_at_a_failing_validate(tmp_path):
    rc, calls, err = _run(tmp_path, RECIPE="rtn-w8a8", CALIB="/data/c.jsonl", FAIL_VALIDATE_GRAPH="prefill")
    assert rc != 0 and "--graph prefill" in calls[-1] and calls[-1].startswith("validate")
    assert not any("--validation-engine" in c and "--graph" in c for c in calls)  # stopped at the deployment engine's
    assert not any("--graph decode" in c for c in calls)  # nothing after the failed check
    d = tmp_path / "out" / "rtn-w8a8"
    assert "FAILED" in (d / "validate.prefill.txt").read_text()
    assert json.loads((d / "manifest.json").read_text())["quantization"]


def test_pipeline_vim_named_by_hub_id(tmp_path):
    # no local directory to look into before compile: the compiled manifest says it is a Vim
    rc, calls, err = _run(tmp_path, RECIPE="fp32", MODEL="acme/vim-tiny")
    assert rc == 0, err
    d = tmp_path / "out" / "fp32"
    assert calls == [
        f"compile acme/vim-tiny --recipe fp32 -o {d}",
        f"build {d} --plugins /opt/lib/libmq_trt_plugins.so --min-shapes 1 --opt-shapes 4 --max-shapes 32 "
        f"--timing-cache {tmp_path / 'out' / 'timing.cache'}",
        f"validate {d} --plugins /opt/lib/libmq_trt_plugins.so --batch 2 --torch"]
    rc, calls, err = _run(tmp_path, RECIPE="fp32", MODEL="acme/mamba-tiny")
    assert rc == 0, err
    assert "--min-shapes 1,1 --opt-shapes 1,128 --max-shapes 4,512" in calls[1] and len(calls) == 7
    # a Vim recipe: the calibration is the images (the recipe's count), not language-model windows
    rc, calls, err = _run(tmp_path, RECIPE="vim-rtn-w8a8", MODEL="acme/vim-tiny", CALIB="/data/fmnist")
    assert rc == 0, err
    assert calls[0] == f"compile acme/vim-tiny --recipe vim-rtn-w8a8 -o {tmp_path / 'out' / 'vim-rtn-w8a8'} --calib /data/fmnist"


def test_pipeline_tokenizer_and_calibration_size(tmp_path):
    # a state-spaces checkpoint has no tokenizer.json: TOKENIZER reaches compile (validate reads OUTDIR's copy)
    rc, calls, err = _run(tmp_path, RECIPE="rtn-w8a8", MODEL="/models/mamba-130m", TOKENIZER="EleutherAI/gpt-neox-20b",
                          CALIB="/data/c.jsonl")
    assert rc == 0, err
    d = tmp_path / "out" / "rtn-w8a8"
    assert calls[0] == (f"compile /models/mamba-130m --recipe rtn-w8a8 -o {d} --tokenizer EleutherAI/gpt-neox-20b "
                        "--calib /data/c.jsonl --calib-samples 16")
    assert not any("--tokenizer" in c for c in calls[1:])
    # CALIB_SAMPLES is passed as set, with or without CALIB, and for a Vim (its images) too
    rc, calls, err = _run(tmp_path, RECIPE="rtn-w8a8", CALIB_SAMPLES="4")
    assert rc == 0, err
    assert calls[0] == f"compile --recipe rtn-w8a8 -o {d} --calib-samples 4"
    rc, calls, err = _run(tmp_path, RECIPE="vim-rtn-w8a8", MODEL="acme/vim-tiny", CALIB="/data/fmnist",
                          CALIB_SAMPLES="32")
    assert rc == 0, err
    assert calls[0] == (f"compile acme/vim-tiny --recipe vim-rtn-w8a8 -o {tmp_path / 'out' / 'vim-rtn-w8a8'} "
                        "--calib /data/fmnist --calib-samples 32")


def test_pipeline_bench_finds_trtexec_or_says_it_did_not(tmp_path):
    """BENCH=1 times both engines with $TRTEXEC (else the PATH, /opt/tensorrt/bin, /usr/src/tensorrt/bin); with no
    trtexec anywhere it says so instead of skipping the timing silently."""
    trtexec = tmp_path / "bin2" / "my-trtexec"
    trtexec.parent.mkdir()
    trtexec.write_text('#!/usr/bin/env bash\nprintf \'trtexec %s\\n\' "$*" >> "$LOG"\n')
    trtexec.chmod(0o755)
    rc, calls, err = _run(tmp_path, RECIPE="fp32", BENCH="1", TRTEXEC=str(trtexec))
    assert rc == 0, err
    d = tmp_path / "out" / "fp32"
    timed = [c for c in calls if c.startswith("trtexec ")]
    assert timed[0] == (f"trtexec --loadEngine={d}/model.engine --dynamicPlugins=/opt/lib/libmq_trt_plugins.so "
                        "--shapes=input_ids:1x128 --warmUp=200 --duration=5"), timed
    assert len(timed) == 1 or timed[1].startswith(f"trtexec --loadEngine={d}/model.decode.engine"), timed
    rc, calls, err = _run(tmp_path, RECIPE="fp32", BENCH="1", TRTEXEC=str(tmp_path / "no-trtexec"))
    assert rc == 2 and f"TRTEXEC={tmp_path / 'no-trtexec'} is not an executable" in err and calls == []  # before the work
    if shutil.which("trtexec") or any(os.access(p, os.X_OK) for p in ("/opt/tensorrt/bin/trtexec",
                                                                          "/usr/src/tensorrt/bin/trtexec")):
        return  # (a machine with TensorRT: the fallback finds it)
    rc, calls, err = _run(tmp_path, RECIPE="fp32", BENCH="1")
    assert rc == 0 and "BENCH=1, but no trtexec on the PATH, in /opt/tensorrt/bin or /usr/src/tensorrt/bin" in err, err
    assert not any(c.startswith("trtexec ") for c in calls)
