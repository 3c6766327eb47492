"""SelectiveStateUpdate: one decoding step of the selective scan, from a carried state.

The one definition shared by the CUDA plugin (mamba-ssm's `selective_state_update`), the CPU
reference kernel onnxruntime runs, and the portable lowering (`graph/lower.py`).

Inputs (B = batch, D = d_inner, N = d_state). The per-token tensors keep SelectiveScan's
token-major layout at L = 1, so the node replaces a SelectiveScan node with nothing around it
changed (a Q/DQ pair in front of an input stays directly in front of the plugin):

| input | shape | meaning |
|---|---|---|
| state | (B, D, N) | h_{t-1}, fp32 (in the scaled domain when state smoothing is used, DESIGN.md §2) |
| x | (B, 1, D) | x'_t = SiLU(conv window · taps + bias) |
| dt | (B, 1, D) | δ_t·W_dt, before bias and softplus |
| A | (D, N) | -exp(A_log) |
| Bm | (B, 1, N) | |
| Cm | (B, 1, N) | |
| Dskip | (D,) | |
| dt_bias | (D,) | |

Attribute `dt_softplus` (1: Δ = softplus(dt + dt_bias), 0: Δ = dt + dt_bias).

    Δ   = softplus(dt + dt_bias)
    h_t = exp(Δ ⊙ A) ⊙ h_{t-1} + (Δ ⊙ x) ⊗ Bm          (B, D, N)
    y   = h_t · Cm + Dskip ⊙ x                           (B, 1, D)

Outputs: y (B, 1, D) and new_state h_t (B, D, N), both fp32. Running SelectiveScan over a
sequence and stepping this node token by token from the zero state give the same y and state
(up to fp32 rounding) — `tests/test_stateful_graphs.py` checks it.
"""

from __future__ import annotations

import numpy as np

from .selective_scan import PLUGIN_NAMESPACE, PLUGIN_VERSION, softplus

PLUGIN_NAME = "SelectiveStateUpdate"
INPUTS = ("state", "x", "dt", "A", "Bm", "Cm", "Dskip", "dt_bias")
OUTPUTS = ("y", "new_state")

__all__ = ["PLUGIN_NAME", "PLUGIN_VERSION", "PLUGIN_NAMESPACE", "INPUTS", "OUTPUTS", "selective_state_update"]


def selective_state_update(state: np.ndarray, x: np.ndarray, dt: np.ndarray, A: np.ndarray, Bm: np.ndarray,
                           Cm: np.ndarray, Dskip: np.ndarray, dt_bias: np.ndarray | None = None,
                           dt_softplus: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Reference step in fp32 numpy; returns (y (B, 1, D), new_state (B, D, N))."""
    x = np.asarray(x, np.float32)[:, 0]          # (B, D)
    d = np.asarray(dt, np.float32)[:, 0]
    if dt_bias is not None:
        d = d + np.asarray(dt_bias, np.float32)
    if dt_softplus:
        d = softplus(d)
    dA = np.exp(d[:, :, None] * np.asarray(A, np.float32))                      # (B, D, N)
    dBx = (d * x)[:, :, None] * np.asarray(Bm, np.float32)[:, 0, None, :]      # (B, D, N)
    h = dA * np.asarray(state, np.float32) + dBx
    y = np.einsum("bdn,bn->bd", h, np.asarray(Cm, np.float32)[:, 0]) + np.asarray(Dskip, np.float32) * x
    return y[:, None, :].astype(np.float32), h.astype(np.float32)
