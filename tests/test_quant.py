"""Quantization math, Hadamard matrices, recipes, QDQ emission vs the fake-quant simulation, lint."""

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from mq_deploy.backends import ort as ort_backend
from mq_deploy.backends.ort import INT8_FUSION_ENV, OrtRunner, _session_options, int8_fusion_exact
from mq_deploy.compile import simulation_check
from mq_deploy.errors import UserError
from mq_deploy.graph.lower import lower_selective_scan
from mq_deploy.graph.mamba_lm import build_lm_graph
from mq_deploy.lint import lint_model
from mq_deploy.model import MambaConfig, random_model
from mq_deploy.quant import simulate
from mq_deploy.quant.gptq import gptq_quantize
from mq_deploy.quant.hadamard import (base_matrix, hadamard_matrix, hadamard_transform, hadamard_transform_fp32,
                                      is_supported)
from mq_deploy.quant.qparams import (act_scale, expand_scales, fake_quant, quantize, quantize_weight, sqnr_db,
                                     weight_scales)
from mq_deploy.quantize import prepare
from mq_deploy.recipes import _parse, available_recipes, load_recipe

from .helpers import is_fp16_valued, rel_err


@pytest.mark.parametrize("n", [1, 2, 12, 20, 24, 28, 36, 40, 44, 48, 60, 96, 192, 384, 768, 1536, 2560, 5120, 112])
def test_hadamard_orthonormal_and_fast_transform(n):
    H = hadamard_matrix(n)
    assert np.abs(H @ H.T - np.eye(n)).max() < 1e-12
    assert np.allclose(np.abs(H) * np.sqrt(n), 1.0)
    x = np.random.default_rng(n).standard_normal((3, n))
    assert np.abs(hadamard_transform(x) - x @ H).max() < 1e-10
    # the fp32 CPU kernels of the Hadamard plugin (numpy butterflies; native C), rows of any count
    from mq_deploy.ops.native import hadamard_fast, library

    assert library() is not None
    x32 = np.random.default_rng(n + 1).standard_normal((2, 5, n)).astype(np.float32)
    ref = x32.astype(np.float64) @ H
    for fn in (hadamard_transform_fp32, hadamard_fast):
        y = fn(x32)
        assert y.dtype == np.float32 and y.shape == x32.shape
        assert np.abs(y - ref).max() <= 2e-6 * np.abs(ref).max(), fn.__name__


def test_hadamard_bases_and_unsupported_sizes():
    for m in (12, 20, 28, 36, 44, 60):
        B = base_matrix(m).astype(np.int64)
        assert (B @ B.T == m * np.eye(m)).all()
    assert not is_supported(6) and not is_supported(10) and is_supported(3 * 64)
    with pytest.raises(UserError):
        hadamard_matrix(6)


def test_quantize_rounds_half_to_even_and_saturates():
    x = np.array([0.5, 1.5, 2.5, -0.5, 200.0, -200.0], np.float32)
    assert quantize(x, 1.0, 8).tolist() == [0.0, 2.0, 2.0, -0.0, 127.0, -128.0]
    assert quantize(np.array([9.0]), 1.0, 4).tolist() == [7.0]


def test_weight_quantization_per_output_channel():
    w = np.random.default_rng(0).standard_normal((50, 7)).astype(np.float32) * np.arange(1, 8)
    q, s = quantize_weight(w, 8)
    assert q.shape == w.shape and s.shape == (7,)
    assert np.abs(q).max() == 127
    assert sqnr_db(w, q * s) > 40
    q4, s4 = quantize_weight(w, 4)
    assert np.abs(q4).max() <= 8 and sqnr_db(w, q4 * s4) > 15


def test_act_scale_methods():
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal(100_000)).astype(np.float32)
    x[:3] = 1000.0  # rare outliers
    amax = float(x.max())
    s_max = act_scale(x, amax, 8, "max")
    s_pct = act_scale(x, amax, 8, "percentile", 99.9)
    s_mse = act_scale(x, amax, 8, "mse")
    assert s_max == pytest.approx(1000.0 / 127)
    assert s_pct < s_max / 100
    assert s_mse == pytest.approx(s_max)  # 3 outliers of 1000 dominate the squared error: no clipping pays
    t = np.abs(rng.laplace(size=100_000)).astype(np.float32)
    t[:2] = 40.0  # far outliers in a Laplace bulk: clipping them pays at 8 bits
    s_t = act_scale(t, float(t.max()), 8, "mse")
    err = lambda s: np.mean((fake_quant(t, s, 8) - t) ** 2)  # noqa: E731
    grid = min(err(c / 127) for c in np.linspace(0.5, 40, 400))
    assert err(s_t) <= 1.05 * grid  # the search finds (nearly) the best clip
    assert err(s_t) < err(40.0 / 127)
    s_ent = act_scale(t, float(t.max()), 8, "entropy")  # KL calibration clips the far outliers too
    assert np.percentile(t, 99.9) < s_ent * 127 < 40.0 / 2
    with pytest.raises(UserError):
        act_scale(x, amax, 8, "magic")


def test_int4_raw_packing_roundtrip():
    from onnx import TensorProto, helper, numpy_helper

    from mq_deploy.graph.mamba_lm import pack_int4

    for shape in ((7, 5), (4, 6), (1, 1)):
        q = np.random.default_rng(sum(shape)).integers(-8, 8, size=shape).astype(np.int8)
        t = helper.make_tensor("w", TensorProto.INT4, q.shape, pack_int4(q), raw=True)
        assert len(t.raw_data) == (q.size + 1) // 2
        assert np.array_equal(numpy_helper.to_array(t).astype(np.int8), q)


