"""Fake-quant simulation of (MambaModel, GraphPlan) in numpy: the reference the QDQ ONNX must match.

It computes the same function as `graph/mamba_lm.py` emits — S-SiLU gate, online Hadamard, explicit
smoothing, and at every quantization point of `plan.quant` a quantize→dequantize (half-to-even,
saturating) — written independently of the graph code.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..graph.plan import GraphPlan, point, shifted_bias
from ..model import MambaModel
from ..ops.selective_scan import selective_scan
from .hadamard import hadamard_matrix
from .qparams import expand_scales, fake_quant


def _rms(x, g, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def _silu(x):
    return x / (1.0 + np.exp(-x))


def embed(model: MambaModel, input_ids: np.ndarray) -> np.ndarray:
    """The residual stream entering layer 0."""
    return model.embedding[np.asarray(input_ids, np.int64)].astype(np.float32)


def layer(model: MambaModel, plan: GraphPlan, i: int, r: np.ndarray, follow: Optional[dict] = None) -> np.ndarray:
    """Residual stream after layer `i`, given the stream `r` [batch, seq, d_model] entering it.

    `follow` ({point: another implementation's value there before quantization}) makes rounding decisions
    follow that implementation wherever its value agrees with ours to 1/1000 of a quantization step:
    two correct fp32 implementations differ by ~1e-7, so a value within that of a rounding boundary can
    land one step apart, and in a deep model such a step flips more roundings in every later layer until
    the two outputs are as far apart as quantization itself moves them. Values that disagree by more (a
    wrong scale, weight or transform) are rounded on their own and show. `follow["flipped"]` counts the
    roundings that were taken from the other implementation and differ from ours."""
    c = model.config
    q = plan.quant
    di, R, N, K = c.d_inner, c.dt_rank, c.d_state, c.d_conv
    L, lp, p = model.layers[i], plan.layer(i), f"layers.{i}"

    def fq(x, pt):
        if q is None or pt not in q.act_scales:
            return x
        s = q.act_scales[pt]
        if follow is not None and pt in follow:
            other = np.asarray(follow[pt], np.float32).reshape(x.shape)
            agree = np.abs(other - x) <= 1e-3 * s
            follow["flipped"] = follow.get("flipped", 0) + int(np.count_nonzero(
                agree & (fake_quant(other, s, q.act_bits) != fake_quant(x, s, q.act_bits))))
            x = np.where(agree, other, x)
        return fake_quant(x, s, q.act_bits)

    def w(name, W):  # [in, out] operand
        if q is None or name not in q.weights:
            return W.T.astype(np.float32)
        qw, s = q.weights[name]
        return (qw.astype(np.float32) * expand_scales(s, qw.shape[0])).astype(np.float32)

    def lin(x, name, W, bias):
        y = fq(x, f"{name}.input") @ w(name, W)
        return y if bias is None else y + bias

    Bsz, Lq = r.shape[:2]
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
    dt_bias = L.dt_proj_bias
    if lp.delta_shift is not None:  # as the graph: an fp32 Add of −c, the bias + c rounded from float64
        delta = delta + (-lp.delta_shift).astype(np.float32)
        dt_bias = shifted_bias(dt_bias, lp.delta_shift)
    A = -np.exp(L.A_log.astype(np.float64)).astype(np.float32)
    y, _ = selective_scan(fq(u, point(i, "scan.u")), fq(delta, point(i, "scan.delta")), A,
                          fq(Bm, point(i, "scan.B")), fq(Cm, point(i, "scan.C")), L.D, dt_bias, True)
    zs = z if lp.gate_scale is None else z * lp.gate_scale
    g = y * (z / (1.0 + np.exp(-zs)))
    if lp.out_smooth is not None:
        g = g / lp.out_smooth
    if lp.out_hadamard:  # an fp32 product with H_n, as the portable graph computes it, so that values
        # near a quantization boundary round the same way (a float64 FWHT differs by ~1e-6)
        g = g.astype(np.float32) @ hadamard_matrix(g.shape[-1]).astype(np.float32)
    return (r + lin(g.astype(np.float32), f"{p}.out_proj", L.out_proj, L.out_proj_bias)).astype(np.float32)


def head(model: MambaModel, r: np.ndarray) -> np.ndarray:
    """Logits from the residual stream after the last layer."""
    h = _rms(r, model.norm_f, model.config.norm_eps)
    if model.head_mix is not None:
        h = (h.astype(np.float32) @ model.head_mix).astype(np.float32)
    return (h @ model.head.T).astype(np.float32)


def forward(model: MambaModel, plan: GraphPlan, input_ids: np.ndarray, follow: Optional[dict] = None) -> np.ndarray:
    """Logits [batch, seq, vocab]; `follow` as in `layer`."""
    r = embed(model, input_ids)
    for i in range(model.config.n_layer):
        r = layer(model, plan, i, r, follow)
    return head(model, r)
