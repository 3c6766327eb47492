"""Prefill + decode-step graphs reproduce the full graph's logits position by position, in both flavours.

Criterion: max |logits_step - logits_full| ≤ 1e-4 × max |logits_full| at every position, for random-init
models with sizes that are not powers of two, the bundled model, a padded batch, and a graph with a
pass plan (S-SiLU gate, online Hadamard, x_proj smoothing).
"""

import numpy as np
import onnx
import pytest

from mq_deploy.backends.ort import OrtRunner
from mq_deploy.errors import UserError
from mq_deploy.generate import StatefulSession, left_pad
from mq_deploy.graph.mamba_lm import build_lm_graph
from mq_deploy.graph.plan import GraphPlan, LayerPlan
from mq_deploy.graph.stateful import build_stateful_graphs
from mq_deploy.model import MambaConfig, random_model
from mq_deploy.ops import selective_scan as ss
from mq_deploy.ops import state_update as su
from mq_deploy.ops.ort_kernels import PLUGIN_DOMAIN

from .helpers import rel_err

TOL = 1e-4
FLAVOURS = (("plugin", ".onnx"), ("portable", ".portable.onnx"))


def sessions(model, plan=None):
    full = build_lm_graph(model, plan)
    graphs = build_stateful_graphs(full, model.config)
    for name, g in graphs.items():
        onnx.checker.check_model(g, full_check=name.endswith("portable.onnx"))
    return full, graphs, {f: StatefulSession(graphs[f"model.prefill{s}"], graphs[f"model.decode{s}"])
                          for f, s in FLAVOURS}


def stepwise_errors(full, sess, ids, prefill_len):
    """Prefill ids[:, :P], then step through the rest; rel error vs the full graph at each position."""
    ref = OrtRunner(full)(ids)
    out = {}
    for flavour, s in sess.items():
        logits, st = s.prefill(ids[:, :prefill_len], np.ones((len(ids), prefill_len), np.int64))
        errs = [rel_err(ref[:, prefill_len - 1], logits)]
        for t in range(prefill_len, ids.shape[1]):
            logits, st = s.step(ids[:, t], st)
            errs.append(float(np.abs(logits - ref[:, t]).max() / np.abs(ref).max()))
        out[flavour] = max(errs)
    return out


def test_state_update_reference_matches_scan():
    rng = np.random.default_rng(0)
    Bsz, L, D, N = 2, 9, 24, 12
    u, delta = rng.standard_normal((Bsz, L, D)).astype(np.float32), rng.standard_normal((Bsz, L, D)).astype(np.float32)
    A = -np.exp(rng.standard_normal((D, N))).astype(np.float32)
    Bm, Cm = rng.standard_normal((Bsz, L, N)).astype(np.float32), rng.standard_normal((Bsz, L, N)).astype(np.float32)
    Dskip, bias = rng.standard_normal(D).astype(np.float32), rng.standard_normal(D).astype(np.float32)
    y_ref, h_ref = ss.selective_scan(u, delta, A, Bm, Cm, Dskip, bias)
    h = np.zeros((Bsz, D, N), np.float32)
    for t in range(L):
        y, h = su.selective_state_update(h, u[:, t:t + 1], delta[:, t:t + 1], A, Bm[:, t:t + 1], Cm[:, t:t + 1],
                                         Dskip, bias)
        assert y.shape == (Bsz, 1, D)
        assert rel_err(y_ref[:, t:t + 1], y) < 1e-6
    assert rel_err(h_ref, h) < 1e-6


@pytest.mark.parametrize("d_model,n_layer,vocab,kw", [
    (96, 2, 503, {}),
    (320, 1, 1000, {"proj_bias": True, "tie_embeddings": False}),
    (40, 3, 300, {"expand": 3, "d_conv": 3, "dt_rank": 5, "conv_bias": False, "d_state": 12}),
    (24, 2, 97, {"d_conv": 2}),  # conv state of one column
])
def test_decode_matches_full_graph_random(d_model, n_layer, vocab, kw):
    m = random_model(MambaConfig(d_model=d_model, n_layer=n_layer, vocab_size=vocab, **kw), seed=d_model)
    full, _, sess = sessions(m)
    ids = np.random.default_rng(1).integers(0, vocab, size=(3, 14))
    for P in (1, 2, 6):  # prompts shorter than, equal to and longer than d_conv - 1
        errs = stepwise_errors(full, sess, ids, P)
        assert max(errs.values()) <= TOL, (P, errs)