def test_block_weight_quantization():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((256, 40)) * np.repeat(np.geomspace(0.01, 3.0, 4), 64)[:, None]  # row groups of scale
    q1, s1 = quantize_weight(w, 4)
    qb, sb = quantize_weight(w, 4, block=64)
    assert s1.shape == (40,) and sb.shape == (4, 40) and qb.dtype == np.int8 and np.abs(qb).max() <= 8
    deq = lambda q, s: q * expand_scales(s, 256)  # noqa: E731
    err1, errb = np.abs(deq(q1, s1) - w)[:64].mean(), np.abs(deq(qb, sb) - w)[:64].mean()
    assert errb < 0.25 * err1  # the small-magnitude rows get their own scale
    with pytest.raises(ValueError, match="does not divide"):
        quantize_weight(w, 4, block=48)
    X = rng.standard_normal((512, 256)) @ (np.eye(256) + 0.2 * rng.standard_normal((256, 256)))
    H = X.T @ X / len(X)
    qg, sg = gptq_quantize(w, H, 4, block=64)
    assert sg.shape == (4, 40) and np.abs(qg).max() <= 8
    out_err = lambda q, s: np.mean((X @ (q * expand_scales(s, 256)) - X @ w) ** 2)  # noqa: E731
    assert out_err(qg, sg) < out_err(qb, sb)  # GPTQ with static groups beats RTN with the same groups


def test_gptq_beats_rtn_on_correlated_inputs():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((4000, 64)) @ rng.standard_normal((64, 64))  # correlated input channels
    w = rng.standard_normal((64, 48)).astype(np.float32)
    H = X.T @ X / len(X)
    q_g, s_g = gptq_quantize(w, H, 4, clip_search=False)
    q_r, s_r = quantize_weight(w, 4)
    out = lambda q, s: X @ (q * s)  # noqa: E731
    assert np.mean((out(q_g, s_g) - X @ w) ** 2) < 0.7 * np.mean((out(q_r, s_r) - X @ w) ** 2)


def test_every_recipe_loads():
    names = available_recipes()
    for n in ["fp32", "fp16", "rtn-w8a8", "smoothquant-w8a8", "gptq-w8a8", "quarot-w8a8", "mambaquant-w8a8",
              "rtn-w4a8", "smoothquant-w4a8", "gptq-w4a8", "quarot-w4a8", "mambaquant-w4a8", "rtn-w4a16", "gptq-w4a16",
              "quarot-w4a16", "mambaquant-w4a16"]:
        assert n in names
        r = load_recipe(n)
        assert r.name == n


def test_bad_recipes(tmp_path):
    cases = {
        "precision: int3\nname: x\n": "precision",
        "name: x\nprecision: w8a8\nweights: {bits: 8, method: magic}\n": "weights.method",
        "name: x\nprecision: w8a8\npasses: [{name: nope}]\n": "unknown pass",
        "name: x\nprecision: w8a8\npasses: [{name: smooth_gate, beta: 1}]\n": "unknown parameters",
        "name: x\nprecision: w8a8\nweights: {bits: 4}\n": "weights.bits",
        "name: x\nprecision: w8a8\nweights: {bits: 8, block_size: 64}\n": "block_size",
        "name: x\nprecision: w4a8\nweights: {bits: 4, block_size: 33}\n": "block_size",
        "name: x\nprecision: w4a8\nweights: {bits: 4, method: rtn, act_order: true}\n": "act_order applies to method gptq",
        "name: x\nprecision: fp32\nextra: 1\n": "unknown keys",
        "name: x\nprecision: w4a16\nweights: {bits: 4}\nactivations: {bits: 8}\n": "quantizes weights only",
        "name: x\nprecision: w4a16\nweights: {bits: 8}\n": "precision w4a16 but weights.bits is 8",
    }
    for text, msg in cases.items():
        p = tmp_path / "r.yaml"
        p.write_text(text)
        with pytest.raises(UserError, match=msg):
            load_recipe(str(p))


@pytest.fixture(scope="module")
def tiny():
    m = random_model(MambaConfig(d_model=96, n_layer=2, vocab_size=211), seed=4)
    rng = np.random.default_rng(2)
    return m, rng.integers(0, 211, size=(6, 40)), rng.integers(0, 211, size=(3, 29))


ABLATION = Path(__file__).resolve().parent.parent / "benchmarks" / "ablation"


def test_int8_fusion_only_where_the_cpu_computes_it_exactly(monkeypatch):
    monkeypatch.delenv(INT8_FUSION_ENV, raising=False)
    assert int8_fusion_exact("x86_64", {"avx2", "fma", "avx512f"}) is False  # VPMADDUBSW saturates: QDQ runs as written
    assert int8_fusion_exact("x86_64", {"avx2", "avx512_vnni"}, probe=False) is True
    assert int8_fusion_exact("AMD64", {"avx2", "avx_vnni"}, probe=False) is True
    monkeypatch.setattr(ort_backend, "_fusion_probe", lambda: False)  # an onnxruntime whose fused kernel is wrong
    assert int8_fusion_exact("x86_64", {"avx2", "avx512_vnni"}) is False
    monkeypatch.setattr(ort_backend, "_fusion_probe", lambda: True)
    assert int8_fusion_exact("x86_64", {"avx2", "avx512_vnni"}) is True
    assert int8_fusion_exact("aarch64", {"asimddp"}) is False  # not checked there: exact path
    assert int8_fusion_exact("x86_64", set()) is False  # flags unknown
    monkeypatch.setenv(INT8_FUSION_ENV, "1")
    assert int8_fusion_exact("x86_64", {"avx2"}) is True
    assert _session_options(None, False).get_session_config_entry("session.qdq_matmulnbits_accuracy_level") == "0"
    with pytest.raises(RuntimeError):  # fusion allowed: the entry is not set
        _session_options(None, False).get_session_config_entry("session.disable_quant_qdq")
    monkeypatch.setenv(INT8_FUSION_ENV, "0")
    assert int8_fusion_exact("x86_64", {"avx512_vnni"}) is False
    assert _session_options(None, False).get_session_config_entry("session.disable_quant_qdq") == "1"


