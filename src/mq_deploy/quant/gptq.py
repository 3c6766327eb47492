"""GPTQ (Frantar et al. 2022) for one linear: quantize input columns in order, spreading each
column's rounding error over the remaining columns through the inverse Hessian H = XᵀX/n.

Per-output-channel symmetric scales (fixed up front from the weight, as TensorRT requires).
"""

from __future__ import annotations

import numpy as np

from .qparams import block_scales, qrange, weight_scales


def gptq_quantize(w_in_out: np.ndarray, H: np.ndarray, bits: int, damp: float = 0.01,
                  clip_search: bool = True, block: int = 0, act_order: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Returns ([in, out] integers, scales) for the weight of y = x·w (w is [in, out]): [out] scales, or with
    `block` [in / block, out] scales fixed from the original weights before the updates ("static groups").
    `act_order`: input columns quantized in order of decreasing diag(H) (GPTQ's "desc_act"); the scales stay those
    of the original rows and blocks, so the graph is the same shape."""
    W = np.array(w_in_out, dtype=np.float64).T.copy()  # [out, in]: columns are input channels
    if block:
        groups = block_scales(w_in_out, bits, block, clip_search).astype(np.float64)  # [in / block, out]
    scale = weight_scales(w_in_out, bits, clip_search).astype(np.float64)
    lo, hi = qrange(bits)
    H = np.array(H, dtype=np.float64)
    dead = np.diag(H) <= 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    order = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(H.shape[0])
    W, H = W[:, order], H[np.ix_(order, order)]
    H += damp * np.mean(np.diag(H)) * np.eye(H.shape[0])
    Hinv = np.linalg.cholesky(np.linalg.inv(H)).T  # upper Cholesky factor of H⁻¹
    Q = np.zeros_like(W)
    n_in = W.shape[1]
    lazy = 128  # columns updated together (GPTQ's lazy batch)
    for s in range(0, n_in, lazy):
        e = min(n_in, s + lazy)
        W1 = W[:, s:e].copy()
        Err = np.zeros_like(W1)
        Hb = Hinv[s:e, s:e]
        for j in range(e - s):
            col = W1[:, j]
            sc = groups[order[s + j] // block] if block else scale
            qc = np.clip(np.rint(col / sc), lo, hi)
            Q[:, s + j] = qc
            err = (col - qc * sc) / Hb[j, j]
            W1[:, j:] -= np.outer(err, Hb[j, j:])
            Err[:, j] = err
        W[:, e:] -= Err @ Hinv[s:e, e:]
    Q[:, order] = Q.copy()
    return Q.T.astype(np.int8), (groups if block else scale).astype(np.float32)
