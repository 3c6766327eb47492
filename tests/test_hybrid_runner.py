"""OrtRunner's default plugin path (onnxruntime segments + direct CPU kernels, backends/hybrid.py)
against the single-session onnxruntime-extensions path, on graphs with every plugin kind."""

import numpy as np
import onnx
import pytest

from mq_deploy.backends.ort import OrtRunner
from mq_deploy.graph.follow import point_values
from mq_deploy.graph.fuse_scan_quant import fuse_scan_quant
from mq_deploy.graph.mamba_lm import build_lm_graph
from mq_deploy.graph.plan import GraphPlan
from mq_deploy.graph.stateful import build_stateful_graphs
from mq_deploy.model import MambaConfig, random_model
from mq_deploy.quant import simulate
from mq_deploy.quantize import prepare
from mq_deploy.recipes import load_recipe

from .helpers import rel_err


@pytest.fixture(scope="module")
def prepared():
    m = random_model(MambaConfig(d_model=112, n_layer=3, vocab_size=301), seed=7)
    windows = np.random.default_rng(0).integers(0, 301, size=(4, 48))
    m2, plan, _ = prepare(m, load_recipe("mambaquant-w8a8"), windows, progress=False)
    return m2, plan


def test_fp32_graph_with_hadamard_plugins(prepared):
    m2, plan = prepared
    g, points = build_lm_graph(m2, GraphPlan(layers=plan.layers, quant=None), with_points=True)
    assert {n.op_type for n in g.graph.node} >= {"SelectiveScan", "Hadamard"}
    ids = np.random.default_rng(1).integers(0, 301, size=(3, 37))
    a, b = OrtRunner(g), OrtRunner(g, plugins="extensions")
    assert a.session is None and b.session is not None
    assert rel_err(b(ids), a(ids)) < 1e-5
    # extra outputs only: the head is pruned, the marked tensors come back by name
    names = sorted(set(points.values()))
    ra = OrtRunner(g, extra_outputs=names, only_extra=True).run({"input_ids": ids})
    rb = OrtRunner(g, extra_outputs=names, only_extra=True, plugins="extensions").run({"input_ids": ids})
    assert sorted(ra) == sorted(rb) == names
    for n in names:
        assert rel_err(rb[n], ra[n]) < 1e-5, n


def test_fused_int8_graph_and_stateful_graphs(prepared):
    m2, plan = prepared
    g, points = build_lm_graph(m2, plan, with_points=True)
    fused = fuse_scan_quant(g)
    assert any(a.name == "u_scale" for n in fused.graph.node if n.op_type == "SelectiveScan" for a in n.attribute)
    ids = np.random.default_rng(2).integers(0, 301, size=(2, 21))
    # quantized: the two paths' scans sum in different orders (~1e-7 apart), so a value on a rounding boundary
    # may land one int8 step apart and the scan state carries it on; each path is held to the simulation
    # taking its side on such boundary cases, to fp32 rounding
    for runner in ({"plugins": "extensions"}, {}):
        f = point_values(fused, points, plan.quant.act_scales, ids, **runner)
        got = f.pop("logits")
        assert rel_err(simulate.forward(m2, plan, ids, f), got) < 1e-5, runner
        assert f.get("flipped", 0) <= 5, runner
    graphs = build_stateful_graphs(g, m2.config)
    dec = graphs["model.decode.onnx"]
    assert any(n.op_type == "SelectiveStateUpdate" for n in dec.graph.node)
    a, b = OrtRunner(dec), OrtRunner(dec, plugins="extensions")
    assert a.inputs == {i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim]
                        for i in dec.graph.input}
    rng = np.random.default_rng(3)
    feeds = {"input_ids": rng.integers(0, 301, size=(2, 1))}
    for name, dims in a.inputs.items():
        if name != "input_ids":
            feeds[name] = rng.standard_normal([2, *dims[1:]]).astype(np.float32) * 0.1
    ra, rb = a.run(feeds), b.run(feeds)
    assert sorted(ra) == sorted(rb)
    for k in ra:
        assert np.abs(ra[k] - rb[k]).max() <= 1e-3 * max(np.abs(rb[k]).max(), 1e-6), k


