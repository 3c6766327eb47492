"""Symmetric integer quantization math (TensorRT's rules): zero-point 0, scale = clip / qmax.

Rounding is half-to-even, as ONNX QuantizeLinear specifies; values saturate to [-2^(b-1), 2^(b-1)-1].
Pure array functions: no graphs, no models.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import UserError

ACT_METHODS = ("max", "percentile", "mse", "entropy")


def qrange(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def quantize(x: np.ndarray, scale, bits: int) -> np.ndarray:
    lo, hi = qrange(bits)
    return np.clip(np.rint(np.asarray(x, np.float32) / np.asarray(scale, np.float32)), lo, hi)


def fake_quant(x: np.ndarray, scale, bits: int) -> np.ndarray:
    """Quantize then dequantize (what a Q→DQ pair computes), in fp32."""
    return (quantize(x, scale, bits) * np.asarray(scale, np.float32)).astype(np.float32)


def weight_scales(w_in_out: np.ndarray, bits: int, clip_search: bool = False) -> np.ndarray:
    """Per-output-channel scales for a [in, out] weight (absmax; optionally MSE-searched clipping)."""
    qmax = qrange(bits)[1]
    amax = np.abs(w_in_out).max(axis=0).astype(np.float64)
    amax = np.where(amax > 0, amax, 1.0)
    if not clip_search:
        return (amax / qmax).astype(np.float32)
    best, best_err = amax.copy(), np.full(amax.shape, np.inf)
    for r in np.linspace(1.0, 0.5, 11):
        s = amax * r / qmax
        err = ((fake_quant(w_in_out, s.astype(np.float32), bits) - w_in_out) ** 2).sum(axis=0)
        better = err < best_err
        best[better], best_err[better] = (amax * r)[better], err[better]
    return (best / qmax).astype(np.float32)


def block_scales(w_in_out: np.ndarray, bits: int, block: int, clip_search: bool = False) -> np.ndarray:
    """Per-block scales [in / block, out]: one scale per `block` consecutive input rows of each output column
    (the layout of an opset-21 blocked DequantizeLinear with axis 0)."""
    K = w_in_out.shape[0]
    if block < 1 or K % block:
        raise ValueError(f"block size {block} does not divide the input dimension {K}")
    return np.stack([weight_scales(w_in_out[g:g + block], bits, clip_search) for g in range(0, K, block)])


def expand_scales(scale: np.ndarray, K: int) -> np.ndarray:
    """[out] or [in / block, out] scales as an [in, out] (or broadcastable [1, out]) array."""
    scale = np.asarray(scale, np.float32)
    if scale.ndim == 1:
        return scale[None, :]
    return np.repeat(scale, K // scale.shape[0], axis=0)


def quantize_weight(w_in_out: np.ndarray, bits: int, clip_search: bool = False,
                    block: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """RTN: ([in, out] integer values, scales): [out] per output channel, or [in / block, out] with `block`."""
    s = weight_scales(w_in_out, bits, clip_search) if not block else block_scales(w_in_out, bits, block, clip_search)
    return quantize(w_in_out, expand_scales(s, w_in_out.shape[0]), bits).astype(np.int8), s


def act_scale(sample_abs: np.ndarray, absmax: float, bits: int, method: str, percentile: float = 99.99) -> float:
    """Per-tensor activation scale from calibration: `sample_abs` is a sample of |x|, `absmax` the true max."""
    qmax = qrange(bits)[1]
    if absmax <= 0 or not np.isfinite(absmax):
        return 1.0
    if method == "max":
        clip = absmax
    elif method == "percentile":
        clip = float(np.percentile(sample_abs, percentile)) if sample_abs.size else absmax
        clip = min(max(clip, 1e-12), absmax)
    elif method == "mse":
        x = sample_abs.astype(np.float64)
        clip, best = absmax, np.inf
        for r in np.geomspace(1.0, 0.05, 48):
            c = absmax * r
            s = c / qmax
            err = float(np.mean((np.minimum(np.rint(x / s), qmax) * s - x) ** 2))
            if err < best:
                clip, best = c, err
    elif method == "entropy":
        clip = entropy_clip(sample_abs, absmax, bits)
    else:
        raise UserError(f"unknown activation scale method '{method}'; choose one of {', '.join(ACT_METHODS)}")
    return float(clip / qmax)


FP16_MAX = 65504.0


def round_fp16(a: Optional[np.ndarray], name: str, recipe: str) -> Optional[np.ndarray]:
    """`a` rounded to fp16 precision (kept as fp32), as `recipe` deploys it; a UserError naming the weight when a value
    lies beyond fp16's range (it would become inf, and the graph NaN)."""
    if a is None:
        return None
    big = float(np.max(np.abs(a), initial=0.0))
    if big > FP16_MAX:
        raise UserError(f"weight {name} holds |w| = {big:g}, beyond fp16's range ({FP16_MAX:g}), in which recipe "
                        f"{recipe} deploys it: compile with --recipe fp32, or with a recipe whose passes fold this "
                        "weight into the next linear")
    return a.astype(np.float16).astype(np.float32)


def sqnr_db(ref: np.ndarray, x: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB."""
    noise = float(np.sum((np.asarray(ref, np.float64) - x) ** 2))
    sig = float(np.sum(np.asarray(ref, np.float64) ** 2))
    return float("inf") if noise == 0 else 10.0 * np.log10(max(sig, 1e-300) / noise)


def entropy_clip(sample_abs: np.ndarray, absmax: float, bits: int = 8, bins: int = 2048) -> float:
    """TensorRT's entropy calibration: the clip whose quantized histogram has the least KL divergence
    from the (clipped) reference histogram of |x|."""
    levels = qrange(bits)[1] + 1  # 128 magnitude levels for int8
    hist, edges = np.histogram(np.asarray(sample_abs, np.float64), bins=bins, range=(0.0, absmax))
    hist = hist.astype(np.float64)
    best, best_kl = bins, np.inf
    for i in range(levels, bins + 1, 16):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()  # outliers collapse into the last kept bin
        # quantize the first i bins into `levels` groups, spread each group's mass over its non-empty bins
        idx = (np.arange(i) * levels) // i
        nz = hist[:i] > 0
        group_mass = np.bincount(idx, weights=hist[:i], minlength=levels)
        group_cnt = np.bincount(idx, weights=nz.astype(np.float64), minlength=levels)
        q = np.where(nz, group_mass[idx] / np.maximum(group_cnt[idx], 1), 0.0)
        ps, qs = p.sum(), q.sum()
        if ps <= 0 or qs <= 0:
            continue
        pn, qn = p / ps, q / qs
        m = pn > 0
        kl = float(np.sum(pn[m] * np.log(pn[m] / np.maximum(qn[m], 1e-12))))
        if kl < best_kl:
            best, best_kl = i, kl
    return float(edges[best])
