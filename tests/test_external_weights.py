"""Graphs whose weights stay in a file (backends/ort.py `external_weights`, graph/weights.py `externalize`):
onnxruntime maps the file instead of taking the weights from Python, and every result is the one of the same graph
with its weights inside, bit for bit. compile calibrates and self-checks this way, `validate --simulate` re-derives
the same plan in memory, and both must agree to the last bit (its scale check allows 1e-6)."""

import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from mq_deploy.backends.ort import OrtRunner, external_files, external_weights
from mq_deploy.errors import InternalError
from mq_deploy.graph.fuse_scan_quant import fuse_plugin_quant
from mq_deploy.graph.lower import lower_selective_scan
from mq_deploy.graph.mamba_lm import build_lm_graph
from mq_deploy.graph.plan import GraphPlan
from mq_deploy.graph.weights import WeightStore
from mq_deploy.model import MambaConfig, random_model
from mq_deploy.quantize import calibrate, prepare
from mq_deploy.recipes import load_recipe

from .helpers import compile_small_w8


@pytest.fixture(scope="module")
def prepared():
    m = random_model(MambaConfig(d_model=112, n_layer=3, vocab_size=301), seed=7)
    windows = np.random.default_rng(0).integers(0, 301, size=(4, 48))
    m2, plan, _ = prepare(m, load_recipe("mambaquant-w8a8"), windows, progress=False)
    return m2, plan, windows


def _graphs(m2, plan):
    fp32, points = build_lm_graph(m2, GraphPlan(layers=plan.layers, quant=None), with_points=True)
    qdq = build_lm_graph(m2, plan)
    return {"fp32 (hybrid)": fp32, "int8 Q/DQ (hybrid)": qdq, "int8 fused plugin (hybrid)": fuse_plugin_quant(qdq),
            "portable (one session, Scan)": lower_selective_scan(qdq)}, sorted(set(points.values()))


def test_graphs_run_from_their_weights_file_bit_for_bit(prepared, tmp_path):
    m2, plan, _ = prepared
    graphs, names = _graphs(m2, plan)
    ids = np.random.default_rng(1).integers(0, 301, size=(2, 29))
    with WeightStore(tmp_path) as store:
        light = {k: store.externalize(g) for k, g in graphs.items()}
    for k, g in graphs.items():
        assert external_files(light[k]) == ["weights.bin"] and not external_files(g), k
        assert light[k].ByteSize() < g.ByteSize() / 5, k  # the weights are in the file, not in the graph
        want = OrtRunner(g)(ids)
        assert np.array_equal(OrtRunner(light[k], weights_dir=tmp_path)(ids), want), k
        with external_weights(tmp_path):  # (compile's way: the folder from the enclosing block)
            assert np.array_equal(OrtRunner(light[k])(ids), want), k
            if "hybrid" in k:
                assert np.array_equal(OrtRunner(light[k], plugins="extensions")(ids),
                                      OrtRunner(g, plugins="extensions")(ids)), k
    # the marked outputs calibration reads, from the mapped file, the same as from memory
    fp32 = graphs["fp32 (hybrid)"]
    a = OrtRunner(fp32, extra_outputs=names, only_extra=True).run({"input_ids": ids})
    b = OrtRunner(light["fp32 (hybrid)"], extra_outputs=names, only_extra=True, weights_dir=tmp_path).run(
        {"input_ids": ids})
    assert sorted(a) == sorted(b) == names and all(np.array_equal(a[n], b[n]) for n in names)


def test_a_graph_without_its_weights_folder_is_refused(prepared, tmp_path):
    m2, plan, _ = prepared
    with WeightStore(tmp_path) as store:
        light = store.externalize(build_lm_graph(m2, plan))
    with pytest.raises(InternalError, match="without their folder"):
        OrtRunner(light)


