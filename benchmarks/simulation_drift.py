#!/usr/bin/env python3
"""Why the simulation self-check follows the graph's boundary roundings (issue 3).

    python benchmarks/simulation_drift.py [--layers 24]

A random d768 model with mambaquant-w8a8 (8 random windows of 128 tokens for calibration): per quantization
point, how many int8 roundings of the portable graph and of the numpy simulation differ when the simulation
runs on its own, then the end-to-end logits difference with and without following (compile.simulation_check).
"""

from __future__ import annotations

import argparse

import numpy as np

from mq_deploy.backends.ort import OrtRunner
from mq_deploy.compile import simulation_check
from mq_deploy.graph.lower import lower_selective_scan
from mq_deploy.graph.mamba_lm import build_lm_graph
from mq_deploy.model import MambaConfig, random_model
from mq_deploy.quant import qparams, simulate
from mq_deploy.quantize import prepare
from mq_deploy.recipes import load_recipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=24)
    args = ap.parse_args()
    V = 1000
    m = random_model(MambaConfig(d_model=768, n_layer=args.layers, vocab_size=V), seed=0)
    m2, plan, _ = prepare(m, load_recipe("mambaquant-w8a8"), np.random.default_rng(0).integers(0, V, (8, 128)),
                          progress=False)
    g, points = build_lm_graph(m2, plan, with_points=True)
    portable = lower_selective_scan(g)
    ids = np.random.default_rng(1).integers(0, V, size=(2, 9))
    outs = OrtRunner(portable, extra_outputs=sorted(set(points.values()))).run({"input_ids": ids})
    seen = {}  # the simulation's own values at each point, caught at its fake-quant calls
    scales = {float(v): k for k, v in plan.quant.act_scales.items()}
    real = simulate.fake_quant

    def spy(x, s, bits):
        seen.setdefault(scales[float(s)], np.array(x, np.float32))
        return real(x, s, bits)

    simulate.fake_quant = spy
    try:
        b = simulate.forward(m2, plan, ids)
    finally:
        simulate.fake_quant = real
    print("| point | roundings that differ |\n|---|---:|")
    for pt, name in points.items():
        if pt in seen and pt in plan.quant.act_scales:
            s = plan.quant.act_scales[pt]
            a = outs[name].reshape(seen[pt].shape)
            n = int((qparams.quantize(a, s, 8) != qparams.quantize(seen[pt], s, 8)).sum())
            if n:
                print(f"| {pt} | {n} of {a.size} |")
    print(f"\nend to end, simulation on its own: max rel logits error "
          f"{np.abs(outs['logits'] - b).max() / np.abs(b).max():.3g}")
    print("following the graph's boundary roundings:", simulation_check(m2, plan, portable, V, points))


if __name__ == "__main__":
    main()
