"""How far a correct engine of the prefill / decode-step graphs is from model.<graph>.portable.onnx, where TensorRT is
absent: the engine is stood in for by model.<graph>.onnx with every float tensor stored in fp16
(graph.follow.fp16_stand_in) on the CPU kernels, fed exactly what `mq-deploy validate --graph` feeds (random prompts
with left-padded rows; the decode step: one token from the states model.prefill.portable.onnx leaves). Prints the max
rel distance of the logits and of the worst state, the figures behind validate's QUANTIZED_STATEFUL_ENGINE_TOL.

Usage: python benchmarks/stateful_engine_standin.py OUTDIR [--shapes 2x32,3x20,4x64] [--seed 0]
Results: benchmarks/results/stateful_engine_standin.md.
"""
import argparse
import os
import platform
import sys

import onnx

from mq_deploy import validate as mval
from mq_deploy.backends.ort import OrtRunner
from mq_deploy.graph.follow import fp16_stand_in


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--shapes", default="2x32,3x20,4x64", help="BxL prompts, comma-separated")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sys.modules["tensorrt"] = None  # validate's own engine pair stays out: the stand-in is run here
    print(f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}; "
          f"{args.outdir}, seed {args.seed}")
    print(f"{'graph':<8}{'prompt':>8}{'logits':>10}{'worst state':>13}  (max rel vs model.<graph>.portable.onnx)")
    for graph in ("prefill", "decode"):
        stand_in = OrtRunner(fp16_stand_in(onnx.load(os.path.join(args.outdir, f"model.{graph}.onnx"))))
        portable = OrtRunner(os.path.join(args.outdir, f"model.{graph}.portable.onnx"))
        for shape in args.shapes.split(","):
            b, l = (int(v) for v in shape.lower().split("x"))
            feeds, run = [], mval.run_references
            mval.run_references = lambda refs, feed, poly: feeds.append(feed) or run(refs, feed, poly)
            try:
                mval.validate(args.outdir, graph=graph, batch=b, seq=l, seed=args.seed, use_polygraphy=False)
            finally:
                mval.run_references = run
            (feed,) = feeds  # the input validate --graph gives the graphs
            ref, got = portable.run(dict(feed)), stand_in.run(dict(feed))
            worst = max(mval.error_stats(ref[k], got[k])["max_rel"] for k in ref if k != "logits")
            print(f"{graph:<8}{shape:>8}{mval.error_stats(ref['logits'], got['logits'])['max_rel']:>10.3g}"
                  f"{worst:>13.3g}")


if __name__ == "__main__":
    main()
