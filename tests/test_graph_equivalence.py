"""Both ONNX flavours reproduce Hugging Face MambaForCausalLM (fp32) logits to 1e-4 × max|logit|."""

import numpy as np
import onnx
import pytest

from mq_deploy.backends.ort import OrtRunner
from mq_deploy.backends.torch_hf import TorchRunner
from mq_deploy.graph.lower import lower_selective_scan
from mq_deploy.graph.mamba_lm import build_lm_graph
from mq_deploy.model import MambaConfig, random_model
from mq_deploy.ops.ort_kernels import PLUGIN_DOMAIN

from .conftest import REF_MODEL, need
from .helpers import rel_err

SHAPES = [(1, 1), (3, 7), (1, 64), (3, 300)]
TOL = 1e-4


def check_model(model, shapes=SHAPES, seed=0):
    graph = build_lm_graph(model)
    portable = lower_selective_scan(graph)
    onnx.checker.check_model(graph)
    onnx.checker.check_model(portable, full_check=True)
    ref_runner, plugin, port = TorchRunner(model), OrtRunner(graph), OrtRunner(portable)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for B, L in shapes:
        ids = rng.integers(0, model.config.vocab_size, size=(B, L))
        ref = ref_runner(ids)
        for name, run in (("plugin", plugin), ("portable", port)):
            out = run(ids)
            assert out.shape == (B, L, model.config.vocab_size), name
            err = rel_err(ref, out)
            assert err <= TOL, f"{name} B={B} L={L}: rel err {err:.3g}"
            worst = max(worst, err)
    return worst


@pytest.mark.parametrize("d_model,n_layer,vocab,kw", [
    (96, 2, 503, {}),
    (320, 2, 1000, {"proj_bias": True, "tie_embeddings": False}),
    (768, 1, 777, {"d_state": 12}),
    (40, 3, 300, {"expand": 3, "d_conv": 3, "dt_rank": 5, "conv_bias": False}),
])
def test_random_models(d_model, n_layer, vocab, kw):
    check_model(random_model(MambaConfig(d_model=d_model, n_layer=n_layer, vocab_size=vocab, **kw), seed=d_model))


def test_reference_model():
    from mq_deploy.loaders import load_model

    check_model(load_model(need(REF_MODEL)))


def test_bundled_model():
    from mq_deploy.loaders import BUNDLED_DIR, load_model

    need(BUNDLED_DIR / "model.safetensors")
    check_model(load_model(None))


def test_graph_structure_and_dynamic_shapes():
    m = random_model(MambaConfig(d_model=48, n_layer=3, vocab_size=100))
    g = build_lm_graph(m)
    p = lower_selective_scan(g)
    plugin_nodes = [n for n in g.graph.node if n.domain == PLUGIN_DOMAIN]
    assert [n.op_type for n in plugin_nodes] == ["SelectiveScan"] * 3
    for n in plugin_nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b"mq_deploy"
        assert n.name.startswith("layers.")
    assert not [n for n in p.graph.node if n.domain not in ("", "ai.onnx")]
    assert sum(n.op_type == "Scan" for n in p.graph.node) == 3  # one Scan per layer, not unrolled
    assert {o.domain for o in p.opset_import} <= {"", "ai.onnx"}
    for gr in (g, p):
        (inp,) = gr.graph.input
        (out,) = gr.graph.output
        assert inp.name == "input_ids" and inp.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in inp.type.tensor_type.shape.dim] == ["batch", "sequence"]
        assert out.name == "logits" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        dims = out.type.tensor_type.shape.dim
        assert [dims[0].dim_param, dims[1].dim_param, dims[2].dim_value] == ["batch", "sequence", 100]
    # the node count does not depend on the sequence length: one graph serves every length
    r = OrtRunner(p)
    assert r(np.zeros((2, 5), np.int64)).shape == (2, 5, 100)
    assert r(np.zeros((1, 1000), np.int64)).shape == (1, 1000, 100)


@pytest.mark.parametrize("tied", [True, False])
def test_fp16_valued_large_weights_are_stored_in_fp16(tied):
    """Embedding / lm_head whose values are all fp16 numbers (fp16 checkpoints, fp16-deployed weights) are stored
    as FLOAT16 + Cast — half the bytes, same logits; any value off the fp16 grid keeps fp32."""
    from mq_deploy.graph.mamba_lm import FP16_STORE_MIN

    cfg = MambaConfig(d_model=64, n_layer=1, vocab_size=FP16_STORE_MIN // 64 + 3, tie_embeddings=tied)
    m = random_model(cfg, seed=1)
    m.embedding = m.embedding.astype(np.float16).astype(np.float32)
    if not tied:
        m.lm_head = m.lm_head.astype(np.float16).astype(np.float32)
    dtypes = {t.name: t.data_type for t in build_lm_graph(m).graph.initializer}
    assert dtypes["embedding.weight"] == onnx.TensorProto.FLOAT16
    assert tied or dtypes["lm_head.weight"] == onnx.TensorProto.FLOAT16
    check_model(m, shapes=[(2, 5)])
    m.embedding[3, 7] += 1e-4  # one value off the grid
    assert {t.name: t.data_type for t in build_lm_graph(m).graph.initializer}["embedding.weight"] == onnx.TensorProto.FLOAT


# -- the plugin nodes without softplus (delta_softplus / dt_softplus 0): declared fields no compiled graph uses ------
def _node_model(node, inputs, outputs):
    from onnx import TensorProto, helper

    from mq_deploy.graph.builder import OPSET

    from .helpers import IR_VERSION

    vi = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    g = helper.make_graph([node], "t", [vi(n, s) for n, s in inputs], [vi(n, s) for n, s in outputs])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(PLUGIN_DOMAIN, 1)],
                             ir_version=IR_VERSION)


