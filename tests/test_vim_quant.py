"""Vim-only quantization: the class token with its own scale and the per-channel Δ shift (issue 6)."""

import copy
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from mq_deploy.calibrate import collect
from mq_deploy.compile import compile_model
from mq_deploy.errors import UserError
from mq_deploy.graph.lower import lower_selective_scan
from mq_deploy.lint import lint_model
from mq_deploy.ops import hadamard_op
from mq_deploy.quant.qparams import fake_quant, quantize_weight
from mq_deploy.recipes import load_recipe
from mq_deploy.vision.graph import OUTPUT, VimRunner, build_vim_graph, plain_plan
from mq_deploy.vision import data as vdata
from mq_deploy.vision.model import VimConfig, random_vim, to_state_dict
from mq_deploy.vision.passes import run_vim_passes
from mq_deploy.vision.quantize import calibrate, cls_token_index, fp32_stats, prepare_vim

CFG = VimConfig(d_model=48, depth=2, num_classes=6, img_size=12, patch_size=4, channels=3)  # 9 patches + cls at 4


@pytest.fixture(scope="module")
def setup():
    m = random_vim(CFG, seed=7)
    imgs = np.random.default_rng(1).standard_normal((16, 3, 12, 12)).astype(np.float32)
    return m, imgs, fp32_stats(m, imgs)


def _recipe(tmp_path, base: str, cls: bool = False, shift: bool = False):
    text = Path(load_recipe(base).source).read_text()
    if cls:
        text = text.replace("percentile: 99.99}", "percentile: 99.99, cls_token: separate}")
    if shift:
        text = text.replace("passes: []", "passes:").rstrip("\n") + "\n  - {name: shift_delta}\n"
    p = tmp_path / f"{base}-x.yaml"
    p.write_text(text.replace(f"name: {base}", f"name: {base}-x"))
    return load_recipe(str(p))


def test_shift_delta_preserves_logits_and_centres_delta(setup):
    m, imgs, stats = setup
    ref = VimRunner(build_vim_graph(m))(imgs[:4])
    m2, plan = run_vim_passes(m, plain_plan(CFG.depth), [("fold_norms", {}), ("rotate_dt", {}), ("shift_delta", {})],
                              stats)
    assert all(lp.delta_shift is not None and lp.delta_shift_b is not None for lp in plan.layers)
    assert max(np.abs(lp.delta_shift).max() for lp in plan.layers) > 0.05  # random Δ is not centred already
    g = build_vim_graph(m2, plan)
    for graph in (g, lower_selective_scan(g)):
        out = VimRunner(graph)(imgs[:4])
        assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()
    st = calibrate(m2, plan, imgs)  # the quantizer's view: every channel of Δ − c centred, range shrunk
    for i in range(CFG.depth):
        for s in ("", "_b"):
            pt = f"layers.{i}.scan{s}.delta"
            mid = (st.chan_lo[pt] + st.chan_hi[pt]) / 2
            assert np.abs(mid).max() <= 1e-5 * st.absmax[pt]
            assert st.absmax[pt] < stats.absmax[pt]


def test_collect_splits_one_token():
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) - 10.0

    class R:
        def run(self, feeds):
            return {"t": x}

    st = collect(lambda outs: R(), {"p": "t"}, np.zeros((1, 1)), token_split={"p": 1}, progress=False)
    assert st.absmax["p@token"] == np.abs(x[:, 1]).max() and st.absmax["p@rest"] == np.abs(x[:, [0, 2]]).max()
    assert np.array_equal(st.chan["p@token"], np.abs(x[:, 1]).max(0))
    assert np.array_equal(st.chan_lo["p"], x.reshape(-1, 4).min(0)) and np.array_equal(st.chan_hi["p"], x.reshape(-1, 4).max(0))
    assert set(np.unique(st.sample["p@token"])) <= set(np.abs(x[:, 1]).ravel())


