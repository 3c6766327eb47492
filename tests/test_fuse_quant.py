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
from mq_deploy.graph.builder import OPSET
from mq_deploy.errors import UserError
from mq_deploy.graph.follow import follow_name, follower, fused_code_differences, quantized_tensors, quantizer_params
from mq_deploy.graph.fuse_scan_quant import (dequantize_hadamard_codes, float_twin, fuse_hadamard_quant,
                                              fuse_scan_quant, unfuse_for_cpu, unfuse_hadamard_quant)
from mq_deploy.ops.ort_kernels import PLUGIN_DOMAIN
from mq_deploy.loaders import BUNDLED_DIR
from mq_deploy.ops.plugin_fields import FIELDS, fields_of, node_attrs

from .conftest import needs_fashion_mnist
from .helpers import IR_VERSION, compile_small_w8

N = 48  # 12·2^2


def _graph(zero_point=np.int8(0), h_name="h") -> onnx.ModelProto:
    """x → Mul → Hadamard (node `h_name`, output "h") → QuantizeLinear (0.05) → DequantizeLinear → y, and beside it
    x → Hadamard "g" → QuantizeLinear (zero point `zero_point`) → DequantizeLinear → z, g also a graph output."""
    inits = [numpy_helper.from_array(np.asarray(1.5, np.float32), "c"),
             numpy_helper.from_array(np.asarray(0.05, np.float32), "s"),
             numpy_helper.from_array(np.asarray(0, np.int8), "zp"),
             numpy_helper.from_array(np.asarray(0.05, np.float32), "s_g"),
             numpy_helper.from_array(np.asarray(zero_point), "zp_g")]
    had = dict(domain=PLUGIN_DOMAIN, **node_attrs("Hadamard", n=N, out_scale=0.0))
    nodes = [helper.make_node("Mul", ["x", "c"], ["xc"], name="mul"),
             helper.make_node("Hadamard", ["xc"], ["h"], name=h_name, **had),
             helper.make_node("QuantizeLinear", ["h", "s", "zp"], ["h/q"], name="h/Q"),
             helper.make_node("DequantizeLinear", ["h/q", "s", "zp"], ["y"], name="h/DQ"),
             helper.make_node("Hadamard", ["x"], ["g"], name="g", **had),
             helper.make_node("QuantizeLinear", ["g", "s_g", "zp_g"], ["g/q"], name="g/Q"),
             helper.make_node("DequantizeLinear", ["g/q", "s_g", "zp_g"], ["z"], name="g/DQ")]
    io = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", "L", N])  # noqa: E731
    g = helper.make_graph(nodes, "t", [io("x")], [io("y"), io("z"), io("g")], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(PLUGIN_DOMAIN, 1)],
                             ir_version=IR_VERSION)


def _run(m, x, plugins):
    return OrtRunner(m, plugins=plugins, extra_outputs=["h"]).run({"x": x})


def _by_name(m):
    return {n.name: n for n in m.graph.node}


def _g_fused(m) -> bool:
    """Whether fuse_hadamard_quant fuses the Hadamard "g" of `m` (the graph output g dropped first)."""
    m.graph.output.pop()
    f = fuse_hadamard_quant(m)
    assert fields_of(_by_name(f)["h"])["out_scale"] > 0  # the other one always
    return fields_of(_by_name(f)["g"])["out_scale"] > 0