def test_only_early_outputs_and_freeing(prepared):
    """Asking for one early tensor only: later parts whose results nobody reads are skipped, the rest runs,
    and intermediate tensors are dropped after their last reader without disturbing the indices."""
    m2, plan = prepared
    g, points = build_lm_graph(m2, GraphPlan(layers=plan.layers, quant=None), with_points=True)
    want = [points["layers.1.out_proj.input"]]
    ids = np.random.default_rng(4).integers(0, 301, size=(2, 11))
    a = OrtRunner(g, extra_outputs=want, only_extra=True)
    b = OrtRunner(g, extra_outputs=want, only_extra=True, plugins="extensions")
    ra, rb = a.run({"input_ids": ids}), b.run({"input_ids": ids})
    assert list(ra) == want and rel_err(rb[want[0]], ra[want[0]]) < 1e-5
    # layers 0 and 1 (segment, scan, segment, Hadamard: out_proj's input is the Hadamard's output); nothing of
    # layer 2 or the head is built
    assert [kind for _, kind, *_ in a._hybrid.steps] == ["ort", "plugin", "ort", "plugin"] * 2


def test_fp16_tied_table_is_not_handed_between_segments():
    """A tied embedding stored as fp16 (graph/mamba_lm.stored_weight): the embedding gathers from it as stored and
    casts the rows; the head's Cast of the whole table is computed by every segment that reads it (onnxruntime folds
    it), so no segment exports it — handing the fp32 table from one segment to the head on every run made a
    50k-vocabulary decode step ~6× slower."""
    m = random_model(MambaConfig(d_model=64, n_layer=2, vocab_size=16400), seed=3)
    m.embedding = m.embedding.astype(np.float16).astype(np.float32)  # fp16 numbers: stored as fp16
    assert m.lm_head is None
    g = build_lm_graph(m)
    inits = {t.name: t for t in g.graph.initializer}
    assert inits["embedding.weight"].data_type == onnx.TensorProto.FLOAT16
    cast_outs = {o for n in g.graph.node if n.op_type == "Cast" and n.input[0] in inits for o in n.output}
    assert cast_outs == {"head/embedding.weight/to_fp32"}  # the table's one Cast: the head's (not the Gather's input)
    gather = next(n for n in g.graph.node if n.op_type == "Gather")
    assert gather.input[0] == "embedding.weight"  # no fp32 copy of the whole table for the embedding
    a = OrtRunner(g)
    ort_steps = [s for s in a._hybrid.steps if s[1] == "ort"]
    assert len(ort_steps) >= 3  # embedding + layer 0 part, ..., the head
    for _, _, _, reads, outs in ort_steps:
        assert not cast_outs & (set(reads) | set(outs)), (reads, outs)
    ids = np.random.default_rng(5).integers(0, 16400, size=(2, 9))
    assert rel_err(OrtRunner(g, plugins="extensions")(ids), a(ids)) < 1e-5


def test_constant_nodes_asked_for_as_outputs(prepared):
    """A node computed from initializers alone (a weight's DequantizeLinear) that is also asked for as an output
    sits in its own segment and is not copied into it a second time (onnxruntime refused such a segment: "two
    nodes with same node name")."""
    m2, plan = prepared
    g0, points = build_lm_graph(m2, plan, with_points=True)
    g = fuse_scan_quant(g0)
    inits = {t.name for t in g.graph.initializer}
    weights = [n.output[0] for n in g.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(weights) == 4 * 3  # in_proj, x_proj, dt_proj, out_proj of each layer
    ids = np.random.default_rng(6).integers(0, 301, size=(2, 9))
    a = OrtRunner(g, extra_outputs=weights[:5]).run({"input_ids": ids})
    b = OrtRunner(g, extra_outputs=weights[:5], plugins="extensions").run({"input_ids": ids})
    assert sorted(a) == sorted(b) == sorted(["logits", *weights[:5]])
    for n in weights[:5]:  # the constant nodes: the same values on both paths
        assert np.array_equal(a[n], b[n]), n
    # asking for them leaves each path's logits bit for bit as without, and each path's logits are the simulation's
    # (to fp32 rounding, the simulation taking the path's side on rounding-boundary cases, as in
    # test_fused_int8_graph_and_stateful_graphs). Not each other's at 1e-5: the paths sum in different orders, and
    # with these ids one value of the first sequence lands an int8 step apart at position 5 (onnxruntime 1.32,
    # torch 2.13), which the scan state carries on.
    for got, kw in ((a, {}), (b, {"plugins": "extensions"})):
        assert np.array_equal(got["logits"], OrtRunner(g, **kw)(ids)), kw
        f = point_values(g, points, plan.quant.act_scales, ids, **kw)
        assert np.array_equal(f.pop("logits"), got["logits"]), kw
        assert rel_err(simulate.forward(m2, plan, ids, f), got["logits"]) < 1e-5, kw
        assert f.get("flipped", 0) <= 5, kw
