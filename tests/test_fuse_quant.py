"""The TensorRT flavour's Hadamard → QuantizeLinear fusion (graph/fuse_scan_quant.py, fuse_hadamard_quant): the Hadamard
plugin writes the int8 codes itself (out_scale), every CPU path and graph/follow.py see the QuantizeLinear again, and
compiled quantized graphs carry it on every Hadamard."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mq_deploy.backends.ort import OrtRunner
from mq_deploy.errors import UserError
from mq_deploy.graph.builder import OPSET
from mq_deploy.graph.follow import follow_name, follower, quantized_tensors, quantizer_params
from mq_deploy.graph.fuse_scan_quant import fuse_hadamard_quant, unfuse_hadamard_quant
from mq_deploy.ops.ort_kernels import PLUGIN_DOMAIN
from mq_deploy.ops.plugin_fields import fields_of, node_attrs

from .helpers import compile_small_w8

N = 48  # 12·2^2


def _graph(zero_point=np.int8(0)) -> onnx.ModelProto:
    """x → Mul → Hadamard "h" → QuantizeLinear (0.05) → DequantizeLinear → y, and beside it x → Hadamard "g", whose
    output is both quantized (with `zero_point`) and a graph output (never fused)."""
    inits = [numpy_helper.from_array(np.asarray(1.5, np.float32), "c"),
             numpy_helper.from_array(np.asarray(0.05, np.float32), "s"),
             numpy_helper.from_array(np.asarray(0, np.int8), "zp"),
             numpy_helper.from_array(np.asarray(zero_point), "zp_g")]
    had = dict(domain=PLUGIN_DOMAIN, **node_attrs("Hadamard", n=N, out_scale=0.0))
    nodes = [helper.make_node("Mul", ["x", "c"], ["xc"], name="mul"),
             helper.make_node("Hadamard", ["xc"], ["h"], name="h", **had),
             helper.make_node("QuantizeLinear", ["h", "s", "zp"], ["h/q"], name="h/Q"),
             helper.make_node("DequantizeLinear", ["h/q", "s", "zp"], ["y"], name="h/DQ"),
             helper.make_node("Hadamard", ["x"], ["g"], name="g", **had),
             helper.make_node("QuantizeLinear", ["g", "s", "zp_g"], ["g/q"], name="g/Q"),
             helper.make_node("DequantizeLinear", ["g/q", "s", "zp_g"], ["z"], name="g/DQ")]
    io = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", "L", N])  # noqa: E731
    g = helper.make_graph(nodes, "t", [io("x")], [io("y"), io("z"), io("g")], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(PLUGIN_DOMAIN, 1)])


def _run(m, x, plugins):
    return OrtRunner(m, plugins=plugins, extra_outputs=["h"]).run({"x": x})


def test_fuses_the_single_int8_quantizer_and_unfuses_to_the_same_function():
    m = _graph()
    f = fuse_hadamard_quant(m)
    by = {n.name: n for n in f.graph.node}
    h = by["h"]
    assert fields_of(h)["out_scale"] == pytest.approx(0.05) and list(h.output) == ["h/q"]
    assert "h/Q" not in by and list(by["h/DQ"].input)[0] == "h/q"
    # "g": its output is a graph output as well, so its QuantizeLinear stays
    assert fields_of(by["g"])["out_scale"] == 0.0 and "g/Q" in by
    assert len(f.graph.node) == len(m.graph.node) - 1 and m.graph.node[1].output[0] == "h"  # the input is untouched
    # what graph/follow.py sees: the same quantizers, the fused one on its float output
    assert quantized_tensors(f) == quantized_tensors(m) == ["g", "h"]
    assert {k: (pytest.approx(s), z) for k, (s, z) in quantizer_params(f).items()} == \
        {k: (pytest.approx(s), z) for k, (s, z) in quantizer_params(m).items()}
    fol = follower(f, ["h"])
    assert follow_name("h") in {i.name for i in fol.graph.input}
    x = np.random.default_rng(0).standard_normal((2, 3, N)).astype(np.float32) * 4
    for plugins in ("native", "extensions"):  # the CPU paths put the QuantizeLinear back: bit for bit the same
        a, b = _run(m, x, plugins), _run(f, x, plugins)
        assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a), plugins
    codes = np.clip(np.rint(a["h"].astype(np.float64) / np.float32(0.05)), -128, 127)
    assert np.array_equal(a["y"], (codes * np.float32(0.05)).astype(np.float32))
    assert codes.max() == 127 and codes.min() == -128  # the case covers saturation
    u = onnx.ModelProto()
    u.CopyFrom(f)
    assert unfuse_hadamard_quant(u) == 1 and unfuse_hadamard_quant(u) == 0
    by = {n.name: n for n in u.graph.node}
    assert list(by["h"].output) == ["h"] and fields_of(by["h"])["out_scale"] == 0.0
    (q,) = [n for n in u.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "h"]
    assert list(q.output) == ["h/q"]
    assert np.array_equal(_run(u, x, "native")["y"], a["y"])


@pytest.mark.parametrize("zero_point", [np.int8(3), np.uint8(128)])
def test_leaves_asymmetric_or_unsigned_quantizers(zero_point):
    m = _graph(zero_point)
    inits = list(m.graph.initializer)
    m.graph.output.pop()  # "g" is no graph output any more: only its zero point keeps it unfused
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits)
    f = fuse_hadamard_quant(m)
    by = {n.name: n for n in f.graph.node}
    assert fields_of(by["h"])["out_scale"] > 0 and fields_of(by["g"])["out_scale"] == 0.0 and "g/Q" in by


def test_leaves_per_channel_and_shared_outputs():
    m = _graph()
    m.graph.output.pop()
    m.graph.node.append(helper.make_node("Relu", ["g"], ["g_relu"], name="reader"))  # a second reader of g
    m.graph.output.append(helper.make_tensor_value_info("g_relu", TensorProto.FLOAT, None))
    s = [t for t in m.graph.initializer if t.name == "s"][0]
    s.CopyFrom(numpy_helper.from_array(np.full(N, 0.05, np.float32), "s"))  # per-channel: h is left alone too
    f = fuse_hadamard_quant(m)
    assert all(fields_of(n)["out_scale"] == 0.0 for n in f.graph.node if n.op_type == "Hadamard")
    assert sum(n.op_type == "QuantizeLinear" for n in f.graph.node) == 2


def test_unfuse_refuses_a_name_the_graph_already_has():
    f = fuse_hadamard_quant(_graph())
    f.graph.node.append(helper.make_node("Identity", ["x"], ["h"], name="clash"))
    with pytest.raises(UserError, match="already has"):
        unfuse_hadamard_quant(f)


@pytest.fixture(scope="module")
def w8(tmp_path_factory):
    return compile_small_w8(tmp_path_factory.mktemp("fuseq"))


def test_compiled_quantized_graphs_fuse_every_hadamard(w8):
    """model.onnx, model.prefill.onnx and model.decode.onnx (the TensorRT flavour): each layer's Hadamard writes int8
    with out_proj's input scale and is read by that DequantizeLinear alone; the portable graphs have no plugin node;
    the manifest's quantization point for out_proj's input is the fused node's float output."""
    man = json.loads((w8 / "manifest.json").read_text())
    q = man["quantization"]
    layers = man["model"]["config"]["n_layer"]
    for name in ("model.onnx", "model.prefill.onnx", "model.decode.onnx"):
        g = onnx.load(str(w8 / name), load_external_data=False).graph
        readers = {}
        for n in g.node:
            for i in n.input:
                readers.setdefault(i, []).append(n)
        had = [n for n in g.node if n.op_type == "Hadamard"]
        assert len(had) == layers, name
        for k, n in enumerate(had):
            point = f"layers.{k}.out_proj.input"
            assert fields_of(n)["out_scale"] == pytest.approx(q["act_scales"][point], rel=1e-6), (name, n.name)
            assert n.name == q["points"][point], (name, n.name)
            assert [r.op_type for r in readers[n.output[0]]] == ["DequantizeLinear"], (name, n.name)
        assert not any(n.op_type == "QuantizeLinear" and n.input[0] in {h.name for h in had} for n in g.node)
    for name in ("model.portable.onnx", "model.decode.portable.onnx"):
        g = onnx.load(str(w8 / name), load_external_data=False).graph
        assert not any(n.domain == PLUGIN_DOMAIN for n in g.node), name


