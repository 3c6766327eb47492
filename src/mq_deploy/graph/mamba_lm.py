"""Build the ONNX graph of a Mamba-1 language model with one SelectiveScan plugin node per layer.

    input_ids int64 [batch, sequence] → logits float32 [batch, sequence, vocab]   (both dims dynamic)

Per layer (weights stored as [in, out] MatMul operands, named after the checkpoint):

    h     = RMSNorm(r) · γ                       Mul/ReduceMean/Add/Sqrt/Div/Mul
    x, z  = Split(h · W_in)                      MatMul, Split
    u     = SiLU(Conv_causal(x))                 Transpose, Conv(group=di, pads=[K-1,0]), Sigmoid, Mul
    δ,B,C = Split(u · W_x)                       MatMul, Split
    y, hL = SelectiveScan(u, δ·W_dt, A, B, C, D, b_dt)   plugin node (softplus inside)
    r     = r + (y ⊙ SiLU(z)) · W_out

The plugin node is a TensorRT plugin node: op_type = plugin name, attributes plugin_version and
plugin_namespace, domain `trt.plugins`. `lower.py` turns it into standard ops for model.portable.onnx.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from ..model import MambaModel
from ..ops import selective_scan as ss
from ..ops.ort_kernels import PLUGIN_DOMAIN
from .builder import GraphBuilder

BATCH, SEQ = "batch", "sequence"


def rms_norm(b: GraphBuilder, x: str, gamma: str, eps: float) -> str:
    sq = b.op("Mul", [x, x], name="sq")
    ms = b.op("ReduceMean", [sq], name="mean_sq", axes=[-1], keepdims=1)
    rs = b.op("Sqrt", [b.op("Add", [ms, b.scalar("eps", eps)], name="add_eps")], name="rms")
    return b.op("Mul", [b.op("Div", [x, rs], name="normalize"), gamma], name="scale")


def silu(b: GraphBuilder, x: str, name: str) -> str:
    return b.op("Mul", [x, b.op("Sigmoid", [x], name=f"{name}_sigmoid")], name=name)


def linear(b: GraphBuilder, x: str, w_name: str, w: np.ndarray, bias: np.ndarray | None, name: str) -> str:
    """x · wᵀ (+ bias) with w in torch (out, in) layout, stored as the [in, out] MatMul operand."""
    y = b.op("MatMul", [x, b.const(f"{w_name}.weight", w.T)], name=name)
    if bias is not None:
        y = b.op("Add", [y, b.const(f"{w_name}.bias", bias)], name=f"{name}_bias")
    return y


def build_lm_graph(model: MambaModel) -> onnx.ModelProto:
    c = model.config
    di, R, N, K = c.d_inner, c.dt_rank, c.d_state, c.d_conv
    b = GraphBuilder("mamba_lm")
    ids = b.input("input_ids", TensorProto.INT64, [BATCH, SEQ])
    emb = b.const("embedding.weight", model.embedding)
    r = b.op("Gather", [emb, ids], name="embed", axis=0)
    split_x_z = b.ints("split_xz", [di, di])
    split_dbc = b.ints("split_dbc", [R, N, N])
    for i, L in enumerate(model.layers):
        p = f"layers.{i}"
        with b.scope(p):
            h = rms_norm(b, r, b.const(f"{p}.norm.weight", L.norm), c.norm_eps)
            xz = linear(b, h, f"{p}.in_proj", L.in_proj, L.in_proj_bias, "in_proj")
            x, z = b.op("Split", [xz, split_x_z], name="split_xz", n_out=2, axis=-1)
            xt = b.op("Transpose", [x], name="to_channels", perm=[0, 2, 1])
            conv_in = [xt, b.const(f"{p}.conv1d.weight", L.conv_weight)]
            if L.conv_bias is not None:
                conv_in.append(b.const(f"{p}.conv1d.bias", L.conv_bias))
            xc = b.op("Conv", conv_in, name="conv1d", group=di, kernel_shape=[K], pads=[K - 1, 0])
            u = b.op("Transpose", [silu(b, xc, "conv_act")], name="to_tokens", perm=[0, 2, 1])
            dbc = linear(b, u, f"{p}.x_proj", L.x_proj, None, "x_proj")
            dlow, Bm, Cm = b.op("Split", [dbc, split_dbc], name="split_dbc", n_out=3, axis=-1)
            delta = b.op("MatMul", [dlow, b.const(f"{p}.dt_proj.weight", L.dt_proj.T)], name="dt_proj")
            A = b.const(f"{p}.A", -np.exp(L.A_log.astype(np.float64)).astype(np.float32))
            y, _state = b.op(
                ss.PLUGIN_NAME,
                [u, delta, A, Bm, Cm, b.const(f"{p}.D", L.D), b.const(f"{p}.dt_proj.bias", L.dt_proj_bias)],
                name="selective_scan", n_out=2, domain=PLUGIN_DOMAIN,
                delta_softplus=1, plugin_version=ss.PLUGIN_VERSION, plugin_namespace=ss.PLUGIN_NAMESPACE,
            )
            g = b.op("Mul", [y, silu(b, z, "gate_act")], name="gate")
            o = linear(b, g, f"{p}.out_proj", L.out_proj, L.out_proj_bias, "out_proj")
            r = b.op("Add", [r, o], name="residual")
    with b.scope("head"):
        h = rms_norm(b, r, b.const("norm_f.weight", model.norm_f), c.norm_eps)
        if model.lm_head is None:  # tied: one copy of the weights, transposed in the graph
            head = b.op("Transpose", [emb], name="tied_lm_head", perm=[1, 0])
        else:
            head = b.const("lm_head.weight", model.lm_head.T)
        b.op("MatMul", [h, head], name="lm_head", out_names=["logits"])
    b.output("logits", TensorProto.FLOAT, [BATCH, SEQ, c.vocab_size])
    return b.model(extra_opsets=[(PLUGIN_DOMAIN, 1)])