def test_the_fusion_probe_finds_a_fused_kernel_that_computes_other_numbers(monkeypatch, tmp_path):
    """_fusion_probe runs its QDQ MatMuls with and without onnxruntime's int8 fusion: onnxruntime 1.23.2 on an AMX CPU
    returned garbage for 24 output columns, and an AVX2-only CPU saturates; a fused result off by more than fp32
    rounding turns the fusion off."""
    import onnxruntime as ort

    # the probe's graph is what onnxruntime fuses (both kernels the compiled graphs get), else it would prove nothing
    model, feed = ort_backend._probe_model()
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "probe.onnx")
    ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    kinds = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    assert kinds.count("MatMulIntegerToFloat") == 24 and kinds.count("QLinearMatMul") == 12, sorted(set(kinds))
    made = []

    class Session(ort.InferenceSession):
        def __init__(self, model, so, **kw):
            super().__init__(model, so, **kw)
            self.fused = so.get_session_config_entry("session.disable_quant_qdq") == "0"
            made.append(self.fused)

        def run(self, names, feed):
            out = super().run(names, feed)
            if self.fused:  # one output a little off: a wrong kernel for one shape
                out[5] = out[5] * np.float32(1 + 1e-4)
            return out

    monkeypatch.setattr(ort, "InferenceSession", Session)
    ort_backend._fusion_probe.cache_clear()
    try:
        assert ort_backend._fusion_probe() is False and made == [True, False]
    finally:
        ort_backend._fusion_probe.cache_clear()


def test_qdq_graph_matches_simulation_with_int8_fusion_off(tiny, monkeypatch):
    # the path every CPU without VNNI takes, checked on every CPU (the test below takes this machine's path)
    monkeypatch.setenv(INT8_FUSION_ENV, "0")
    m, windows, ids = tiny
    m2, plan, _ = prepare(m, load_recipe("mambaquant-w8a8"), windows, progress=False)
    graph, points = build_lm_graph(m2, plan, with_points=True)
    outs = OrtRunner(graph, extra_outputs=sorted(set(points.values()))).run({"input_ids": ids})
    sim = simulate.forward(m2, plan, ids, follow={pt: outs[name] for pt, name in points.items()})
    assert rel_err(outs["logits"], sim) < 1e-5


@pytest.mark.parametrize("recipe", ["rtn-w8a8", "smoothquant-w8a8", "gptq-w4a8", "quarot-w8a8", "mambaquant-w8a8",
                                    "mambaquant-w4a8", "rtn-w4a8-b64", "mambaquant-w4a8-b64",
                                    str(ABLATION / "mq-w4a8-noshift.yaml"), str(ABLATION / "mq-w8a8-tied.yaml"),
                                    "rtn-w4a16", "gptq-w4a16", "quarot-w4a16", "mambaquant-w4a16",
                                    str(ABLATION / "mq-w4a16-noh.yaml")])
def test_qdq_graphs_match_fake_quant_simulation(tiny, recipe):
    m, windows, ids = tiny
    m2, plan, _ = prepare(m, load_recipe(recipe), windows, progress=False)
    graph, points = build_lm_graph(m2, plan, with_points=True)
    fp = simulate.forward(m, plan.__class__.plain(2), ids)
    assert rel_err(fp, simulate.forward(m2, plan, ids)) > 1e-4  # quantization really happened
    for g in (graph, lower_selective_scan(graph)):
        onnx.checker.check_model(g)
        outs = OrtRunner(g, extra_outputs=sorted(set(points.values()))).run({"input_ids": ids})
        # identical arithmetic except float summation order; boundary roundings follow the graph
        sim = simulate.forward(m2, plan, ids, follow={pt: outs[name] for pt, name in points.items()})
        assert rel_err(outs["logits"], sim) < 1e-5, recipe
    assert lint_model(graph) == [] and lint_model(lower_selective_scan(graph)) == []
    if load_recipe(recipe).weights["block_size"]:  # d 96: x_proj / out_proj (K 192) INT4 blocked, the rest int8
        blocked = {n.name.split("/")[1] for n in graph.graph.node if n.op_type == "DequantizeLinear"
                   and any(a.name == "block_size" and a.i == 64 for a in n.attribute)}
        assert blocked == {f"layers.{i}.{lin}" for i in range(2) for lin in ("x_proj", "out_proj")}
        qw, sc = plan.quant.weights["layers.0.x_proj"]
        assert qw.shape[0] == 192 and sc.shape == (3, qw.shape[1])
        # per-channel INT4 is what TensorRT refuses: in_proj (K 96) and dt_proj (K = dt_rank 6) are int8 per channel
        assert plan.quant.int8_weights == {f"layers.{i}.{lin}" for i in range(2) for lin in ("in_proj", "dt_proj")}
        dtypes = {t.name: t.data_type for t in graph.graph.initializer}
        for name, (qw, sc) in plan.quant.weights.items():
            int8 = name in plan.quant.int8_weights
            assert dtypes[f"{name}.weight_q"] == (onnx.TensorProto.INT8 if int8 else onnx.TensorProto.INT4), name
            assert (np.abs(qw).max() > 8) == int8 and sc.ndim == (1 if int8 else 2), name
    n_q = sum(n.op_type == "QuantizeLinear" for n in graph.graph.node)
    n_w = sum(n.op_type == "DequantizeLinear" and n.input[0].endswith("weight_q") for n in graph.graph.node)
    n_dq = sum(n.op_type == "DequantizeLinear" for n in graph.graph.node)
    if load_recipe(recipe).act_quantized:
        assert n_w == 4 * 2 and n_q >= 6 * 2
    else:  # weight-only: the weights' DequantizeLinear nodes and nothing else
        assert n_w == n_dq == 4 * 2 and n_q == 0 and plan.quant.act_scales == {} and plan.quant.act_bits is None


