"""Fake-quant simulation of (MambaModel, GraphPlan) in numpy: the reference the QDQ ONNX must match.

It computes the same function as `graph/mamba_lm.py` emits — S-SiLU gate, online Hadamard, explicit
smoothing, and at every quantization point of `plan.quant` a quantize→dequantize (half-to-even,
saturating) — written independently of the graph code.
"""

from __future__ import annotations

import numpy as np

from ..graph.plan import GraphPlan, point
from ..model import MambaModel
from ..ops.selective_scan import selective_scan
from .hadamard import hadamard_matrix
from .qparams import fake_quant


def _rms(x, g, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def _silu(x):
    return x / (1.0 + np.exp(-x))


def forward(model: MambaModel, plan: GraphPlan, input_ids: np.ndarray) -> np.ndarray:
    c = model.config
    q = plan.quant
    di, R, N, K = c.d_inner, c.dt_rank, c.d_state, c.d_conv

    def fq(x, pt):
        if q is None or pt not in q.act_scales:
            return x
        return fake_quant(x, q.act_scales[pt], q.act_bits)

    def w(name, W):  # [in, out] operand
        if q is None or name not in q.weights:
            return W.T.astype(np.float32)
        qw, s = q.weights[name]
        return (qw.astype(np.float32) * s[None, :]).astype(np.float32)

    def lin(x, name, W, bias):
        y = fq(x, f"{name}.input") @ w(name, W)
        return y if bias is None else y + bias

    ids = np.asarray(input_ids, np.int64)
    Bsz, Lq = ids.shape
    r = model.embedding[ids].astype(np.float32)
    for i, L in enumerate(model.layers):
        lp = plan.layer(i)
        p = f"layers.{i}"
        h = _rms(r, L.norm, c.norm_eps)
        xz = lin(h, f"{p}.in_proj", L.in_proj, L.in_proj_bias)
        x, z = xz[..., :di], xz[..., di:]
        xp = np.concatenate([np.zeros((Bsz, K - 1, di), np.float32), x], axis=1)
        conv = sum(xp[:, k:k + Lq, :] * L.conv_weight[:, 0, k] for k in range(K))
        if L.conv_bias is not None:
            conv = conv + L.conv_bias
        u = _silu(conv).astype(np.float32)
        xin = u if lp.xproj_smooth is None else u / lp.xproj_smooth
        dbc = lin(xin, f"{p}.x_proj", L.x_proj, None)
        dlow, Bm, Cm = dbc[..., :R], dbc[..., R:R + N], dbc[..., R + N:]
        delta = fq(dlow, point(i, "dt_proj.input")) @ w(f"{p}.dt_proj", L.dt_proj)
        A = -np.exp(L.A_log.astype(np.float64)).astype(np.float32)
        y, _ = selective_scan(fq(u, point(i, "scan.u")), fq(delta, point(i, "scan.delta")), A,
                              fq(Bm, point(i, "scan.B")), fq(Cm, point(i, "scan.C")), L.D, L.dt_proj_bias, True)
        zs = z if lp.gate_scale is None else z * lp.gate_scale
        g = y * (z / (1.0 + np.exp(-zs)))
        if lp.out_smooth is not None:
            g = g / lp.out_smooth
        if lp.out_hadamard:  # an fp32 product with H_n, as the portable graph computes it, so that values
            # near a quantization boundary round the same way (a float64 FWHT differs by ~1e-6)
            g = g.astype(np.float32) @ hadamard_matrix(g.shape[-1]).astype(np.float32)
        r = r + lin(g.astype(np.float32), f"{p}.out_proj", L.out_proj, L.out_proj_bias)
    h = _rms(r, model.norm_f, c.norm_eps)
    return (h @ model.head.T).astype(np.float32)
