"""Build the ONNX graph of a Vim classifier: two SelectiveScan plugin nodes per block.

    pixel_values float32 [batch, C, H, W] → logits float32 [batch, classes]   (batch dynamic, H, W fixed)

    tokens = Transpose(Reshape(Conv(pixels, W_patch, stride)))     (B, P, d)
    r      = Concat(tokens[:, :p], Expand(cls), tokens[:, p:]) + pos_embed
    per block i (weights named as in the official state dict, MatMul operands [in, out]):
        h      = RMSNorm(r)·γ;  x, z = Split(h·W_in)                      in_proj shared by both directions
        y_f    = Dir_f(x)                                               conv1d → SiLU → x_proj → dt_proj → scan
        y_b    = Reverse(Dir_b(Reverse(x)))                             Reverse = Slice(step -1) on the token axis
        g      = (y_f + y_b)·½ ⊙ SiLU(z)   [S-SiLU, smoothing, online Hadamard per the plan]
        r      = r + g·W_out                                            out_proj shared
    logits = RMSNorm(r)·γ_f [cls position | token mean] · W_headᵀ + b

Quantization points are those of the language model (`graph/plan.py`) for the shared part
(`layers.{i}.in_proj.input`, `layers.{i}.out_proj.input`) and for the forward direction, and the same
names with a `_b` suffix on the linear / scan for the backward one (`layers.{i}.x_proj_b.input`,
`layers.{i}.dt_proj_b.input`, `layers.{i}.scan_b.u`, ...). The patch embedding, the head, conv1d and
the norms stay in floating point (fp16 when deployed), as in the language-model recipes.

Two additions read from the plan:

* Class token with its own scale (Vim only; `QuantSpec.token_scales[point] = (t, s_t)`, linear inputs). TensorRT
  takes one scale per activation tensor, so the token's row is rescaled around the integer MatMul:
      y = (DQ(Q(x ⊙ m, s)) · W) ⊙ (1/m) + b,   m = 1 except m_t = s / s_t
  row t then computes round(x_t / s_t)·s_t·W, every other row round(x / s)·s·W: per-token scales with
  per-tensor Q/DQ, two pointwise Muls that TensorRT fuses into the producer and the GEMM epilogue. Behind
  out_proj's online Hadamard the Mul goes in front of the rotation ((x ⊙ m)·H = (x·H) ⊙ m), so the Hadamard still
  writes what the QuantizeLinear reads and the pair is fused in the TensorRT flavour (`vlinear`).
* Δ shift per direction (`delta_shift` / `delta_shift_b`, as the language model's `mamba_lm.shift_delta`):
  Δ' = δ·W_dt − c feeds the scan.delta quantizer and the scan's bias becomes b_dt + c (`passes.shift_delta`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from onnx import TensorProto

from ..graph.mamba_lm import QUANT_OPSET_INT4, LMBuilder, linear, rms_norm, shift_delta, silu
from ..graph.plan import GraphPlan, LayerPlan, point
from ..model import MambaLayer
from ..ops import hadamard_op
from ..ops import selective_scan as ss
from ..ops.ort_kernels import PLUGIN_DOMAIN
from ..ops.plugin_fields import node_attrs
from .model import VimModel

BATCH = "batch"
INPUT, OUTPUT = "pixel_values", "logits"
DIRECTIONS = ("", "_b")  # forward, backward: suffix of parameter and point names
LINEARS = ("in_proj", "x_proj", "dt_proj", "x_proj_b", "dt_proj_b", "out_proj")
ACT_POINTS = ("in_proj.input", "out_proj.input") + tuple(
    f"{n}{s}.{t}" for s in DIRECTIONS for n, t in (("x_proj", "input"), ("dt_proj", "input"), ("scan", "u"),
                                                    ("scan", "delta"), ("scan", "B"), ("scan", "C")))


@dataclass
class VimLayerPlan(LayerPlan):
    """LayerPlan of a v2 block; `xproj_smooth` / `delta_shift` are the forward direction's, the `_b` ones
    the backward's."""
    xproj_smooth_b: Optional[np.ndarray] = None
    delta_shift_b: Optional[np.ndarray] = None  # the backward direction's `delta_shift`


