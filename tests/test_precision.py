"""graph/precision.py: the RMSNorm layers an fp16 engine keeps in fp32, found by their structure."""

import numpy as np
import onnx
from onnx import TensorProto, helper

from mq_deploy.backends.ort import OrtRunner
from mq_deploy.graph.mamba_lm import build_lm_graph
from mq_deploy.graph.precision import rms_norm_nodes
from mq_deploy.model import MambaConfig, random_model
from mq_deploy.vision.graph import build_vim_graph
from mq_deploy.vision.model import VimConfig, random_vim

from .helpers import IR_VERSION

CHAIN = ["Mul", "ReduceMean", "Add", "Sqrt", "Div"]


def _chains(nodes):
    return [nodes[i:i + 5] for i in range(0, len(nodes), 5)]


def test_every_rms_norm_of_a_language_model_and_a_vim():
    lm = build_lm_graph(random_model(MambaConfig(d_model=32, n_layer=3, vocab_size=50), seed=0))
    vim = build_vim_graph(random_vim(VimConfig(d_model=16, depth=2, num_classes=4, img_size=8, patch_size=4,
                                               channels=1), seed=0))
    for g, norms in ((lm, 3 + 1), (vim, 2 + 1)):  # one per layer and the final one
        nodes = rms_norm_nodes(g)
        assert len(nodes) == 5 * norms
        for chain in _chains(nodes):
            assert [n.op_type for n in chain] == CHAIN
            x = chain[0].input[0]
            assert chain[0].input == [x, x] and chain[-1].input[0] == x
            assert [n.input[0] for n in chain[1:4]] == [n.output[0] for n in chain[:3]] and chain[4].input[1] == \
                chain[3].output[0]


def _norm_graph(div_input: str) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]),
             helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[-1], keepdims=1),
             helper.make_node("Add", ["ms", "eps"], ["ae"]),
             helper.make_node("Sqrt", ["ae"], ["rms"]),
             helper.make_node("Div", [div_input, "rms"], ["y"]),
             helper.make_node("Neg", ["x"], ["other"])]
    eps = helper.make_tensor("eps", TensorProto.FLOAT, [], [1e-5])
    return helper.make_model(helper.make_graph(nodes, "norm", [x], [y], [eps]),
                             opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)


def test_only_a_division_of_the_same_x_is_a_norm():
    g = _norm_graph("x")
    assert [n.output[0] for n in rms_norm_nodes(g)] == ["sq", "ms", "ae", "rms", "y"]
    x = np.array([[3e3, 1.0, -2.0, 0.5], [1e-3, 2e-3, 0.0, 1e-3]], np.float32)  # squares past fp16's 65 504
    y = OrtRunner(g).run({"x": x})["y"]
    np.testing.assert_allclose(y, x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-5), rtol=1e-6)
    assert rms_norm_nodes(_norm_graph("other")) == []  # Div of another tensor by the rms: not a norm
