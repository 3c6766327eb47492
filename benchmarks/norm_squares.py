"""Largest RMSNorm square per norm of a compiled OUTDIR on real text: why `mq-deploy build --fp16` keeps the
RMSNorm layers in fp32 (graph/precision.py; fp16's largest finite value is 65504).

Usage: python benchmarks/norm_squares.py OUTDIR [OUTDIR ...] [--data JSONL] [--batch B] [--seq L]
Runs model.portable.onnx on the first B×L tokens of the text (the OUTDIR's tokenizer.json; default data
../shared/data/text/wikitext2_val_sample.jsonl) and prints, per OUTDIR, the three largest max x² and how many
norms exceed 65504. Results: benchmarks/results/norm_squares.md.
"""
import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np
import onnx

from mq_deploy.backends.ort import OrtRunner
from mq_deploy.graph.precision import rms_norm_nodes

FP16_MAX = 65504.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdirs", nargs="+")
    ap.add_argument("--data", default="../shared/data/text/wikitext2_val_sample.jsonl")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    args = ap.parse_args()
    from tokenizers import Tokenizer

    text = " ".join(json.loads(ln)["text"] for ln in open(args.data))
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"{platform.machine()}, {os.cpu_count()} cores, {cpu}; {args.batch}x{args.seq} tokens of {args.data}")
    for d in map(Path, args.outdirs):
        g = onnx.load(str(d / "model.portable.onnx"), load_external_data=False)
        squares = [n.output[0] for n in rms_norm_nodes(g)][0::5]  # the Mul(x, x) of each norm
        ids = Tokenizer.from_file(str(d / "tokenizer.json")).encode(text).ids[:args.batch * args.seq]
        if len(ids) < args.batch * args.seq:
            raise SystemExit(f"{args.data} has only {len(ids)} tokens for {d.name}")
        r = OrtRunner(d / "model.portable.onnx", extra_outputs=squares).run(
            {"input_ids": np.array(ids).reshape(args.batch, args.seq)})
        top = sorted(((float(r[t].max()), t) for t in squares), reverse=True)
        over = sum(v > FP16_MAX for v, _ in top)
        print(f"{d.name}: {len(squares)} norms, {over} with max x² > {FP16_MAX:g}; largest "
              + ", ".join(f"{t} {v:.3g}" for v, t in top[:3]))


if __name__ == "__main__":
    main()
