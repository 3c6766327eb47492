"""Smoothing passes: per-channel scales moved between an activation and the next weight.

smooth_gate (MambaQuant's smooth-fused S-SiLU, paper eq. 14-15) — s ∈ R^di on the out_proj input g:

    W_z ← diag(1/s)·W_z  (gate half of in_proj),  SiLU(z) → S-SiLU(z', s) = z'·σ(s⊙z') = SiLU(z)/s,
    W_out ← W_out·diag(s)                          so g' = g/s and g'·W_outᵀ is unchanged.
    s_j = max|g_j|^α / max|W_out[:, j]|^(1-α)      (SmoothQuant form, clamped to [1e-5, 1e5])

online_hadamard — g' = g·H_di online (a Hadamard node), W_out ← W_out·H_di.

smooth_state (state-dimension smoothing) — s ∈ R^N:  Bm ← Bm/s (W_x rows of B ÷ s), Cm ← Cm·s:
    h ← h/s and y = h·Cm is unchanged (zero initial state; a stored state lives in the scaled domain).
    s_n = sqrt(max|B_n| / max|C_n|) gives Bm and Cm the same per-channel maxima.

shift_delta — c ∈ R^di, the centre (min + max)/2 of each channel of Δ = δ·W_dt (the scan.delta point):
    the graph computes Δ − c (an Add after dt_proj) and the scan adds b_dt + c, so softplus(Δ − c + b_dt + c)
    is unchanged and the scan.delta quantizer sees each channel centred: range max_j (max_j − min_j)/2
    instead of max_j |Δ_j| (the dt_proj-bias shift asked for with Vim; a Vim shifts both scan directions).

smoothquant (the SmoothQuant baseline, α) on every linear input:
    in_proj:  γ ← γ/s, W_in ← W_in·diag(s)                 (folded into the norm)
    dt_proj:  W_x[:R] ← diag(1/s)·W_x[:R], W_dt ← W_dt·diag(s)   (folded into x_proj)
    x_proj, out_proj: an explicit online ×1/s before the linear, W ← W·diag(s)
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..graph.plan import point
from ..quant.hadamard import hadamard_matrix
from . import clone, register


def smooth_scales(act_absmax: np.ndarray, w_absmax: np.ndarray, alpha: float) -> np.ndarray:
    a = np.maximum(np.asarray(act_absmax, np.float64), 1e-8)
    w = np.maximum(np.asarray(w_absmax, np.float64), 1e-8)
    return np.clip(a ** alpha / w ** (1.0 - alpha), 1e-5, 1e5)


@register("smooth_gate", params=("alpha",), needs_stats=True)
def smooth_gate(model, plan, stats, alpha: float = 0.5):
    model, plan = clone(model, plan)
    di = model.config.d_inner
    for i, L in enumerate(model.layers):
        s = smooth_scales(stats.chan_absmax(point(i, "out_proj.input")), np.abs(L.out_proj).max(axis=0), alpha)
        L.in_proj = L.in_proj.copy()
        L.in_proj[di:] = (L.in_proj[di:] / s[:, None]).astype(np.float32)
        if L.in_proj_bias is not None:
            L.in_proj_bias = L.in_proj_bias.copy()
            L.in_proj_bias[di:] = (L.in_proj_bias[di:] / s).astype(np.float32)
        L.out_proj = (L.out_proj * s[None, :]).astype(np.float32)
        lp = plan.layers[i]
        lp.gate_scale = s.astype(np.float32) if lp.gate_scale is None else (lp.gate_scale * s).astype(np.float32)
    return model, plan


@register("online_hadamard")
def online_hadamard(model, plan, stats):
    model, plan = clone(model, plan)
    H = hadamard_matrix(model.config.d_inner)
    for i, L in enumerate(model.layers):
        L.out_proj = (L.out_proj.astype(np.float64) @ H).astype(np.float32)
        plan.layers[i].out_hadamard = True
    return model, plan


@register("smooth_state", needs_stats=True)
def smooth_state(model, plan, stats):
    model, plan = clone(model, plan)
    R, N = model.config.dt_rank, model.config.d_state
    for i, L in enumerate(model.layers):
        s = np.sqrt(np.maximum(stats.chan_absmax(point(i, "scan.B")), 1e-8) /
                    np.maximum(stats.chan_absmax(point(i, "scan.C")), 1e-8))
        L.x_proj = L.x_proj.copy()
        L.x_proj[R:R + N] = (L.x_proj[R:R + N] / s[:, None]).astype(np.float32)
        L.x_proj[R + N:] = (L.x_proj[R + N:] * s[:, None]).astype(np.float32)
    return model, plan


def delta_centre(stats, pt: str) -> np.ndarray:
    if stats is None or pt not in stats.chan_lo:
        raise UserError(f"needs per-channel minimum / maximum statistics of {pt}")
    return (stats.chan_lo[pt].astype(np.float64) + stats.chan_hi[pt]) / 2


@register("shift_delta", needs_stats=True)
def shift_delta(model, plan, stats):
    model, plan = clone(model, plan)
    for i in range(model.config.n_layer):
        c = delta_centre(stats, point(i, "scan.delta"))
        old = plan.layers[i].delta_shift
        plan.layers[i].delta_shift = (c if old is None else old + c).astype(np.float32)
    return model, plan


@register("smoothquant", params=("alpha",), needs_stats=True)
def smoothquant(model, plan, stats, alpha: float = 0.5):
    model, plan = clone(model, plan)
    R = model.config.dt_rank
    for i, L in enumerate(model.layers):
        # in_proj: into the norm weight
        s = smooth_scales(stats.chan_absmax(point(i, "in_proj.input")), np.abs(L.in_proj).max(axis=0), alpha)
        L.norm = (L.norm / s).astype(np.float32)
        L.in_proj = (L.in_proj * s[None, :]).astype(np.float32)
        # dt_proj: into x_proj's δ rows
        s = smooth_scales(stats.chan_absmax(point(i, "dt_proj.input")), np.abs(L.dt_proj).max(axis=0), alpha)
        L.x_proj = L.x_proj.copy()
        L.x_proj[:R] = (L.x_proj[:R] / s[:, None]).astype(np.float32)
        L.dt_proj = (L.dt_proj * s[None, :]).astype(np.float32)
        # x_proj and out_proj: explicit online multiplies
        s = smooth_scales(stats.chan_absmax(point(i, "x_proj.input")), np.abs(L.x_proj).max(axis=0), alpha)
        L.x_proj = (L.x_proj * s[None, :]).astype(np.float32)
        plan.layers[i].xproj_smooth = s.astype(np.float32)
        s = smooth_scales(stats.chan_absmax(point(i, "out_proj.input")), np.abs(L.out_proj).max(axis=0), alpha)
        L.out_proj = (L.out_proj * s[None, :]).astype(np.float32)
        plan.layers[i].out_smooth = s.astype(np.float32)
    return model, plan
