"""The quantization half of compile: calibrate → passes → calibrate again → integer weights + scales.

    model', plan, stats = prepare(model, recipe, windows)

1. If a pass needs data (KLT, smoothing), calibrate the fp32 graph (per-channel maxima, covariances).
2. Apply the recipe's passes (function-preserving; `mq_deploy.passes`).
3. For W8A8 / W4A8 / W4A16: round the tensors deployed in fp16 (conv, embedding, lm_head, norms), calibrate
   the transformed graph (not for a weight-only RTN recipe), quantize each linear's weight (RTN or GPTQ with
   H = XᵀX/n from this calibration) and, unless weight-only (W4A16), pick each activation point's static scale
   (max / percentile / MSE).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .calibrate import OUTPUT_BUDGET, Stats, collect
from .graph.mamba_lm import build_lm_graph
from .graph.plan import ACT_POINTS, LINEARS, GraphPlan, QuantSpec, point
from .memory import release
from .model import MambaModel
from .passes import needs_stats, run_passes
from .quant.linear import quantize_linear
from .quant.qparams import act_scale
from .quant.qparams import round_fp16 as round_fp16_weight
from .recipes import Recipe


def calibrate(model: MambaModel, plan: GraphPlan, windows: np.ndarray, cov_points=(), batch_size: int = 8,
              seed: int = 0, progress: bool = True, meta: Optional[dict] = None,
              scratch: Optional[Path] = None) -> Stats:
    """Statistics of every quantization point of the fp32 graph of (model, plan). With a `scratch` folder, the
    graph's weights are written to a file in it first (removed after), which onnxruntime maps instead of taking them
    from the graph (`backends.ort`; a compile passes its temporary OUTDIR: the disk of the output)."""
    from .backends.ort import OrtRunner

    fp = GraphPlan(layers=plan.layers, quant=None)
    graph, points = build_lm_graph(model, fp, with_points=True)  # plugin nodes: backends/hybrid.py
    # bound the memory of the marked outputs: a 130m-shape model emits ~0.5 MB of them per token
    c = model.config
    per_token = 4 * c.n_layer * (c.d_model + 3 * c.d_inner + c.dt_rank + 2 * c.d_state)
    batch_size = max(1, min(batch_size, OUTPUT_BUDGET // max(1, per_token * windows.shape[1])))
    with contextlib.ExitStack() as stack:
        folder = None
        if scratch is not None:
            from .graph.weights import scratch_weights

            graph, folder = stack.enter_context(scratch_weights(graph, scratch, ".calibration-"))
            release()
        runner = OrtRunner(graph, extra_outputs=sorted(set(points.values())), only_extra=True, weights_dir=folder)
        del graph  # the sessions hold the weights now (or map them)
        release()
        return collect(lambda outs: runner, points, windows, cov_points, batch_size=batch_size, seed=seed,
                       progress=progress, gamma=[L.norm.copy() for L in model.layers], meta=meta)


def round_fp16(model: MambaModel, everything: bool, recipe: str = "fp16") -> MambaModel:
    """Round weights to fp16 precision: all of them (fp16 recipe) or those deployed in fp16 beside int8 linears; a
    UserError naming a weight beyond fp16's range."""
    for name in ("embedding", "lm_head", "norm_f", "head_mix"):
        setattr(model, name, round_fp16_weight(getattr(model, name), name, recipe))
    for i, L in enumerate(model.layers):
        names = ("norm", "conv_weight", "conv_bias") + (("in_proj", "x_proj", "dt_proj", "out_proj", "dt_proj_bias",
                                                         "D", "in_proj_bias", "out_proj_bias") if everything else ())
        for name in names:
            setattr(L, name, round_fp16_weight(getattr(L, name), f"layers.{i}.{name}", recipe))
    return model


TRACE_WINDOWS = 4  # calibration windows for the report's per-pass statistics


def stats_windows(windows: np.ndarray, n: int) -> np.ndarray:
    """An evenly spaced subset of `n` calibration windows (all of them if there are no more)."""
    if n >= len(windows):
        return windows
    return windows[np.unique(np.linspace(0, len(windows) - 1, max(1, n)).round().astype(int))]