def test_cls_token_index_follows_the_scan_direction():
    idx = cls_token_index(random_vim(CFG, seed=0))
    T, pos = CFG.seq_len, CFG.cls_position
    assert idx["layers.1.in_proj.input"] == pos and idx["layers.0.x_proj.input"] == pos
    assert idx["layers.0.x_proj_b.input"] == T - 1 - pos and idx["layers.1.dt_proj_b.input"] == T - 1 - pos


def _node_output(g, suffix):
    (n,) = [n for n in g.graph.node if n.name.endswith(suffix)]
    return n.output[0]


@pytest.mark.parametrize("recipe, lin", [("vim-rtn-w8a8", "out_proj"), ("vim-rtn-w8a8", "x_proj_b"),
                                         ("vim-quarot-w8a8", "out_proj")])
def test_token_scale_is_a_per_token_quantizer(setup, tmp_path, recipe, lin):
    """The rescaled MatMul computes round(x_t/s_t)·s_t·W for the token and round(x/s)·s·W for the others. Behind
    out_proj's online Hadamard (quarot) the rescale sits in front of the rotation, so that the Hadamard writes what the
    quantizer reads (and the TensorRT flavour fuses the two): there the point's tensor is x·H ⊙ m, and x·H is checked
    against the rotation of the Hadamard's own input."""
    m, imgs, _ = setup
    m2, plan, _ = prepare_vim(m, load_recipe(recipe), imgs)
    pt = f"layers.0.{lin}.input"
    t = cls_token_index(m)[pt]
    s = plan.quant.act_scales[pt]
    plan.quant.token_scales[pt] = (t, 3.7 * s)
    g, pts = build_vim_graph(m2, plan, with_points=True)
    assert lint_model(g) == []
    name = "layers.0/" + lin
    y_name = _node_output(g, f"{name}_token_unscale")
    had = [n for n in g.graph.node if n.name == "layers.0/out_hadamard"]
    rotated = recipe != "vim-rtn-w8a8" and lin == "out_proj"
    assert len(had) == rotated
    extra = [pts[pt], y_name] + ([_node_output(g, f"{name}_token_scale")] if rotated else [])
    pre = [n.input[0] for n in g.graph.node if n.name == f"{name}_token_scale"]
    out = VimRunner(g, extra_outputs=extra + pre)
    r = out.run({"pixel_values": imgs[:3]})
    x = r[pts[pt]].astype(np.float64)
    if rotated:  # Mul → Hadamard → QuantizeLinear: the point is the rotation's output, token t scaled by s / s_t
        assert had[0].input[0] == extra[2] and pts[pt] == had[0].output[0]
        x[:, t] *= 3.7
        want_x = hadamard_op.reference(r[pre[0]]).astype(np.float64)
        assert np.abs(x - want_x).max() <= 1e-5 * np.abs(want_x).max()
    xq = fake_quant(x, s, 8)
    xq[:, t] = fake_quant(x[:, t], 3.7 * s, 8)
    assert not np.allclose(xq[:, t], fake_quant(x[:, t], s, 8))  # the token's own scale matters here
    qw, ws = plan.quant.weights[f"layers.0.{lin}"]
    want = xq @ (qw.astype(np.float64) * ws[None, :])
    assert np.abs(r[y_name] - want).max() <= 1e-5 * np.abs(want).max()
    # the portable flavour computes the same
    a, b = VimRunner(g)(imgs[:3]), VimRunner(lower_selective_scan(g))(imgs[:3])
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()


def test_lint_catches_a_token_rescale_not_undone(setup):
    m, imgs, _ = setup
    m2, plan, _ = prepare_vim(m, load_recipe("vim-rtn-w8a8"), imgs)
    pt = "layers.1.in_proj.input"
    plan.quant.token_scales[pt] = (CFG.cls_position, 2.0 * plan.quant.act_scales[pt])
    g = build_vim_graph(m2, plan)
    assert lint_model(g) == []
    bad = copy.deepcopy(g)
    init = {t.name: t for t in bad.graph.initializer}[f"{pt}.token_unscale"]
    a = numpy_helper.to_array(init).copy()
    a[0, CFG.cls_position, 0] *= 1.01
    init.CopyFrom(numpy_helper.from_array(a, init.name))
    v = lint_model(bad)
    assert [x["rule"] for x in v] == ["token-scale"] and "in_proj" in v[0]["node"]
    gone = copy.deepcopy(g)  # the unscale Mul bypassed
    (mul,) = [n for n in gone.graph.node if n.name.endswith("in_proj_token_unscale") and n.name.startswith("layers.1")]
    for n in gone.graph.node:
        n.input[:] = [mul.input[0] if i == mul.output[0] else i for i in n.input]
    gone.graph.node.remove(mul)
    assert [x["rule"] for x in lint_model(gone)] == ["token-scale"]


