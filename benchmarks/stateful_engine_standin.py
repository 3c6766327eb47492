"""How far a correct engine of the prefill / decode-step graphs is from model.<graph>.portable.onnx, where TensorRT is
absent: the engine is stood in for by model.<graph>.onnx with every float tensor stored in fp16
(graph.follow.fp16_stand_in) on the CPU kernels, fed exactly what `mq-deploy validate --graph` feeds (random prompts
with left-padded rows; the decode step: one token from the states model.prefill.portable.onnx leaves). Prints the max
rel distance of the logits and of the worst state, for that stand-in and a noisier one (relative noise U(±5e-4) at each
fp16 rounding: twice fp16's own error), the figures behind validate's QUANTIZED_STATEFUL_ENGINE_TOL.

`--layers` then runs validate itself on a stand-in *validation* engine (the tensors before every QuantizeLinear as
outputs too, as `mq-deploy build --graph G --validation-engine` makes them) and prints its layer-by-layer figures:
`portable=` (the portable graph on the engine's int8 codes) on the logits and the worst state, and the per-layer line
(each quantizer input's worst mean distance in steps, the worst gain, the first tensor over validate's limits), for
the stand-in as it is, a noisier one (relative noise U(±5e-4) at each fp16 rounding: twice fp16's own error), and
stand-ins with one error in layer 1: the prefill's scan C_scale ×1.003 / ×1.01; the decode step's state update
given C ×1.003 / ×1.01 (its DequantizeLinear's scale alone) or D ×1.01, and its conv taps ×1.01; and, where the graph's
Hadamards quantize their own output, layer 1's fused kernel rounding with a 1 % wrong scale (`kernel x1.01`; the
`fused Hadamard codes` column: the worst share of a kernel's codes that differ from its float twin's rounding). The
figures behind validate's ENGINE_GAIN_TOL_DECODE.

Usage: python benchmarks/stateful_engine_standin.py OUTDIR [--shapes 2x32,3x20,4x64] [--seed 0] [--draws 1] [--layers]
Results: benchmarks/results/stateful_engine_standin.md.
"""
import argparse
import os
import platform
import sys

import onnx
from onnx import numpy_helper

from mq_deploy import validate as mval
from mq_deploy.backends.ort import OrtRunner
from mq_deploy.graph.follow import fp16_stand_in, validation_marks
from mq_deploy.graph.fuse_scan_quant import hadamard_out_scale


def scale_attr(op, attr, f):
    def change(g):
        node = [n for n in g.graph.node if n.op_type == op][1]  # layer 1
        next(a for a in node.attribute if a.name == attr).f *= f
    return change


def scale_init(name, f):
    def change(g):
        t = next(t for t in g.graph.initializer if t.name == name)
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * f, name))
    return change


def scale_dequantize(name, f):
    """The DequantizeLinear node `name` with its own copy of the scale, times f (a wrong scale there alone)."""
    def change(g):
        node = next(n for n in g.graph.node if n.op_type == "DequantizeLinear" and n.name == name)
        t = next(t for t in g.graph.initializer if t.name == node.input[1])
        g.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(t) * f, t.name + "/wrong"))
        node.input[1] = t.name + "/wrong"
    return change


C_DQ = "layers.1/layers.1.scan.C/DQ"  # the decode step's C input of layer 1's state update
FUSED_1 = "layers.1/out_hadamard"  # layer 1's fused Hadamard (out_proj's quantization in the kernel)
KERNEL_101 = "kernel x1.01"  # fp16_stand_in's kernel_scale, not a change of the stand-in
VARIANTS = {
    "prefill": [("fp16", None, 0.0), ("fp16 noisy", None, 5e-4),
                ("C_scale x1.003", scale_attr("SelectiveScan", "C_scale", 1.003), 0.0),
                ("C_scale x1.01", scale_attr("SelectiveScan", "C_scale", 1.01), 0.0),
                ("kernel x1.01", KERNEL_101, 0.0)],
    "decode": [("fp16", None, 0.0), ("fp16 noisy", None, 5e-4),
               ("C x1.003", scale_dequantize(C_DQ, 1.003), 0.0), ("C x1.01", scale_dequantize(C_DQ, 1.01), 0.0),
               ("D x1.01", scale_init("layers.1.D", 1.01), 0.0),
               ("conv x1.01", scale_init("layers.1.conv1d.weight", 1.01), 0.0),
               ("kernel x1.01", KERNEL_101, 0.0)],
}


def validate_feed(outdir, graph, b, l, seed):
    """The input validate --graph gives the graphs (validate run once, its run_references watched)."""
    feeds, run = [], mval.run_references
    mval.run_references = lambda refs, feed, poly: feeds.append(feed) or run(refs, feed, poly)
    try:
        mval.validate(outdir, graph=graph, batch=b, seq=l, seed=seed, use_polygraphy=False)
    finally:
        mval.run_references = run
    return feeds[0]