def test_simulation_check_deep_model_and_real_mismatches():
    """16 layers: without following the graph's boundary roundings, one early flip grows into a
    difference of quantization's own size (2.5e-2 here); following them, only real mismatches show."""
    m = random_model(MambaConfig(d_model=128, n_layer=16, vocab_size=211), seed=0)
    m2, plan, _ = prepare(m, load_recipe("mambaquant-w8a8"), np.random.default_rng(0).integers(0, 211, (6, 40)),
                          progress=False)
    g, points = build_lm_graph(m2, plan, with_points=True)
    ok = simulation_check(m2, plan, lower_selective_scan(g), 211, points)
    assert ok["max_rel_error_portable_vs_simulation"] < 1e-5 and ok["max_rel_quantization_effect"] > 1e-2, ok
    # a graph built with one scale 3% off, or one weight channel's scale 3% off, must fail the check
    bad_act = copy.deepcopy(plan)
    bad_act.quant.act_scales["layers.9.scan.delta"] *= 1.03
    bad_w = copy.deepcopy(plan)
    qw, sc = bad_w.quant.weights["layers.3.out_proj"]
    sc = sc.copy()
    sc[5] *= 1.03
    bad_w.quant.weights["layers.3.out_proj"] = (qw, sc)
    for bad in (bad_act, bad_w):
        gb, pb = build_lm_graph(m2, bad, with_points=True)
        r = simulation_check(m2, plan, lower_selective_scan(gb), 211, pb)
        assert r["max_rel_error_portable_vs_simulation"] > 1e-3, r


def test_lint_reports_violations_by_node(tiny):
    m, windows, ids = tiny
    m2, plan, _ = prepare(m, load_recipe("rtn-w8a8"), windows, progress=False)
    g = build_lm_graph(m2, plan)
    # break it: bypass the weight DequantizeLinear of layer 0's out_proj and zero a scale
    for n in g.graph.node:
        if n.name == "layers.0/out_proj":
            n.input[1] = "embedding.weight"
    for t in g.graph.initializer:
        if t.name.endswith("layers.1.in_proj.input.scale"):
            t.CopyFrom(onnx.numpy_helper.from_array(np.array(-1.0, np.float32), t.name))
    v = lint_model(g)
    rules = {(x["node"], x["rule"]) for x in v}
    assert ("layers.0/out_proj", "matmul-both") in rules
    assert ("layers.0/out_proj", "linear-quant") in rules
    assert any(r == "act-qdq" and "layers.1.in_proj.input" in node for node, r in rules)


def test_lint_flags_zero_activation_and_weight_scales():
    """Scales must be > 0: zero is as wrong as negative (act-qdq, weight-dq)."""
    from onnx import TensorProto, helper, numpy_helper

    from mq_deploy.graph.builder import OPSET

    from .helpers import IR_VERSION

    def graph(act_scale, w_scale):
        inits = [numpy_helper.from_array(np.asarray(act_scale, np.float32), "s"),
                 numpy_helper.from_array(np.asarray(0, np.int8), "zp"),
                 numpy_helper.from_array(np.ones((4, 3), np.int8), "w_q"),
                 numpy_helper.from_array(np.asarray(w_scale, np.float32), "w_s")]
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="x/Q"),
                 helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="x/DQ"),
                 helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w"], name="w/DQ", axis=1),
                 helper.make_node("MatMul", ["xd", "w"], ["y"], name="layers.0/out_proj")]
        g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)

    assert lint_model(graph(0.1, [0.1, 0.2, 0.3])) == []
    assert [(v["node"], v["rule"]) for v in lint_model(graph(0.0, [0.1, 0.2, 0.3]))] == [("x/Q", "act-qdq")]
    assert [(v["node"], v["rule"]) for v in lint_model(graph(0.1, [0.1, 0.0, 0.3]))] == [("w/DQ", "weight-dq")]


def test_int4_note_names_per_channel_int4_only_where_there_is_some(tiny):
    """The note TensorRT's INT4 rules get: a per-channel W4A8 graph is told a block-only TensorRT refuses it, a
    blocked one (its unblockable linears int8) is not; W8A8 gets no note."""
    from mq_deploy.trt import int4_note

    m, windows, ids = tiny
    notes = {}
    for r in ("rtn-w4a8", "rtn-w4a8-b64", "rtn-w8a8"):
        m2, plan, _ = prepare(m, load_recipe(r), windows, progress=False)
        notes[r] = int4_note(build_lm_graph(m2, plan))
    assert notes["rtn-w4a8"].startswith("8 MatMul weights are INT4 (8 per channel) with int8 inputs")
    assert "refuses per-channel INT4 fails the build" in notes["rtn-w4a8"]
    assert notes["rtn-w4a8-b64"].startswith("4 MatMul weights are INT4 (4 in blocks of 64) with int8 inputs")
    assert "per-channel" not in notes["rtn-w4a8-b64"] and notes["rtn-w8a8"] is None