def test_lint_sees_a_token_rescale_through_the_hadamard(setup):
    """The rescale in front of out_proj's online Hadamard (Mul → Hadamard → QuantizeLinear, as build_vim_graph emits it,
    before the TensorRT flavour fuses the pair): lint follows it through the Hadamard to the MatMul; bypassing the
    unscale after the MatMul is a token-scale violation at that QuantizeLinear."""
    m, imgs, _ = setup
    m2, plan, _ = prepare_vim(m, load_recipe("vim-quarot-w8a8"), imgs)
    pt = "layers.1.out_proj.input"
    plan.quant.token_scales[pt] = (cls_token_index(m)[pt], 2.0 * plan.quant.act_scales[pt])
    g = build_vim_graph(m2, plan)
    (q,) = [n for n in g.graph.node if n.name == f"layers.1/{pt}/Q"]
    assert {n.output[0]: n for n in g.graph.node}[q.input[0]].op_type == "Hadamard" and lint_model(g) == []
    (mul,) = [n for n in g.graph.node if n.name == "layers.1/out_proj_token_unscale"]
    for n in g.graph.node:
        n.input[:] = [mul.input[0] if i == mul.output[0] else i for i in n.input]
    g.graph.node.remove(mul)
    assert [(v["node"], v["rule"]) for v in lint_model(g)] == [(f"layers.1/{pt}/Q", "token-scale")]


def test_cls_separate_recipe_gives_the_patch_tokens_their_resolution_back(setup, tmp_path):
    """A class token with one spiking channel sets the shared scale of layer 0's in_proj input (RMSNorm keeps
    the spike: ~sqrt(d) against ~3 for the patch tokens). With its own scale the patch tokens' scale shrinks by
    that ratio and so does their quantization error through the integer MatMul; the class token's own row
    keeps a scale at least as large as the shared one."""
    m, imgs, _ = setup
    m = copy.deepcopy(m)
    m.cls_token = np.zeros_like(m.cls_token)
    m.cls_token[..., 0] = 40.0
    pt = "layers.0.in_proj.input"
    t = cls_token_index(m)[pt]
    got = {}
    for cls in (False, True):
        m2, plan, _ = prepare_vim(m, _recipe(tmp_path, "vim-rtn-w8a8", cls=cls), imgs)
        for p_, (tt, s_t) in plan.quant.token_scales.items():
            assert tt == cls_token_index(m)[p_] and s_t > 0 and p_ in plan.quant.act_scales
        g, pts = build_vim_graph(m2, plan, with_points=True)
        assert lint_model(g) == []
        y_name = _node_output(g, "layers.0/in_proj_token_unscale" if cls else "layers.0/in_proj")
        r = VimRunner(g, extra_outputs=[pts[pt], y_name]).run({"pixel_values": imgs})
        qw, ws = plan.quant.weights["layers.0.in_proj"]
        exact = r[pts[pt]].astype(np.float64) @ (qw.astype(np.float64) * ws[None, :])  # weights already integer
        err = np.abs(r[y_name] - exact)
        got[cls] = (plan.quant.act_scales[pt], plan.quant.token_scales.get(pt), np.delete(err, t, axis=1).max())
    (s_shared, none, e_shared), (s_patch, (tok, s_tok), e_patch) = got[False], got[True]
    assert none is None and tok == t
    assert s_shared > 2 * s_patch and s_tok >= 0.9 * s_shared
    assert e_patch < 0.5 * e_shared, got


