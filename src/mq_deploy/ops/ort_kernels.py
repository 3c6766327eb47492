"""onnxruntime CPU kernels for the TensorRT plugin nodes (through onnxruntime-extensions).

Importing this module registers the Python kernels; `prepare_plugin_model` rewrites the plugin
nodes' domain to the one onnxruntime-extensions serves, in memory, so the file on disk keeps the
TensorRT form. Semantics are those of `selective_scan.py`, the same as the CUDA plugin. Each kernel
declares every field of its plugin creator (`plugin_fields.FIELDS`); the graphs set only the values these
kernels run (no z / initial-state inputs; float scan inputs and Hadamard outputs after `unfuse_for_cpu`).
"""

from __future__ import annotations

import onnx
from onnxruntime_extensions import PyCustomOpDef, default_opset_domain, get_library_path, onnx_op

from . import hadamard_op
from . import selective_scan as ss
from . import state_update as su
from .plugin_fields import FIELDS, fields_of, set_field

PLUGIN_DOMAIN = "trt.plugins"  # domain of plugin nodes in model.onnx (TensorRT matches op_type + attributes)
_F = PyCustomOpDef.dt_float
_STR = PyCustomOpDef.dt_string


def _attrs(op: str) -> dict:
    """onnxruntime-extensions attribute types for every field of plugin `op` (it ignores undeclared ones)."""
    kind = {int: PyCustomOpDef.dt_int64, float: PyCustomOpDef.dt_float}
    return {**{k: kind[t] for k, (t, _) in FIELDS[op].items()}, "plugin_version": _STR, "plugin_namespace": _STR}


@onnx_op(op_type=ss.PLUGIN_NAME, inputs=[_F] * len(ss.INPUTS), outputs=[_F] * len(ss.OUTPUTS),
         attrs=_attrs(ss.PLUGIN_NAME))
def _selective_scan_kernel(u, delta, A, Bm, Cm, Dskip, delta_bias, **attrs):
    # the scales apply to int8 inputs only (the plugin ignores them for float input, all this kernel sees)
    y, h = ss.selective_scan_cpu(u, delta, A, Bm, Cm, Dskip, delta_bias, bool(attrs.get("delta_softplus", 1)))
    return y, h


@onnx_op(op_type=hadamard_op.PLUGIN_NAME, inputs=[_F], outputs=[_F], attrs=_attrs(hadamard_op.PLUGIN_NAME))
def _hadamard_kernel(x, **attrs):
    return hadamard_op.reference(x)


@onnx_op(op_type=su.PLUGIN_NAME, inputs=[_F] * len(su.INPUTS), outputs=[_F] * len(su.OUTPUTS),
         attrs=_attrs(su.PLUGIN_NAME))
def _selective_state_update_kernel(state, x, dt, A, Bm, Cm, Dskip, dt_bias, **attrs):
    return su.selective_state_update(state, x, dt, A, Bm, Cm, Dskip, dt_bias, bool(attrs.get("dt_softplus", 1)))


KERNELS = {ss.PLUGIN_NAME, su.PLUGIN_NAME, hadamard_op.PLUGIN_NAME}
# field values the CPU kernels do not implement (an exception inside a kernel aborts the process: checked before)
_UNSUPPORTED = {"has_z": "a z input", "has_initial_state": "an initial-state input", "out_scale": "int8 output"}


def check_cpu_node(node: onnx.NodeProto) -> dict:
    """The plugin node's fields (defaults filled in, as TensorRT does); UserError where no CPU kernel runs it."""
    from ..errors import UserError

    if node.op_type not in KERNELS:
        raise UserError(f"node {node.name}: no CPU kernel for plugin '{node.op_type}'")
    fields = fields_of(node)
    for k, v in fields.items():
        if v is None:
            raise UserError(f"node {node.name}: plugin {node.op_type} needs attribute {k}")
        if k in _UNSUPPORTED and v:
            raise UserError(f"node {node.name}: {k} = {v} ({_UNSUPPORTED[k]}) has no CPU kernel")
    return fields


def prepare_plugin_model(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """Return a copy of `model` whose plugin nodes onnxruntime-extensions can run, and whether any were found
    (`model` itself when it has none)."""
    if not any(n.domain == PLUGIN_DOMAIN for n in model.graph.node):
        return model, False
    from ..graph.fuse_scan_quant import unfuse_for_cpu

    m = onnx.ModelProto()
    m.CopyFrom(model)
    unfuse_for_cpu(m)  # float plugin inputs and outputs (Q / DQ nodes back where the TensorRT flavour fused them)
    found = False
    for node in m.graph.node:
        if node.domain == PLUGIN_DOMAIN:
            # onnxruntime-extensions wants every declared attribute: an older graph gets the defaults
            for k, v in check_cpu_node(node).items():
                if k not in {a.name for a in node.attribute}:
                    set_field(node, k, v)
            node.domain = default_opset_domain()
            found = True
    if found:
        ops = [o for o in m.opset_import if o.domain != PLUGIN_DOMAIN]
        del m.opset_import[:]
        m.opset_import.extend(ops)
        if not any(o.domain == default_opset_domain() for o in ops):
            m.opset_import.append(onnx.helper.make_opsetid(default_opset_domain(), 1))
    return m, found


__all__ = ["PLUGIN_DOMAIN", "check_cpu_node", "prepare_plugin_model", "get_library_path"]
