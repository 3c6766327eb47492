#!/usr/bin/env python3
"""Vim on Fashion-MNIST: fp32 and every vision recipe side by side (top-1, agreement with fp32).

    python benchmarks/vim_compare.py [--model DIR] [--limit N] [--recipes a,b,...] [--out benchmarks/results/vim]

Calibration: the recipe's `calibration.samples` training images (seed from the recipe); evaluation:
the first N of the 10k test images through the quantized portable ONNX graph in onnxruntime (the
plugin flavour computes the same function; `compile` self-checks the two against each other).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from mq_deploy.graph.lower import lower_selective_scan
from mq_deploy.recipes import load_recipe
from mq_deploy.vision.data import calibration_images, evaluate_top1
from mq_deploy.vision.graph import VimRunner, build_vim_graph
from mq_deploy.vision.model import load_vim
from mq_deploy.vision.quantize import fp32_stats, prepare_vim

ASSET = Path(__file__).resolve().parent.parent / "src/mq_deploy/assets/vim-fmnist"
RECIPES = ",".join(f"vim-{m}-w{b}a8" for b in (8, 4) for m in ("rtn", "smoothquant", "gptq", "quarot", "mambaquant"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ASSET))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--recipes", default=RECIPES)
    ap.add_argument("--out", default="benchmarks/results/vim")
    args = ap.parse_args()
    model = load_vim(args.model)
    c = model.config
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    t = time.time()
    fp = evaluate_top1(VimRunner(lower_selective_scan(build_vim_graph(model))), c.channels, args.limit)
    ref = fp.pop("predictions")
    rows.append({"recipe": "fp32", "top1": fp["top1"], "agreement": 1.0, "seconds": round(time.time() - t, 1)})
    print(rows[-1], flush=True)
    stats0 = {}
    for name in [r for r in args.recipes.split(",") if r]:
        t = time.time()
        recipe = load_recipe(name)
        seed = recipe.calibration["seed"]
        imgs = calibration_images(recipe.calibration["samples"], c.channels, seed)
        key = (recipe.calibration["samples"], seed)
        if key not in stats0:
            stats0[key] = fp32_stats(model, imgs, seed)
        m2, plan, _ = prepare_vim(model, recipe, imgs, stats0=stats0[key])
        g = lower_selective_scan(build_vim_graph(m2, plan))
        r = evaluate_top1(VimRunner(g), c.channels, args.limit, reference=ref)
        r.pop("predictions")
        rows.append({"recipe": name, "top1": r["top1"], "agreement": r["agreement"],
                     "seconds": round(time.time() - t, 1)})
        print(rows[-1], flush=True)
        (out / "compare.json").write_text(json.dumps({"model": args.model, "config": c.to_dict(), "test_images": fp["n"],
                                                      "command": " ".join(sys.argv), "rows": rows}, indent=1) + "\n")
    lines = [f"Vim (d={c.d_model}, depth={c.depth}, patch {c.patch_size}) on Fashion-MNIST, first {fp['n']} test "
             "images; static per-tensor int8 activations, per-channel weights.", "",
             "| recipe | top-1 (%) | Δ vs fp32 | agreement with fp32 (%) |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['recipe']} | {100 * r['top1']:.2f} | {100 * (r['top1'] - rows[0]['top1']):+.2f} | "
                     f"{100 * r['agreement']:.2f} |")
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
