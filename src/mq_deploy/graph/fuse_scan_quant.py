"""TensorRT flavour only: the plugins take and give int8 where a Q/DQ pair meets them (`fuse_plugin_quant`).

Scan inputs (`fuse_scan_quant`): for each of u, delta, Bm, Cm that arrives as QuantizeLinear → DequantizeLinear →
SelectiveScan, the plugin input becomes the int8 output of the QuantizeLinear and the scale moves into the plugin
attribute `u_scale` / `delta_scale` / `B_scale` / `C_scale` (0 on a float input: the plugin then offers TensorRT no int8
formats); only a per-tensor int8 pair at zero point 0 with one scale is fused. The kernel dequantizes
in registers (x = q·scale), so the function is unchanged. A DequantizeLinear left without consumers is removed (u's
stays: x_proj reads it).

Hadamard output (`fuse_hadamard_quant`): a Hadamard whose only consumer is a per-tensor int8 QuantizeLinear (zero
point 0: out_proj's input) takes its scale as `out_scale` and writes the int8 codes itself, the QuantizeLinear's
output, which the DequantizeLinear reads as before. TensorRT does not fuse a QuantizeLinear into a plugin: unfused, the
engine runs the Hadamard with a float output and then a separate quantize kernel over the same tensor. The fused
node is renamed to its float output's name, so that `unfuse_hadamard_quant` gives that tensor back under its name
(the quantization point the manifest and graph/follow.py name).

`dequantize_hadamard_codes` keeps the fusion, adds a DequantizeLinear of the codes under the same name, and a float
twin of the Hadamard beside it: a validation engine (`mq-deploy build --validation-engine`) marks both, so validate
checks each layer on the float value as before and the deployed kernel's codes against it (graph/follow.py
`fused_code_differences`).

`unfuse_for_cpu` undoes both (in memory, for the CPU kernels): an input produced by a QuantizeLinear is an int8
input, and a Hadamard with out_scale > 0 becomes Hadamard → QuantizeLinear again.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import UserError
from ..ops import hadamard_op
from ..ops import selective_scan as ss
from ..ops.ort_kernels import PLUGIN_DOMAIN
from ..ops.plugin_fields import fields_of, set_field

SCALE_ATTRS = {0: "u_scale", 1: "delta_scale", 3: "B_scale", 4: "C_scale"}


def _symmetric_int8_pair(q: onnx.NodeProto, dq: onnx.NodeProto, inits: dict) -> bool:
    """Whether QuantizeLinear q → DequantizeLinear dq is per-tensor int8 at zero point 0 with one scale > 0 for both
    (what a plugin reading q's codes as int8 with that scale computes: anything else stays unfused)."""
    if any(a.name == "output_dtype" for n in (q, dq) for a in n.attribute):  # opset 21: the zero point decides here
        return False
    for n in (q, dq):
        if len(n.input) < 3 or n.input[1] not in inits or n.input[2] not in inits or not _int8_zero(inits[n.input[2]]):
            return False
    sq, sdq = (numpy_helper.to_array(inits[n.input[1]]) for n in (q, dq))
    return sq.size == 1 and sdq.size == 1 and float(sq.ravel()[0]) > 0 and float(sq.ravel()[0]) == float(sdq.ravel()[0])


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
            if q is None or q.op_type != "QuantizeLinear" or not _symmetric_int8_pair(q, dq, inits):
                continue  # (the kernel reads the codes as int8 at zero point 0 and one scale)
            scale = float(numpy_helper.to_array(inits[dq.input[1]]).ravel()[0])
            node.input[idx] = q.output[0]
            set_field(node, attr, scale)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [n for n in g.node if not (n.op_type == "DequantizeLinear" and not any(o in used for o in n.output))]
    del g.node[:]
    g.node.extend(keep)
    return m


def fuse_plugin_quant(model: onnx.ModelProto) -> onnx.ModelProto:
    """The TensorRT flavour of a quantized graph: `fuse_scan_quant`, then `fuse_hadamard_quant` (a copy)."""
    m = fuse_scan_quant(model)
    fuse_hadamard_quant(m, copy=False)
    return m


def _int8_zero(t) -> bool:
    a = numpy_helper.to_array(t)
    return a.dtype == np.int8 and a.size == 1 and int(a.ravel()[0]) == 0


def hadamard_out_scale(node) -> float:
    """A Hadamard node's out_scale where it writes int8 (finite and > 0), else 0.0 (float output; the plugin refuses
    a negative one, `mq-deploy lint` reports it)."""
    v = float(fields_of(node)["out_scale"]) if node.op_type == hadamard_op.PLUGIN_NAME else 0.0
    return v if np.isfinite(v) and v > 0 else 0.0


def quantizes_activations(nodes) -> bool:
    """Whether a graph's nodes quantize activations (a QuantizeLinear, or a Hadamard writing int8); a graph with
    dequantized weights only is weight-only (W4A16)."""
    return any(n.op_type == "QuantizeLinear" or hadamard_out_scale(n) for n in nodes)


def fuse_hadamard_quant(model: onnx.ModelProto, copy: bool = True) -> onnx.ModelProto:
    """Each Hadamard plugin node (out_scale 0) read only by one QuantizeLinear with a scalar scale > 0 and an int8
    zero point 0 (an initializer), its output not a graph output: the Hadamard takes out_scale = that scale, is
    renamed to its float output's name and writes the QuantizeLinear's output; the QuantizeLinear goes. Returns
    the fused graph (a copy unless `copy` is False)."""
    if copy:
        m = onnx.ModelProto()
        m.CopyFrom(model)
    else:
        m = model
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    readers: dict = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}
    drop = set()
    for node in g.node:
        if not (node.domain == PLUGIN_DOMAIN and node.op_type == hadamard_op.PLUGIN_NAME) or fields_of(node)["out_scale"]:
            continue  # (a nonzero out_scale: fused already, or invalid, which lint reports)
        y = node.output[0]
        rd = readers.get(y, [])
        if y in outputs or len(rd) != 1 or rd[0].op_type != "QuantizeLinear" or rd[0].input[0] != y:
            continue
        q = rd[0]
        if len(q.input) < 3 or q.input[1] not in inits or q.input[2] not in inits or not _int8_zero(inits[q.input[2]]):
            continue
        if any(a.name == "output_dtype" for a in q.attribute):  # opset 21: the zero point's type decides here
            continue
        scale = numpy_helper.to_array(inits[q.input[1]])
        if scale.size != 1 or not float(scale.ravel()[0]) > 0:
            continue
        set_field(node, "out_scale", float(scale.ravel()[0]))
        node.name = y
        node.output[0] = q.output[0]
        drop.add(id(q))
    if drop:
        gone = {i for n in g.node if id(n) in drop for i in n.input[1:]}
        keep = [n for n in g.node if id(n) not in drop]
        del g.node[:]
        g.node.extend(keep)
        read = {i for n in g.node for i in n.input}
        inits_left = [t for t in g.initializer if t.name not in gone or t.name in read]  # the scales only Q read
        if len(inits_left) < len(g.initializer):
            del g.initializer[:]
            g.initializer.extend(inits_left)
    return m


