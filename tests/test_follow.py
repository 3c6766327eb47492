"""graph/follow.py: one Q/DQ graph taking another's side on rounding-boundary cases, and only there."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mq_deploy.backends.ort import OrtRunner
from mq_deploy.graph.follow import (ENGINE_FOLLOW_STEPS, compare_following, follow_name, follower, fp16_stand_in,
                                    quantized_tensors, roundings_taken)
from mq_deploy.graph.fuse_scan_quant import fuse_scan_quant
from mq_deploy.graph.lower import lower_selective_scan
from mq_deploy.graph.mamba_lm import build_lm_graph
from mq_deploy.model import MambaConfig, random_model
from mq_deploy.quantize import prepare
from mq_deploy.recipes import load_recipe


def _qdq_graph(scale: float) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [scale]), helper.make_tensor("z", TensorProto.INT8, [], [0])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="p/Q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="p/DQ")]
    return helper.make_model(helper.make_graph(nodes, "qdq", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", 17)])


def test_follower_takes_the_other_side_within_a_thousandth_of_a_step_only():
    g = _qdq_graph(0.5)
    f = follower(g)
    assert quantized_tensors(g) == ["x"] and [i.name for i in f.graph.input] == ["x", follow_name("x")]
    x = np.array([0.2499, 0.2499, 0.2499, 1.0], np.float32)  # 0.4998 steps: rounds to 0 on its own
    other = np.array([0.2501, 0.2510, 0.2499, 1.0004], np.float32)  # +4e-4, +2.2e-3, 0, +8e-4 steps
    y = OrtRunner(f).run({"x": x, follow_name("x"): other})["y"]
    np.testing.assert_array_equal(y, [0.5, 0.0, 0.0, 1.0])  # taken, not taken (too far), same, taken (same step)
    np.testing.assert_array_equal(OrtRunner(g).run({"x": x})["y"], [0.0, 0.0, 0.0, 1.0])


def test_follower_window_in_steps_for_an_engine():
    g = _qdq_graph(0.5)
    f = follower(g, steps=ENGINE_FOLLOW_STEPS)  # an fp16 engine: within a tenth of a step
    x = np.array([0.2499, 0.2499, 0.2499, 0.74], np.float32)
    other = np.array([0.2501, 0.2960, 0.3110, 0.76], np.float32)  # +4e-4, +0.092, +0.122, +0.04 steps
    y = OrtRunner(f).run({"x": x, follow_name("x"): other})["y"]
    np.testing.assert_array_equal(y, [0.5, 0.5, 0.0, 1.0])  # taken, taken, not taken, taken (2 steps, not 1)
    # the three taken values round otherwise than x's own; a 1/1000-step window takes only the first
    assert roundings_taken(g, {"x": x}, {"x": other}, ENGINE_FOLLOW_STEPS) == 3
    assert roundings_taken(g, {"x": x}, {"x": other}) == 1
    assert roundings_taken(g, {"x": x}, {"x": x + 1e-5}, ENGINE_FOLLOW_STEPS) == 0  # same codes: nothing taken
    with pytest.raises(ValueError, match="steps must be > 0"):
        follower(g, steps=0.0)


def test_follower_refuses_a_graph_without_quantization():
    g = _qdq_graph(0.5)
    del g.graph.node[:]
    g.graph.node.append(helper.make_node("Identity", ["x"], ["y"]))
    with pytest.raises(ValueError, match="no QuantizeLinear"):
        follower(g)


@pytest.fixture(scope="module")
def flavours():
    m = random_model(MambaConfig(d_model=96, n_layer=4, vocab_size=257), seed=3)
    windows = np.random.default_rng(0).integers(0, 257, size=(4, 40))
    m2, plan, _ = prepare(m, load_recipe("mambaquant-w8a8"), windows, progress=False)
    g = build_lm_graph(m2, plan)
    return fuse_scan_quant(g), lower_selective_scan(g)


def test_flavours_agree_to_fp32_rounding_following_each_other_and_a_scale_error_shows(flavours):
    plugin, portable = flavours
    feeds = {"input_ids": np.random.default_rng(5).integers(0, 257, size=(2, 33))}
    assert compare_following(portable, plugin, feeds, "logits")["max_rel"] < 1e-6
    assert compare_following(plugin, portable, feeds, "logits")["max_rel"] < 1e-6
    bad = onnx.ModelProto()
    bad.CopyFrom(plugin)
    scan = [n for n in bad.graph.node if n.op_type == "SelectiveScan"][2]
    (attr,) = [a for a in scan.attribute if a.name == "C_scale"]
    attr.f *= 1.003
    assert compare_following(portable, bad, feeds, "logits")["max_rel"] > 1e-3


def test_fp16_stand_in_keeps_the_names_and_moves_values_by_fp16_rounding(flavours):
    plugin, _ = flavours
    stand_in = fp16_stand_in(plugin)
    casts = [n for n in stand_in.graph.node if n.op_type == "Cast" and n.output[0] not in
             {o for m in plugin.graph.node for o in m.output}]
    assert len(casts) > 100  # every float tensor but the RMSNorm layers gets an fp16 round trip
    tensors = quantized_tensors(plugin)
    assert quantized_tensors(stand_in) == tensors
    feeds = {"input_ids": np.random.default_rng(5).integers(0, 257, size=(2, 33))}
    a = OrtRunner(plugin, extra_outputs=tensors).run(feeds)
    b = OrtRunner(stand_in, extra_outputs=tensors).run(feeds)
    first = next(n.input[0] for n in plugin.graph.node if n.op_type == "QuantizeLinear")  # the first point:
    # before any quantization the two differ by fp16 rounding only (a few roundings: norm, scale)
    d = np.abs(a[first] - b[first]) / np.abs(a[first]).max()
    assert 0 < d.max() < 2e-3
    for t in tensors:
        assert b[t].shape == a[t].shape
