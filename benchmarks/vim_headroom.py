#!/usr/bin/env python3
"""How much could the two Vim-specific extras still give on a model? (issue 6)

    python benchmarks/vim_headroom.py [--model DIR] [--recipe vim-mambaquant-w8a8] [--images 128]

1. Class token quantized separately: per quantization point on the token axis, absmax over the class token
   vs absmax over the patch tokens. A per-tensor scale set by the class token costs the patch tokens
   log2(ratio) bits; a separate class-token scale would give them back.
2. Per-channel Δ shift folded into the dt_proj bias: absmax of scan.delta vs the largest per-channel
   half-range (max - min) / 2 after centring each channel; the ratio is the resolution a shift would gain.
Both on the recipe's transformed fp32 graph (the activations the quantizers see) and on the original.
A recipe with the `shift_delta` pass (vim-mambaquant-*) reads 1.00x for Δ: its shift already took the gain.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mq_deploy.graph.plan import GraphPlan
from mq_deploy.recipes import load_recipe
from mq_deploy.vision.data import calibration_images
from mq_deploy.vision.graph import VimRunner, build_vim_graph
from mq_deploy.vision.model import load_vim
from mq_deploy.vision.quantize import prepare_vim

ASSET = Path(__file__).resolve().parent.parent / "src/mq_deploy/assets/vim-fmnist"


def activations(model, plan, imgs):
    g, pts = build_vim_graph(model, plan, with_points=True)
    out = VimRunner(g, extra_outputs=sorted(set(pts.values())), only_extra=True).run({"pixel_values": imgs})
    return {pt: out[n] for pt, n in pts.items()}


def report(title, acts, pos, n_tokens):
    print(f"\n{title}")
    cls = []
    for pt, x in acts.items():
        x = np.abs(x)
        if x.ndim == 3 and x.shape[1] == n_tokens:
            cls.append((float(x[:, pos].max() / np.delete(x, pos, axis=1).max()), pt))
    cls.sort(reverse=True)
    print("  class token / patch tokens absmax, top 4: " + ", ".join(f"{p} {r:.2f}x" for r, p in cls[:4]))
    print(f"  points where the class token sets the scale: {sum(r > 1 for r, _ in cls)} of {len(cls)}")
    gains = []
    for pt, x in acts.items():
        if pt.endswith("scan.delta"):
            x = x.reshape(-1, x.shape[-1])
            gains.append((float(np.abs(x).max() / ((x.max(0) - x.min(0)) / 2).max()), pt))
    print("  scan.delta absmax / centred half-range: " + ", ".join(f"{p} {r:.2f}x" for r, p in sorted(gains)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ASSET))
    ap.add_argument("--recipe", default="vim-mambaquant-w8a8")
    ap.add_argument("--images", type=int, default=128)
    args = ap.parse_args()
    m = load_vim(args.model)
    c = m.config
    if not c.if_cls_token:
        raise SystemExit("this Vim has no class token")
    imgs = calibration_images(args.images, c.channels, 0)
    n_tokens = (c.img_size // c.patch_size) ** 2 + 1
    report("original fp32 graph", activations(m, None, imgs), c.cls_position, n_tokens)
    m2, plan, _ = prepare_vim(m, load_recipe(args.recipe), imgs)
    report(f"{args.recipe}, transformed fp32 graph", activations(m2, GraphPlan(layers=plan.layers, quant=None), imgs),
           c.cls_position, n_tokens)


if __name__ == "__main__":
    main()