def plain_plan(depth: int) -> GraphPlan:
    return GraphPlan(layers=[VimLayerPlan() for _ in range(depth)])


def _reverse(b: LMBuilder, x: str, name: str) -> str:
    return b.op("Slice", [x, b.ints("rev_start", [-1]), b.ints("rev_end", [-(2 ** 63)]), b.ints("rev_axis", [1]),
                          b.ints("rev_step", [-1])], name=name)


def _token_rescale(b: LMBuilder, pt: str, n_tokens: int) -> Optional[np.ndarray]:
    """m ([1, T, 1]: 1 but s / s_t at the class token) where the plan gives point `pt`'s token its own scale."""
    q = b.quant
    if q is None or pt not in q.token_scales or pt not in q.act_scales:
        return None
    t, s_t = q.token_scales[pt]
    m = np.ones((1, n_tokens, 1), np.float32)
    m[0, t, 0] = q.act_scales[pt] / s_t
    return m


def vlinear(b: LMBuilder, x: str, w_name: str, w: np.ndarray, bias: Optional[np.ndarray], name: str, i: int,
            n_tokens: int, hadamard: int = 0) -> str:
    """`linear`, with the point's token rescaled around the MatMul when the plan gives it its own scale.

    `hadamard` > 0: x is first rotated by the online Hadamard of that size (out_proj). The token rescale then goes
    in front of the rotation (a row scale commutes with it: (x ⊙ m)·H = (x·H) ⊙ m), so that the Hadamard writes
    what the QuantizeLinear reads and the TensorRT flavour fuses the pair (`graph/fuse_scan_quant`); the point's
    tensor is then the Hadamard's output, x·H ⊙ m (there is no unscaled rotated tensor in the graph)."""
    pt = f"{w_name}.input"
    m = _token_rescale(b, pt, n_tokens)
    if m is None:
        if hadamard:
            x = hadamard_op.emit(b, x, hadamard, name="out_hadamard")
        return linear(b, x, w_name, w, bias, name, i)
    if not hadamard:
        b.points.setdefault(pt, x)
    xm = b.op("Mul", [x, b.const(f"{pt}.token_scale", m)], name=f"{name}_token_scale")
    if hadamard:
        xm = hadamard_op.emit(b, xm, hadamard, name="out_hadamard")
    y = b.op("MatMul", [b.act(xm, pt), b.weight(w_name, w.T)], name=name)
    y = b.op("Mul", [y, b.const(f"{pt}.token_unscale", (1.0 / m.astype(np.float64)).astype(np.float32))],
             name=f"{name}_token_unscale")
    if bias is not None:
        y = b.op("Add", [y, b.const(f"{w_name}.bias", bias)], name=f"{name}_bias")
    return y


