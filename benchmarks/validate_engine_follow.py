"""How a quantized OUTDIR's engine rows behave where TensorRT is absent: an engine is stood in for by
model.onnx with every float tensor stored in fp16 (graph.follow.fp16_stand_in), on the CPU kernels, and
compared with model.portable.onnx directly (the `portable vs tensorrt` row, gated at 5e-2 for an engine
without marked outputs) and following its roundings (`portable~ vs tensorrt`, the row of a validation engine:
window ENGINE_FOLLOW_STEPS, reported, with the count of roundings taken), on the stand-in's int8 codes at every
QuantizeLinear (`codes`, the `portable= vs tensorrt` row, gated at 1e-2) and validate's per-layer check
(every quantizer input computed by model.portable.onnx from the stand-in's int8 codes: the worst mean distance in
steps, gated at ENGINE_STEP_TOL, the worst gain (relative scale), gated at ENGINE_GAIN_TOL, and the first tensor over
either); for the stand-in as it is, for a noisier one (relative noise U(±5e-4) added at each of its fp16
roundings, twice fp16's own rounding error: a correct engine whose float layers round more coarsely), and with a
C_scale error of 0.3 %, 1 % and 10 % in one scan node, and (`H×1.003`, `H×1.01`) the second fused Hadamard's
kernel rounding with a 0.3 % / 1 % wrong scale (its attribute, and so the codes' dequantized values, right). As in a
validation engine, a fused Hadamard's tensor is its codes dequantized, beside a float twin: followed as codes, the
layer checked on the twin, and the codes against the twin's (`fused`: the worst share of codes that differ over
0.1 step from a boundary, and the first kernel over validate's limits). `--steps a,b,...` also prints the followed
distance at other windows (in steps).

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
from mq_deploy.graph.follow import (ENGINE_FOLLOW_STEPS, fp16_stand_in, fused_code_differences, run_following,
                                    step_distances, validation_marks)
from mq_deploy.graph.fuse_scan_quant import float_twin, hadamard_out_scale
from mq_deploy.trt import manifest_input
from mq_deploy.validate import ENGINE_GAIN_TOL, ENGINE_STEP_TOL, _fused, _steps, _vim_images


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
    print(f"{'OUTDIR':<10}{'stand-in':>10}{'direct':>10}{'top1':>8}{'followed':>10}{'taken':>8}{'codes':>10}"
          + "".join(f"{f'@{s:g}':>10}" for s in other)
          + f"  {'per layer: worst mean (tensor)':<44}{'worst gain (tensor)':<40}{'first over':<30}"
          + "fused: worst share (tensor)")
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
        qt = validation_marks(plugin)
        fused = [n.name for n in plugin.graph.node if hadamard_out_scale(n)]
        ref = OrtRunner(portable).run(feed)["logits"]
        for variant in ("correct", "noise", 1.003, 1.01, 1.1) + (("H", 1.003), ("H", 1.01)) * bool(fused):
            eng = fp16_stand_in(plugin, noise=5e-4 if variant == "noise" else 0.0,  # a wrong kernel: its rounding
                                kernel_scale={fused[1]: variant[1]} if isinstance(variant, tuple) else None)
            if isinstance(variant, float):
                scan = [n for n in eng.graph.node if n.op_type == "SelectiveScan"][1]
                next(a for a in scan.attribute if a.name == "C_scale").f *= variant
            e = OrtRunner(eng, extra_outputs=qt).run(dict(feed))
            twins = {t: e[float_twin(t)] for t in fused}
            marked = {t: e[t] for t in qt if t not in {float_twin(f) for f in fused}}
            f, taken = run_following(portable, marked, feed, ENGINE_FOLLOW_STEPS, codes=fused)
            own = {}
            codes, _ = run_following(portable, marked, feed, float("inf"), own=own, codes=fused)  # from its int8 codes
            st = _steps(step_distances(portable, own, {**marked, **twins}), ENGINE_STEP_TOL, ENGINE_GAIN_TOL)
            fu = _fused(fused_code_differences(portable, marked, twins)) if fused else None
            at = [rel(run_following(portable, marked, feed, s, codes=fused)[0]["logits"], e["logits"]) for s in other]
            top1 = float((ref.argmax(-1) == e["logits"].argmax(-1)).mean())
            wm, wg, first = st["worst_mean"], st["worst_gain"], st["first_over"]
            label = (variant if isinstance(variant, str) else f"C×{variant:g}" if isinstance(variant, float)
                     else f"H×{variant[1]:g}")
            print(f"{d.name:<10}{label:>10}{rel(ref, e['logits']):>10.2e}{top1:>8.4f}"
                  f"{rel(f['logits'], e['logits']):>10.2e}{taken:>8}{rel(codes['logits'], e['logits']):>10.2e}"
                  + "".join(f"{v:>10.2e}" for v in at)
                  + f"  {wm['mean_steps']:<6.3f}{wm['tensor']:<38}{wg['gain']:<+10.1e}{wg['tensor']:<30}"
                  + f"{'-' if first is None else first['tensor']:<30}"
                  + ("-" if fu is None else f"{100 * fu['worst']['share']:.2g}% {fu['worst']['tensor']}"
                     + ("" if fu["ok"] else "  FAIL")))


if __name__ == "__main__":
    main()
