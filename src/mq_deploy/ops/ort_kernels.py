"""onnxruntime CPU kernels for the TensorRT plugin nodes (through onnxruntime-extensions).

Importing this module registers the Python kernels; `prepare_plugin_model` rewrites the plugin
nodes' domain to the one onnxruntime-extensions serves, in memory, so the file on disk keeps the
TensorRT form. Semantics are those of `selective_scan.py`, the same as the CUDA plugin.
"""

from __future__ import annotations

import onnx
from onnxruntime_extensions import PyCustomOpDef, default_opset_domain, get_library_path, onnx_op

from . import hadamard_op
from . import selective_scan as ss
from . import state_update as su

PLUGIN_DOMAIN = "trt.plugins"  # domain of plugin nodes in model.onnx (TensorRT matches op_type + attributes)
_F = PyCustomOpDef.dt_float
_STR = PyCustomOpDef.dt_string


@onnx_op(op_type=ss.PLUGIN_NAME, inputs=[_F] * len(ss.INPUTS), outputs=[_F] * len(ss.OUTPUTS),
         attrs={"delta_softplus": PyCustomOpDef.dt_int64, "plugin_version": _STR, "plugin_namespace": _STR})
def _selective_scan_kernel(u, delta, A, Bm, Cm, Dskip, delta_bias, **attrs):
    y, h = ss.selective_scan_cpu(u, delta, A, Bm, Cm, Dskip, delta_bias, bool(attrs.get("delta_softplus", 1)))
    return y, h


@onnx_op(op_type=hadamard_op.PLUGIN_NAME, inputs=[_F], outputs=[_F],
         attrs={"n": PyCustomOpDef.dt_int64, "plugin_version": _STR, "plugin_namespace": _STR})
def _hadamard_kernel(x, **attrs):
    return hadamard_op.reference(x)


@onnx_op(op_type=su.PLUGIN_NAME, inputs=[_F] * len(su.INPUTS), outputs=[_F] * len(su.OUTPUTS),
         attrs={"dt_softplus": PyCustomOpDef.dt_int64, "plugin_version": _STR, "plugin_namespace": _STR})
def _selective_state_update_kernel(state, x, dt, A, Bm, Cm, Dskip, dt_bias, **attrs):
    return su.selective_state_update(state, x, dt, A, Bm, Cm, Dskip, dt_bias, bool(attrs.get("dt_softplus", 1)))


KERNELS = {ss.PLUGIN_NAME, su.PLUGIN_NAME, hadamard_op.PLUGIN_NAME}


def prepare_plugin_model(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """Return a copy of `model` whose plugin nodes onnxruntime-extensions can run, and whether any were found
    (`model` itself when it has none)."""
    if not any(n.domain == PLUGIN_DOMAIN for n in model.graph.node):
        return model, False
    m = onnx.ModelProto()
    m.CopyFrom(model)
    found = False
    for node in m.graph.node:
        if node.domain == PLUGIN_DOMAIN:
            if node.op_type not in KERNELS:
                from ..errors import UserError

                raise UserError(f"node {node.name}: no CPU kernel for plugin '{node.op_type}'")
            node.domain = default_opset_domain()
            found = True
    if found:
        from ..graph.fuse_scan_quant import unfuse_for_cpu

        unfuse_for_cpu(m)
        ops = [o for o in m.opset_import if o.domain != PLUGIN_DOMAIN]
        del m.opset_import[:]
        m.opset_import.extend(ops)
        if not any(o.domain == default_opset_domain() for o in ops):
            m.opset_import.append(onnx.helper.make_opsetid(default_opset_domain(), 1))
    return m, found


__all__ = ["PLUGIN_DOMAIN", "prepare_plugin_model", "get_library_path"]