def test_decode_matches_full_graph_bundled():
    from mq_deploy.loaders import BUNDLED_DIR, load_model

    from .conftest import need

    need(BUNDLED_DIR / "model.safetensors")
    m = load_model(None)
    full, _, sess = sessions(m)
    ids = np.random.default_rng(2).integers(0, m.config.vocab_size, size=(2, 24))
    errs = stepwise_errors(full, sess, ids, 8)
    assert max(errs.values()) <= TOL, errs


def test_left_padding_gives_the_states_of_the_prompt_alone():
    m = random_model(MambaConfig(d_model=72, n_layer=2, vocab_size=211, proj_bias=True), seed=5)
    _, _, sess = sessions(m)
    rng = np.random.default_rng(3)
    prompts = [list(rng.integers(0, 211, n)) for n in (7, 1, 3, 12)]
    ids, mask = left_pad(prompts, pad_id=5)
    assert mask.sum(1).tolist() == [7, 1, 3, 12] and mask[:, -1].all()
    for flavour, s in sess.items():
        logits, states = s.prefill(ids, mask)
        for r, p in enumerate(prompts):
            l1, s1 = s.prefill(np.array([p]), np.ones((1, len(p)), np.int64))
            assert rel_err(l1[0], logits[r]) <= 1e-5, (flavour, r)
            for k in s1:
                assert np.abs(s1[k][0] - states[k][r]).max() <= 1e-5 * max(np.abs(s1[k]).max(), 1.0), (flavour, r, k)


def test_graph_structure_and_shared_weights():
    m = random_model(MambaConfig(d_model=48, n_layer=3, vocab_size=100), seed=7)
    full, graphs, _ = sessions(m)
    c = m.config
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in full.graph.initializer}
    for name, g in graphs.items():
        inits = {t.name: t for t in g.graph.initializer}
        for w, arr in weights.items():  # every weight of model.onnx, under the same name, unchanged
            assert w in inits and np.array_equal(onnx.numpy_helper.to_array(inits[w]), arr), (name, w)
        ins = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in g.graph.input}
        outs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in g.graph.output}
        assert outs["logits"] == ["batch", c.vocab_size]
        if "prefill" in name:
            assert list(ins) == ["input_ids", "attention_mask"]
            assert ins["input_ids"] == ins["attention_mask"] == ["batch", "sequence"]
            assert list(outs)[1:3] == ["conv_state.0", "ssm_state.0"] and len(outs) == 1 + 2 * c.n_layer
            assert outs["conv_state.2"] == ["batch", c.d_inner, c.d_conv - 1]
            assert outs["ssm_state.2"] == ["batch", c.d_inner, c.d_state]
        else:
            assert ins["input_ids"] == ["batch", 1] and len(ins) == 1 + 2 * c.n_layer
            assert ins["ssm_state.1"] == outs["ssm_state_out.1"] == ["batch", c.d_inner, c.d_state]
            assert ins["conv_state.1"] == outs["conv_state_out.1"] == ["batch", c.d_inner, c.d_conv - 1]
        plugins = [n for n in g.graph.node if n.domain == PLUGIN_DOMAIN]
        if name.endswith("portable.onnx"):
            assert not plugins and {o.domain for o in g.opset_import} <= {"", "ai.onnx"}
        else:
            want = ss.PLUGIN_NAME if "prefill" in name else su.PLUGIN_NAME
            assert [n.op_type for n in plugins] == [want] * c.n_layer
            for n in plugins:
                a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
                assert a["plugin_version"] == b"1" and a["plugin_namespace"] == b"mq_deploy"
            if "decode" in name:
                assert [list(n.input)[0] for n in plugins] == [f"ssm_state.{i}" for i in range(c.n_layer)]
                assert not any(n.op_type == "Scan" for n in g.graph.node)