def _scan_inputs(B, L, D, N, seed):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return {"u": f(B, L, D), "delta": f(B, L, D) - 1.0, "A": -np.exp(f(D, N)), "Bm": f(B, L, N), "Cm": f(B, L, N),
            "D": f(D), "bias": f(D)}


@pytest.mark.parametrize("softplus", [0, 1])
def test_scan_node_with_and_without_softplus_in_every_flavour(softplus):
    """The native and extensions kernels and the lowered Scan follow the node's delta_softplus (Δ taken as given when
    0: with softplus the outputs would differ by orders of magnitude here)."""
    from onnx import helper

    from mq_deploy.ops import selective_scan as ss
    from mq_deploy.ops.plugin_fields import node_attrs

    B, L, D, N = 2, 5, 7, 3
    x = _scan_inputs(B, L, D, N, 0)
    names = ["u", "delta", "A", "Bm", "Cm", "D", "bias"]
    node = helper.make_node("SelectiveScan", names, ["y", "h"], name="scan", domain=PLUGIN_DOMAIN,
                            **node_attrs("SelectiveScan", delta_softplus=softplus))
    m = _node_model(node, [(n, list(x[n].shape)) for n in names], [("y", [B, L, D]), ("h", [B, D, N])])
    y_ref, h_ref = ss.selective_scan(*[x[n] for n in names[:6]], delta_bias=x["bias"], delta_softplus=bool(softplus))
    for name, g, kw in (("native", m, {}), ("extensions", m, {"plugins": "extensions"}),
                        ("portable", lower_selective_scan(m), {})):
        out = OrtRunner(g, **kw).run(dict(x))
        assert rel_err(y_ref, out["y"]) <= 1e-5 and rel_err(h_ref, out["h"]) <= 1e-5, name


@pytest.mark.parametrize("softplus", [0, 1])
def test_state_update_node_with_and_without_softplus_in_every_flavour(softplus):
    from onnx import helper

    from mq_deploy.graph.lower import lower_state_update
    from mq_deploy.ops import selective_scan as ss
    from mq_deploy.ops.plugin_fields import node_attrs

    B, D, N = 2, 7, 3
    x = {k: v[:, :1] if v.ndim == 3 else v for k, v in _scan_inputs(B, 1, D, N, 1).items()}
    x["state"] = np.random.default_rng(2).standard_normal((B, D, N)).astype(np.float32)
    names = ["state", "u", "delta", "A", "Bm", "Cm", "D", "bias"]
    node = helper.make_node("SelectiveStateUpdate", names, ["y", "h"], name="step", domain=PLUGIN_DOMAIN,
                            **node_attrs("SelectiveStateUpdate", dt_softplus=softplus))
    m = _node_model(node, [(n, list(x[n].shape)) for n in names], [("y", [B, 1, D]), ("h", [B, D, N])])
    d = x["delta"][:, 0] + x["bias"]
    d = ss.softplus(d) if softplus else d  # the definition, written out
    h_ref = np.exp(d[:, :, None] * x["A"]) * x["state"] + (d * x["u"][:, 0])[:, :, None] * x["Bm"][:, 0, None, :]
    y_ref = np.einsum("bdn,bn->bd", h_ref, x["Cm"][:, 0]) + x["D"] * x["u"][:, 0]
    for name, g, kw in (("native", m, {}), ("extensions", m, {"plugins": "extensions"}),
                        ("portable", lower_state_update(m), {})):
        out = OrtRunner(g, **kw).run(dict(x))
        assert rel_err(y_ref, out["y"][:, 0]) <= 1e-5 and rel_err(h_ref, out["h"]) <= 1e-5, name


def test_fresh_names_stay_unique_when_a_base_repeats():
    from mq_deploy.graph.builder import GraphBuilder

    b = GraphBuilder("t")
    with b.scope("layers.0"):
        names = [b.fresh("gate") for _ in range(4)]
    assert names == ["layers.0/gate", "layers.0/gate_1", "layers.0/gate_2", "layers.0/gate_3"]
