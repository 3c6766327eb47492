"""QDQ lint: TensorRT explicit-quantization placement rules, reported by node name.

Rules (a graph with no QuantizeLinear and no dequantized weight is fp: only scan-scales applies to it; one with
dequantized weights and no QuantizeLinear is weight-only (W4A16): weight-dq, linear-quant on the weight input,
hadamard-out and scan-scales apply):
  weight-dq      a quantized linear's weight is DequantizeLinear(INT8/INT4 initializer, scale[out], axis=1)
                 or, INT4 only, blocked: scale[K / block_size, out], axis=0, block_size dividing K,
                 zero-point absent or 0, scales finite and > 0
  act-qdq        every activation QuantizeLinear has a scalar scale > 0 and an int8 zero-point 0, and
                 feeds only DequantizeLinear nodes with the same scale and zero-point
  matmul-both    a MatMul with one dequantized input has both inputs dequantized
  linear-quant   each in_proj / x_proj / dt_proj / out_proj MatMul is quantized when the graph is
  scan-inputs    SelectiveScan's u, delta, Bm, Cm come from DequantizeLinear when the graph is quantized
  hadamard-out   a Hadamard that writes int8 (out_scale > 0, its QuantizeLinear fused) feeds only DequantizeLinear
                 nodes with that scale and an int8 zero-point 0; out_scale is finite and >= 0
  scan-scales    (every graph) a SelectiveScan whose u, delta, Bm, Cm are float (none from a QuantizeLinear) carries
                 scales 0: with int8 scales it would offer TensorRT int8 inputs in an implicitly quantized build
                 (OUTDIRs compiled before 2026-12-01 wrote 1.0 there: recompile them)
  token-scale    a token given its own scale (Vim class token: Mul by a constant [1, T, 1] before a
                 QuantizeLinear, or before the Hadamard that feeds one or writes int8 itself, whose
                 DequantizeLinear feeds a MatMul) is rescaled back right after that MatMul by the
                 reciprocal constant (product 1 within 1e-6)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import UserError
from .graph.fuse_scan_quant import hadamard_out_scale, quantizes_activations
from .graph.plan import LINEARS
from .ops import hadamard_op
from .ops import selective_scan as ss
from .ops.plugin_fields import fields_of


def _violation(node: str, rule: str, msg: str) -> dict:
    return {"node": node, "rule": rule, "message": msg}


def lint_model(model: onnx.ModelProto, base_dir: str = "") -> list[dict]:
    """Placement violations; `base_dir`: where the model's external data (weights.bin) lives."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out: list[dict] = []
    for n in g.node:
        if n.op_type == hadamard_op.PLUGIN_NAME and not hadamard_out_scale(n) and fields_of(n)["out_scale"] != 0:
            out.append(_violation(n.name, "hadamard-out", f"out_scale must be finite and >= 0, not "
                                                          f"{fields_of(n)['out_scale']}"))
        if n.op_type == ss.PLUGIN_NAME and not any(producer.get(n.input[i]) is not None
                                                   and producer[n.input[i]].op_type == "QuantizeLinear"
                                                   for i in (0, 1, 3, 4)):
            nonzero = [k for k in ("u_scale", "delta_scale", "B_scale", "C_scale") if fields_of(n).get(k, 0.0) != 0]
            if nonzero:
                out.append(_violation(n.name, "scan-scales", f"float inputs with {', '.join(nonzero)} != 0: "
                                                             "recompile (an OUTDIR from before 2026-12-01)"))
    act_quant = quantizes_activations(g.node)
    if not act_quant and not any(n.op_type == "DequantizeLinear" and n.input[0] in inits for n in g.node):
        return out

    def arr(name):
        if name not in inits:
            return None
        try:
            return numpy_helper.to_array(inits[name], base_dir=base_dir)
        except (ValueError, OSError) as e:  # external data cut short or unreadable (a partial copy of weights.bin)
            raise UserError(f"cannot read initializer {name} from its external data in {base_dir}: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None

    def attr(n, key, default=None):
        for a in n.attribute:
            if a.name == key:
                return onnx.helper.get_attribute_value(a)
        return default

    def row_scale(n):  # a Mul's constant [1, T, 1] operand (token rescale), else None
        if n is None or n.op_type != "Mul":
            return None
        for i in n.input:
            a = arr(i)
            if a is not None and a.ndim == 3 and a.shape[0] == 1 and a.shape[2] == 1 and a.shape[1] > 1:
                return a.astype(np.float64)
        return None

    def token_rescale(n):  # the row scale in front of a quantizer (QuantizeLinear or int8-out Hadamard), else None
        if n.op_type != "QuantizeLinear" and not hadamard_out_scale(n):
            return None
        src = producer.get(n.input[0])
        if n.op_type == "QuantizeLinear" and src is not None and src.op_type == hadamard_op.PLUGIN_NAME:
            src = producer.get(src.input[0])  # a row scale commutes with the rotation: Mul → Hadamard → Q
        return row_scale(src)

    for n in g.node:
        m = token_rescale(n)
        if m is not None:
            mm = [c for dq in consumers.get(n.output[0], []) if dq.op_type == "DequantizeLinear"
                  for c in consumers.get(dq.output[0], []) if c.op_type == "MatMul"]
            back = [row_scale(c) for mat in mm for c in consumers.get(mat.output[0], [])]
            if mm and (len(back) != len(mm) or any(b is None or b.shape != m.shape or np.abs(b * m - 1).max() > 1e-6
                                                            for b in back)):
                out.append(_violation(n.name, "token-scale", "token rescaled before the quantizer is not rescaled back "
                                                             "by the reciprocal right after its MatMul"))
        if n.op_type == "QuantizeLinear":
            s = arr(n.input[1]) if len(n.input) > 1 else None
            zp = arr(n.input[2]) if len(n.input) > 2 and n.input[2] else None
            if s is None or s.size != 1 or not np.isfinite(s).all() or float(s.ravel()[0]) <= 0:
                out.append(_violation(n.name, "act-qdq", "activation scale must be one positive constant (per tensor)"))
            if zp is None or zp.dtype != np.int8 or np.any(zp != 0):
                out.append(_violation(n.name, "act-qdq", "zero-point must be an int8 constant 0 (symmetric)"))
            for c in consumers.get(n.output[0], []):
                if c.op_type != "DequantizeLinear":
                    if not (c.op_type == ss.PLUGIN_NAME):
                        out.append(_violation(n.name, "act-qdq", f"feeds {c.op_type} '{c.name}', expected DequantizeLinear"))
                    continue
                if list(c.input[1:]) != list(n.input[1:]):
                    sa, sb = arr(c.input[1]), s
                    if sa is None or sb is None or not np.array_equal(sa, sb):
                        out.append(_violation(c.name, "act-qdq", "DequantizeLinear scale differs from its QuantizeLinear"))
        elif n.op_type == "DequantizeLinear" and n.input[0] in inits:
            t = inits[n.input[0]]
            if t.data_type not in (onnx.TensorProto.INT8, onnx.TensorProto.INT4):
                out.append(_violation(n.name, "weight-dq", "quantized weight must be INT8 or INT4"))
            s = arr(n.input[1])
            bs = attr(n, "block_size", 0)
            if bs:  # blocked (INT4, opset 21): [K / block, N] scales along axis 0
                K = t.dims[0]
                if t.data_type != onnx.TensorProto.INT4 or K % bs or attr(n, "axis", 1) != 0:
                    out.append(_violation(n.name, "weight-dq", "blocked weight scales: INT4 weight, axis 0, block_size "
                                                               f"dividing K ({K})"))
                elif s is None or s.shape != (K // bs, t.dims[-1]):
                    out.append(_violation(n.name, "weight-dq", f"blocked weight scale must be [{K // bs}, {t.dims[-1]}]"))
                elif not (np.isfinite(s).all() and (s > 0).all()):
                    out.append(_violation(n.name, "weight-dq", "weight scales must be finite and > 0"))
            elif s is None or s.ndim != 1 or s.shape[0] != t.dims[-1]:
                out.append(_violation(n.name, "weight-dq", f"weight scale must have one value per output channel ({t.dims[-1]})"))
            elif not (np.isfinite(s).all() and (s > 0).all()):
                out.append(_violation(n.name, "weight-dq", "weight scales must be finite and > 0"))
            if not bs and attr(n, "axis", 1) != 1:
                out.append(_violation(n.name, "weight-dq", "per-channel axis must be 1 for a [K, N] MatMul weight"))
            if len(n.input) > 2 and n.input[2]:
                zp = arr(n.input[2])
                if zp is None or np.any(zp != 0):
                    out.append(_violation(n.name, "weight-dq", "weight zero-point must be 0"))
        elif n.op_type == "MatMul":
            dq = [producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input]
            if act_quant and any(dq) and not all(dq):
                out.append(_violation(n.name, "matmul-both", "only one MatMul input is dequantized"))
            if any(n.name.endswith(f"/{lin}") for lin in LINEARS) and not (all(dq) if act_quant else dq[-1]):
                out.append(_violation(n.name, "linear-quant",
                                      "linear layer is not quantized in a quantized graph" if act_quant else
                                      "linear layer's weight is not quantized in a weight-only graph"))
            elif not act_quant and dq[0]:
                out.append(_violation(n.name, "linear-quant", "a weight-only graph dequantizes a MatMul's activation "
                                                              "input"))
        elif hadamard_out_scale(n):
            s = np.float32(hadamard_out_scale(n))
            for c in consumers.get(n.output[0], []):
                if c.op_type != "DequantizeLinear":
                    out.append(_violation(n.name, "hadamard-out", f"int8 output feeds {c.op_type} '{c.name}', expected "
                                                                  "DequantizeLinear"))
                    continue
                sa = arr(c.input[1])
                zp = arr(c.input[2]) if len(c.input) > 2 and c.input[2] else None
                if sa is None or sa.size != 1 or sa.astype(np.float32).ravel()[0] != s:
                    out.append(_violation(c.name, "hadamard-out", f"DequantizeLinear scale differs from its Hadamard's "
                                                                  f"out_scale ({float(s):g})"))
                if zp is None or zp.dtype != np.int8 or np.any(zp != 0):
                    out.append(_violation(c.name, "hadamard-out", "zero-point must be an int8 constant 0 (symmetric)"))
        elif n.op_type == ss.PLUGIN_NAME and act_quant:
            scales = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            for idx, label, attr_name in ((0, "u", "u_scale"), (1, "delta", "delta_scale"), (3, "Bm", "B_scale"),
                                          (4, "Cm", "C_scale")):
                p = producer.get(n.input[idx])
                if p is None or p.op_type not in ("DequantizeLinear", "QuantizeLinear"):
                    out.append(_violation(n.name, "scan-inputs", f"scan input {label} is not quantized"))
                elif p.op_type == "QuantizeLinear":  # fused int8 input: the plugin needs the same scale
                    qs = arr(p.input[1])
                    if attr_name not in scales or qs is None or not np.isclose(scales[attr_name], float(qs.ravel()[0])):
                        out.append(_violation(n.name, "scan-inputs",
                                              f"int8 input {label} needs attribute {attr_name} equal to its Q scale"))
    return out


def lint_file(path: str | Path) -> list[dict]:
    from .outdir import read_onnx

    p = Path(path)
    model = read_onnx(p, weights=False)  # scales are read one by one
    try:
        return lint_model(model, base_dir=str(p.parent))
    except onnx.checker.ValidationError as e:  # external data missing or unreadable
        raise UserError(f"{p}: {e}") from None