def test_stateful_graphs_follow_a_pass_plan():
    """S-SiLU gate smoothing, x_proj smoothing and the online Hadamard (a plugin node) carry over unchanged."""
    m = random_model(MambaConfig(d_model=48, n_layer=2, vocab_size=150), seed=11)  # d_inner 96 = 12·8
    rng = np.random.default_rng(0)
    di = m.config.d_inner
    plan = GraphPlan(layers=[LayerPlan(gate_scale=rng.uniform(0.5, 2, di), out_hadamard=True,
                                       xproj_smooth=rng.uniform(0.5, 2, di)) for _ in range(2)])
    full, graphs, sess = sessions(m, plan)
    assert sum(n.op_type == "Hadamard" for n in graphs["model.decode.onnx"].graph.node) == 2
    ids = rng.integers(0, 150, size=(2, 10))
    errs = stepwise_errors(full, sess, ids, 4)
    assert max(errs.values()) <= TOL, errs


def test_step_rejects_states_of_the_wrong_shape():
    m = random_model(MambaConfig(d_model=40, n_layer=2, vocab_size=90), seed=2)
    _, _, sess = sessions(m)
    s = sess["portable"]
    _, st = s.prefill(np.array([[1, 2, 3]] * 2), np.ones((2, 3), np.int64))
    bad = dict(st, **{"ssm_state.1": st["ssm_state.1"][:, :, :-1]})
    with pytest.raises(UserError, match=r"state 'ssm_state.1' has shape \(2, 80, 15\), expected \(2, 80, 16\)"):
        s.step(np.array([4, 5]), bad)
    with pytest.raises(UserError, match=r"state 'conv_state.0' has shape \(2, 80, 3\), expected \(1, 80, 3\)"):
        s.step(np.array([4]), st)  # batch of the token differs from the states'
    with pytest.raises(UserError, match=r"missing state input\(s\) conv_state.1"):
        s.step(np.array([4, 5]), {k: v for k, v in st.items() if k != "conv_state.1"})
    with pytest.raises(UserError, match="state 'conv_state.1' has dtype int64, expected float32"):
        s.step(np.array([4, 5]), dict(st, **{"conv_state.1": st["conv_state.1"].astype(np.int64)}))
    with pytest.raises(UserError, match=r"token id 90 is outside the model's vocabulary \[0, 90\)"):
        s.step(np.array([90, 5]), st)
    with pytest.raises(UserError, match="LEFT padding"):
        s.prefill(np.array([[1, 2, 3]]), np.array([[1, 1, 0]]))  # right padding would decay the state
    for hole in ([[1, 0, 1]], [[0, 1, 0, 1]]):  # a gap inside the prompt (its last column is 1): not left padding
        with pytest.raises(UserError, match="LEFT padding"):
            s.prefill(np.arange(1, len(hole[0]) + 1)[None], np.array(hole))


def test_decode_step_keeps_a_scan_without_softplus():
    """A scan node with delta_softplus 0 (Δ given as is) becomes a step with dt_softplus 0, and the pair still
    reproduces the full graph (mutant: the step's dt_softplus fixed at 1, which every compiled graph has)."""
    from mq_deploy.ops.plugin_fields import fields_of, set_field

    m = random_model(MambaConfig(d_model=48, n_layer=2, vocab_size=90), seed=5)
    for L in m.layers:  # Δ = δ·W_dt + b positive without the softplus (a negative step would grow the state)
        L.dt_proj = (L.dt_proj * 0.01).astype(np.float32)
        L.dt_proj_bias = np.full_like(L.dt_proj_bias, 0.3)
    full = build_lm_graph(m)
    scans = [n for n in full.graph.node if n.op_type == ss.PLUGIN_NAME]
    for n in scans:
        set_field(n, "delta_softplus", 0)
    graphs = build_stateful_graphs(full, m.config)
    steps = [n for n in graphs["model.decode.onnx"].graph.node if n.op_type == su.PLUGIN_NAME]
    assert len(steps) == 2 and all(fields_of(n)["dt_softplus"] == 0 for n in steps)
    sess = {f: StatefulSession(graphs[f"model.prefill{s}"], graphs[f"model.decode{s}"]) for f, s in FLAVOURS}
    ids = np.random.default_rng(3).integers(0, 90, size=(2, 9))
    errs = stepwise_errors(full, sess, ids, 6)
    assert all(e < TOL for e in errs.values()), errs
    assert rel_err(OrtRunner(full)(ids), OrtRunner(build_lm_graph(m))(ids)) > 1e-3  # (softplus matters here)
