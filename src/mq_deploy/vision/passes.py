"""The recipe passes for Vim: two scan directions per block sharing in_proj and out_proj.

Same names, parameters and algebra as `mq_deploy.passes` (see those docstrings); what differs:

* rotate_residual — R1 also rotates every producer of the residual stream before the blocks:
      W_patch (d, C·p·p) ← R1ᵀ·W_patch, b_patch ← b_patch·R1, cls ← cls·R1, pos ← pos·R1
  and the classifier head: W_head ← W_head·R1 (after fold_norms put γ_f into it).
* rotate_dt, smooth_state, smoothquant (x_proj, dt_proj) — applied to each direction with its own
  statistics (`layers.{i}.dt_proj.input` / `layers.{i}.dt_proj_b.input`, `scan.B` / `scan_b.B`, ...).
* smooth_gate, online_hadamard — on the combined out_proj input g = (y_f + y_b)/2 ⊙ SiLU(z): both
  directions are gated by the same z, so one S-SiLU scale and one Hadamard serve both.

* shift_delta — per direction: each channel of Δ centred with its own statistics (`scan.delta` /
  `scan_b.delta`), the shift added to that direction's dt bias.
"""

from __future__ import annotations

import copy
import inspect

import numpy as np

from ..errors import UserError
from ..graph.plan import point
from ..passes.rotate import rotation
from ..passes.smooth import delta_centre, smooth_scales
from ..quant.hadamard import hadamard_matrix

VIM_PASSES: dict = {}


def _register(name):
    def deco(fn):
        VIM_PASSES[name] = fn
        return fn
    return deco


def _f32(a):
    return np.asarray(a).astype(np.float32)


def _f64(a):
    return np.asarray(a, np.float64)


@_register("fold_norms")
def fold_norms(model, plan, stats):
    model, plan = copy.deepcopy(model), copy.deepcopy(plan)
    for L in model.layers:
        L.in_proj = _f32(L.in_proj * L.norm[None, :])
        L.norm = np.ones_like(L.norm)
    model.head = _f32(model.head * model.norm_f[None, :])
    model.norm_f = np.ones_like(model.norm_f)
    return model, plan


@_register("rotate_residual")
def rotate_residual(model, plan, stats, klt: bool = False, random_signs: bool = True, seed: int = 0):
    if not (all(np.all(L.norm == 1) for L in model.layers) and np.all(model.norm_f == 1)):
        raise UserError("rotate_residual needs plain RMSNorms: put fold_norms before it")
    cov = None
    if klt:
        if stats is None:
            raise UserError("klt: true needs calibration statistics")
        cov = 0
        for i in range(model.config.depth):
            c = stats.cov(point(i, "in_proj.input")) / np.outer(stats.gamma[i], stats.gamma[i])
            cov = cov + c / np.trace(c)
    R = rotation(model.config.d_model, cov, klt, random_signs, seed)
    model, plan = copy.deepcopy(model), copy.deepcopy(plan)
    d = model.config.d_model
    shape = model.patch_weight.shape
    model.patch_weight = _f32((R.T @ _f64(model.patch_weight).reshape(d, -1)).reshape(shape))
    model.patch_bias = _f32(_f64(model.patch_bias) @ R)
    if model.cls_token is not None:
        model.cls_token = _f32(_f64(model.cls_token) @ R)
    model.pos_embed = _f32(_f64(model.pos_embed) @ R)
    model.head = _f32(_f64(model.head) @ R)
    for L in model.layers:
        L.in_proj = _f32(_f64(L.in_proj) @ R)
        L.out_proj = _f32(R.T @ _f64(L.out_proj))
        if L.out_proj_bias is not None:
            L.out_proj_bias = _f32(_f64(L.out_proj_bias) @ R)
    return model, plan


@_register("rotate_dt")
def rotate_dt(model, plan, stats, klt: bool = False, random_signs: bool = True, seed: int = 0):
    R_ = model.config.dt_rank
    model, plan = copy.deepcopy(model), copy.deepcopy(plan)
    for i, L in enumerate(model.layers):
        for k, s in enumerate(("", "_b")):
            cov = stats.cov(point(i, f"dt_proj{s}.input")) if klt else None
            R5 = rotation(R_, cov, klt, random_signs, seed + 1000 + 2 * i + k)
            W = _f64(getattr(L, "x_proj" + s)).copy()
            W[:R_] = R5.T @ W[:R_]
            setattr(L, "x_proj" + s, _f32(W))
            setattr(L, "dt_proj" + s, _f32(_f64(getattr(L, "dt_proj" + s)) @ R5))
    return model, plan