def test_compiled_graph_runs_as_its_unfused_form(w8):
    """onnxruntime on model.onnx equals onnxruntime on the same graph with the fusion undone, bit for bit on each CPU
    path, and gives the manifest's quantization point (the fused node's float output) as an extra output."""
    m = onnx.load(str(w8 / "model.onnx"))
    u = onnx.ModelProto()
    u.CopyFrom(m)
    assert unfuse_hadamard_quant(u) == len([n for n in m.graph.node if n.op_type == "Hadamard"]) > 0
    ids = np.random.default_rng(3).integers(0, 8192, size=(2, 11))
    point = "layers.0/out_hadamard"
    for plugins in ("native", "extensions"):  # (their Hadamard kernels sum in different orders)
        ref = OrtRunner(u, plugins=plugins, extra_outputs=[point]).run({"input_ids": ids})
        got = OrtRunner(m, plugins=plugins, extra_outputs=[point]).run({"input_ids": ids})
        assert np.array_equal(got["logits"], ref["logits"]) and np.array_equal(got[point], ref[point]), plugins


def test_lint_checks_the_fused_hadamard_against_its_dequantizer(w8):
    """`mq-deploy lint` (rule hadamard-out): clean as compiled; an out_scale that is not its DequantizeLinear's scale,
    or a reader that is not a DequantizeLinear, is reported on the node."""
    from mq_deploy.lint import lint_model
    from mq_deploy.ops.plugin_fields import set_field

    m = onnx.load(str(w8 / "model.onnx"), load_external_data=False)
    assert lint_model(m, base_dir=str(w8)) == []
    had = [n for n in m.graph.node if n.op_type == "Hadamard"]
    set_field(had[0], "out_scale", fields_of(had[0])["out_scale"] * 1.01)
    m.graph.node.append(helper.make_node("Cast", [had[1].output[0]], ["codes_f"], to=TensorProto.FLOAT, name="reader"))
    v = {(x["node"], x["rule"]) for x in lint_model(m, base_dir=str(w8))}
    assert v == {("layers.0/layers.0.out_proj.input/DQ", "hadamard-out"), ("layers.1/out_hadamard", "hadamard-out")}, v
