"""onnxruntime's fused int8 MatMul against the same QDQ graph run as written (session.disable_quant_qdq), by shape.

    python benchmarks/ort_int8_fusion.py

One QuantizeLinear → DequantizeLinear → MatMul graph per (M, K, N), int8 weights and activations over their whole
range; prints the shapes whose fused result differs by more than 1e-5 of the output's max, the worst relative
difference, and whether mq-deploy's probe (backends/ort.py, _fusion_probe) lets the fusion run here. Results:
benchmarks/results/ort_int8_fusion.md."""
import platform
import sys

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from mq_deploy.backends.ort import _cpu_flags, _fusion_probe


def qdq_matmul(m: int, k: int, n: int, rng) -> bytes:
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.asarray(0.01, np.float32), "ws"),
             numpy_helper.from_array(np.asarray(0, np.int8), "z"),
             numpy_helper.from_array(np.asarray(0.05, np.float32), "xs")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "z"], ["wd"]),
             helper.make_node("MatMul", ["xd", "wd"], ["y"])]
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, m, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, m, n])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=7).SerializeToString()


def main() -> int:
    rng = np.random.default_rng(0)
    bad, worst, shapes = [], 0.0, [(m, k, n) for m in (1, 2, 16, 17, 33) for k in (8, 24, 48, 64, 96)
                                   for n in (8, 24, 32, 96)]
    for m, k, n in shapes:
        model, x = qdq_matmul(m, k, n, rng), rng.uniform(-6.4, 6.35, (2, m, k)).astype(np.float32)
        out = []
        for disable in ("0", "1"):
            so = ort.SessionOptions()
            so.log_severity_level = 3
            so.add_session_config_entry("session.disable_quant_qdq", disable)
            out.append(ort.InferenceSession(model, so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0])
        d = float(np.abs(out[0] - out[1]).max() / np.abs(out[1]).max())
        worst = max(worst, d)
        if d > 1e-5:
            bad.append(((m, k, n), d))
    flags = sorted(_cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"})
    print(f"Python {sys.version.split()[0]}, onnxruntime {ort.__version__}, {platform.machine()}, "
          f"flags {' '.join(flags)}")
    print(f"{len(bad)} of {len(shapes)} shapes differ (worst relative difference {worst:.2e})")
    for s, d in bad:
        print(f"  M K N {s}: {d:.3g}")
    print(f"mq-deploy's probe: fusion {'on' if _fusion_probe() else 'off'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
