"""What the graph builder emits beyond the plain model: per-layer online ops and quantization.

Passes (`mq_deploy.passes`) rewrite the model's weights and fill a `GraphPlan`; the builder and the
fake-quant simulation (`mq_deploy.quant.simulate`) both read it, so they describe the same function.

Quantization points (names used for calibration statistics, scales and lint messages):

| point | tensor |
|---|---|
| `layers.{i}.in_proj.input` | RMSNorm output, input of in_proj |
| `layers.{i}.x_proj.input` | u = SiLU(conv(x)), input of x_proj (and of the scan, unless smoothed apart) |
| `layers.{i}.scan.u` | u as the scan sees it (same tensor as x_proj.input without x_proj smoothing) |
| `layers.{i}.dt_proj.input` | δ, the dt_rank slice of x_proj's output |
| `layers.{i}.scan.delta` | δ·W_dt (before bias and softplus; minus the plan's `delta_shift`) |
| `layers.{i}.scan.B`, `layers.{i}.scan.C` | Bm, Cm |
| `layers.{i}.out_proj.input` | (y ⊙ gate) after the online Hadamard / smoothing |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

LINEARS = ("in_proj", "x_proj", "dt_proj", "out_proj")
ACT_POINTS = ("in_proj.input", "x_proj.input", "scan.u", "dt_proj.input", "scan.delta", "scan.B", "scan.C",
              "out_proj.input")


def shifted_bias(bias: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """The scan's dt bias under `LayerPlan.delta_shift` (b + c, rounded once from float64)."""
    return (bias.astype(np.float64) + shift).astype(np.float32)


def point(i: int, name: str) -> str:
    return f"layers.{i}.{name}"


@dataclass
class LayerPlan:
    gate_scale: Optional[np.ndarray] = None  # S-SiLU: gate = z'·σ(s ⊙ z') with W_z already divided by s
    out_hadamard: bool = False  # online y·H before out_proj (W_out already Hᵀ·W_out)
    xproj_smooth: Optional[np.ndarray] = None  # x_proj input multiplied by 1/s online (W_x rows × s)
    out_smooth: Optional[np.ndarray] = None  # out_proj input multiplied by 1/s online (W_out rows × s)
    delta_shift: Optional[np.ndarray] = None  # per channel c: scan.delta = δ·W_dt − c, the scan's dt bias + c


@dataclass
class QuantSpec:
    """Static symmetric quantization: activation scales per point, weights as integers + per-channel scales."""
    weight_bits: int = 8
    act_bits: Optional[int] = 8  # None: weight-only (W4A16), no activation scales
    act_scales: dict = field(default_factory=dict)  # point -> float scale
    # "layers.i.<linear>" -> (q int array [in, out], scale [out], or [in / block, out] with weights.block_size)
    weights: dict = field(default_factory=dict)
    # linears quantized to int8 per channel in an INT4 recipe: with weights.block_size, those whose input size the
    # block does not divide (TensorRT takes INT4 in blocks of 64 / 128 only), e.g. dt_proj (K = dt_rank)
    int8_weights: set = field(default_factory=set)
    # point -> (token index, scale): that one token quantized with its own scale (Vim's class token), the
    # others with act_scales[point]; only at linear inputs (the graph rescales the token's row around the MatMul)
    token_scales: dict = field(default_factory=dict)
    fp16_other: bool = True  # conv, embedding, lm_head, norms rounded to fp16 (deployed in fp16)

    def bits(self, name: str) -> int:
        """The integer width of weight `name`."""
        return 8 if name in self.int8_weights else self.weight_bits


@dataclass
class GraphPlan:
    layers: list = field(default_factory=list)  # LayerPlan per layer
    quant: Optional[QuantSpec] = None

    @staticmethod
    def plain(n_layer: int) -> "GraphPlan":
        return GraphPlan(layers=[LayerPlan() for _ in range(n_layer)])

    def layer(self, i: int) -> LayerPlan:
        return self.layers[i] if i < len(self.layers) else LayerPlan()
