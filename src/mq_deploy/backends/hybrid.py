"""Run a plugin-node graph with onnxruntime for the standard ops and the package's CPU kernels for the
plugin nodes, called directly between onnxruntime segments.

onnxruntime-extensions' Python-op bridge copies every output through a Python list (~0.1 s per
6M-element tensor), which made a calibration of a 130m-shape model spend more time marshalling than
scanning. Here the graph is cut at its plugin nodes: each run of standard nodes becomes one
onnxruntime session (with just the initializers it reads), and the plugin nodes run on numpy arrays
(`ops/native.py` for SelectiveScan). Tensors are dropped after their last use.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import UserError
from ..ops import hadamard_op
from ..ops import selective_scan as ss
from ..ops import state_update as su
from ..ops.ort_kernels import PLUGIN_DOMAIN, check_cpu_node


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _scan(node, ins):
    from ..ops.native import selective_scan_fast

    return selective_scan_fast(*ins, delta_softplus=bool(_attrs(node).get("delta_softplus", 1)))


def _state_update(node, ins):
    return su.selective_state_update(*ins, bool(_attrs(node).get("dt_softplus", 1)))


def _hadamard(node, ins):
    from ..ops.native import hadamard_fast

    return (hadamard_fast(ins[0]),)


KERNELS: dict[str, Callable] = {ss.PLUGIN_NAME: _scan, su.PLUGIN_NAME: _state_update,
                                hadamard_op.PLUGIN_NAME: _hadamard}


def has_subgraphs(model: onnx.ModelProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for n in model.graph.node for a in n.attribute)


class HybridSession:
    """`HybridSession(model, outputs).run(feeds) -> {name: array}` for a graph with plugin nodes."""

    def __init__(self, model: onnx.ModelProto, make_session: Callable[[onnx.ModelProto], object],
                 outputs: Optional[Sequence[str]] = None, weights_dir=None):
        """`weights_dir`: where `model`'s external initializers are (the segments keep them external: the sessions
        map the file)."""
        from ..graph.fuse_scan_quant import unfuse_for_cpu

        # a copy of everything but the initializers (the weights are read from `model`, not copied)
        m = onnx.ModelProto(ir_version=model.ir_version)
        m.opset_import.extend(model.opset_import)
        g = m.graph
        g.name = model.graph.name
        g.node.extend(model.graph.node)
        g.input.extend(model.graph.input)
        g.output.extend(model.graph.output)
        unfuse_for_cpu(m)  # int8 plugin inputs get their DequantizeLinear back (+ small scale initializers)
        self.outputs = list(outputs) if outputs is not None else [o.name for o in g.output]
        self.input_names = [i.name for i in g.input]
        inits = {t.name: t for t in model.graph.initializer}
        inits.update({t.name: t for t in g.initializer})
        plugin_consts: dict[str, np.ndarray] = {}
        dtypes = {i.name: i.type.tensor_type.elem_type for i in g.input}
        # nodes computed from initializers alone (a tied head's Transpose, conv taps): copied into every
        # segment that reads them, where onnxruntime folds them once, instead of being computed in an early
        # segment and handed along as tensors on every run (a 50k-vocabulary head: 77 MB per decode step)
        const_producer: dict[str, onnx.NodeProto] = {}
        for node in g.node:
            if node.domain != PLUGIN_DOMAIN and all(not i or i in inits or i in const_producer for i in node.input):
                for o in node.output:
                    const_producer[o] = node
        plugin_reads = {i for n in g.node if n.domain == PLUGIN_DOMAIN for i in n.input}
        for o in list(const_producer):  # a plugin reading one keeps the old placement (none of ours do)
            if o in plugin_reads:
                del const_producer[o]
        const_nodes = {id(n) for n in const_producer.values()}

        def with_consts(nodes: list) -> list:
            # a constant node asked for as an output sits in its own step already: not copied in again
            need, order = {id(n) for n in nodes}, {id(n): k for k, n in enumerate(g.node)}
            present = set(need)
            todo = [i for n in nodes for i in n.input if i in const_producer]
            while todo:
                c = const_producer[todo.pop()]
                if id(c) not in need:
                    need.add(id(c))
                    todo += [i for i in c.input if i in const_producer]
            need -= present
            extra = sorted((n for n in {id(c): c for c in const_producer.values()}.values() if id(n) in need),
                           key=lambda n: order[id(n)])
            return extra + nodes

        # cut into steps: ("ort", nodes) runs of standard nodes, ("plugin", node)
        steps: list = []
        for node in g.node:
            if id(node) in const_nodes and not any(o in self.outputs for o in node.output):
                continue
            if node.domain == PLUGIN_DOMAIN:
                check_cpu_node(node)
                steps.append(("plugin", node))
            elif steps and steps[-1][0] == "ort":
                steps[-1][1].append(node)
            else:
                steps.append(("ort", [node]))
        steps = [(kind, with_consts(x) if kind == "ort" else x) for kind, x in steps]
        # backwards: keep only the steps whose results something downstream (or the caller) reads
        def step_reads(nodes: list) -> set:
            """What a step reads from outside: not what its own nodes (its copies of the constant nodes
            included) compute."""
            internal = {o for n in nodes for o in n.output}
            return {i for n in nodes for i in n.input if i and i not in internal}

        needed, kept = set(self.outputs), []
        for kind, x in reversed(steps):
            nodes = x if kind == "ort" else [x]
            if any(o in needed for n in nodes for o in n.output):
                kept.append((kind, x))
                needed.update(step_reads(nodes))
        steps = kept[::-1]
        # last step that reads each tensor (graph outputs live to the end)
        last_use: dict[str, int] = {}
        for k, (kind, x) in enumerate(steps):
            for i in step_reads(x if kind == "ort" else [x]):
                last_use[i] = k
        for o in self.outputs:
            last_use[o] = len(steps)
        self.steps = []
        for k, (kind, x) in enumerate(steps):
            if kind == "plugin":
                for i in x.input:
                    if i in inits and i not in plugin_consts:
                        plugin_consts[i] = numpy_helper.to_array(inits[i], base_dir=str(weights_dir or ""))
                for o in x.output:
                    dtypes[o] = onnx.TensorProto.FLOAT
                self.steps.append((k, "plugin", x, list(x.input), list(x.output)))
                continue
            internal = {o for n in x for o in n.output}
            reads = []
            for n in x:
                for i in n.input:
                    if i and i not in internal and i not in inits and i not in reads:
                        reads.append(i)
            outs = [o for o in dict.fromkeys(o for n in x for o in n.output)
                    if o and last_use.get(o, -1) > k]
            if not outs:  # nothing downstream reads it (e.g. the head when only extra outputs are asked for)
                continue
            used_inits = [inits[i] for i in dict.fromkeys(i for n in x for i in n.input) if i in inits]
            sub = helper.make_graph(
                x, f"{g.name}_part{k}",
                [helper.make_tensor_value_info(i, dtypes.get(i, onnx.TensorProto.FLOAT), None) for i in reads],
                [helper.make_value_info(o, onnx.TypeProto()) for o in outs],
                initializer=used_inits)
            sm = helper.make_model(sub, opset_imports=[o for o in m.opset_import if o.domain != PLUGIN_DOMAIN],
                                   ir_version=m.ir_version)
            sess = make_session(sm)
            for meta in sess.get_outputs():
                dtypes[meta.name] = _ORT_TYPES.get(meta.type, onnx.TensorProto.FLOAT)
            self.steps.append((k, "ort", sess, reads, outs))  # k: index for free_after (skipped parts leave gaps)
        self.plugin_consts = plugin_consts
        self.free_after = {}
        for name, k in last_use.items():
            if k < len(steps):
                self.free_after.setdefault(k, []).append(name)

    def run(self, feeds: dict) -> dict[str, np.ndarray]:
        env = dict(feeds)
        for k, kind, x, reads, outs in self.steps:
            if kind == "ort":
                vals = x.run(outs, {i: env[i] for i in reads})
            else:
                vals = KERNELS[x.op_type](x, [env[i] if i in env else self.plugin_consts.get(i) for i in reads])
            env.update(zip(outs, vals))
            for name in self.free_after.get(k, ()):
                if name not in self.outputs:
                    env.pop(name, None)
        missing = [o for o in self.outputs if o not in env]
        if missing:
            raise UserError(f"outputs not produced by the graph: {missing[:5]}")
        return {o: env[o] for o in self.outputs}


_ORT_TYPES = {"tensor(float)": onnx.TensorProto.FLOAT, "tensor(int64)": onnx.TensorProto.INT64,
              "tensor(int8)": onnx.TensorProto.INT8, "tensor(int32)": onnx.TensorProto.INT32,
              "tensor(float16)": onnx.TensorProto.FLOAT16, "tensor(bool)": onnx.TensorProto.BOOL,
              "tensor(uint8)": onnx.TensorProto.UINT8}