def test_fuses_the_single_int8_quantizer_and_unfuses_to_the_same_function():
    m = _graph(h_name="hadamard_node")  # a node name other than its output's: fusion renames it to "h"
    f = fuse_hadamard_quant(m)
    by = _by_name(f)
    h = by["h"]
    assert fields_of(h)["out_scale"] == pytest.approx(0.05) and list(h.output) == ["h/q"]
    assert "h/Q" not in by and list(by["h/DQ"].input)[0] == "h/q"
    # "g": its output is a graph output as well, so its QuantizeLinear stays
    assert fields_of(by["g"])["out_scale"] == 0.0 and "g/Q" in by
    assert len(f.graph.node) == len(m.graph.node) - 1 and m.graph.node[1].output[0] == "h"  # the input is untouched
    assert {t.name for t in f.graph.initializer} == {t.name for t in m.graph.initializer}  # the DQ still reads s, zp
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
    by = _by_name(u)
    assert list(by["h"].output) == ["h"] and fields_of(by["h"])["out_scale"] == 0.0
    (q,) = [n for n in u.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "h"]
    assert list(q.output) == ["h/q"]
    assert np.array_equal(_run(u, x, "native")["y"], a["y"])
    # fused and unfused again, twice: a valid graph each time, no initializer piling up
    for _ in range(2):
        u = fuse_hadamard_quant(u)
        assert len(u.graph.initializer) == len(f.graph.initializer) and len(u.graph.node) == len(f.graph.node)
        assert unfuse_hadamard_quant(u) == 1
        onnx.checker.check_model(u)


@pytest.mark.parametrize("zero_point", [np.int8(3), np.uint8(128)])
def test_leaves_asymmetric_or_unsigned_quantizers(zero_point):
    assert _g_fused(_graph()) and not _g_fused(_graph(zero_point))


def test_leaves_per_channel_zero_and_missing_parameters():
    for name, value in (("s_g", np.full(N, 0.05, np.float32)), ("s_g", np.float32(0.0)), ("s_g", np.float32(-0.05))):
        m = _graph()
        (t,) = [t for t in m.graph.initializer if t.name == name]
        t.CopyFrom(numpy_helper.from_array(np.asarray(value), name))
        assert not _g_fused(m), value
    m = _graph()
    del _by_name(m)["g/Q"].input[2]  # no zero point: ONNX's default is uint8
    assert not _g_fused(m)
    m = _graph()
    _by_name(m)["g/Q"].attribute.append(helper.make_attribute("output_dtype", int(TensorProto.INT8)))  # opset 21
    assert not _g_fused(m)


