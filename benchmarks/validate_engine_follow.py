"""How a quantized OUTDIR's engine rows behave where TensorRT is absent: an engine is stood in for by
model.onnx with every float tensor stored in fp16 (graph.follow.fp16_stand_in), on the CPU kernels, and
compared with model.portable.onnx directly (the `portable vs tensorrt` row, gated at 5e-2 for an engine
without marked outputs) and following its roundings (`portable~ vs tensorrt`, the row of a validation engine:
window ENGINE_FOLLOW_STEPS, gated at 1e-2, with the count of roundings taken) and its quantizer inputs tensor by
tensor (validate's `steps` line: the worst mean distance in steps, gated at ENGINE_STEP_TOL, and the first tensor
with a value more than APART_STEPS off); then the same with a C_scale error of 0.3 %, 1 % and 3 % in one scan
node. `--steps a,b,...` also prints the followed distance at other windows (in steps).

Usage: python benchmarks/validate_engine_follow.py OUTDIR [OUTDIR ...] [--seq L] [--batch B] [--steps S,...]
(a Vim OUTDIR gets the first B Fashion-MNIST test images, as validate gives it)
Prints one line per (OUTDIR, C_scale factor); results are recorded in benchmarks/results/validate_engine_follow.md.
"""
import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np
import onnx

from mq_deploy.backends.ort import OrtRunner
from mq_deploy.graph.follow import ENGINE_FOLLOW_STEPS, fp16_stand_in, quantized_tensors, run_following, step_distances
from mq_deploy.trt import manifest_input
from mq_deploy.validate import ENGINE_STEP_TOL, _steps, _vim_images


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(a).max())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdirs", nargs="+")
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", default="", help="other follow windows to print, in steps (e.g. 0.001,0.03)")
    args = ap.parse_args()
    other = [float(v) for v in args.steps.split(",") if v]
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"{platform.machine()}, {os.cpu_count()} cores, {cpu}; batch {args.batch}, input_ids of length {args.seq} "
          "(seed 0)")
    print(f"{'OUTDIR':<14}{'C_scale':>8}{'direct':>10}{'top1':>8}{'followed':>10}{'taken':>8}"
          + "".join(f"{f'@{s:g}':>10}" for s in other) + f"{'steps':>8}  {'worst mean (tensor)':<40}first apart")
    for d in map(Path, args.outdirs):
        plugin = onnx.load(str(d / "model.onnx"))
        portable = onnx.load(str(d / "model.portable.onnx"))
        manifest = json.loads((d / "manifest.json").read_text())
        name, fixed = manifest_input(manifest)
        if name == "pixel_values":  # a Vim: the first test images, as validate feeds them
            feed = _vim_images(args.batch, fixed, 0)[0]
        else:
            vocab = manifest["model"]["config"]["vocab_size"]
            feed = {name: np.random.default_rng(0).integers(0, vocab, size=(args.batch, args.seq))}
        qt = quantized_tensors(plugin)
        ref = OrtRunner(portable).run(feed)["logits"]
        for factor in (1.0, 1.003, 1.01, 1.03):
            eng = fp16_stand_in(plugin)
            scan = [n for n in eng.graph.node if n.op_type == "SelectiveScan"][1]
            next(a for a in scan.attribute if a.name == "C_scale").f *= factor
            e = OrtRunner(eng, extra_outputs=qt).run(dict(feed))
            marked = {t: e[t] for t in qt}
            own = {}
            f, taken = run_following(portable, marked, feed, ENGINE_FOLLOW_STEPS, own=own)
            st = _steps(step_distances(portable, own, marked), ENGINE_STEP_TOL)
            at = [rel(run_following(portable, marked, feed, s)[0]["logits"], e["logits"]) for s in other]
            top1 = float((ref.argmax(-1) == e["logits"].argmax(-1)).mean())
            apart = st["first_apart"]
            print(f"{d.name:<14}{factor:>8}{rel(ref, e['logits']):>10.2e}{top1:>8.4f}"
                  f"{rel(f['logits'], e['logits']):>10.2e}{taken:>8}" + "".join(f"{v:>10.2e}" for v in at)
                  + f"{st['worst']['mean_steps']:>8.3f}  {st['worst']['tensor']:<40}"
                  + ("-" if apart is None else f"{apart['tensor']} ({apart['max_steps']:.2f})"))


if __name__ == "__main__":
    main()