def _direction(b: LMBuilder, i: int, L: MambaLayer, model: VimModel, x: str, sfx: str, lp: LayerPlan) -> str:
    """One scan direction on x (B, T, di) already in scan order; returns y (B, T, di) in that order."""
    smooth = getattr(lp, "xproj_smooth" + sfx, None)
    shift = getattr(lp, "delta_shift" + sfx, None)
    c = model.config
    di, K, R, N = c.d_inner, c.d_conv, c.dt_rank, c.d_state
    p = f"layers.{i}"
    xt = b.op("Transpose", [x], name=f"to_channels{sfx}", perm=[0, 2, 1])
    conv_in = [xt, b.const(f"{p}.conv1d{sfx}.weight", L.conv_weight)]
    if L.conv_bias is not None:
        conv_in.append(b.const(f"{p}.conv1d{sfx}.bias", L.conv_bias))
    xc = b.op("Conv", conv_in, name=f"conv1d{sfx}", group=di, kernel_shape=[K], pads=[K - 1, 0])
    u = b.op("Transpose", [silu(b, xc, f"conv_act{sfx}")], name=f"to_tokens{sfx}", perm=[0, 2, 1])
    xin = u
    if smooth is not None:
        xin = b.op("Mul", [u, b.const(f"{p}.x_proj{sfx}.smooth_inv", (1.0 / smooth).astype(np.float32))],
                   name=f"x_proj{sfx}_smooth")
    T = c.seq_len
    dbc = vlinear(b, xin, f"{p}.x_proj{sfx}", L.x_proj, None, f"x_proj{sfx}", i, T)
    dlow, Bm, Cm = b.op("Split", [dbc, b.ints("split_dbc", [R, N, N])], name=f"split_dbc{sfx}", n_out=3, axis=-1)
    delta = vlinear(b, dlow, f"{p}.dt_proj{sfx}", L.dt_proj, None, f"dt_proj{sfx}", i, T)
    delta, dt_bias = shift_delta(b, delta, L.dt_proj_bias, shift, f"{p}.dt_proj{sfx}", f"dt_proj{sfx}")
    A = b.const(f"{p}.A{sfx}", -np.exp(L.A_log.astype(np.float64)).astype(np.float32))
    y, _ = b.op(
        ss.PLUGIN_NAME,
        [b.act(u, point(i, f"scan{sfx}.u")), b.act(delta, point(i, f"scan{sfx}.delta")), A,
         b.act(Bm, point(i, f"scan{sfx}.B")), b.act(Cm, point(i, f"scan{sfx}.C")), b.const(f"{p}.D{sfx}", L.D),
         b.const(f"{p}.dt_proj{sfx}.bias", dt_bias)],
        name=f"selective_scan{sfx}", n_out=2, domain=PLUGIN_DOMAIN, **node_attrs(ss.PLUGIN_NAME, delta_softplus=1),
    )
    return y


def bi_mixer(b: LMBuilder, i: int, L, model: VimModel, h: str, lp: LayerPlan) -> str:
    c = model.config
    di = c.d_inner
    p = f"layers.{i}"
    xz = vlinear(b, h, f"{p}.in_proj", L.in_proj, L.in_proj_bias, "in_proj", i, c.seq_len)
    x, z = b.op("Split", [xz, b.ints("split_xz", [di, di])], name="split_xz", n_out=2, axis=-1)
    y_f = _direction(b, i, L.direction(False), model, x, "", lp)
    x_rev = _reverse(b, x, "reverse_in")
    y_b = _reverse(b, _direction(b, i, L.direction(True), model, x_rev, "_b", lp), "reverse_out")
    y = b.op("Add", [y_f, y_b], name="sum_directions")
    if c.if_devide_out:
        y = b.op("Mul", [y, b.scalar("half", 0.5)], name="average_directions")
    s = None if lp.gate_scale is None else b.const(f"{p}.gate.smooth", lp.gate_scale.astype(np.float32))
    g = b.op("Mul", [y, silu(b, z, "gate_act", s)], name="gate")
    if lp.out_smooth is not None:
        g = b.op("Mul", [g, b.const(f"{p}.out_proj.smooth_inv", (1.0 / lp.out_smooth).astype(np.float32))],
                 name="out_proj_smooth")
    return vlinear(b, g, f"{p}.out_proj", L.out_proj, L.out_proj_bias, "out_proj", i, c.seq_len,
                   hadamard=di if lp.out_hadamard else 0)