def layers_table(outdir, shapes, seed, draws=1):
    print(f"\n{'graph':<8}{'prompt':>7}  {'stand-in':<15}{'portable= logits':>17}{'states':>9}  "
          f"{'worst mean (tensor)':<36}{'worst gain (tensor)':<38}{'first over':<24}fused Hadamard codes")
    saved = mval._engine_reference, mval._trt_direct
    try:
        for graph, variants in VARIANTS.items():
            for name, change, noise in variants:
                plain = onnx.load(os.path.join(outdir, f"model.{graph}.onnx"))
                if change is KERNEL_101:  # layer 1's fused kernel rounding with a 1 % wrong scale, where it has one
                    if FUSED_1 not in {n.name for n in plain.graph.node if hadamard_out_scale(n)}:
                        continue
                    g = fp16_stand_in(plain, noise=noise, kernel_scale={FUSED_1: 1.01})
                else:
                    g = fp16_stand_in(plain, noise=noise)
                    if change is not None:
                        change(g)
                runner = OrtRunner(g, extra_outputs=validation_marks(plain))
                mval._engine_reference = lambda *a, **k: [mval.Reference("tensorrt", "stand-in validation engine",
                                                                          engine="stand-in", plugin_lib="stand-in")]
                mval._trt_direct = lambda path, lib, feed: runner.run(dict(feed))
                for b, l in shapes:
                    reps = [mval.validate(outdir, graph=graph, batch=b, seq=l, seed=seed, use_polygraphy=False)
                            for _ in range(draws if noise else 1)]  # the noisier stand-in: the draw of largest gain
                    rep = max(reps, key=lambda r: abs(r.steps["worst_gain"]["gain"]))
                    p = {(r["reference"], r["output"]): r["max_rel"] for r in rep.pairs if r["test"] == "tensorrt"}
                    st = rep.steps
                    wm, wg, fo = st["worst_mean"], st["worst_gain"], st["first_over"]
                    mean = f"{wm['mean_steps']:.3f} ({wm['tensor']})"
                    gain = f"{wg['gain']:+.1e} ({wg['tensor']})"
                    fu = rep.fused
                    fused = "-" if fu is None else f"{100 * fu['worst']['share']:.2g}% ({fu['worst']['tensor']})"
                    print(f"{graph:<8}{f'{b}x{l}':>7}  {name:<15}{p[('portable=', 'logits')]:>17.2e}"
                          f"{p[('portable=', 'states')]:>9.2e}  {mean:<36}{gain:<38}{fo['tensor'] if fo else '-':<24}"
                          f"{fused}{'' if rep.ok else '  FAIL'}")
    finally:
        mval._engine_reference, mval._trt_direct = saved


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--shapes", default="2x32,3x20,4x64", help="BxL prompts, comma-separated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--draws", type=int, default=1, help="runs of the noisier stand-in a prompt (its noise is drawn "
                                                         "anew each run): the largest distances are printed (--layers: "
                                                         "the run of largest gain)")
    ap.add_argument("--layers", action="store_true", help="also the layer-by-layer check of stand-in validation engines")
    args = ap.parse_args()
    sys.modules["tensorrt"] = None  # validate's own engine pair stays out: the stand-in is run here
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",")]
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor() or platform.platform())
    print(f"{platform.machine()}, {os.cpu_count()} cores, {cpu}; {args.outdir}, seed {args.seed}")
    print(f"{'graph':<8}{'prompt':>8}{'logits':>10}{'worst state':>13}{'noisier: logits':>17}{'worst state':>13}"
          f"  (max rel vs model.<graph>.portable.onnx; noisier: the largest of {args.draws} draw(s))")
    for graph in ("prefill", "decode"):
        model = onnx.load(os.path.join(args.outdir, f"model.{graph}.onnx"))
        stand_ins = [OrtRunner(fp16_stand_in(model, noise=noise)) for noise in (0.0, 5e-4)]
        portable = OrtRunner(os.path.join(args.outdir, f"model.{graph}.portable.onnx"))
        for b, l in shapes:
            feed = validate_feed(args.outdir, graph, b, l, args.seed)
            ref, row = portable.run(dict(feed)), f"{graph:<8}{f'{b}x{l}':>8}"
            for stand_in, (w1, w2), n in zip(stand_ins, ((10, 13), (17, 13)), (1, args.draws)):
                logits = worst = 0.0
                for _ in range(n):  # each run of the noisier stand-in is a new draw of its noise
                    got = stand_in.run(dict(feed))
                    logits = max(logits, mval.error_stats(ref["logits"], got["logits"])["max_rel"])
                    worst = max([worst] + [mval.error_stats(ref[k], got[k])["max_rel"] for k in ref if k != "logits"])
                row += f"{logits:>{w1}.3g}{worst:>{w2}.3g}"
            print(row)
    if args.layers:
        layers_table(args.outdir, shapes, args.seed, args.draws)


if __name__ == "__main__":
    main()