def test_weight_only_recipes_read_no_data_unless_gptq_or_a_pass_needs_it(tiny):
    """rtn-w4a16 compiles without calibration text and quantizes the weights exactly as the blocked RTN W4A8 recipe
    does (same quantizer, no activation scales); GPTQ and the KLT rotations still calibrate."""
    from mq_deploy.compile import calibrates

    m, windows, ids = tiny
    assert not calibrates(load_recipe("rtn-w4a16")) and not calibrates(load_recipe("quarot-w4a16"))
    assert calibrates(load_recipe("gptq-w4a16")) and calibrates(load_recipe("mambaquant-w4a16"))
    assert calibrates(load_recipe("rtn-w8a8")) and not load_recipe("rtn-w4a16").act_quantized
    m16, plan16, runs = prepare(m, load_recipe("rtn-w4a16"), None, progress=False)
    assert runs == [] and plan16.quant.act_scales == {} and plan16.quant.act_bits is None
    _, plan8, _ = prepare(m, load_recipe("rtn-w4a8-b64"), windows, progress=False)
    assert plan16.quant.weights.keys() == plan8.quant.weights.keys()
    assert plan16.quant.int8_weights == plan8.quant.int8_weights
    for name, (qw, sc) in plan16.quant.weights.items():
        np.testing.assert_array_equal(qw, plan8.quant.weights[name][0])
        np.testing.assert_array_equal(sc, plan8.quant.weights[name][1])
    _, _, runs = prepare(m, load_recipe("gptq-w4a16"), windows, progress=False)
    assert len(runs) == 1 and runs[0].meta["stage"] == "transformed"  # GPTQ's Hessians, no activation scales


def test_weight_only_rtn_reads_no_calibration_even_when_given_windows(tiny):
    """An RTN w4a16 prepare handed windows (as a compile with a KLT pass loads them) still calibrates nothing (mutant:
    calibrating whenever windows are passed)."""
    m, windows, ids = tiny
    _, plan, runs = prepare(m, load_recipe("rtn-w4a16"), windows, progress=False)
    assert runs == [] and plan.quant.act_scales == {} and plan.quant.act_bits is None


def test_calibrates_ignores_gptq_weights_of_a_float_recipe():
    """An fp32 / fp16 recipe that names GPTQ weights quantizes nothing and demands no calibration text (mutant:
    calibrates() reading weights.method without `recipe.quantized`)."""
    from mq_deploy.compile import calibrates

    for prec in ("fp32", "fp16"):
        r = _parse({"name": "x", "precision": prec, "weights": {"method": "gptq"}}, "t")
        assert not r.quantized and not calibrates(r)
    assert calibrates(_parse({"name": "x", "precision": "w4a16", "weights": {"bits": 4, "method": "gptq"}}, "t"))


def test_int4_note_of_a_per_channel_weight_only_graph(tiny, tmp_path):
    """A w4a16 recipe file with per-channel INT4 (block_size 0) keeps the warning that a TensorRT refusing per-channel
    INT4 fails the build (mutant: the weight-only note without it)."""
    from mq_deploy.trt import build_notes

    m, windows, ids = tiny
    p = tmp_path / "w16-pc.yaml"
    p.write_text("name: w16-pc\nprecision: w4a16\nweights: {bits: 4, method: rtn}\npasses: []\n")
    m2, plan, _ = prepare(m, load_recipe(str(p)), None, progress=False)
    (note,) = build_notes(build_lm_graph(m2, plan))
    assert note.startswith("8 MatMul weights are INT4 (8 per channel) with float inputs (weight-only, a W4A16 recipe)")
    assert "refuses per-channel INT4 fails the build" in note


def test_report_of_a_weight_only_recipe_says_no_activation_is_quantized(tiny):
    """report.html of gptq-w4a16: the activation statistics are shown for what the passes did, not called quantized
    activations, and its SQNR table has the 8 weights and no activation row (rtn-w8a8's has both)."""
    from mq_deploy.report import build_report

    m, windows, ids = tiny
    rows = {}
    for r in ("gptq-w4a16", "rtn-w8a8"):
        m2, plan, runs = prepare(m, load_recipe(r), windows, progress=False)
        text = build_report(m2, plan, None, runs[-1], r)
        rows[r] = (text.count(".weight</td><td>int"), text.count("</td><td>activation</td>"))
        assert ("a weight-only recipe quantizes none of them" in text) == (r == "gptq-w4a16")
        assert ("every quantized activation" in text) == (r == "rtn-w8a8")
    assert rows == {"gptq-w4a16": (8, 0), "rtn-w8a8": (8, 16)}


def test_int4_note_of_a_weight_only_graph(tiny):
    """A W4A16 graph is told to build with --fp16 (TensorRT's INT4 GEMMs take fp16 activations), not that its int8
    inputs are quantized around floating-point MatMuls."""
    from mq_deploy.trt import build_notes

    m, windows, ids = tiny
    m2, plan, _ = prepare(m, load_recipe("rtn-w4a16"), None, progress=False)
    (note,) = build_notes(build_lm_graph(m2, plan))
    assert note.startswith("4 MatMul weights are INT4 (4 in blocks of 64) with float inputs (weight-only, a W4A16 "
                           "recipe)")
    assert "build with --fp16 (TensorRT 10)" in note and "int8 inputs" not in note and "per-channel" not in note