@_register("smooth_gate")
def smooth_gate(model, plan, stats, alpha: float = 0.5):
    model, plan = copy.deepcopy(model), copy.deepcopy(plan)
    di = model.config.d_inner
    for i, L in enumerate(model.layers):
        s = smooth_scales(stats.chan_absmax(point(i, "out_proj.input")), np.abs(L.out_proj).max(axis=0), alpha)
        L.in_proj = L.in_proj.copy()
        L.in_proj[di:] = _f32(L.in_proj[di:] / s[:, None])
        if L.in_proj_bias is not None:
            L.in_proj_bias = L.in_proj_bias.copy()
            L.in_proj_bias[di:] = _f32(L.in_proj_bias[di:] / s)
        L.out_proj = _f32(L.out_proj * s[None, :])
        lp = plan.layers[i]
        lp.gate_scale = _f32(s) if lp.gate_scale is None else _f32(lp.gate_scale * s)
    return model, plan


@_register("online_hadamard")
def online_hadamard(model, plan, stats):
    model, plan = copy.deepcopy(model), copy.deepcopy(plan)
    H = hadamard_matrix(model.config.d_inner)
    for i, L in enumerate(model.layers):
        L.out_proj = _f32(_f64(L.out_proj) @ H)
        plan.layers[i].out_hadamard = True
    return model, plan


@_register("smooth_state")
def smooth_state(model, plan, stats):
    model, plan = copy.deepcopy(model), copy.deepcopy(plan)
    R, N = model.config.dt_rank, model.config.d_state
    for i, L in enumerate(model.layers):
        for s in ("", "_b"):
            sc = np.sqrt(np.maximum(stats.chan_absmax(point(i, f"scan{s}.B")), 1e-8) /
                         np.maximum(stats.chan_absmax(point(i, f"scan{s}.C")), 1e-8))
            W = getattr(L, "x_proj" + s).copy()
            W[R:R + N] = _f32(W[R:R + N] / sc[:, None])
            W[R + N:] = _f32(W[R + N:] * sc[:, None])
            setattr(L, "x_proj" + s, W)
    return model, plan


@_register("smoothquant")
def smoothquant(model, plan, stats, alpha: float = 0.5):
    model, plan = copy.deepcopy(model), copy.deepcopy(plan)
    R = model.config.dt_rank
    for i, L in enumerate(model.layers):
        s = smooth_scales(stats.chan_absmax(point(i, "in_proj.input")), np.abs(L.in_proj).max(axis=0), alpha)
        L.norm = _f32(L.norm / s)
        L.in_proj = _f32(L.in_proj * s[None, :])
        for d in ("", "_b"):
            xp, dp = getattr(L, "x_proj" + d).copy(), getattr(L, "dt_proj" + d)
            s = smooth_scales(stats.chan_absmax(point(i, f"dt_proj{d}.input")), np.abs(dp).max(axis=0), alpha)
            xp[:R] = _f32(xp[:R] / s[:, None])
            setattr(L, "dt_proj" + d, _f32(dp * s[None, :]))
            s = smooth_scales(stats.chan_absmax(point(i, f"x_proj{d}.input")), np.abs(xp).max(axis=0), alpha)
            setattr(L, "x_proj" + d, _f32(xp * s[None, :]))
            setattr(plan.layers[i], "xproj_smooth" + d, _f32(s))
        s = smooth_scales(stats.chan_absmax(point(i, "out_proj.input")), np.abs(L.out_proj).max(axis=0), alpha)
        L.out_proj = _f32(L.out_proj * s[None, :])
        plan.layers[i].out_smooth = _f32(s)
    return model, plan


@_register("shift_delta")
def shift_delta(model, plan, stats):
    model, plan = copy.deepcopy(model), copy.deepcopy(plan)
    for i in range(model.config.depth):
        for s in ("", "_b"):
            c = delta_centre(stats, point(i, f"scan{s}.delta"))
            old = getattr(plan.layers[i], "delta_shift" + s)
            setattr(plan.layers[i], "delta_shift" + s, _f32(c if old is None else old + c))
    return model, plan


def check_vim_passes(passes) -> None:
    """One UserError for a pass of [(name, params)] that has no Vim version or takes other parameters on a Vim (a
    language-model recipe file): said before the calibration that the passes need."""
    for name, params in passes:
        fn = VIM_PASSES.get(name)
        if fn is None:
            raise UserError(f"pass '{name}' has no Vim version; Vim supports {', '.join(sorted(VIM_PASSES))}")
        sig = inspect.signature(fn).parameters
        bad = sorted(k for k in dict(params) if k not in sig or k in ("model", "plan", "stats"))
        if bad and not any(v.kind is inspect.Parameter.VAR_KEYWORD for v in sig.values()):
            raise UserError(f"pass '{name}' takes no {', '.join(bad)} on a Vim model (a language-model recipe? use the "
                            "vim-* recipes)")


def run_vim_passes(model, plan, passes, stats=None, log=lambda s: None):
    """Apply [(name, params)] in order (names as in `mq_deploy.passes`); a failure names the pass."""
    check_vim_passes(passes)
    done = []
    for name, params in passes:
        fn = VIM_PASSES[name]
        log(f"  pass {name} {dict(params) if params else ''}")
        try:
            model, plan = fn(model, plan, stats, **dict(params))
        except UserError as e:
            raise UserError(f"pass '{name}' (after {', '.join(done) or 'none'}): {e}") from None
        done.append(name)
    return model, plan
