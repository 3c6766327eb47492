"""A small ONNX graph builder: scoped, readable names and numpy initializers.

Node and tensor names carry the layer scope (`layers.3/in_proj/MatMul`), and weights are named as
in the checkpoint (`layers.3.in_proj.weight`), so passes, the lint step and error messages can
refer to them.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class GraphBuilder:
    def __init__(self, name: str):
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._scope: list[str] = []
        self._used: set[str] = set()

    # -- naming -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def scope(self, name: str):
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def fresh(self, base: str) -> str:
        name = "/".join(self._scope + [base])
        if name not in self._used:
            self._used.add(name)
            return name
        i = 1
        while f"{name}_{i}" in self._used:
            i += 1
        self._used.add(f"{name}_{i}")
        return f"{name}_{i}"

    # -- values -------------------------------------------------------------------------------
    def input(self, name: str, elem_type: int, shape: Sequence) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        self._used.add(name)
        return name

    def output(self, value: str, elem_type: int = TensorProto.FLOAT, shape: Optional[Sequence] = None) -> None:
        self.outputs.append(helper.make_tensor_value_info(value, elem_type, None if shape is None else list(shape)))

    def const(self, name: str, array: np.ndarray) -> str:
        """Add an initializer under the exact `name` (weights) and return it."""
        if name in self._used:
            raise ValueError(f"duplicate tensor name {name}")
        self._used.add(name)
        return self._init(name, array)

    def _init(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def scalar(self, base: str, value, dtype=np.float32) -> str:
        return self._init(self.fresh(base), np.asarray(value, dtype=dtype))

    def ints(self, base: str, values: Iterable[int]) -> str:
        return self._init(self.fresh(base), np.asarray(list(values), dtype=np.int64))

    # -- nodes --------------------------------------------------------------------------------
    def op(self, op_type: str, inputs: Sequence[str], *, name: Optional[str] = None, n_out: int = 1,
           out_names: Optional[Sequence[str]] = None, domain: str = "", **attrs):
        node_name = self.fresh(name or op_type)
        if out_names is None:
            out_names = [node_name if n_out == 1 else f"{node_name}:{i}" for i in range(n_out)]
            for o in out_names:
                self._used.add(o)
        node = helper.make_node(op_type, list(inputs), list(out_names), name=node_name, domain=domain or None, **attrs)
        self.nodes.append(node)
        return out_names[0] if len(out_names) == 1 else tuple(out_names)

    # -- assembly -----------------------------------------------------------------------------
    def graph(self) -> onnx.GraphProto:
        return helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)

    def model(self, extra_opsets: Sequence[tuple[str, int]] = (), producer: str = "mq-deploy") -> onnx.ModelProto:
        opsets = [helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
        m = onnx.ModelProto(ir_version=8, producer_name=producer)
        m.opset_import.extend(opsets)
        g = m.graph
        g.name = self.name
        g.node.extend(self.nodes)
        g.input.extend(self.inputs)
        g.output.extend(self.outputs)
        # move the weights in one at a time (each builder copy is dropped once appended): one copy of the
        # weights at the peak instead of three (make_graph and make_model each copy everything)
        inits, self.initializers = self.initializers[::-1], []
        while inits:
            g.initializer.append(inits.pop())
        return m