def test_lint_weight_only_graphs(tiny):
    """A weight-only graph (no QuantizeLinear) is linted for its weights, not passed as a float graph: a zero weight
    scale, a linear left in float and an activation dequantized into a linear are each found."""
    from onnx import numpy_helper

    m, windows, ids = tiny
    m2, plan, _ = prepare(m, load_recipe("rtn-w4a16"), None, progress=False)
    g = build_lm_graph(m2, plan)
    assert lint_model(g) == [] and lint_model(lower_selective_scan(g)) == []

    def mutated(edit):
        h = copy.deepcopy(g)
        edit(h.graph)
        return [(v["node"], v["rule"], v["message"]) for v in lint_model(h)]

    def zero_scale(gr):
        t = next(t for t in gr.initializer if t.name == "layers.0.dt_proj.weight_scale")
        a = numpy_helper.to_array(t).copy()
        a[1] = 0
        t.CopyFrom(numpy_helper.from_array(a, t.name))
    assert mutated(zero_scale) == [("layers.0/layers.0.dt_proj/weight_DQ", "weight-dq",
                                    "weight scales must be finite and > 0")]

    def float_linear(gr):  # x_proj reads the codes' float twin directly: no DequantizeLinear in front of it
        mm = next(n for n in gr.node if n.name == "layers.1/x_proj")
        w = next(t for t in gr.initializer if t.name == "layers.1.x_proj.weight_q")
        gr.initializer.append(numpy_helper.from_array(np.zeros(tuple(w.dims), np.float32), "w_float"))
        mm.input[1] = "w_float"
    assert mutated(float_linear) == [("layers.1/x_proj", "linear-quant",
                                      "linear layer's weight is not quantized in a weight-only graph")]

    def dq_activation(gr):  # in_proj's input dequantized from an int8 tensor: activations are float in W4A16
        mm = next(n for n in gr.node if n.name == "layers.0/in_proj")
        gr.initializer.extend([numpy_helper.from_array(np.zeros((1, 1, 96), np.int8), "act_q"),
                               numpy_helper.from_array(np.asarray(0.1, np.float32), "act_s")])
        gr.node.append(onnx.helper.make_node("DequantizeLinear", ["act_q", "act_s"], ["act_dq"], name="act/DQ"))
        mm.input[0] = "act_dq"
    assert ("layers.0/in_proj", "linear-quant", "a weight-only graph dequantizes a MatMul's activation input") in \
        mutated(dq_activation)

    def both(gr):  # the weight float and the activation dequantized: reported for its weight (mutant: any(dq))
        dq_activation(gr)
        float_linear(gr)
        mm = next(n for n in gr.node if n.name == "layers.0/in_proj")
        mm.input[1] = "w_float0"
        w = next(t for t in gr.initializer if t.name == "layers.0.in_proj.weight_q")
        gr.initializer.append(numpy_helper.from_array(np.zeros(tuple(w.dims), np.float32), "w_float0"))
    assert ("layers.0/in_proj", "linear-quant", "linear layer's weight is not quantized in a weight-only graph") in \
        mutated(both)


def test_lint_blocked_int4_weights(tiny):
    m, windows, ids = tiny
    m2, plan, _ = prepare(m, load_recipe("rtn-w4a8-b64"), windows, progress=False)
    g = build_lm_graph(m2, plan)
    assert lint_model(g) == []
    for n in g.graph.node:
        if n.name == "layers.1/layers.1.out_proj/weight_DQ":
            for a in n.attribute:
                if a.name == "block_size":
                    a.i = 48  # 192 rows / 48 ≠ the 3 scale rows
    assert [(v["node"], v["rule"]) for v in lint_model(g)] == [("layers.1/layers.1.out_proj/weight_DQ", "weight-dq")]


def test_calib_artifact_keeps_per_channel_statistics_not_covariances(tmp_path):
    """calib.npz holds absmax, per-channel max and variance and the |x| sample of each point; not XᵀX (a GPTQ recipe's
    are GBs for a large model, and nothing reads them back)."""
    from mq_deploy.calibrate import Stats

    x = np.random.default_rng(0).normal(size=(50, 6)) * np.arange(1, 7)
    st = Stats(absmax={"p": float(np.abs(x).max())}, chan={"p": np.abs(x).max(0)}, sample={"p": np.abs(x[:5, 0])},
               second={"p": x.T @ x / len(x)}, chan_sum={"p": x.sum(0)}, chan_sumsq={"p": (x ** 2).sum(0)},
               count={"p": len(x)}, meta={"stage": "test"})
    files = st.save(tmp_path)
    z = np.load(files[0])
    assert sorted(z.files) == ["p/absmax", "p/chan", "p/sample", "p/var"]
    np.testing.assert_allclose(z["p/var"], x.var(0), rtol=1e-10)
    np.testing.assert_array_equal(z["p/chan"], np.abs(x).max(0))
    assert json.loads(files[1].read_text())["points"] == ["p"]


@pytest.mark.parametrize("recipe,where", [("fp16", "layers.1.out_proj"), ("rtn-w8a8", "norm_f")])
def test_a_weight_beyond_fp16_is_named(recipe, where):
    """A weight the recipe deploys in fp16 holding a value past 65504: one error naming it (it became inf, and the
    compile's self-check failed on NaN logits, an internal error)."""
    cfg = MambaConfig(d_model=48, n_layer=2, vocab_size=64)
    m = random_model(cfg, seed=2)
    if where == "norm_f":
        m.norm_f[3] = 1e5
    else:
        m.layers[1].out_proj[0, 0] = -1e5
    windows = np.random.default_rng(0).integers(0, 64, size=(2, 16))
    with pytest.raises(UserError, match=rf"weight {where} holds \|w\| = 100000, beyond fp16's range \(65504\), in "
                                        rf"which recipe {recipe} deploys it: compile with --recipe fp32"):
        prepare(m, load_recipe(recipe), windows, progress=False)
    model, _, _ = prepare(random_model(cfg, seed=2), load_recipe(recipe), windows, progress=False)  # in range: fine
    assert np.isfinite(model.norm_f).all()


