"""Vim quantization: calibrate on training images → passes → calibrate again → integer weights + scales.

Mirrors `mq_deploy.quantize.prepare` for the language model (same Recipe, Stats, weight and
activation quantizers); the quantization points are those of `vision/graph.py` (six linears per
block: shared in_proj/out_proj, and x_proj/dt_proj per direction).
"""

from __future__ import annotations

import copy
from typing import Callable, Optional

import numpy as np

from ..calibrate import Stats, collect
from ..graph.plan import GraphPlan, QuantSpec, point
from ..passes import needs_stats
from ..quant.qparams import round_fp16 as round_fp16_weight
from ..quant.linear import quantize_linear
from ..quant.qparams import act_scale
from ..recipes import Recipe
from .graph import ACT_POINTS, LINEARS, VimRunner, build_vim_graph, plain_plan
from .model import VimModel
from .passes import run_vim_passes


def calibrate(model: VimModel, plan: GraphPlan, images: np.ndarray, cov_points=(), batch_size: int = 32,
              seed: int = 0, progress: bool = False, meta: Optional[dict] = None, token_split=None) -> Stats:
    fp = GraphPlan(layers=plan.layers, quant=None)
    graph, points = build_vim_graph(model, fp, with_points=True)  # plugin graph: onnxruntime + CPU kernels
    return collect(lambda outs: VimRunner(graph, extra_outputs=outs, only_extra=True), points, images, cov_points,
                   batch_size=batch_size, seed=seed, progress=progress, gamma=[L.norm.copy() for L in model.layers],
                   meta=meta, token_split=token_split)


def cls_token_index(model: VimModel) -> dict:
    """{linear-input point: the class token's index in that tensor} (the backward direction runs reversed)."""
    c = model.config
    if not c.if_cls_token:
        return {}
    last = c.seq_len - 1
    return {point(i, f"{lin}.input"): last - c.cls_position if lin.endswith("_b") else c.cls_position
            for i in range(c.depth) for lin in LINEARS}


def token_scale(st: Stats, pt: str, acfg: dict) -> Optional[tuple[float, float]]:
    """(scale of the other tokens, scale of the split token) when the token's own range differs enough to pay
    for its rescale — larger (it sets or clips the shared scale) or under half (under 7 bits of its own)."""
    if f"{pt}@token" not in st.absmax:
        return None
    s_rest, s_tok = (act_scale(st.sample[f"{pt}@{k}"], st.absmax[f"{pt}@{k}"], acfg["bits"], acfg["method"],
                               acfg["percentile"]) for k in ("rest", "token"))
    return (s_rest, s_tok) if s_tok > s_rest or s_tok < 0.5 * s_rest else None


def fp32_stats(model: VimModel, images: np.ndarray, seed: int = 0) -> Stats:
    n = model.config.depth
    cov = [point(i, p) for i in range(n) for p in ("in_proj.input", "dt_proj.input", "dt_proj_b.input")]
    return calibrate(model, plain_plan(n), images, cov, seed=seed, meta={"stage": "fp32"})


def round_fp16(model: VimModel, everything: bool, recipe: str = "vim-fp16") -> VimModel:
    for name in ("patch_weight", "patch_bias", "cls_token", "pos_embed", "norm_f", "head", "head_bias"):
        setattr(model, name, round_fp16_weight(getattr(model, name), name, recipe))
    for i, L in enumerate(model.layers):
        names = ("norm", "conv_weight", "conv_bias", "conv_weight_b", "conv_bias_b") + (
            ("in_proj", "out_proj", "x_proj", "dt_proj", "dt_proj_bias", "D", "x_proj_b", "dt_proj_b", "dt_proj_bias_b",
             "D_b", "in_proj_bias", "out_proj_bias") if everything else ())
        for name in names:
            setattr(L, name, round_fp16_weight(getattr(L, name), f"layers.{i}.{name}", recipe))
    return model


def prepare_vim(model: VimModel, recipe: Recipe, images: Optional[np.ndarray], *,
                log: Callable[[str], None] = lambda s: None, stats0: Optional[Stats] = None):
    """Apply `recipe` to `model`; returns (model', plan, [Stats of each calibration run])."""
    n = model.config.depth
    plan = plain_plan(n)
    seed = recipe.calibration.get("seed", 0)
    runs = []
    if needs_stats(recipe.passes):
        if stats0 is None:
            log("calibrating the fp32 graph (statistics for the passes)")
            stats0 = fp32_stats(model, images, seed)
        runs.append(stats0)
    model, plan = run_vim_passes(model, plan, recipe.passes, stats0, log=log) if recipe.passes else (
        copy.deepcopy(model), plan)
    if recipe.precision == "fp16":
        return round_fp16(model, everything=True, recipe=recipe.name), plan, runs
    if not recipe.quantized:
        return model, plan, runs
    wcfg, acfg = recipe.weights, recipe.activations
    model = round_fp16(model, everything=False, recipe=recipe.name)
    gptq = wcfg["method"] == "gptq"
    cov = [f"layers.{i}.{lin}.input" for i in range(n) for lin in LINEARS] if gptq else []
    split = cls_token_index(model) if acfg["cls_token"] == "separate" else {}
    st = None
    if recipe.quant_calibrates:  # (weight-only RTN reads no data)
        log("calibrating the transformed graph")
        st = calibrate(model, plan, images, cov, seed=seed, meta={"stage": "transformed"}, token_split=split)
        runs.append(st)
    q = QuantSpec(weight_bits=wcfg["bits"], act_bits=acfg["bits"] if recipe.act_quantized else None)
    for i, L in enumerate(model.layers):
        for lin in LINEARS:
            name = f"layers.{i}.{lin}"
            quantize_linear(q, name, getattr(L, lin).T, wcfg, st.cov(f"{name}.input") if gptq else None)
        for ap in ACT_POINTS if recipe.act_quantized else ():
            pt = point(i, ap)
            if ap.startswith("scan") and not acfg["scan_inputs"]:  # scan.* and scan_b.*
                continue
            if pt not in st.absmax:
                continue
            ts = token_scale(st, pt, acfg) if pt in split else None
            if ts is not None:
                q.act_scales[pt] = ts[0]
                q.token_scales[pt] = (split[pt], ts[1])
            else:
                q.act_scales[pt] = act_scale(st.sample[pt], st.absmax[pt], acfg["bits"], acfg["method"],
                                             acfg["percentile"])
    plan.quant = q
    return model, plan, runs