def test_calibration_through_a_scratch_file_is_the_in_memory_one(prepared, tmp_path):
    m2, plan, windows = prepared
    cov = ["layers.0.in_proj.input", "layers.2.out_proj.input"]
    a = calibrate(m2, plan, windows, cov, progress=False)
    b = calibrate(m2, plan, windows, cov, progress=False, scratch=tmp_path)
    assert os.listdir(tmp_path) == []  # the scratch weights are removed
    for kind in ("absmax", "chan", "sample", "second", "chan_sum", "chan_sumsq", "chan_lo", "chan_hi", "count"):
        da, db = getattr(a, kind), getattr(b, kind)
        assert sorted(da) == sorted(db) and da, kind
        assert all(np.array_equal(np.asarray(da[p]), np.asarray(db[p])) for p in da), kind


def test_externalize_passes_its_own_references_and_refuses_others(tmp_path):
    g = build_lm_graph(random_model(MambaConfig(d_model=64, n_layer=1, vocab_size=97), seed=2))
    with WeightStore(tmp_path) as store:
        light = store.externalize(g)
        size = os.path.getsize(tmp_path / "weights.bin")
        again = store.externalize(light)  # a graph derived from a light one: nothing written twice
        assert os.path.getsize(tmp_path / "weights.bin") == size and again == light
        big = [t for t in g.graph.initializer if len(t.raw_data) >= 1024]
        assert big and all(t.name in {e.name for e in light.graph.initializer if e.external_data} for t in big)
        small = {t.name for t in g.graph.initializer if len(t.raw_data) < 1024}
        assert all(not t.external_data for t in light.graph.initializer if t.name in small)
        loaded = {t.name: numpy_helper.to_array(t, base_dir=str(tmp_path)) for t in light.graph.initializer}
        assert all(np.array_equal(loaded[t.name], numpy_helper.to_array(t)) for t in g.graph.initializer)
        other = onnx.ModelProto()
        other.CopyFrom(light)
        for t in other.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = "other.bin"
        with pytest.raises(InternalError, match="other.bin"):
            store.externalize(other)


@pytest.fixture(scope="module")
def w8(tmp_path_factory):
    return compile_small_w8(tmp_path_factory.mktemp("ext"))


def test_an_outdir_graph_is_run_without_reading_its_weights_into_python(w8, monkeypatch):
    out = w8
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # (the calibration scratch is gone)
    from mq_deploy.outdir import read_onnx

    ids = np.random.default_rng(3).integers(0, 500, size=(2, 17))
    want = {f: OrtRunner(read_onnx(out / f))(ids) for f in ("model.portable.onnx", "model.onnx")}

    def refuse(*a, **k):
        raise AssertionError("the weights were read into Python")

    monkeypatch.setattr("onnx.external_data_helper.load_external_data_for_model", refuse)
    for f, w in want.items():
        assert np.array_equal(OrtRunner(out / f)(ids), w), f
        assert OrtRunner(str(out / f), plugins="extensions").session is not None  # (validate's single session)


def test_a_truncated_weights_file_is_one_line_before_onnxruntime(w8, tmp_path):
    """onnxruntime maps the file, so nothing reads it in Python before the session: its sizes are checked instead
    (onnxruntime's own error is a C++ signature and an extra log line)."""
    import subprocess
    import sys

    from mq_deploy.errors import UserError

    for f in ("model.portable.onnx", "tokenizer.json"):
        (tmp_path / f).write_bytes((w8 / f).read_bytes())
    size = (w8 / "weights.bin").stat().st_size
    (tmp_path / "weights.bin").write_bytes((w8 / "weights.bin").read_bytes()[:size - 1])
    with pytest.raises(UserError, match=r"could not read the weights of .*model.portable.onnx \(weights.bin\): tensor "
                                        rf"'.+' lies at bytes \d+-{size} of it, which has {size - 1}"):
        OrtRunner(tmp_path / "model.portable.onnx")
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox " * 50)
    r = subprocess.run([sys.executable, "-m", "mq_deploy", "eval", str(tmp_path / "model.portable.onnx"), "--task",
                        "text", "--data", str(text), "--seq-len", "16", "--limit", "1", "-q"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "could not read the weights" in r.stderr, r.stderr
