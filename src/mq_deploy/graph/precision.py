"""The layers an engine with fp16 float layers (`mq-deploy build --fp16`) must keep in fp32.

RMSNorm (`mamba_lm.rms_norm`: Mul(x, x) → ReduceMean → Add eps → Sqrt → Div(x, ·)) squares the residual
stream, and on trained models the squares leave fp16's range (65 504) long before the residual does. On
mamba-ref-29m W8A8 with WikiText-2 text (4×256 tokens) 9 of 11 norms do, x² reaching 3.2e6 (|x| ≈ 1 790) in
the final norm; the bundled model stays at 2.4e3 (benchmarks/norm_squares.py). In fp16 those squares and their mean are inf, and the
token's normalized values 0 or NaN. So `trt.build_engine` keeps the five layers of every RMSNorm in fp32,
compute and outputs, when FP16 is allowed; the fp16 stand-in engine (graph.follow.fp16_stand_in) does the same.
The residual itself (|x| ≤ 65 504) and everything after the Div stay free to run in fp16.
"""

from __future__ import annotations

import onnx

_CHAIN = ("ReduceMean", "Add", "Sqrt", "Div")  # after the Mul(x, x), each the single consumer of the one before


def rms_norm_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes of every RMSNorm in `model`'s top-level graph, five per norm, in graph order."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    found = []
    for n in model.graph.node:
        if n.op_type != "Mul" or len(n.input) != 2 or n.input[0] != n.input[1]:
            continue
        chain, last = [n], n
        for op in _CHAIN:
            nxt = [c for c in consumers.get(last.output[0], []) if c.op_type == op]
            if len(nxt) != 1 or len(consumers[last.output[0]]) != 1:
                break
            chain.append(last := nxt[0])
        if len(chain) == 5 and chain[-1].input[0] == n.input[0]:  # Div(x, rms) of the same x
            found += chain
    return found