# -- the quantizers against their definitions (the QDQ graph and the simulation read the same plan, so a wrong scale
#    or GPTQ result passes their comparison) -----------------------------------------------------------------------


# the recipe's percentile reaches act_scale
def test_prepare_uses_the_recipes_percentile():
    m = random_model(MambaConfig(d_model=96, n_layer=1, vocab_size=211), seed=4)
    windows = np.random.default_rng(2).integers(0, 211, size=(4, 32))
    recipe = _parse({"name": "p", "precision": "w8a8", "weights": {"bits": 8, "method": "rtn"},
                     "activations": {"bits": 8, "method": "percentile", "percentile": 90.0}}, "p")
    m2, plan, runs = prepare(m, recipe, windows, progress=False)
    st, pt = runs[-1], "layers.0.out_proj.input"
    assert plan.quant.act_scales[pt] == pytest.approx(act_scale(st.sample[pt], st.absmax[pt], 8, "percentile", 90.0))
    assert plan.quant.act_scales[pt] < 0.8 * act_scale(st.sample[pt], st.absmax[pt], 8, "percentile", 99.99)


# clip_search picks a clip below absmax when that lowers the error, and never does worse
def test_weight_clip_search_lowers_the_error():
    rng = np.random.default_rng(3)
    w = rng.laplace(size=(512, 16)).astype(np.float32)
    w[0] = 30.0 * np.sign(w[0])  # one outlier per column: clipping it pays at 4 bits
    err = lambda s: ((fake_quant(w, s, 4) - w) ** 2).sum(axis=0)  # noqa: E731
    s_max, s_clip = weight_scales(w, 4, False), weight_scales(w, 4, True)
    assert np.all(s_clip < 0.95 * s_max) and np.all(err(s_clip) <= err(s_max))
    assert err(s_clip).sum() < 0.8 * err(s_max).sum()
    ratios = np.linspace(1.0, 0.5, 11)  # the grid: the best of it per column
    best = np.min([err((np.abs(w).max(0) * r / 7).astype(np.float32)) for r in ratios], axis=0)
    np.testing.assert_allclose(err(s_clip), best, rtol=1e-6)


# an all-zero output channel gets a finite scale and zeros, not NaN → garbage int8
def test_zero_output_channel():
    w = np.random.default_rng(0).standard_normal((64, 5)).astype(np.float32)
    w[:, 2] = 0
    for clip in (False, True):
        q, s = quantize_weight(w, 8, clip)
        assert np.all(np.isfinite(s)) and np.all(s > 0) and np.all(q[:, 2] == 0)
    H = np.eye(64)
    q, s = gptq_quantize(w, H, 8)
    assert np.all(np.isfinite(s)) and np.all(q[:, 2] == 0)


def _gptq_reference(w, H, bits, damp=0.01):
    """Textbook GPTQ, one column at a time, no lazy batches (Frantar et al. alg. 1)."""
    W = np.array(w, np.float64).T.copy()
    s = weight_scales(w, bits, False).astype(np.float64)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    H = H + damp * np.mean(np.diag(H)) * np.eye(len(H))
    U = np.linalg.cholesky(np.linalg.inv(H)).T
    Q = np.zeros_like(W)
    for j in range(W.shape[1]):
        Q[:, j] = np.clip(np.rint(W[:, j] / s), lo, hi)
        e = (W[:, j] - Q[:, j] * s) / U[j, j]
        W[:, j:] -= np.outer(e, U[j, j:])
    return Q.T, s


# GPTQ over more than one lazy batch (K > 128) equals the unbatched algorithm, damping relative to mean(diag H)
def test_gptq_matches_the_unbatched_reference():
    rng = np.random.default_rng(7)
    X = (rng.standard_normal((2000, 300)) @ rng.standard_normal((300, 300))) * 5.0  # correlated, large diag(H)
    w = rng.standard_normal((300, 24)).astype(np.float32)
    H = X.T @ X / len(X)
    q, s = gptq_quantize(w, H, 4, clip_search=False)
    q_ref, s_ref = _gptq_reference(w, H, 4)
    np.testing.assert_allclose(s, s_ref, rtol=1e-6)
    assert np.mean(q == q_ref) > 0.999


# act_order: GPTQ on the input rows sorted by decreasing diag(H), the codes put back in the original order; the
# scales (per channel, or the static blocks of the original rows) are unchanged
def test_gptq_act_order_is_gptq_on_the_sorted_rows():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((3000, 200)) @ rng.standard_normal((200, 200))
    X[:, rng.choice(200, 6, replace=False)] *= 25.0  # a few outlier channels, not first
    w = rng.standard_normal((200, 16)).astype(np.float32)
    H = X.T @ X / len(X)
    order = np.argsort(-np.diag(H), kind="stable")
    assert not np.array_equal(order, np.arange(200))
    q, s = gptq_quantize(w, H, 4, clip_search=False, act_order=True)
    q_sorted, s_ref = _gptq_reference(w[order], H[np.ix_(order, order)], 4)
    np.testing.assert_allclose(s, s_ref, rtol=1e-6)
    assert np.mean(q[order] == q_sorted) > 0.999
    err = lambda q, s: np.mean((X @ (q * expand_scales(s, 200)) - X @ w) ** 2)  # noqa: E731
    q0, s0 = gptq_quantize(w, H, 4, clip_search=False)
    assert err(q, s) < 0.6 * err(q0, s0)
    # blocks: each row keeps the scale of its own (original) block of 64
    qb, sb = gptq_quantize(w[:192], H[:192, :192], 4, clip_search=False, block=64, act_order=True)
    q0b, s0b = gptq_quantize(w[:192], H[:192, :192], 4, clip_search=False, block=64)
    np.testing.assert_array_equal(sb, s0b)
    assert sb.shape == (3, 16) and np.abs(qb).max() <= 8
    Xb = X[:, :192]
    errb = lambda q, s: np.mean((Xb @ (q * expand_scales(s, 192)) - Xb @ w[:192]) ** 2)  # noqa: E731
    assert errb(qb, sb) < 0.8 * errb(q0b, s0b)


