"""The Hadamard node: y = x·H_n along the last axis (H_n from `quant/hadamard.py`).

In model.onnx it is a TensorRT plugin node (`Hadamard`, attributes `n` and `out_scale`); onnxruntime runs it with the
CPU kernel in `ort_kernels.py`; the lowering turns it into a MatMul with the n×n constant. Emitted with out_scale 0
(output in the input's type); in a quantized graph's TensorRT flavour `graph/fuse_scan_quant.py` moves out_proj's
QuantizeLinear into it (out_scale = that scale, int8 output), and undoes that for the CPU kernels.
"""

from __future__ import annotations

import numpy as np

from ..quant.hadamard import hadamard_transform

PLUGIN_NAME = "Hadamard"  # version / namespace: those of every mq-deploy plugin (ops/plugin_fields.node_attrs)


def reference(x: np.ndarray) -> np.ndarray:
    return hadamard_transform(np.asarray(x, np.float32)).astype(np.float32)


def emit(b, x: str, n: int, name: str) -> str:
    from .ort_kernels import PLUGIN_DOMAIN
    from .plugin_fields import node_attrs

    return b.op(PLUGIN_NAME, [x], name=name, domain=PLUGIN_DOMAIN, **node_attrs(PLUGIN_NAME, n=n, out_scale=0.0))