def _rewrite_fused_hadamards(model: onnx.ModelProto, dequantize: bool) -> int:
    """unfuse_hadamard_quant (`dequantize` False) / dequantize_hadamard_codes (True): how many were rewritten."""
    g = model.graph
    fused = [n for n in g.node if hadamard_out_scale(n)]
    if not fused:
        return 0
    # (a graph output of that name is no clash: onnxruntime's callers ask for the float tensor as an extra output)
    names = {o for n in g.node for o in n.output} | {i.name for i in g.input} | {t.name for t in g.initializer}

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in names:
            name, k = f"{base}.{k}", k + 1
        names.add(name)
        return name

    new_nodes = []
    for node in g.node:
        new_nodes.append(node)
        scale = hadamard_out_scale(node)
        if not scale:
            continue
        codes = node.output[0]
        # the node's name is its float output's (fuse_hadamard_quant); a graph whose tools renamed or cleared it still
        # runs, its float tensor under a fresh name (the manifest's quantization point then has no tensor), but its
        # validation engine would mark tensors validate cannot name: refused
        if dequantize and not (node.name and node.name not in names):
            raise UserError(f"the fused Hadamard writing {codes!r} is named {node.name!r}, not after its quantization "
                            "point (a tool renamed it?): a validation engine cannot be built from this graph; compile "
                            "the OUTDIR again")
        y = fresh(node.name) if node.name and node.name not in names else fresh(f"{codes}::float")
        s_name, zp_name = fresh(f"{y}/out_scale"), fresh(f"{y}/out_zero_point")
        g.initializer.append(numpy_helper.from_array(np.asarray(scale, np.float32), s_name))
        g.initializer.append(numpy_helper.from_array(np.asarray(0, np.int8), zp_name))
        if dequantize:
            twin = onnx.NodeProto()
            twin.CopyFrom(node)
            twin.name, twin.output[0] = fresh(f"{y}/float_twin"), float_twin(y)
            if twin.output[0] in names:
                raise UserError(f"the graph already has a tensor {twin.output[0]!r}, the name a validation engine "
                                f"gives the float twin of the fused Hadamard {y!r}")
            names.add(twin.output[0])
            set_field(twin, "out_scale", 0.0)
            new_nodes += [helper.make_node("DequantizeLinear", [codes, s_name, zp_name], [y], name=f"{y}/out_DQ"), twin]
            continue
        node.output[0] = y
        set_field(node, "out_scale", 0.0)
        new_nodes.append(helper.make_node("QuantizeLinear", [y, s_name, zp_name], [codes], name=f"{y}/out_Q"))
    del g.node[:]
    g.node.extend(new_nodes)
    return len(fused)


def unfuse_hadamard_quant(model: onnx.ModelProto) -> int:
    """In place: every Hadamard with out_scale > 0 writes its float output again (named as the node, see the module
    docstring), read by a QuantizeLinear (the scale, int8 zero point 0) that writes the node's int8 output; returns
    how many were undone."""
    return _rewrite_fused_hadamards(model, dequantize=False)


def float_twin(point: str) -> str:
    """The tensor a validation engine's float twin of the fused Hadamard `point` writes (dequantize_hadamard_codes)."""
    return point + "::float"


def dequantize_hadamard_codes(model: onnx.ModelProto) -> int:
    """In place, what a validation engine is built from: every Hadamard with out_scale > 0 stays fused (it writes
    int8, as deployed); a DequantizeLinear of its codes (the scale, int8 zero point 0) writes the tensor named as the
    node (the quantization point: the value its fused quantizer rounded to), and a float twin (the same Hadamard,
    out_scale 0, on the same input) writes `float_twin(point)`, the value before that rounding. Returns how many."""
    return _rewrite_fused_hadamards(model, dequantize=True)


def unfuse_for_cpu(model: onnx.ModelProto) -> None:
    """In place: put a DequantizeLinear back in front of every int8 plugin input (one a QuantizeLinear produces;
    scale from the attribute, which goes back to 0: the input is float again), and a QuantizeLinear behind every
    int8 Hadamard output (unfuse_hadamard_quant)."""
    unfuse_hadamard_quant(model)
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
                    set_field(node, attr, 0.0)
        new_nodes.append(node)
    del g.node[:]
    g.node.extend(new_nodes)
