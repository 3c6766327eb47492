"""fold_norms: RMSNorm weights into the following linear.

    RMSNorm(r)·γ·W_inᵀ = RMSNorm(r)·(W_in·diag(γ))ᵀ      W_in ← W_in·diag(γ),  γ ← 1
    RMSNorm(r)·γ_f·Eᵀ  = RMSNorm(r)·(E·diag(γ_f))ᵀ       lm_head ← E·diag(γ_f) (untied), γ_f ← 1

Afterwards each norm is a pure RMSNorm, which commutes with any orthogonal R (‖xR‖ = ‖x‖).

keep_tied (tied heads only): γ_f goes into a d×d matrix before the head instead of into the head, so that the
embedding table stays the head's weights (one V×d table in the graph instead of two):

    RMSNorm(r)·γ_f·Eᵀ  = RMSNorm(r)·M·Eᵀ,  M = diag(γ_f)     head_mix ← M,  γ_f ← 1
    (rotate_residual then turns M into Rᵀ·M·R.)
"""

import dataclasses

import numpy as np

from . import clone, register


@register("fold_norms", params=("keep_tied",))
def fold_norms(model, plan, stats, keep_tied: bool = False):
    model, plan = clone(model, plan)
    for L in model.layers:
        L.in_proj = (L.in_proj * L.norm[None, :]).astype(np.float32)
        L.norm = np.ones_like(L.norm)
    gamma = model.norm_f.astype(np.float32)
    if keep_tied and model.lm_head is None:
        mix = np.diag(gamma)
        model.head_mix = mix if model.head_mix is None else (mix @ model.head_mix.astype(np.float64)).astype(np.float32)
    else:
        model.lm_head = (model.untied_head() * gamma[None, :]).astype(np.float32)
        model.head_mix = None
        model.config = dataclasses.replace(model.config, tie_embeddings=False)
    model.norm_f = np.ones_like(model.norm_f)
    return model, plan