def _scan_graph(zp_u=np.int8(0), dq_scale_u=0.1, q_zero_point_u=True) -> onnx.ModelProto:
    """A SelectiveScan (float node: scales 0) whose u, delta, Bm, Cm each come through QuantizeLinear → DequantizeLinear
    (scale 0.1 / 0.2 / 0.3 / 0.4, int8 zero point 0), with u's pair varied by the arguments."""
    inits, nodes = [], []
    inputs = []
    for k, name in enumerate(("u", "delta", "Bm", "Cm")):
        s = 0.1 * (k + 1)
        inits += [numpy_helper.from_array(np.asarray(s, np.float32), f"{name}/s"),
                  numpy_helper.from_array(np.asarray(zp_u if name == "u" else np.int8(0)), f"{name}/zp"),
                  numpy_helper.from_array(np.asarray(dq_scale_u if name == "u" else s, np.float32), f"{name}/s_dq"),
                  numpy_helper.from_array(np.asarray(np.int8(0)), f"{name}/zp_dq")]
        q_in = [name, f"{name}/s", f"{name}/zp"] if name != "u" or q_zero_point_u else [name, f"{name}/s"]
        nodes += [helper.make_node("QuantizeLinear", q_in, [f"{name}/q"], name=f"{name}/Q"),
                  helper.make_node("DequantizeLinear", [f"{name}/q", f"{name}/s_dq", f"{name}/zp_dq"], [f"{name}/dq"],
                                   name=f"{name}/DQ")]
        inputs.append(f"{name}/dq")
    ins = [inputs[0], inputs[1], "A", inputs[2], inputs[3], "D", "bias"]
    nodes.append(helper.make_node("SelectiveScan", ins, ["y", "h"], name="scan", domain=PLUGIN_DOMAIN,
                                  **node_attrs("SelectiveScan")))
    vi = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    g = helper.make_graph(nodes, "t", [vi("u", ["B", "L", 8]), vi("delta", ["B", "L", 8]), vi("A", [8, 4]),
                                       vi("Bm", ["B", "L", 4]), vi("Cm", ["B", "L", 4]), vi("D", [8]), vi("bias", [8])],
                          [vi("y", ["B", "L", 8]), vi("h", ["B", 8, 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(PLUGIN_DOMAIN, 1)],
                             ir_version=IR_VERSION)


def test_scan_inputs_fuse_only_symmetric_int8_pairs_of_one_scale():
    """fuse_scan_quant hands the plugin a Q's int8 codes with the scale as its attribute only where the kernel's
    x = q·scale is what Q → DQ computes: int8 zero point 0 on both, one scale. A float node's scales are 0 (the
    plugin then offers TensorRT no int8 formats), and unfuse_for_cpu sets them back to 0."""
    scan = lambda m: _by_name(m)["scan"]  # noqa: E731
    assert [fields_of(scan(_scan_graph()))[s] for s in ("u_scale", "delta_scale", "B_scale", "C_scale")] == [0.0] * 4
    f = fuse_scan_quant(_scan_graph())
    assert list(scan(f).input[:5]) == ["u/q", "delta/q", "A", "Bm/q", "Cm/q"]
    assert not [n.name for n in f.graph.node if n.op_type == "DequantizeLinear"]  # the DQs it replaced are gone
    assert [fields_of(scan(f))[s] for s in ("u_scale", "delta_scale", "B_scale", "C_scale")] == \
        pytest.approx([0.1, 0.2, 0.3, 0.4])
    unfuse_for_cpu(f)
    assert [fields_of(scan(f))[s] for s in ("u_scale", "delta_scale", "B_scale", "C_scale")] == [0.0] * 4
    assert all(_by_name(f)[i.removesuffix("_dq") + "_DQ"].op_type == "DequantizeLinear"
               for i in scan(f).input[:5] if i != "A")
    # u's pair unlike what the kernel computes: uint8 or nonzero zero point, no zero point (uint8), another DQ scale
    for m in (_scan_graph(zp_u=np.uint8(0)), _scan_graph(zp_u=np.int8(2)), _scan_graph(q_zero_point_u=False),
              _scan_graph(dq_scale_u=0.11)):
        f = fuse_scan_quant(m)
        assert scan(f).input[0] == "u/dq" and fields_of(scan(f))["u_scale"] == 0.0
        assert scan(f).input[1] == "delta/q" and fields_of(scan(f))["delta_scale"] == pytest.approx(0.2)


def test_leaves_a_hadamard_with_a_second_reader():
    m = _graph()
    m.graph.node.append(helper.make_node("Relu", ["g"], ["g_relu"], name="reader"))
    m.graph.output.append(helper.make_tensor_value_info("g_relu", TensorProto.FLOAT, None))
    assert not _g_fused(m)
    m = _graph()
    _by_name(m)["g/Q"].input[0] = "x"  # a QuantizeLinear, but not of g (g's only reader is now the graph output)
    assert not _g_fused(m)


def test_dequantized_codes_keep_the_fusion_beside_a_float_twin():
    """What a validation engine is built from: each fused Hadamard still writes int8; a DequantizeLinear of its codes
    writes the tensor named as the node (the quantization point), which then holds exactly the value its quantizer
    rounded to, and a float twin on the same input writes `float_twin(point)`, the value before; the graph's outputs
    are unchanged; a node not named after its point, or a graph that has the twin's name, is refused."""
    f = fuse_hadamard_quant(_graph(h_name="hadamard_node"))
    d = onnx.ModelProto()
    d.CopyFrom(f)
    assert dequantize_hadamard_codes(d) == 1 and dequantize_hadamard_codes(onnx.ModelProto()) == 0
    by = _by_name(d)
    assert fields_of(by["h"])["out_scale"] == pytest.approx(0.05) and list(by["h"].output) == ["h/q"]  # still fused
    (dq,) = [n for n in d.graph.node if n.op_type == "DequantizeLinear" and list(n.output) == ["h"]]
    (twin,) = [n for n in d.graph.node if list(n.output) == [float_twin("h")]]
    assert dq.input[0] == "h/q" and twin.op_type == "Hadamard" and list(twin.input) == list(by["h"].input)
    assert fields_of(twin)["out_scale"] == 0.0 and fields_of(twin)["n"] == N
    assert len(d.graph.node) == len(f.graph.node) + 2
    assert [o.name for o in d.graph.output] == [o.name for o in f.graph.output]
    x = np.random.default_rng(1).standard_normal((2, 5, N)).astype(np.float32) * 4
    a = _run(f, x, "native")  # "h": the float output (the CPU path unfuses)
    b = OrtRunner(d, plugins="native", extra_outputs=["h", float_twin("h")]).run({"x": x})
    assert all(np.array_equal(a[k], b[k]) for k in ("y", "z", "g")) and np.array_equal(b[float_twin("h")], a["h"])
    codes = np.clip(np.rint(a["h"] / np.float32(0.05)), -128, 127)
    assert np.array_equal(b["h"], (codes * np.float32(0.05)).astype(np.float32)) and not np.array_equal(b["h"], a["h"])
    assert np.array_equal(b["h"], b["y"])  # the value out_proj's DequantizeLinear reads
    diff = fused_code_differences(f, {"h": b["h"]}, {"h": b[float_twin("h")]})
    assert diff == {"h": (0.0, 0.0, 0)}  # the twin rounded is the codes (the same fp32 value here)
    for name in ("", "xc"):  # a tool cleared the node's name, or gave it a tensor's: no point to mark, refused
        e = onnx.ModelProto()
        e.CopyFrom(f)
        e.graph.node[1].name = name
        with pytest.raises(UserError, match="a validation engine cannot be built from this graph"):
            dequantize_hadamard_codes(e)
    f.graph.node[0].output[0] = float_twin("h")  # the twin's name taken: refused, not a tensor written twice
    f.graph.node[1].input[0] = float_twin("h")
    with pytest.raises(UserError, match="already has a tensor 'h::float'"):
        dequantize_hadamard_codes(f)


def test_unfuse_names_a_taken_float_output_afresh():
    """A fused node whose name a tool changed (here to a tensor the graph has, or to nothing) still runs on the CPU
    paths: its float output gets a fresh name."""
    f = fuse_hadamard_quant(_graph())
    for name in ("x", ""):
        u = onnx.ModelProto()
        u.CopyFrom(f)
        _by_name(u)["h"].name = name
        assert unfuse_hadamard_quant(u) == 1
        (q,) = [n for n in u.graph.node if n.op_type == "QuantizeLinear" and n.output[0] == "h/q"]
        assert q.input[0] == "h/q::float"
        onnx.checker.check_model(u)


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


def test_manifest_lists_every_plugin_each_graph_needs(w8):
    """manifest.json names the plugins of each TensorRT-flavour graph, counted from the graph written: model.onnx and
    model.prefill.onnx a SelectiveScan and a Hadamard a layer, model.decode.onnx a SelectiveStateUpdate and a Hadamard
    (the stateful section lists those two graphs' again); portable graphs none."""
    man = json.loads((w8 / "manifest.json").read_text())
    # (and the recipe block is the recipe as run: compile_small_w8's --calib-samples 2 --calib-seq-len 32)
    assert {k: man["recipe"]["calibration"][k] for k in ("samples", "seq_len")} == \
        {k: man["calibration"][k] for k in ("samples", "seq_len")} == {"samples": 2, "seq_len": 32}
    layers = man["model"]["config"]["n_layer"]
    want = {"model.onnx": ["SelectiveScan", "Hadamard"], "model.prefill.onnx": ["SelectiveScan", "Hadamard"],
            "model.decode.onnx": ["SelectiveStateUpdate", "Hadamard"]}
    for name, ops in want.items():
        g = onnx.load(str(w8 / name), load_external_data=False).graph
        got = man["files"][name]["plugins"]
        assert [(p["name"], p["count"]) for p in got] == [(op, layers) for op in sorted(ops, key=list(FIELDS).index)]
        assert all(p["count"] == sum(n.op_type == p["name"] for n in g.node) for p in got), name
        assert all(p["version"] == "1" and p["namespace"] == "mq_deploy" for p in got), name
    assert man["plugins"] == man["files"]["model.onnx"]["plugins"]
    assert man["stateful"]["plugins"] == {k: man["files"][k]["plugins"] for k in ("model.prefill.onnx",
                                                                                   "model.decode.onnx")}
    assert not any("plugins" in v for k, v in man["files"].items() if "portable" in k or not k.endswith(".onnx"))


def test_compiled_graph_computes_what_the_portable_graph_does(w8):
    """onnxruntime on model.onnx (fused Hadamards, undone in memory) against model.portable.onnx (never fused: Hadamard
    as a MatMul, its QuantizeLinear as written), each QuantizeLinear of model.onnx taking the portable graph's side
    within 1/1000 of a step (graph/follow.py): the same function to fp32 rounding; and the manifest's quantization
    point (the fused node's float output) is there to be asked for on both CPU paths."""
    from mq_deploy.graph.follow import compare_following

    m = onnx.load(str(w8 / "model.onnx"))
    ids = np.random.default_rng(3).integers(0, 8192, size=(2, 11))
    r = compare_following(str(w8 / "model.portable.onnx"), m, {"input_ids": ids}, "logits")
    assert r["max_rel"] < 1e-5, r["max_rel"]
    point = "layers.0/out_hadamard"
    for plugins in ("native", "extensions"):
        got = OrtRunner(m, plugins=plugins, extra_outputs=[point]).run({"input_ids": ids})
        assert got[point].shape == (2, 11, 384) and np.isfinite(got[point]).all(), plugins


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
    set_field(had[2], "out_scale", -0.01)  # the plugin refuses it; as a float-output Hadamard it is no int8 either
    v = {(x["node"], x["rule"]) for x in lint_model(m, base_dir=str(w8))}
    assert v == {("layers.0/layers.0.out_proj.input/DQ", "hadamard-out"), ("layers.1/out_hadamard", "hadamard-out"),
                 ("layers.2/out_hadamard", "hadamard-out")}, v


@needs_fashion_mnist
def test_vim_graphs_fuse_where_the_quantizer_reads_the_hadamard(tmp_path):
    """Vision Mamba: every Hadamard of vim-quarot-w8a8 and vim-mambaquant-w8a8 writes int8. vim-mambaquant-w8a8 gives
    the class token its own scale at out_proj's input: the Mul by the [1, T, 1] constant goes in front of the Hadamard
    (it commutes with the rotation) and is undone after the MatMul, so the QuantizeLinear reads the Hadamard and is
    fused into it too; lint checks that rescale through the fused node, and the fused graph computes what the
    never-fused portable graph does."""
    from mq_deploy.compile import compile_model
    from mq_deploy.lint import lint_model
    from mq_deploy.graph.follow import compare_following
    from mq_deploy.vision.graph import INPUT, OUTPUT

    ckpt = BUNDLED_DIR.parent / "vim-fmnist"
    imgs = np.random.default_rng(3).standard_normal((2, 1, 28, 28)).astype(np.float32)
    for recipe, token_scaled in (("vim-quarot-w8a8", False), ("vim-mambaquant-w8a8", True)):
        out = tmp_path / recipe
        compile_model(str(ckpt), recipe, out, calib_samples=8, progress=False, report_passes=False)
        m = onnx.load(str(out / "model.onnx"), load_external_data=False)
        g = m.graph
        had = [n for n in g.node if n.op_type == "Hadamard"]
        producer = {o: n for n in g.node for o in n.output}
        readers = {i: n for n in g.node for i in n.input}
        assert had and all(fields_of(n)["out_scale"] > 0 for n in had), recipe
        assert not any(readers[n.output[0]].op_type == "QuantizeLinear" for n in had)
        assert all((producer[n.input[0]].name.endswith("out_proj_token_scale")) == token_scaled for n in had), recipe
        assert lint_model(m, base_dir=str(out)) == []
        if token_scaled:  # the rescale after the MatMul, bypassed: lint sees it through the fused Hadamard
            (mul,) = [n for n in g.node if n.name == "layers.0/out_proj_token_unscale"]
            for n in g.node:
                n.input[:] = [mul.input[0] if x == mul.output[0] else x for x in n.input]
            g.node.remove(mul)
            assert [(v["node"], v["rule"]) for v in lint_model(m, base_dir=str(out))] == [
                ("layers.0/out_hadamard", "token-scale")]
        # (following the portable graph's roundings on boundary cases, as validate does: where onnxruntime runs
        # the QDQ nodes in fp32 — no VNNI, or MQ_DEPLOY_ORT_INT8_FUSION=0 — two summation orders may round apart,
        # and the directly compared logits then moved by ~1 %)
        f = compare_following(out / "model.portable.onnx", onnx.load(str(out / "model.onnx")), {INPUT: imgs}, OUTPUT)
        assert f["max_rel"] <= 1e-5, (recipe, f["max_rel"], f["roundings_taken"])


@pytest.mark.parametrize("zp", [np.int8(2), np.uint8(0)])
def test_scan_fusion_checks_the_dequantizers_zero_point_too(zp):
    """A DequantizeLinear whose zero point is not an int8 0 stays (the kernel would compute q·s, not (q − zp)·s)."""
    m = _scan_graph()
    (t,) = [t for t in m.graph.initializer if t.name == "u/zp_dq"]
    t.CopyFrom(numpy_helper.from_array(np.asarray(zp), "u/zp_dq"))
    assert _by_name(fuse_scan_quant(m))["scan"].input[0] == "u/dq"


def test_lint_flags_a_fused_scan_scale_that_differs_from_its_quantizer():
    from mq_deploy.lint import lint_model
    from mq_deploy.ops.plugin_fields import set_field

    f = fuse_scan_quant(_scan_graph())
    assert lint_model(f) == []
    set_field(_by_name(f)["scan"], "u_scale", 0.15)  # its QuantizeLinear's scale is 0.1
    assert [(v["node"], v["rule"]) for v in lint_model(f)] == [("scan", "scan-inputs")]


def test_lint_flags_a_float_scan_with_int8_scales(tmp_path):
    """Rule scan-scales: a float graph's SelectiveScan carries scales 0 (what compile writes: clean); with 1.0 there,
    as OUTDIRs compiled before 2026-12-01 have, it is reported (TensorRT could give it int8 in an implicitly quantized
    build); a quantized graph's fused scans (int8 from QuantizeLinear) are not this rule's."""
    from mq_deploy.compile import compile_model
    from mq_deploy.lint import lint_model
    from mq_deploy.ops.plugin_fields import set_field

    compile_model(None, "fp32", tmp_path / "fp", progress=False, report_passes=False)
    m = onnx.load(str(tmp_path / "fp" / "model.onnx"), load_external_data=False)
    assert lint_model(m) == []
    scans = [n for n in m.graph.node if n.op_type == "SelectiveScan"]
    set_field(scans[1], "u_scale", 1.0)
    set_field(scans[1], "C_scale", 1.0)
    (v,) = lint_model(m)
    assert v["rule"] == "scan-scales" and v["node"] == scans[1].name and "u_scale, C_scale != 0" in v["message"]

