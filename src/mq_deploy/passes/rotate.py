"""Offline rotations fused into the weights (QuaRot-style Hadamard, or MambaQuant's KLT-enhanced K·H).

rotate_residual — one global orthogonal R1 (d×d) on the residual stream (needs fold_norms first):

    r' = r·R1:  E ← E·R1,  lm_head ← lm_head·R1,  W_in ← W_in·R1,  W_out ← R1ᵀ·W_out,  b_out ← b_out·R1
    RMSNorm(r·R1) = RMSNorm(r)·R1, so every in_proj input is rotated and the logits are unchanged. A head tied
    to E stays tied (it is E·R1 too); fold_norms' keep_tied matrix becomes head_mix ← R1ᵀ·head_mix·R1.

rotate_dt — per layer R5 (R×R) on the low-rank δ between x_proj and dt_proj:

    δ' = δ·R5:  W_x[:R] ← R5ᵀ·W_x[:R],  W_dt ← W_dt·R5

R = H (random-sign Hadamard, QuaRot) or R = K·H with K the eigenvectors of the calibration covariance
of the rotated tensor (KLT, paper eq. 11-13): every channel of x·K·H then has the same variance.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..graph.plan import point
from ..quant.hadamard import hadamard_matrix, is_supported, random_signs
from . import clone, register


def random_orthogonal(n: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q * np.sign(np.diag(r))[None, :]


def rotation(n: int, cov=None, klt: bool = False, signs: bool = True, seed: int = 0) -> np.ndarray:
    """R = [K]·diag(±1)·H_n, float64, orthogonal (a seeded random orthogonal matrix replaces H_n for
    sizes with no Hadamard construction, e.g. dt_rank 6)."""
    H = hadamard_matrix(n) if is_supported(n) else random_orthogonal(n, seed)
    if signs:
        H = random_signs(n, seed)[:, None] * H
    if not klt:
        return H
    if cov is None:
        raise UserError("KLT rotation needs calibration covariance statistics")
    w, K = np.linalg.eigh(np.asarray(cov, np.float64))
    K = K[:, np.argsort(w)[::-1]]
    return K @ H


def _norms_folded(model) -> bool:
    return all(np.all(L.norm == 1) for L in model.layers) and np.all(model.norm_f == 1)


@register("rotate_residual", params=("klt", "random_signs", "seed"), needs_stats=False)
def rotate_residual(model, plan, stats, klt: bool = False, random_signs: bool = True, seed: int = 0):
    if not _norms_folded(model):
        raise UserError("rotate_residual needs plain RMSNorms: put fold_norms before it")
    cov = None
    if klt:
        if stats is None:
            raise UserError("klt: true needs calibration statistics")
        # covariance of RMSNorm(r) (γ removed) over every layer's in_proj input, each layer weighted equally
        cov = 0
        for i in range(model.config.n_layer):
            c = stats.cov(point(i, "in_proj.input")) / np.outer(stats.gamma[i], stats.gamma[i])
            cov = cov + c / np.trace(c)
    R = rotation(model.config.d_model, cov, klt, random_signs, seed)
    model, plan = clone(model, plan)
    f = lambda a: a.astype(np.float64)  # noqa: E731
    R32 = R.astype(np.float32)  # the (V, d) tables are large: an fp32 product (error ~1e-7 relative)
    if model.lm_head is not None:
        model.lm_head = model.lm_head.astype(np.float32) @ R32
    model.embedding = model.embedding.astype(np.float32) @ R32  # a tied head (lm_head None) follows the embedding
    if model.head_mix is not None:  # h'·(RᵀMR)·(E·R)ᵀ = h·M·Eᵀ for h' = h·R
        model.head_mix = (R.T @ f(model.head_mix) @ R).astype(np.float32)
    for L in model.layers:
        L.in_proj = (f(L.in_proj) @ R).astype(np.float32)
        L.out_proj = (R.T @ f(L.out_proj)).astype(np.float32)
        if L.out_proj_bias is not None:
            L.out_proj_bias = (f(L.out_proj_bias) @ R).astype(np.float32)
    return model, plan


@register("rotate_dt", params=("klt", "random_signs", "seed"))
def rotate_dt(model, plan, stats, klt: bool = False, random_signs: bool = True, seed: int = 0):
    R_ = model.config.dt_rank
    model, plan = clone(model, plan)
    for i, L in enumerate(model.layers):
        cov = stats.cov(point(i, "dt_proj.input")) if klt else None
        R5 = rotation(R_, cov, klt, random_signs, seed + 1000 + i)
        L.x_proj = L.x_proj.astype(np.float64)
        L.x_proj[:R_] = R5.T @ L.x_proj[:R_]
        L.x_proj = L.x_proj.astype(np.float32)
        L.dt_proj = (L.dt_proj.astype(np.float64) @ R5).astype(np.float32)
    return model, plan
