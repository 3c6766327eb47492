"""fold_norms: RMSNorm weights into the following linear.

    RMSNorm(r)·γ·W_inᵀ = RMSNorm(r)·(W_in·diag(γ))ᵀ      W_in ← W_in·diag(γ),  γ ← 1
    RMSNorm(r)·γ_f·Eᵀ  = RMSNorm(r)·(E·diag(γ_f))ᵀ       lm_head ← E·diag(γ_f) (untied), γ_f ← 1

Afterwards each norm is a pure RMSNorm, which commutes with any orthogonal R (‖xR‖ = ‖x‖).
"""

import dataclasses

import numpy as np

from . import clone, register


@register("fold_norms")
def fold_norms(model, plan, stats):
    model, plan = clone(model, plan)
    for L in model.layers:
        L.in_proj = (L.in_proj * L.norm[None, :]).astype(np.float32)
        L.norm = np.ones_like(L.norm)
    model.lm_head = (model.head * model.norm_f[None, :]).astype(np.float32)
    model.config = dataclasses.replace(model.config, tie_embeddings=False)
    model.norm_f = np.ones_like(model.norm_f)
    return model, plan
