"""graph/follow.py: one Q/DQ graph taking another's side on rounding-boundary cases, and only there."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mq_deploy.backends.ort import OrtRunner
from mq_deploy.graph.follow import (ENGINE_FOLLOW_STEPS, compare_following, follow_name, follower, fp16_stand_in,
                                    fused_code_differences, quantized_tensors, quantizer_params, roundings_taken,
                                    validation_marks)
from mq_deploy.graph.fuse_scan_quant import float_twin, fuse_hadamard_quant, fuse_scan_quant, hadamard_out_scale
from mq_deploy.graph.lower import lower_selective_scan
from mq_deploy.graph.mamba_lm import build_lm_graph
from mq_deploy.model import MambaConfig, random_model
from mq_deploy.quantize import prepare
from mq_deploy.recipes import load_recipe

from .helpers import IR_VERSION


def _qdq_graph(scale: float) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [scale]), helper.make_tensor("z", TensorProto.INT8, [], [0])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="p/Q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="p/DQ")]
    return helper.make_model(helper.make_graph(nodes, "qdq", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)


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


def test_follower_takes_rounded_values_half_a_step_further():
    """A tensor in `codes` is fed values already rounded (a validation engine's dequantized codes of a fused Hadamard):
    taken where x lies within the window of the boundary next to them, i.e. within window + 1/2 step of them."""
    g = _qdq_graph(0.5)
    f = follower(g, steps=ENGINE_FOLLOW_STEPS, codes={"x"})
    x = np.array([0.2499, 0.1500, 0.7400, 0.8500], np.float32)  # steps 0.4998, 0.3, 1.48, 1.7: codes 0, 0, 1, 2
    other = np.full(4, 0.5, np.float32)  # code 1: 0.5002, 0.7, 0.52, 0.7 steps away
    y = OrtRunner(f).run({"x": x, follow_name("x"): other})["y"]
    np.testing.assert_array_equal(y, [0.5, 0.0, 0.5, 1.0])  # taken; 0.2 step short of the boundary: not taken;
    # the same code; 0.2 step past the boundary beyond: not taken
    assert roundings_taken(g, {"x": x}, {"x": other}, ENGINE_FOLLOW_STEPS, codes={"x"}) == 1
    assert roundings_taken(g, {"x": x}, {"x": other}, ENGINE_FOLLOW_STEPS) == 0  # as floats: all beyond 0.1 step


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


def test_fp16_stand_in_of_fused_hadamards_marks_their_codes_and_float_twins(flavours):
    """With each Hadamard's QuantizeLinear fused (the TensorRT flavour as compiled), the stand-in gives what a validation
    engine marks: the fused Hadamard's tensor is its kernel's int8 codes dequantized (rounded from its fp32 value, on
    the grid, within the int8 range) and `float_twin` of it the fp16 value; its quantizers stay the model's, and the
    codes differ from the twin's only within a tenth of a step of a boundary."""
    plugin = fuse_hadamard_quant(flavours[0])
    fused = {n.name: hadamard_out_scale(n) for n in plugin.graph.node if hadamard_out_scale(n)}
    assert len(fused) == 4
    stand_in = fp16_stand_in(plugin)
    assert quantized_tensors(stand_in) == quantized_tensors(plugin)
    marks = validation_marks(plugin)
    assert marks == quantized_tensors(plugin) + [float_twin(t) for t in sorted(fused)]
    feeds = {"input_ids": np.random.default_rng(5).integers(0, 257, size=(2, 33))}
    b = OrtRunner(stand_in, extra_outputs=marks).run(feeds)
    for t, s in fused.items():
        codes = b[t].astype(np.float64) / np.float32(s)
        k = np.rint(codes)
        assert np.abs(codes - k).max() < 1e-4 and -128 <= k.min() <= k.max() <= 127
        assert len(np.unique(k)) > 20  # not all zero or saturated
        twin = b[float_twin(t)]
        assert np.array_equal(twin, twin.astype(np.float16).astype(np.float32))  # fp16 values
        assert np.abs(np.clip(twin / np.float32(s), -128, 127) - codes).max() <= 0.55  # the twin's, rounded (fp16)...
    diff = fused_code_differences(plugin, {t: b[t] for t in fused}, {t: b[float_twin(t)] for t in fused})
    assert list(diff) == [t for t in quantizer_params(plugin) if t in fused]
    assert all(v[0] == 0 and v[2] == 0 for v in diff.values())  # ... but near a boundary, where fp16 moved them
    assert any(v[1] == 1 for v in diff.values())
    # one code 3 steps off, where the twin lies nearest a rounding boundary (so not "firm"): counted all the same,
    # and validate's verdict fails on it though its share is tiny (mutants: the "more than one code anywhere" clause
    # dropped from either)
    from mq_deploy.validate import FUSED_CODES_TOL, _fused

    t, s = next(iter(fused.items()))
    twin, codes = b[float_twin(t)], b[t].copy()
    v = twin / np.float32(s)
    i = np.unravel_index(np.argmax(np.abs(v - np.rint(v)) * (np.abs(v) < 100)), v.shape)
    assert np.abs(v[i] - np.rint(v[i])) > 0.45  # (a value at a boundary)
    codes[i] += np.float32(3 * s) * (1 if codes[i] < 0 else -1)
    bad = fused_code_differences(plugin, {**{k: b[k] for k in fused}, t: codes},
                                 {k: b[float_twin(k)] for k in fused})
    assert bad[t][2] >= 1 and bad[t][1] >= 3 and bad[t][0] < FUSED_CODES_TOL
    assert _fused(bad)["ok"] is False and _fused(diff)["ok"] is True


def test_code_adds_the_zero_point_and_saturates_in_its_type():
    """_code is QuantizeLinear's integer: rint(v / s) + zero point, clipped to the zero point's type (int8 or uint8;
    mutant: the zero point subtracted, which zero point 0, what compile writes, cannot show)."""
    from mq_deploy.graph.follow import _code

    v = np.array([0.26, -0.26, 10.0, -20.0], np.float32)
    assert _code(v, np.float32(0.1), np.int8(3)).tolist() == [6, 0, 103, -128]
    assert _code(v, np.float32(0.1), np.uint8(128)).tolist() == [131, 125, 228, 0]
    assert _code(v, np.float32(0.1), np.int8(0)).tolist() == [3, -3, 100, -128]
