"""TensorRT flavour only: feed the SelectiveScan plugin its int8 inputs directly (Q → plugin).

For each of u, delta, Bm, Cm that arrives as QuantizeLinear → DequantizeLinear → SelectiveScan, the
plugin input becomes the int8 output of the QuantizeLinear and the scale moves into the plugin
attribute `u_scale` / `delta_scale` / `B_scale` / `C_scale` (1.0, ignored, on a float input); the
kernel dequantizes in registers (x = q·scale), so the function is unchanged. A DequantizeLinear left
without consumers is removed (u's stays: x_proj reads it). `unfuse_for_cpu` undoes this (in memory,
for the CPU kernels): an input produced by a QuantizeLinear is an int8 input.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import UserError
from ..ops import selective_scan as ss
from ..ops.ort_kernels import PLUGIN_DOMAIN
from ..ops.plugin_fields import set_field

SCALE_ATTRS = {0: "u_scale", 1: "delta_scale", 3: "B_scale", 4: "C_scale"}


def fuse_scan_quant(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    for node in g.node:
        if not (node.domain == PLUGIN_DOMAIN and node.op_type == ss.PLUGIN_NAME):
            continue
        for idx, attr in SCALE_ATTRS.items():
            dq = producer.get(node.input[idx])
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear" or dq.input[1] not in inits:
                continue
            scale = float(numpy_helper.to_array(inits[dq.input[1]]).ravel()[0])
            node.input[idx] = q.output[0]
            set_field(node, attr, scale)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [n for n in g.node if not (n.op_type == "DequantizeLinear" and not any(o in used for o in n.output))]
    del g.node[:]
    g.node.extend(keep)
    return m


def unfuse_for_cpu(model: onnx.ModelProto) -> None:
    """In place: put a DequantizeLinear back in front of every int8 plugin input (one a QuantizeLinear produces;
    scale from the attribute, which goes back to 1.0: the input is float again)."""
    g = model.graph
    quantized = {o for n in g.node if n.op_type == "QuantizeLinear" for o in n.output}
    new_nodes = []
    for node in g.node:
        if node.op_type == ss.PLUGIN_NAME:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            for idx, attr in SCALE_ATTRS.items():
                if node.input[idx] in quantized:
                    if attr not in attrs:
                        raise UserError(f"{node.name}: int8 input {ss.INPUTS[idx]} has no {attr} attribute; "
                                        "recompile the model")
                    base = f"{node.name}/{attr}"
                    g.initializer.append(numpy_helper.from_array(np.asarray(attrs[attr], np.float32), base))
                    g.initializer.append(numpy_helper.from_array(np.asarray(0, np.int8), base + "_zp"))
                    new_nodes.append(helper.make_node("DequantizeLinear", [node.input[idx], base, base + "_zp"],
                                                      [base + "_dq"], name=base + "_DQ"))
                    node.input[idx] = base + "_dq"
                    set_field(node, attr, 1.0)
        new_nodes.append(node)
    del g.node[:]
    g.node.extend(new_nodes)
