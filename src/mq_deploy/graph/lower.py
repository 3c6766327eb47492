"""Lower plugin nodes to standard ONNX ops: SelectiveScan → the `Scan` op (nothing is unrolled),
Hadamard → MatMul with the constant H_n (one initializer per size).

For each plugin node with inputs (u, delta, A, Bm, Cm, Dskip, delta_bias):

    dt      = Softplus(delta + delta_bias)                       (vectorized over the sequence)
    h0      = zeros(B, D, N)
    hL, ys  = Scan(h0; u, dt, Bm, Cm over axis 1) with body
                  h  = exp(dt_t ⊗ A) ⊙ h + (dt_t ⊙ u_t) ⊗ Bm_t
                  y  = Σ_n h ⊙ Cm_t
    y       = ys + Dskip ⊙ u

The body reads A from the enclosing graph (an outer-scope initializer), so the per-step state is
(B, D, N) and memory does not grow with the sequence length. Output names are kept, so the rest of
the graph is untouched.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import InternalError
from ..ops import hadamard_op
from ..ops import selective_scan as ss
from ..quant.hadamard import hadamard_matrix
from ..ops.ort_kernels import PLUGIN_DOMAIN
from .builder import GraphBuilder


def _scan_body(prefix: str, A: str) -> onnx.GraphProto:
    b = GraphBuilder(f"{prefix}/scan_body")
    F = TensorProto.FLOAT
    h = b.input(f"{prefix}/h_in", F, ["B", "D", "N"])
    u = b.input(f"{prefix}/u_t", F, ["B", "D"])
    dt = b.input(f"{prefix}/dt_t", F, ["B", "D"])
    Bt = b.input(f"{prefix}/B_t", F, ["B", "N"])
    Ct = b.input(f"{prefix}/C_t", F, ["B", "N"])
    with b.scope(prefix):
        ax2, ax1 = b.ints("axis2", [2]), b.ints("axis1", [1])
        dA = b.op("Exp", [b.op("Mul", [b.op("Unsqueeze", [dt, ax2], name="dt_col"), A], name="dtA")], name="dA")
        dBu = b.op("Mul", [b.op("Unsqueeze", [b.op("Mul", [dt, u], name="dt_u"), ax2], name="dtu_col"),
                           b.op("Unsqueeze", [Bt, ax1], name="B_row")], name="dBu")
        h_new = b.op("Add", [b.op("Mul", [dA, h], name="decay"), dBu], name="h_out")
        y = b.op("ReduceSum", [b.op("Mul", [h_new, b.op("Unsqueeze", [Ct, ax1], name="C_row")], name="hC"), ax2],
                 name="y_t", keepdims=0)
    b.output(h_new, F, ["B", "D", "N"])
    b.output(y, F, ["B", "D"])
    return b.graph()


def lower_selective_scan(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of `model` with every SelectiveScan plugin node replaced by standard ops."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    new_nodes: list[onnx.NodeProto] = []
    extra_inits: list[onnx.TensorProto] = []
    hadamards: dict[int, str] = {}
    for node in g.node:
        if node.domain == PLUGIN_DOMAIN and node.op_type == hadamard_op.PLUGIN_NAME:
            n = int(next(helper.get_attribute_value(a) for a in node.attribute if a.name == "n"))
            if n not in hadamards:  # one constant per size, shared by every layer
                hadamards[n] = f"hadamard_{n}"
                extra_inits.append(numpy_helper.from_array(hadamard_matrix(n).astype(np.float32), hadamards[n]))
            new_nodes.append(helper.make_node("MatMul", [node.input[0], hadamards[n]], list(node.output),
                                              name=node.name))
            continue
        if not (node.domain == PLUGIN_DOMAIN and node.op_type == ss.PLUGIN_NAME):
            new_nodes.append(node)
            continue
        if len(node.input) != len(ss.INPUTS):
            raise InternalError(f"{node.name}: SelectiveScan has {len(node.input)} inputs, expected {len(ss.INPUTS)}")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        u, delta, A, Bm, Cm, Dskip, dbias = node.input
        y_out, state_out = node.output
        b = GraphBuilder("lowering")
        with b.scope(node.name):
            dt = b.op("Add", [delta, dbias], name="dt_bias")
            if int(attrs.get("delta_softplus", 1)):
                dt = b.op("Softplus", [dt], name="dt_softplus")
            batch = b.op("Slice", [b.op("Shape", [u], name="u_shape"), b.ints("zero", [0]), b.ints("one", [1])],
                         name="batch")
            state_shape = b.op("Concat", [batch, b.op("Shape", [A], name="A_shape")], name="state_shape", axis=0)
            zero = b.scalar("zero_f", [0.0])
            h0 = b.op("Expand", [zero, state_shape], name="h0")
            body = _scan_body(node.name, A)
            ys = b.fresh("scan_y")
            b.op("Scan", [h0, u, dt, Bm, Cm], name="scan", out_names=[state_out, ys], body=body,
                 num_scan_inputs=4, scan_input_axes=[1, 1, 1, 1], scan_output_axes=[1])
            skip = b.op("Mul", [u, Dskip], name="skip")
            b.op("Add", [ys, skip], name="y", out_names=[y_out])
        new_nodes.extend(b.nodes)
        extra_inits.extend(b.initializers)
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(extra_inits)
    ops = [o for o in out.opset_import if o.domain != PLUGIN_DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(ops)
    return out


def lower_state_update(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of `model` with every SelectiveStateUpdate plugin node replaced by standard ops.

    For inputs (state, x, dt, A, Bm, Cm, Dskip, dt_bias), x/dt (B, 1, D), Bm/Cm (B, 1, N):

        Δ     = Softplus(dt + dt_bias)                         (B, 1, D)
        Δc    = Transpose(Δ) , xc = Transpose(Δ ⊙ x)           (B, D, 1)
        h     = exp(Δc ⊙ A) ⊙ state + xc ⊙ Bm                  (B, D, N)   (Bm broadcasts as (B, 1, N))
        y     = Transpose(ReduceSum(h ⊙ Cm, axis 2)) + Dskip ⊙ x   (B, 1, D)
    """
    from ..ops import state_update as su

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    new_nodes: list[onnx.NodeProto] = []
    extra_inits: list[onnx.TensorProto] = []
    for node in g.node:
        if not (node.domain == PLUGIN_DOMAIN and node.op_type == su.PLUGIN_NAME):
            new_nodes.append(node)
            continue
        if len(node.input) != len(su.INPUTS):
            raise InternalError(f"{node.name}: SelectiveStateUpdate has {len(node.input)} inputs, "
                                f"expected {len(su.INPUTS)}")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        state, x, dt, A, Bm, Cm, Dskip, dbias = node.input
        y_out, state_out = node.output
        b = GraphBuilder("lowering")
        with b.scope(node.name):
            d = b.op("Add", [dt, dbias], name="dt_bias")
            if int(attrs.get("dt_softplus", 1)):
                d = b.op("Softplus", [d], name="dt_softplus")
            dcol = b.op("Transpose", [d], name="dt_col", perm=[0, 2, 1])
            dA = b.op("Exp", [b.op("Mul", [dcol, A], name="dtA")], name="dA")
            dxc = b.op("Transpose", [b.op("Mul", [d, x], name="dt_x")], name="dtx_col", perm=[0, 2, 1])
            h = b.op("Add", [b.op("Mul", [dA, state], name="decay"), b.op("Mul", [dxc, Bm], name="dBx")],
                     name="h_out", out_names=[state_out])
            yc = b.op("ReduceSum", [b.op("Mul", [h, Cm], name="hC"), b.ints("axis2", [2])], name="y_col", keepdims=1)
            ys = b.op("Transpose", [yc], name="y_tokens", perm=[0, 2, 1])
            b.op("Add", [ys, b.op("Mul", [x, Dskip], name="skip")], name="y", out_names=[y_out])
        new_nodes.extend(b.nodes)
        extra_inits.extend(b.initializers)
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(extra_inits)
    if not any(n.domain == PLUGIN_DOMAIN for n in g.node):
        ops = [o for o in out.opset_import if o.domain != PLUGIN_DOMAIN]
        del out.opset_import[:]
        out.opset_import.extend(ops)
    return out