# the MSE search picks the clip of its grid whose fake-quant error is least
def test_mse_scale_is_the_grid_argmin():
    t = np.abs(np.random.default_rng(0).laplace(size=100_000)).astype(np.float32)
    t[:2] = 40.0
    amax = float(t.max())
    for bits in (8, 4):  # (at 4 bits the saturation level decides the pick)
        qmax = (1 << (bits - 1)) - 1
        errs = [np.mean((fake_quant(t, np.float32(amax * r / qmax), bits).astype(np.float64) - t) ** 2)
                for r in np.geomspace(1.0, 0.05, 48)]
        want = amax * np.geomspace(1.0, 0.05, 48)[int(np.argmin(errs))] / qmax
        assert act_scale(t, amax, bits, "mse") == pytest.approx(want, rel=1e-9), bits


# a W8A8 recipe rounds every tensor it deploys in fp16 (so the fp32 simulation is what TensorRT computes)
def test_prepare_rounds_the_fp16_deployed_tensors():
    from mq_deploy.recipes import load_recipe

    m = random_model(MambaConfig(d_model=96, n_layer=2, vocab_size=211, tie_embeddings=False), seed=4)
    windows = np.random.default_rng(2).integers(0, 211, size=(4, 32))
    m2, plan, _ = prepare(m, load_recipe("rtn-w8a8"), windows, progress=False)
    tensors = {"embedding": m2.embedding, "lm_head": m2.lm_head, "norm_f": m2.norm_f}
    for i, L in enumerate(m2.layers):
        tensors.update({f"{i}.norm": L.norm, f"{i}.conv_weight": L.conv_weight, f"{i}.conv_bias": L.conv_bias})
    assert all(v is not None for v in tensors.values())
    bad = [k for k, v in tensors.items() if not is_fp16_valued(v)]
    assert bad == []
    assert not is_fp16_valued(m.embedding) and not is_fp16_valued(m.layers[0].conv_weight)  # the random model's are not fp16 already


# the recipe's weight options reach the quantizer: each linear's codes are those of quantize_weight / gptq_quantize
# called with the recipe's clip_search / act_order / block_size on the transformed weight and (GPTQ) the Hessian of
# the calibration run (mutants: an option hard-coded in quant/linear.py; the graph tests cannot see it, since the
# graph and the simulation read the same codes)
@pytest.mark.parametrize("wcfg", [
    {"bits": 4, "method": "rtn", "clip_search": False}, {"bits": 4, "method": "rtn", "clip_search": True},
    {"bits": 4, "method": "gptq", "clip_search": False}, {"bits": 4, "method": "gptq", "clip_search": True},
    {"bits": 4, "method": "gptq", "clip_search": False, "act_order": True},
    {"bits": 4, "method": "gptq", "clip_search": True, "act_order": True, "block_size": 32},
], ids=lambda w: "-".join(f"{k}={v}" for k, v in w.items() if k != "bits"))
def test_recipe_weight_options_reach_the_quantizer(tiny, wcfg):
    m, windows, _ = tiny
    recipe = _parse({"name": "w", "precision": "w4a8", "weights": wcfg,
                     "activations": {"bits": 8, "method": "max"}}, "w")
    m2, plan, runs = prepare(m, recipe, windows, progress=False)
    block = wcfg.get("block_size", 0)
    for name in ("layers.0.in_proj", "layers.1.out_proj"):
        w = getattr(m2.layers[int(name.split(".")[1])], name.split(".")[2]).T

        def codes(clip_search, act_order):
            if wcfg["method"] == "gptq":
                return gptq_quantize(w, runs[-1].cov(f"{name}.input"), 4, clip_search=clip_search, block=block,
                                     act_order=act_order)
            return quantize_weight(w, 4, clip_search, block=block)

        opts = (wcfg["clip_search"], wcfg.get("act_order", False))
        want, got = codes(*opts), plan.quant.weights[name]
        np.testing.assert_array_equal(got[0], want[0], err_msg=name)
        np.testing.assert_array_equal(got[1], want[1], err_msg=name)
        # each option makes a difference on this weight, so the equality above tells them apart
        assert not np.array_equal(codes(not opts[0], opts[1])[0], want[0])
        if wcfg["method"] == "gptq":
            assert not np.array_equal(codes(opts[0], not opts[1])[0], want[0])


# activations.scan_inputs false: the scan's inputs (u, Δ, B, C) get no activation scale, the linears' inputs do
def test_scan_inputs_false_leaves_the_scan_inputs_unquantized(tiny):
    m, windows, _ = tiny
    scales = {}
    for on in (True, False):
        recipe = _parse({"name": "s", "precision": "w8a8", "weights": {"bits": 8, "method": "rtn"},
                         "activations": {"bits": 8, "method": "max", "scan_inputs": on}}, "s")
        scales[on] = set(prepare(m, recipe, windows, progress=False)[1].quant.act_scales)
    scan = {f"layers.{i}.scan.{k}" for i in range(2) for k in ("u", "delta", "B", "C")}
    assert scan <= scales[True]
    assert not scan & scales[False]
    assert scales[False] == scales[True] - scan and "layers.1.out_proj.input" in scales[False]