def embed(b: LMBuilder, model: VimModel, pixels: str) -> str:
    c = model.config
    d = c.d_model
    with b.scope("patch_embed"):
        e = b.op("Conv", [pixels, b.const("patch_embed.proj.weight", model.patch_weight),
                          b.const("patch_embed.proj.bias", model.patch_bias)], name="proj",
                 kernel_shape=[c.patch_size, c.patch_size], strides=[c.stride, c.stride])
        t = b.op("Transpose", [b.op("Reshape", [e, b.ints("shape", [0, d, -1])], name="flatten")], name="to_tokens",
                 perm=[0, 2, 1])
        if c.if_cls_token:
            pos = c.cls_position
            batch = b.op("Slice", [b.op("Shape", [pixels], name="shape_in"), b.ints("zero", [0]), b.ints("one", [1])],
                         name="batch")
            shape = b.op("Concat", [batch, b.ints("one_d", [1, d])], name="cls_shape", axis=0)
            cls = b.op("Expand", [b.const("cls_token", model.cls_token.reshape(1, 1, d)), shape], name="cls")
            parts = []
            if pos > 0:
                parts.append(b.op("Slice", [t, b.ints("s0", [0]), b.ints("e0", [pos]), b.ints("ax", [1])], name="head"))
            parts.append(cls)
            if pos < c.num_patches:
                parts.append(b.op("Slice", [t, b.ints("s1", [pos]), b.ints("e1", [c.num_patches]), b.ints("ax1", [1])],
                                  name="tail"))
            t = b.op("Concat", parts, name="with_cls", axis=1)
        return b.op("Add", [t, b.const("pos_embed", model.pos_embed.reshape(1, c.seq_len, d))], name="pos")


def build_vim_graph(model: VimModel, plan: Optional[GraphPlan] = None, *, with_points: bool = False):
    """The TensorRT-flavour graph of `model` under `plan` (None: plain fp32); with `with_points`,
    also {quantization point: tensor name}."""
    c = model.config
    plan = plan or plain_plan(c.depth)
    b = LMBuilder("vim", plan.quant)
    pixels = b.input(INPUT, TensorProto.FLOAT, [BATCH, c.channels, c.img_size, c.img_size])
    r = embed(b, model, pixels)
    for i, L in enumerate(model.layers):
        with b.scope(f"layers.{i}"):
            h = rms_norm(b, r, b.const(f"layers.{i}.norm.weight", L.norm), c.norm_eps)
            r = b.op("Add", [r, bi_mixer(b, i, L, model, h, plan.layer(i))], name="residual")
    with b.scope("head"):
        h = rms_norm(b, r, b.const("norm_f.weight", model.norm_f), c.norm_eps)
        if c.if_cls_token:
            h = b.op("Gather", [h, b.ints("cls_index", [c.cls_position])], name="cls_token", axis=1)  # (B, 1, d)
            h = b.op("Squeeze", [h, b.ints("token_axis", [1])], name="cls_squeeze")
        elif b.opset >= 18:
            h = b.op("ReduceMean", [h, b.ints("axes", [1])], name="mean_pool", keepdims=0)
        else:
            h = b.op("ReduceMean", [h], name="mean_pool", axes=[1], keepdims=0)
        y = b.op("MatMul", [h, b.const("head.weight", model.head.T)], name="head")
        b.op("Add", [y, b.const("head.bias", model.head_bias)], name="head_bias", out_names=[OUTPUT])
    b.output(OUTPUT, TensorProto.FLOAT, [BATCH, c.num_classes])
    m = b.model(extra_opsets=[(PLUGIN_DOMAIN, 1)])
    if plan.quant is not None and plan.quant.weight_bits == 4:
        m.opset_import[0].version = QUANT_OPSET_INT4
        m.ir_version = 10
    return (m, b.points) if with_points else m


class VimRunner:
    """onnxruntime runner of a Vim graph (either flavour): `runner(pixel_values) -> logits`."""

    def __init__(self, graph, threads: Optional[int] = None, extra_outputs=(), only_extra: bool = False):
        from ..backends.ort import OrtRunner

        self._r = OrtRunner(graph, threads=threads, extra_outputs=extra_outputs, only_extra=only_extra)

    def run(self, feeds: dict) -> dict:
        if "input_ids" in feeds:  # calibrate.collect feeds its batches under the language model's input name
            feeds = {INPUT: feeds.pop("input_ids"), **feeds}
        return self._r.run({k: np.asarray(v, np.float32) for k, v in feeds.items()})

    def __call__(self, pixel_values: np.ndarray) -> np.ndarray:
        return self.run({INPUT: pixel_values})[OUTPUT]