@pytest.mark.skipif(not (vdata.DEFAULT_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="dataset-fashion-mnist is not installed")
def test_compile_vim_with_the_extras_and_lm_refusal(tmp_path):
    from safetensors.numpy import save_file

    cfg = VimConfig(d_model=24, depth=2, num_classes=10, img_size=28, patch_size=7, channels=1)
    d = tmp_path / "vim"
    d.mkdir()
    save_file({k: np.ascontiguousarray(v) for k, v in to_state_dict(random_vim(cfg, seed=4)).items()},
              str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(cfg.to_dict()))
    rec = _recipe(tmp_path, "vim-mambaquant-w8a8", cls=True, shift=True)
    man = compile_model(str(d), str(rec.source), tmp_path / "out", calib_samples=8)
    # the direct plugin-vs-portable distance is recorded only (boundary roundings may differ, CPU-dependent);
    # taking the plugin graph's side on those, the portable graph agrees to fp32 rounding
    assert man["self_check"]["max_rel_error_portable_following_plugin"] < 1e-5
    g = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert lint_model(g, str(tmp_path / "out")) == []
    assert any(n.name.endswith("dt_proj_shift") for n in g.graph.node)
    assert set(man["quantization"]["token_scales"]) <= set(man["quantization"]["act_scales"])
    with pytest.raises(UserError, match="cls_token applies to Vision Mamba"):
        compile_model(None, str(rec.source), tmp_path / "lm")
    assert not (tmp_path / "lm").exists()
    # a recipe of the other family: one error, before any work, nothing written
    # (a bundled recipe named by its file, relative to the working directory, is still the bundled one)
    from mq_deploy.recipes import RECIPE_DIR

    rel = lambda name: os.path.relpath(RECIPE_DIR / f"{name}.yaml")  # noqa: E731
    for model, recipe, msg in ((str(d), "mambaquant-w8a8", "is a language-model recipe; use fp32, fp16 or the vim-"),
                               (str(d), "rtn-w8a8", "is a language-model recipe"),
                               (None, "vim-rtn-w8a8", "is a Vision Mamba \\(Vim\\) recipe"),
                               (str(d), rel("mambaquant-w8a8"), "is a language-model recipe; use fp32, fp16 or the vim-"),
                               (None, rel("vim-rtn-w8a8"), "is a Vision Mamba \\(Vim\\) recipe")):
        with pytest.raises(UserError, match=msg):
            compile_model(model, recipe, tmp_path / "wrong")
        assert not (tmp_path / "wrong").exists()
    # a Vim recipe of one's own with a language-model pass parameter: the pass named, not a TypeError
    own = tmp_path / "vim-own.yaml"
    own.write_text(Path(load_recipe("vim-rtn-w8a8").source).read_text().replace("name: vim-rtn-w8a8", "name: vim-own")
                   .replace("passes: []", "passes:\n  - {name: fold_norms, keep_tied: true}"))
    logs = []
    with pytest.raises(UserError, match="pass 'fold_norms' takes no keep_tied on a Vim model"):
        compile_model(str(d), str(own), tmp_path / "wrong", calib_samples=8, log=logs.append)
    assert not (tmp_path / "wrong").exists()
    assert logs == []  # before the checkpoint is loaded and calibrated
    # a recipe file of one's own is not judged by its name: a Vim recipe called anything compiles a Vim model
    mine = tmp_path / "mine.yaml"
    mine.write_text(Path(load_recipe("vim-rtn-w8a8").source).read_text().replace("name: vim-rtn-w8a8", "name: mine"))
    warned = []
    assert compile_model(str(d), str(mine), tmp_path / "mine", calib_samples=8, tokenizer="/no/tokenizer.json",
                         calib_seq_len=4096, warn=warned.append)["recipe"]["name"] == "mine"
    assert warned == ["--tokenizer and --calib-seq-len are for language models; a Vision Mamba (Vim) takes images: "
                      "ignored"]  # (not silently)
    with pytest.raises(UserError, match="cls_token must be"):
        bad = tmp_path / "bad.yaml"
        bad.write_text(Path(rec.source).read_text().replace("cls_token: separate", "cls_token: own"))
        load_recipe(str(bad))


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_vim_recipe_with_int4_blocks(tmp_path, method):
    """weights.block_size holds for Vim as for the language model (it was ignored): int4 in blocks of 64 where 64
    divides the input size (in_proj K 64, x_proj / out_proj K 128), int8 per channel elsewhere (dt_proj, K =
    dt_rank 4, both directions), so that no INT4 weight is per channel; the graph computes with those weights."""
    cfg = VimConfig(d_model=64, depth=2, num_classes=6, img_size=12, patch_size=4, channels=3)
    m = random_vim(cfg, seed=3)
    imgs = np.random.default_rng(2).standard_normal((8, 3, 12, 12)).astype(np.float32)
    p = tmp_path / "vim-b64.yaml"
    p.write_text(f"name: vim-b64\nprecision: w4a8\nweights: {{bits: 4, method: {method}, block_size: 64}}\n"
                 "activations: {bits: 8, method: percentile, percentile: 99.99}\npasses: []\n")
    m2, plan, _ = prepare_vim(m, load_recipe(str(p)), imgs)
    q = plan.quant
    assert q.int8_weights == {f"layers.{i}.{lin}" for i in range(2) for lin in ("dt_proj", "dt_proj_b")}
    for name, (qw, s) in q.weights.items():
        if name in q.int8_weights:
            assert s.shape == (qw.shape[1],) and np.abs(qw).max() > 8  # int8 codes, not int4
        else:
            assert s.shape == (qw.shape[0] // 64, qw.shape[1]) and np.abs(qw).max() <= 8
    g = build_vim_graph(m2, plan)
    assert lint_model(g) == []
    inits = {t.name: t for t in g.graph.initializer}
    dqs = {n.name.split("/")[1]: n for n in g.graph.node if n.op_type == "DequantizeLinear"
           and n.input[0].endswith("weight_q")}
    assert set(dqs) == set(q.weights)
    for name, n in dqs.items():
        bs = next((a.i for a in n.attribute if a.name == "block_size"), 0)
        dtype = inits[n.input[0]].data_type
        assert (bs, dtype) == ((0, onnx.TensorProto.INT8) if name in q.int8_weights else (64, onnx.TensorProto.INT4))
    # the graph's logits are those of the weights it was given: replace one weight of two blocks by its per-channel
    # quantization and the output moves
    logits = VimRunner(g).run({"pixel_values": imgs})[OUTPUT]
    other = copy.deepcopy(plan)
    other.quant.weights["layers.0.out_proj"] = quantize_weight(m2.layers[0].out_proj.T, 4)
    moved = VimRunner(build_vim_graph(m2, other)).run({"pixel_values": imgs})[OUTPUT]
    assert np.abs(moved - logits).max() > 1e-4 * np.abs(logits).max()
    fp = VimRunner(build_vim_graph(m, plain_plan(2))).run({"pixel_values": imgs})[OUTPUT]
    assert np.abs(logits - fp).max() < 0.5 * np.abs(fp).max()


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_vim_weight_only_recipe(tmp_path, method):
    """precision w4a16 on a Vim model: the same int4 blocks as the W4A8 recipe with the same weights quantizer, no
    activation scale and no QuantizeLinear; the graph computes with those weights (lint clean, quantization seen)."""
    cfg = VimConfig(d_model=64, depth=2, num_classes=6, img_size=12, patch_size=4, channels=3)
    m = random_vim(cfg, seed=3)
    imgs = np.random.default_rng(2).standard_normal((8, 3, 12, 12)).astype(np.float32)
    p16, p8 = tmp_path / "vim-w16.yaml", tmp_path / "vim-b64.yaml"
    p16.write_text(f"name: vim-w16\nprecision: w4a16\nweights: {{bits: 4, method: {method}, block_size: 64}}\n"
                   "passes: []\n")
    p8.write_text(f"name: vim-b64\nprecision: w4a8\nweights: {{bits: 4, method: {method}, block_size: 64}}\n"
                  "activations: {bits: 8, method: percentile, percentile: 99.99, scan_inputs: false}\npasses: []\n")
    m2, plan, runs = prepare_vim(m, load_recipe(str(p16)), imgs)
    q = plan.quant
    assert q.act_scales == {} and q.act_bits is None and q.token_scales == {}
    assert len(runs) == (1 if method == "gptq" else 0)  # GPTQ's Hessians only
    if method == "rtn":  # (GPTQ's Hessians differ: the W4A8 calibration runs the quantized activations)
        _, plan8, _ = prepare_vim(m, load_recipe(str(p8)), imgs)
        for name, (qw, s) in q.weights.items():
            np.testing.assert_array_equal(qw, plan8.quant.weights[name][0])
            np.testing.assert_array_equal(s, plan8.quant.weights[name][1])
    g = build_vim_graph(m2, plan)
    assert lint_model(g) == [] and not any(n.op_type == "QuantizeLinear" for n in g.graph.node)
    assert sum(n.op_type == "DequantizeLinear" for n in g.graph.node) == len(q.weights) == 2 * 6
    logits = VimRunner(g).run({"pixel_values": imgs})[OUTPUT]
    fp = VimRunner(build_vim_graph(m, plain_plan(2))).run({"pixel_values": imgs})[OUTPUT]
    assert 1e-4 * np.abs(fp).max() < np.abs(logits - fp).max() < 0.5 * np.abs(fp).max()


def test_vim_weight_only_compile_reads_no_images(tmp_path, monkeypatch):
    """An RTN w4a16 recipe file on the bundled Vim classifier compiles without calibration images (none is read) and
    its self-check holds the two graphs to float rounding (it followed int8 roundings a weight-only graph has not:
    an internal error)."""
    import mq_deploy

    monkeypatch.delenv("MQ_DEPLOY_DATA_DIR", raising=False)
    p = tmp_path / "vim-w16.yaml"
    p.write_text("name: vim-w16\nprecision: w4a16\nweights: {bits: 4, method: rtn, block_size: 64}\npasses: []\n")
    man = compile_model(str(Path(mq_deploy.__file__).parent / "assets" / "vim-fmnist"), str(p), tmp_path / "out")
    assert man["calibration"] is None and man["quantization"]["act_scales"] == {}
    assert man["quantization"]["act_bits"] is None and man["self_check"]["max_rel_error_plugin_vs_portable"] < 1e-5
    assert "max_rel_error_portable_following_plugin" not in man["self_check"]
    g = onnx.load(str(tmp_path / "out" / "model.onnx"), load_external_data=False)
    assert not any(n.op_type == "QuantizeLinear" for n in g.graph.node)


VIM_W4A16 = ["vim-rtn-w4a16", "vim-gptq-w4a16", "vim-quarot-w4a16", "vim-mambaquant-w4a16"]


def test_builtin_vim_weight_only_recipes(tmp_path, monkeypatch):
    """The bundled vim-*-w4a16 recipes: weight-only INT4 in blocks of 64, Vim family (an LM refuses them, a Vim
    refuses the LM ones); the RTN ones read no calibration images (neither the passes nor the quantizer take
    statistics), and the bundled Vim compiles with vim-quarot-w4a16 to a lint-clean graph without QuantizeLinear,
    held to the portable graph at float rounding."""
    import mq_deploy
    import mq_deploy.vision.compile as vcompile
    from mq_deploy.compile import calibrates
    from mq_deploy.recipes import available_recipes, family

    assert set(VIM_W4A16) <= set(available_recipes())
    for name in VIM_W4A16:
        r = load_recipe(name)
        assert (r.name, r.precision, family(r), r.act_quantized) == (name, "w4a16", "vim", False)
        assert r.weights["bits"] == 4 and r.weights["block_size"] == 64
        assert calibrates(r) == (name in ("vim-gptq-w4a16", "vim-mambaquant-w4a16")), name
    mq = load_recipe("vim-mambaquant-w4a16")  # the rotations and the online Hadamard; no smoothing, no Vim extras
    assert [(n, dict(p).get("klt")) for n, p in mq.passes] == [
        ("fold_norms", None), ("rotate_residual", True), ("rotate_dt", True), ("online_hadamard", None)]
    assert mq.weights["method"] == "gptq"
    vim = str(Path(mq_deploy.__file__).parent / "assets" / "vim-fmnist")
    for model, recipe, msg in ((None, "vim-rtn-w4a16", "is a Vision Mamba \\(Vim\\) recipe"),
                               (vim, "rtn-w4a16", "is a language-model recipe")):
        with pytest.raises(UserError, match=msg):
            compile_model(model, recipe, tmp_path / "wrong")
        assert not (tmp_path / "wrong").exists()

    def no_images(*a, **k):
        raise AssertionError("calibration images read")

    monkeypatch.setattr(vcompile, "calibration_images", no_images)
    man = compile_model(vim, "vim-quarot-w4a16", tmp_path / "q")
    assert man["calibration"] is None and man["quantization"]["act_scales"] == {}
    assert man["self_check"]["max_rel_error_plugin_vs_portable"] < 1e-5
    g = onnx.load(str(tmp_path / "q" / "model.onnx"), load_external_data=False)
    assert lint_model(g, str(tmp_path / "q")) == [] and not any(n.op_type == "QuantizeLinear" for n in g.graph.node)
    blocked = [n for n in g.graph.node if n.op_type == "DequantizeLinear"
               and any(a.name == "block_size" and a.i == 64 for a in n.attribute)]
    assert len(blocked) > 0 and [p["name"] for p in man["plugins"]] == ["SelectiveScan", "Hadamard"]
    with pytest.raises(AssertionError, match="calibration images read"):  # the GPTQ one does read them
        compile_model(vim, "vim-gptq-w4a16", tmp_path / "g", calib_samples=4)
    assert not (tmp_path / "g").exists()


@pytest.mark.skipif(not (vdata.DEFAULT_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="dataset-fashion-mnist is not installed")
def test_compare_vim_weight_only_reads_what_it_needs(monkeypatch):
    """Vim compare: the fp32 statistics are computed only for passes that read them (a KLT rotation), calibration
    images only for a recipe that calibrates; the weight-only rows are scored like the others."""
    import mq_deploy
    import mq_deploy.vision.compare as vcmp

    read, stats = [], []
    real_images, real_stats = vcmp.calibration_images, vcmp.fp32_stats
    monkeypatch.setattr(vcmp, "calibration_images", lambda n, *a, **k: read.append(n) or real_images(n, *a, **k))
    monkeypatch.setattr(vcmp, "fp32_stats", lambda *a, **k: stats.append(1) or real_stats(*a, **k))
    vim = str(Path(mq_deploy.__file__).parent / "assets" / "vim-fmnist")
    rows, _ = vcmp.compare_vim(vim, ["vim-rtn-w4a16", "vim-quarot-w4a16", "vim-mambaquant-w4a16"], ["fashion_mnist"],
                               limit=16, progress=False)
    assert [r["recipe"] for r in rows] == ["fp32"] + ["vim-rtn-w4a16", "vim-quarot-w4a16", "vim-mambaquant-w4a16"]
    assert read == [128] and len(stats) == 1  # vim-mambaquant-w4a16's (128 images, KLT statistics) only
    for r in rows[1:]:
        assert r["fashion_mnist"]["n"] == 16 and r["fashion_mnist"]["agreement"] >= 0.75
    # --calib-samples / --calib: the images' count and folder, for every recipe that calibrates
    read.clear()
    paths = []
    monkeypatch.setattr(vcmp, "calibration_images",
                        lambda n, *a, **k: read.append(n) or paths.append(k["path"]) or real_images(n, *a, **k))
    rows, _ = vcmp.compare_vim(vim, ["vim-rtn-w4a16", "vim-gptq-w4a16"], ["fashion_mnist"], limit=16, progress=False,
                               calib=str(vdata.DEFAULT_DIR), calib_samples=8)
    assert read == [8] and paths == [str(vdata.DEFAULT_DIR)] and len(rows) == 3
