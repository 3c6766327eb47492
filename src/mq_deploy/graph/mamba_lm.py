"""Build the ONNX graph of a Mamba-1 language model with one SelectiveScan plugin node per layer.

    input_ids int64 [batch, sequence] → logits float32 [batch, sequence, vocab]   (both dims dynamic)

Per layer (weights stored as [in, out] MatMul operands, named after the checkpoint):

    h     = RMSNorm(r) · γ                       Mul/ReduceMean/Add/Sqrt/Div/Mul
    x, z  = Split(h · W_in)                      MatMul, Split
    u     = SiLU(Conv_causal(x))                 Transpose, Conv(group=di, pads=[K-1,0]), Sigmoid, Mul
    δ,B,C = Split(u · W_x)                       MatMul, Split
    y, hL = SelectiveScan(u, δ·W_dt, A, B, C, D, b_dt)   plugin node (softplus inside)
    r     = r + (y ⊙ SiLU(z)) · W_out

A `GraphPlan` adds what passes decided: S-SiLU gate smoothing (z·σ(s⊙z)), an online Hadamard before
out_proj (a `Hadamard` plugin node, lowered to a MatMul in the portable graph), explicit smoothing
multiplies, and quantization: QuantizeLinear→DequantizeLinear on activation points (per-tensor,
symmetric, zero-point 0) and integer weights with per-output-channel scales (DequantizeLinear axis=1) or,
for INT4 recipes with `weights.block_size`, per block of input rows (opset-21 blocked DequantizeLinear, axis=0).

The plugin nodes are TensorRT plugin nodes: op_type = plugin name, attributes plugin_version and
plugin_namespace, domain `trt.plugins`. `lower.py` turns them into standard ops for model.portable.onnx.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from onnx import TensorProto, helper

from ..model import MambaLayer, MambaModel
from ..ops import hadamard_op
from ..ops import selective_scan as ss
from ..ops.ort_kernels import PLUGIN_DOMAIN
from ..ops.plugin_fields import node_attrs
from .builder import OPSET, GraphBuilder
from .plan import GraphPlan, LayerPlan, QuantSpec, point, shifted_bias

BATCH, SEQ = "batch", "sequence"
QUANT_OPSET_INT4 = 21


class LMBuilder(GraphBuilder):
    """GraphBuilder that knows the quantization plan and records each quantization point's tensor."""

    def __init__(self, name: str, quant: Optional[QuantSpec]):
        super().__init__(name)
        self.quant = quant
        self.opset = QUANT_OPSET_INT4 if quant is not None and quant.weight_bits == 4 else OPSET
        self.points: dict[str, str] = {}  # point name -> fp32 tensor name (before any Q/DQ)
        self._qdq_cache: dict[str, str] = {}

    def act(self, x: str, pt: str) -> str:
        """Mark `x` as quantization point `pt`; with a scale for it, return its Q→DQ'd tensor."""
        self.points.setdefault(pt, x)
        q = self.quant
        if q is None or pt not in q.act_scales:
            return x
        key = f"{x}|{q.act_scales[pt]}"
        if key in self._qdq_cache:  # one tensor, one scale: share the Q/DQ pair between consumers
            return self._qdq_cache[key]
        scale = self.scalar(f"{pt}.scale", q.act_scales[pt])
        zp = self.scalar(f"{pt}.zero_point", 0, dtype=np.int8)
        qx = self.op("QuantizeLinear", [x, scale, zp], name=f"{pt}/Q")
        dq = self.op("DequantizeLinear", [qx, scale, zp], name=f"{pt}/DQ")
        self._qdq_cache[key] = dq
        return dq

    def weight(self, name: str, w_in_out: np.ndarray) -> str:
        """A MatMul weight [in, out]: fp32 initializer, or integer + per-channel scale → DequantizeLinear."""
        q = self.quant
        if q is None or name not in q.weights:
            return self.const(f"{name}.weight", w_in_out)
        qw, scale = q.weights[name]
        if q.bits(name) == 4:
            t = helper.make_tensor(f"{name}.weight_q", TensorProto.INT4, qw.shape, pack_int4(qw), raw=True)
            self._used.add(t.name)
            self.initializers.append(t)
            wq = t.name
        else:
            wq = self.const(f"{name}.weight_q", qw.astype(np.int8))
        s = self.const(f"{name}.weight_scale", np.asarray(scale, np.float32))
        if np.ndim(scale) == 2:  # per block of input rows: opset-21 blocked DequantizeLinear along axis 0
            return self.op("DequantizeLinear", [wq, s], name=f"{name}/weight_DQ", axis=0,
                           block_size=qw.shape[0] // scale.shape[0])
        return self.op("DequantizeLinear", [wq, s], name=f"{name}/weight_DQ", axis=1)


def pack_int4(q: np.ndarray) -> bytes:
    """ONNX INT4 raw data: two values per byte, the first in the low nibble (odd counts padded with 0)."""
    v = np.asarray(q, np.int8).ravel()
    if v.size % 2:
        v = np.concatenate([v, np.zeros(1, np.int8)])
    u = v.view(np.uint8) & 0x0F
    return (u[0::2] | (u[1::2] << 4)).astype(np.uint8).tobytes()


def rms_norm(b: GraphBuilder, x: str, gamma: str, eps: float) -> str:
    sq = b.op("Mul", [x, x], name="sq")
    if getattr(b, "opset", OPSET) >= 18:  # axes became an input in opset 18
        ms = b.op("ReduceMean", [sq, b.ints("axes", [-1])], name="mean_sq", keepdims=1)
    else:
        ms = b.op("ReduceMean", [sq], name="mean_sq", axes=[-1], keepdims=1)
    rs = b.op("Sqrt", [b.op("Add", [ms, b.scalar("eps", eps)], name="add_eps")], name="rms")
    return b.op("Mul", [b.op("Div", [x, rs], name="normalize"), gamma], name="scale")


def silu(b: GraphBuilder, x: str, name: str, s: Optional[str] = None) -> str:
    """x·σ(x), or the smoothed S-SiLU x·σ(s⊙x) when `s` is given."""
    arg = x if s is None else b.op("Mul", [x, s], name=f"{name}_smooth")
    return b.op("Mul", [x, b.op("Sigmoid", [arg], name=f"{name}_sigmoid")], name=name)


def linear(b: LMBuilder, x: str, w_name: str, w: np.ndarray, bias: Optional[np.ndarray], name: str, i: int) -> str:
    """x · wᵀ (+ bias) with w in torch (out, in) layout; x is quantized at point `<w_name>.input`."""
    xq = b.act(x, f"{w_name}.input")
    y = b.op("MatMul", [xq, b.weight(w_name, w.T)], name=name)
    if bias is not None:
        y = b.op("Add", [y, b.const(f"{w_name}.bias", bias)], name=f"{name}_bias")
    return y


def shift_delta(b: GraphBuilder, delta: str, bias: np.ndarray, shift: Optional[np.ndarray], w_name: str,
                name: str) -> tuple[str, np.ndarray]:
    """Δ − c before the scan.delta quantizer and the scan's dt bias + c (`passes.shift_delta`); no-op without c."""
    if shift is None:
        return delta, bias
    delta = b.op("Add", [delta, b.const(f"{w_name}.shift", (-shift).astype(np.float32))], name=f"{name}_shift")
    return delta, shifted_bias(bias, shift)


def mixer(b: LMBuilder, i: int, L: MambaLayer, model: MambaModel, h: str, lp: LayerPlan,
          consts: dict) -> tuple[str, str]:
    """One Mamba mixer on normalized input h; returns (mixer output, final SSM state tensor)."""
    c = model.config
    di, K = c.d_inner, c.d_conv
    p = f"layers.{i}"
    xz = linear(b, h, f"{p}.in_proj", L.in_proj, L.in_proj_bias, "in_proj", i)
    x, z = b.op("Split", [xz, consts["split_xz"]], name="split_xz", n_out=2, axis=-1)
    xt = b.op("Transpose", [x], name="to_channels", perm=[0, 2, 1])
    conv_in = [xt, b.const(f"{p}.conv1d.weight", L.conv_weight)]
    if L.conv_bias is not None:
        conv_in.append(b.const(f"{p}.conv1d.bias", L.conv_bias))
    xc = b.op("Conv", conv_in, name="conv1d", group=di, kernel_shape=[K], pads=[K - 1, 0])
    u = b.op("Transpose", [silu(b, xc, "conv_act")], name="to_tokens", perm=[0, 2, 1])
    xin = u
    if lp.xproj_smooth is not None:
        xin = b.op("Mul", [u, b.const(f"{p}.x_proj.smooth_inv", (1.0 / lp.xproj_smooth).astype(np.float32))],
                   name="x_proj_smooth")
    dbc = linear(b, xin, f"{p}.x_proj", L.x_proj, None, "x_proj", i)
    dlow, Bm, Cm = b.op("Split", [dbc, consts["split_dbc"]], name="split_dbc", n_out=3, axis=-1)
    dlow = b.act(dlow, point(i, "dt_proj.input"))
    delta = b.op("MatMul", [dlow, b.weight(f"{p}.dt_proj", L.dt_proj.T)], name="dt_proj")
    delta, dt_bias = shift_delta(b, delta, L.dt_proj_bias, lp.delta_shift, f"{p}.dt_proj", "dt_proj")
    A = b.const(f"{p}.A", -np.exp(L.A_log.astype(np.float64)).astype(np.float32))
    y, state = b.op(
        ss.PLUGIN_NAME,
        [b.act(u, point(i, "scan.u")), b.act(delta, point(i, "scan.delta")), A, b.act(Bm, point(i, "scan.B")),
         b.act(Cm, point(i, "scan.C")), b.const(f"{p}.D", L.D), b.const(f"{p}.dt_proj.bias", dt_bias)],
        name="selective_scan", n_out=2, domain=PLUGIN_DOMAIN, **node_attrs(ss.PLUGIN_NAME, delta_softplus=1),
    )
    s = None if lp.gate_scale is None else b.const(f"{p}.gate.smooth", lp.gate_scale.astype(np.float32))
    g = b.op("Mul", [y, silu(b, z, "gate_act", s)], name="gate")
    if lp.out_smooth is not None:
        g = b.op("Mul", [g, b.const(f"{p}.out_proj.smooth_inv", (1.0 / lp.out_smooth).astype(np.float32))],
                 name="out_proj_smooth")
    if lp.out_hadamard:
        g = hadamard_op.emit(b, g, di, name="out_hadamard")
    o = linear(b, g, f"{p}.out_proj", L.out_proj, L.out_proj_bias, "out_proj", i)
    return o, state


FP16_STORE_MIN = 1 << 20  # elements: a large weight whose values are all fp16 numbers is stored as fp16


def stored_weight(b: GraphBuilder, name: str, a: np.ndarray) -> tuple[str, bool]:
    """(the initializer, whether it is fp16): a float32 weight is stored as fp16 when it is large and every value is
    an fp16 number (checkpoints saved in fp16, weights the recipe deploys in fp16): half the file."""
    a = np.asarray(a, np.float32)
    if a.size >= FP16_STORE_MIN:
        h = a.astype(np.float16)
        if np.array_equal(h.astype(np.float32), a):
            return b.const(name, h), True
    return b.const(name, a), False


def to_fp32(b: GraphBuilder, x: str, half: bool, name: str) -> str:
    """`x` cast to fp32 by a node named `name`/to_fp32 where `half`, else `x` itself."""
    return b.op("Cast", [x], name=f"{name}/to_fp32", to=TensorProto.FLOAT) if half else x


def float_weight(b: GraphBuilder, name: str, a: np.ndarray) -> str:
    """A float32 weight; stored as fp16 + Cast where `stored_weight` can: half the file, the same function."""
    w, half = stored_weight(b, name, a)
    return to_fp32(b, w, half, name)


def build_lm_graph(model: MambaModel, plan: Optional[GraphPlan] = None, *, with_points: bool = False):
    """The TensorRT-flavour graph of `model` under `plan` (None: plain fp32).

    With `with_points`, also return {quantization point: tensor name} (for calibration)."""
    c = model.config
    plan = plan or GraphPlan.plain(c.n_layer)
    b = LMBuilder("mamba_lm", plan.quant)
    ids = b.input("input_ids", TensorProto.INT64, [BATCH, SEQ])
    # an fp16 table is gathered from as stored and the rows cast (exact): onnxruntime folds a Cast of the whole table
    # into an fp32 copy of it (measured; TensorRT's constant folding is expected to do the same), which the tied
    # head's Transpose then copies once more
    table, half = stored_weight(b, "embedding.weight", model.embedding)
    r = to_fp32(b, b.op("Gather", [table, ids], name="embed", axis=0), half, "embed")
    consts = {"split_xz": b.ints("split_xz", [c.d_inner, c.d_inner]),
              "split_dbc": b.ints("split_dbc", [c.dt_rank, c.d_state, c.d_state])}
    for i, L in enumerate(model.layers):
        with b.scope(f"layers.{i}"):
            h = rms_norm(b, r, b.const(f"layers.{i}.norm.weight", L.norm), c.norm_eps)
            o, _ = mixer(b, i, L, model, h, plan.layer(i), consts)
            r = b.op("Add", [r, o], name="residual")
    with b.scope("head"):
        h = rms_norm(b, r, b.const("norm_f.weight", model.norm_f), c.norm_eps)
        if model.head_mix is not None:  # fold_norms keep_tied: h·M before the (tied) head
            h = b.op("MatMul", [h, b.const("head_mix", model.head_mix)], name="head_mix")
        if model.lm_head is None:  # tied: one copy of the weights, transposed in the graph
            head = b.op("Transpose", [to_fp32(b, table, half, "embedding.weight")], name="tied_lm_head", perm=[1, 0])
        else:
            head = float_weight(b, "lm_head.weight", model.lm_head.T)
        b.op("MatMul", [h, head], name="lm_head", out_names=["logits"])
    b.output("logits", TensorProto.FLOAT, [BATCH, SEQ, c.vocab_size])
    m = b.model(extra_opsets=[(PLUGIN_DOMAIN, 1)])
    if plan.quant is not None and plan.quant.weight_bits == 4:
        m.opset_import[0].version = QUANT_OPSET_INT4  # INT4 DequantizeLinear needs opset 21
        m.ir_version = 10
    return (m, b.points) if with_points else m