def fp32_stats(model: MambaModel, windows: np.ndarray, seed: int = 0, batch_size: int = 8,
               progress: bool = True, scratch: Optional[Path] = None) -> Stats:
    """Statistics of the untransformed fp32 graph that the data-driven passes read (KLT, smoothing)."""
    n = model.config.n_layer
    cov = [point(i, "in_proj.input") for i in range(n)] + [point(i, "dt_proj.input") for i in range(n)]
    return calibrate(model, GraphPlan.plain(n), windows, cov, batch_size, seed, progress, meta={"stage": "fp32"},
                     scratch=scratch)


def prepare(model: MambaModel, recipe: Recipe, windows: Optional[np.ndarray], *, progress: bool = True,
            log: Callable[[str], None] = lambda s: None, batch_size: int = 8,
            stats0: Optional[Stats] = None, trace: Optional[list] = None,
            scratch: Optional[Path] = None) -> tuple[MambaModel, GraphPlan, list]:
    """Apply `recipe` to `model`; returns (model', plan, [Stats of each calibration run]).

    `stats0` may pass in `fp32_stats(model, windows)` computed once for several recipes. With a list as
    `trace`, (pass name, Stats on the first TRACE_WINDOWS windows) is appended after every pass. `scratch`: a
    folder for the calibration graphs' weights (`calibrate`)."""
    n = model.config.n_layer
    plan = GraphPlan.plain(n)
    seed = recipe.calibration.get("seed", 0)
    stats_runs = []
    if needs_stats(recipe.passes):
        if stats0 is None:
            sub = stats_windows(windows, recipe.calibration.get("stats_samples", len(windows)))
            log(f"calibrating the fp32 graph on {len(sub)} windows (statistics for the passes)")
            stats0 = fp32_stats(model, sub, seed, batch_size, progress, scratch)
        stats_runs.append(stats0)
    if recipe.passes:
        log("applying passes")
        hook = None
        if trace is not None and windows is not None:
            def hook(name, m, p):
                trace.append((name, calibrate(m, p, windows[:TRACE_WINDOWS], (), batch_size, seed, False,
                                              scratch=scratch)))
        model, plan = run_passes(model, plan, recipe.passes, stats0, log=log, after_each=hook)
        release()
    else:
        import copy

        model = copy.deepcopy(model)
    if recipe.precision == "fp16":
        return round_fp16(model, everything=True, recipe=recipe.name), plan, stats_runs
    if not recipe.quantized:
        return model, plan, stats_runs

    wcfg, acfg = recipe.weights, recipe.activations
    model = round_fp16(model, everything=False, recipe=recipe.name)
    gptq = wcfg["method"] == "gptq"
    stats1 = None
    if recipe.quant_calibrates:  # (weight-only RTN reads no data)
        log("calibrating the transformed graph (" + ", ".join(
            w for w, on in (("activation scales", recipe.act_quantized), ("GPTQ Hessians", gptq)) if on) + ")")
        cov = [f"layers.{i}.{lin}.input" for i in range(n) for lin in LINEARS] if gptq else []
        stats1 = calibrate(model, plan, windows, cov, batch_size, seed, progress, meta={"stage": "transformed"},
                           scratch=scratch)
        stats_runs.append(stats1)
    q = QuantSpec(weight_bits=wcfg["bits"], act_bits=acfg["bits"] if recipe.act_quantized else None)
    bs = wcfg.get("block_size", 0)
    log(f"quantizing weights ({wcfg['method']}, int{wcfg['bits']} per "
        + (f"block of {bs} input rows per output channel; int8 per channel where {bs} does not divide the input size"
           if bs else "output channel") + ")")
    from tqdm import tqdm

    for i, L in enumerate(tqdm(model.layers, desc="quantizing weights", unit="layer", disable=not progress,
                               leave=not sys.stderr.isatty())):  # GPTQ: seconds a layer on a large model
        for lin in LINEARS:
            name = f"layers.{i}.{lin}"
            quantize_linear(q, name, getattr(L, lin).T, wcfg, stats1.cov(f"{name}.input") if gptq else None)
    for i in range(n if recipe.act_quantized else 0):
        for ap in ACT_POINTS:
            pt = point(i, ap)
            if ap.startswith("scan.") and not acfg["scan_inputs"]:
                continue
            if pt in stats1.absmax:
                q.act_scales[pt] = act_scale(stats1.sample[pt], stats1.absmax[pt], acfg["bits"], acfg["method"],
                                             acfg["percentile"])
    plan.quant = q
    return model, plan, stats_runs
