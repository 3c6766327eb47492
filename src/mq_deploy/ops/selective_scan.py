"""SelectiveScan: the one definition shared by the CUDA plugin, the CPU reference and the lowering.

Inputs (token-major layout, B = batch, L = sequence, D = d_inner, N = d_state):

| input | shape | meaning |
|---|---|---|
| u | (B, L, D) | x' = SiLU(conv(x)) |
| delta | (B, L, D) | δ·W_dt, before bias and softplus |
| A | (D, N) | -exp(A_log) |
| Bm | (B, L, N) | input projection of the state |
| Cm | (B, L, N) | output projection of the state |
| Dskip | (D,) | skip connection |
| delta_bias | (D,) | dt_proj bias |

Attribute `delta_softplus` (1: Δ = softplus(delta + delta_bias), 0: Δ = delta + delta_bias).

    h_t = exp(Δ_t ⊙ A) ⊙ h_{t-1} + (Δ_t ⊙ u_t) ⊗ Bm_t      h ∈ R^{B×D×N}, h_{-1} = 0 (or h0)
    y_t = h_t · Cm_t + Dskip ⊙ u_t

Outputs: y (B, L, D) and the final state h_{L-1} (B, D, N), both fp32.
softplus follows torch: x for x > 20, else log1p(exp(x)).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

PLUGIN_NAME = "SelectiveScan"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "mq_deploy"
INPUTS = ("u", "delta", "A", "Bm", "Cm", "Dskip", "delta_bias")
OUTPUTS = ("y", "last_state")


def softplus(x: np.ndarray) -> np.ndarray:
    return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, 20.0)))).astype(x.dtype, copy=False)


def selective_scan(
    u: np.ndarray,
    delta: np.ndarray,
    A: np.ndarray,
    Bm: np.ndarray,
    Cm: np.ndarray,
    Dskip: np.ndarray,
    delta_bias: Optional[np.ndarray] = None,
    delta_softplus: bool = True,
    initial_state: Optional[np.ndarray] = None,
    chunk: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference selective scan in fp32 numpy; returns (y, last_state)."""
    u = np.asarray(u, np.float32)
    Bsz, L, D = u.shape
    N = A.shape[1]
    dt = np.asarray(delta, np.float32)
    if delta_bias is not None:
        dt = dt + delta_bias.astype(np.float32)
    if delta_softplus:
        dt = softplus(dt)
    h = np.zeros((Bsz, D, N), np.float32) if initial_state is None else np.array(initial_state, np.float32)
    y = np.empty((Bsz, L, D), np.float32)
    A = A.astype(np.float32)
    for s in range(0, L, chunk):
        e = min(L, s + chunk)
        dA = np.exp(dt[:, s:e, :, None] * A)  # (B, c, D, N)
        dBu = (dt[:, s:e] * u[:, s:e])[..., None] * Bm[:, s:e, None, :].astype(np.float32)
        Cc = Cm[:, s:e].astype(np.float32)
        for t in range(e - s):
            h = dA[:, t] * h + dBu[:, t]
            y[:, s + t] = np.einsum("bdn,bn->bd", h, Cc[:, t])
    y += Dskip.astype(np.float32) * u
    return y, h


def step_sizes(delta, delta_bias=None, delta_softplus: bool = True) -> np.ndarray:
    """Δ = softplus(delta + delta_bias) (or without softplus) in fp32."""
    dt = np.asarray(delta, np.float32)
    if delta_bias is not None:
        dt = dt + np.asarray(delta_bias, np.float32)
    return softplus(dt) if delta_softplus else dt


def _scan_block(dt, u, A, Bm, Cm, h, y, chunk):
    """In-place time-major scan of one channel block: dt, u (B, L, d); A (d, N); h (B, d, N); y (B, L, d)."""
    Bsz, L, d = u.shape
    N = A.shape[1]
    T = max(1, min(chunk, L))
    dA = np.empty((T, Bsz, d, N), np.float32)
    hs = np.empty((T, Bsz, d, N), np.float32)
    tmp = np.empty((Bsz, d, N), np.float32)
    for s in range(0, L, T):
        e = min(L, s + T)
        c = e - s
        dtc = np.ascontiguousarray(dt[:, s:e].transpose(1, 0, 2))  # (c, B, d)
        np.multiply(dtc[..., None], A, out=dA[:c])
        np.exp(dA[:c], out=dA[:c])
        np.multiply((dtc * u[:, s:e].transpose(1, 0, 2))[..., None], Bm[:, s:e].transpose(1, 0, 2)[:, :, None, :],
                    out=hs[:c])
        np.multiply(dA[0], h, out=tmp)
        hs[0] += tmp
        for t in range(1, c):
            np.multiply(dA[t], hs[t - 1], out=tmp)
            hs[t] += tmp
        y[:, s:e] = np.matmul(hs[:c], Cm[:, s:e].transpose(1, 0, 2)[..., None])[..., 0].transpose(1, 0, 2)
        h[...] = hs[c - 1]


_POOL = None


def selective_scan_cpu(u, delta, A, Bm, Cm, Dskip, delta_bias=None, delta_softplus=True, initial_state=None,
                       chunk: int = 32, threads: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """The same function as `selective_scan`, ~2x faster (benchmarks/cpu_kernels.py): time-major chunks with in-place updates, and
    the channels split over threads (numpy releases the GIL). The onnxruntime CPU kernel runs this."""
    global _POOL
    import os
    from concurrent.futures import ThreadPoolExecutor

    u = np.asarray(u, np.float32)
    Bsz, L, D = u.shape
    N = A.shape[1]
    dt = step_sizes(delta, delta_bias, delta_softplus)
    A = np.asarray(A, np.float32)
    Bm, Cm = np.asarray(Bm, np.float32), np.asarray(Cm, np.float32)
    h = np.zeros((Bsz, D, N), np.float32) if initial_state is None else np.array(initial_state, np.float32)
    y = np.empty((Bsz, L, D), np.float32)
    n = max(1, min(threads or os.cpu_count() or 1, D // 64 or 1, 8))
    if n == 1 or Bsz * L * D < (1 << 16):
        _scan_block(dt, u, A, Bm, Cm, h, y, chunk)
    else:
        if _POOL is None or _POOL._max_workers < n:
            _POOL = ThreadPoolExecutor(n, thread_name_prefix="mq-scan")
        bounds = np.linspace(0, D, n + 1).astype(int)
        hb = [np.ascontiguousarray(h[:, a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        yb = [np.empty((Bsz, L, b - a), np.float32) for a, b in zip(bounds[:-1], bounds[1:])]
        list(_POOL.map(lambda k: _scan_block(dt[..., bounds[k]:bounds[k + 1]], u[..., bounds[k]:bounds[k + 1]],
                                             A[bounds[k]:bounds[k + 1]], Bm, Cm, hb[k], yb[k], chunk), range(n)))
        for k in range(n):
            y[..., bounds[k]:bounds[k + 1]] = yb[k]
            h[:, bounds[k]:bounds[k + 1]] = hb[k]
    y += np.asarray(Dskip, np.float32) * u
    return y, h
