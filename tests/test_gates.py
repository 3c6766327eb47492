"""Checks that must be able to fail, and numbers that must be the statistics' (found missing by a mutation audit):
compile's self-check limits refusing a graph over them, the statistics reduced over every calibration batch from whole
non-overlapping windows, activation scales from the graph that is quantized, a same-size change to any graph file of an
OUTDIR, a failed swap putting the old OUTDIR back, report.html's numbers, and validate's --tol on every gated row."""

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from mq_deploy import compile as mcompile
from mq_deploy import outdir as moutdir
from mq_deploy import validate as mval
from mq_deploy.calibrate import calibration_windows, collect
from mq_deploy.errors import InternalError, UserError
from mq_deploy.model import MambaConfig, random_model

from .helpers import write_hf_checkpoint

TOKENIZER = Path(__file__).resolve().parents[1] / "src" / "mq_deploy" / "assets" / "mamba-tiny" / "tokenizer.json"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small random model (vocabulary of the bundled tokenizer, so that it calibrates on text), its HF checkpoint
    and a calibration text."""
    root = tmp_path_factory.mktemp("audit")
    m = random_model(MambaConfig(d_model=32, n_layer=2, vocab_size=8192), seed=4)
    calib = root / "calib.txt"
    calib.write_text(" ".join(["The quick brown fox jumps over the lazy dog, then naps in the sun."] * 100))
    return m, write_hf_checkpoint(m, root / "hf"), calib


def _compile(tiny, out, recipe="rtn-w8a8", **kw):
    _, ckpt, calib = tiny
    extra = dict(calib=str(calib), tokenizer=str(TOKENIZER), calib_samples=2, calib_seq_len=32) if recipe != "fp32" \
        else {}
    return mcompile.compile_model(str(ckpt), recipe, out, progress=False, report_passes=False, **extra, **kw)


# -- compile's self-check gates ------------------------------------------------------------------------------------

@pytest.mark.parametrize("flavour", ["portable", "plugin"])
def test_compile_refuses_a_graph_over_the_simulation_limit(tiny, tmp_path, monkeypatch, flavour):
    """The self-check's limit is 1e-4 for each flavour against the simulation: a graph 2e-4 off fails the compile and
    writes nothing (mutants: either limit loosened 10x, to 1e-3)."""
    real = mcompile.simulation_check

    def off(*a, flavour="portable", **k):
        r = real(*a, flavour=flavour, **k)
        if flavour == which:
            r[f"max_rel_error_{flavour}_vs_simulation"] = 2e-4
        return r

    which = flavour
    monkeypatch.setattr(mcompile, "simulation_check", off)
    with pytest.raises(InternalError, match=f"{'plugin graph' if flavour == 'plugin' else 'quantized graph'}.* "
                                            "disagrees with the simulation"):
        _compile(tiny, tmp_path / "out")
    assert os.listdir(tmp_path) == []  # no OUTDIR, no temporary
    which = None  # the same compile, unchanged, passes
    man = _compile(tiny, tmp_path / "out")
    assert man["self_check"]["max_rel_error_plugin_vs_simulation"] <= 1e-4


@pytest.mark.parametrize("recipe", ["fp32", "rtn-w4a16"])
def test_compile_fp32_gates_the_plugin_graph_against_the_portable_one(tiny, tmp_path, monkeypatch, recipe):
    """An fp32 recipe's two flavours must agree to 1e-4, and a weight-only one's (float activations: no rounding
    boundary to land on either side of) (mutants: the compile passing tol=None, recording only)."""
    real = mcompile.plugin_check
    monkeypatch.setattr(mcompile, "plugin_check",
                        lambda g, ids, pl, tol, logits=None: real(g, ids, pl * 1.01, tol, logits))
    with pytest.raises(InternalError, match="the plugin and portable graphs disagree"):
        _compile(tiny, tmp_path / "out", recipe=recipe)
    assert os.listdir(tmp_path) == []


def test_plugin_check_runs_the_plugin_graph(tiny):
    """plugin_check compares the plugin graph's own logits with the portable ones (mutant: the portable logits compared
    with themselves when no precomputed logits are given)."""
    from mq_deploy.backends.ort import OrtRunner
    from mq_deploy.graph.mamba_lm import build_lm_graph

    m = tiny[0]
    g = build_lm_graph(m, None)
    ids = np.random.default_rng(1).integers(0, m.config.vocab_size, size=(2, 9))
    good = OrtRunner(g)(ids)
    assert mcompile.plugin_check(g, ids, good, 1e-4)["max_rel_error_plugin_vs_portable"] < 1e-6
    with pytest.raises(InternalError, match="disagree"):
        mcompile.plugin_check(g, ids, good * 1.001, 1e-4)


# -- a copied OUTDIR's files against its manifest ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["model.onnx", "model.portable.onnx", "weights.bin"])
def test_validate_hashes_every_graph_file_not_only_the_weights(tmp_path, name):
    """A same-size corruption of a graph file (not only of weights.bin) is refused by check_files(hashes=True)
    (mutant: only the non-.onnx files hashed)."""
    files = {}
    for n in ("model.onnx", "model.portable.onnx", "weights.bin"):
        (tmp_path / n).write_bytes(os.urandom(4096))
        files[n] = {}
    manifest = {**mcompile.manifest_head(tmp_path, files), "files": files}
    moutdir.check_files(tmp_path, manifest, hashes=True)  # as written: fine
    data = bytearray((tmp_path / name).read_bytes())
    data[100] ^= 0xFF
    (tmp_path / name).write_bytes(bytes(data))
    moutdir.check_files(tmp_path, manifest)  # sizes alone cannot tell
    with pytest.raises(UserError, match=f"{name} differs from the file `mq-deploy compile` wrote"):
        moutdir.check_files(tmp_path, manifest, hashes=True)


# -- the swap ------------------------------------------------------------------------------------------------------

def test_a_failed_swap_puts_the_old_outdir_back(tmp_path, monkeypatch):
    """When moving the new OUTDIR in fails (after the old one was moved aside), the old one is back where it was, and
    nothing else is left (mutant: the old OUTDIR left under its .old- name)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text('{"format": "mq-deploy/1", "old": true}')
    real = os.replace

    def replace(src, dst):
        if ".tmp-" in Path(src).name and Path(dst) == out:
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(moutdir.os, "replace", replace)
    with pytest.raises(OSError, match="Input/output error"):
        with moutdir.atomic_dir(out) as tmp:
            (tmp / "manifest.json").write_text('{"new": true}')
    assert (out / "manifest.json").read_text() == '{"format": "mq-deploy/1", "old": true}'
    assert sorted(os.listdir(tmp_path)) == ["out"]


# -- calibration statistics ----------------------------------------------------------------------------------------

def test_collect_reduces_over_every_batch():
    """Each batch's rows count: absmax, per-channel max, signed min / max, variance, XᵀX/n and the |x| sample are over
    all batches, not the last or the first (mutants: absmax / channel max / min / covariance of the last batch, sample
    of the first)."""
    rng = np.random.default_rng(0)
    batches = [rng.uniform(-1, 1, size=(1, 5, 3)).astype(np.float32) for _ in range(3)]
    batches[0][0, 0, 1] = 9.0  # the largest value in the first batch
    batches[1][0, 2, 2] = -7.0  # a channel's largest in the middle one
    batches[2][0, 4, 0] = 5.0
    it = iter(batches)

    class R:
        def run(self, feeds):
            return {"t": next(it)}

    st = collect(lambda outs: R(), {"p": "t"}, np.zeros((3, 1), np.int64), cov_points=["p"], batch_size=1,
                 progress=False)
    x = np.concatenate([b.reshape(-1, 3) for b in batches]).astype(np.float64)
    assert st.absmax["p"] == np.abs(x).max() == 9.0
    np.testing.assert_array_equal(st.chan["p"], np.abs(x).max(0))
    assert st.count["p"] == 15
    np.testing.assert_allclose(st.chan_var("p"), x.var(0), rtol=1e-5)
    np.testing.assert_allclose(st.cov("p"), x.T @ x / 15, rtol=1e-5)
    # the signed per-channel minimum / maximum (shift_delta's centre): over every batch too
    np.testing.assert_array_equal(st.chan_lo["p"], x.min(0))
    np.testing.assert_array_equal(st.chan_hi["p"], x.max(0))
    # the sample: drawn from every batch (each batch's |x| values are distinct, so each draw names its batch)
    drawn = set(st.sample["p"].tolist())
    for b in batches:
        assert drawn & set(np.abs(b).astype(np.float32).ravel().tolist())


def test_stats_windows_spread_over_the_calibration_set():
    """The passes' statistics windows (calibration.stats_samples) are spread evenly over the calibration windows,
    first and last included, not the first n (mutant: windows[:n])."""
    from mq_deploy.quantize import stats_windows

    w = np.arange(10)[:, None]
    np.testing.assert_array_equal(stats_windows(w, 3)[:, 0], [0, 4, 9])  # linspace 0, 4.5, 9 rounded half to even
    np.testing.assert_array_equal(stats_windows(w, 5)[:, 0], [0, 2, 4, 7, 9])
    assert stats_windows(w, 1)[:, 0].tolist() == [0] and stats_windows(w, 10) is w and stats_windows(w, 32) is w


def test_calibration_windows_are_whole_non_overlapping_windows():
    """The windows start at multiples of seq_len: no token is in two windows (mutant: random overlapping offsets)."""
    ids = np.arange(10_000)
    w = calibration_windows(ids, 20, 50, seed=0)
    assert w.shape == (20, 50)
    assert (w[:, 0] % 50 == 0).all() and len(set(w[:, 0])) == 20
    np.testing.assert_array_equal(w, w[:, :1] + np.arange(50))


def test_activation_scales_come_from_the_graph_that_is_quantized(tiny):
    """A recipe with a smoothing pass takes each activation's scale from the statistics of the transformed graph (the
    last calibration), not those before the passes (mutant: absmax from the fp32 statistics)."""
    from mq_deploy.quantize import prepare
    from mq_deploy.recipes import _parse

    m = tiny[0]
    windows = np.random.default_rng(0).integers(0, m.config.vocab_size, size=(4, 32))
    recipe = _parse({"name": "x", "precision": "w8a8", "weights": {"bits": 8, "method": "rtn"},
                     "activations": {"bits": 8, "method": "max"}, "passes": [{"name": "smoothquant", "alpha": 0.5}]},
                    "x")
    _, plan, runs = prepare(m, recipe, windows, progress=False)
    assert len(runs) == 2
    after, before = runs[-1], runs[0]
    assert any(before.absmax[p] != pytest.approx(after.absmax[p], rel=1e-3) for p in plan.quant.act_scales)
    for pt, s in plan.quant.act_scales.items():
        assert s == pytest.approx(after.absmax[pt] / 127, rel=1e-6), pt


# -- report.html ---------------------------------------------------------------------------------------------------

def test_report_numbers_are_the_statistics(tiny):
    """The table's absmax is the point's absmax of the quantized graph, and the red curve is the fp32 (before)
    statistics (mutants: absmax from another statistic, the before curve from the after statistics)."""
    from mq_deploy.quantize import prepare
    from mq_deploy.recipes import load_recipe
    from mq_deploy.report import _polyline, build_report

    m = tiny[0]
    windows = np.random.default_rng(0).integers(0, m.config.vocab_size, size=(4, 32))
    m2, plan, runs = prepare(m, load_recipe("smoothquant-w8a8"), windows, progress=False)
    before, after = runs[0], runs[-1]
    html = build_report(m2, plan, before, after, "smoothquant-w8a8", [])
    pt = "layers.0.in_proj.input"
    assert f"<tr><td style='text-align:left'>{pt}</td><td>activation</td><td>{plan.quant.act_scales[pt]:.4g}</td>" \
           f"<td>{after.absmax[pt]:.4g}</td>" in html
    ymax = float(max(np.max(after.chan[pt]), np.max(before.chan[pt])))
    assert _polyline(before.chan[pt], ymax, "#c0392b") in html


# -- validate --tol ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def outdirs(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("audit_out")
    _compile(tiny, root / "fp32", recipe="fp32")
    _compile(tiny, root / "w8")
    return root / "fp32", root / "w8"


def _pairs(rep):
    return {(p["reference"], p["test"]): p for p in rep.pairs}


def test_tol_gates_the_torch_rows_of_an_fp32_outdir(outdirs):
    """--tol replaces FP32_TOL on every gated row, the torch rows too (mutant: torch rows always at FP32_TOL)."""
    rep = mval.validate(outdirs[0], torch_ref=True, tol=1e-12, seq=9)
    p = _pairs(rep)[("torch-fp32", "portable")]
    assert p["limit"] == 1e-12 and p["ok"] is False and not rep.ok


def test_tol_gates_the_rows_that_follow_the_roundings(outdirs):
    """--tol replaces FP32_TOL on a quantized OUTDIR's plugin~ row (mutant: plugin~ always at FP32_TOL)."""
    rep = mval.validate(outdirs[1], tol=1e-3, seq=9)
    assert _pairs(rep)[("portable", "plugin~")]["limit"] == 1e-3


# -- the Vim compile's and the stateful pair's self-check gates ------------------------------------------------------

def test_vim_compile_self_check_limits(monkeypatch):
    """The Vim compile's self-check holds the plugin and portable graphs to 1e-4 (float activations) and, quantized, the
    portable graph following the plugin graph's roundings to 1e-4: 2e-4 off fails, 5e-5 passes (mutants: either limit
    loosened)."""
    from mq_deploy.graph import follow
    from mq_deploy.graph.lower import lower_selective_scan
    from mq_deploy.vision import compile as vcompile
    from mq_deploy.vision.graph import build_vim_graph
    from mq_deploy.vision.model import VimConfig, random_vim

    m = random_vim(VimConfig(d_model=16, depth=1, num_classes=10, img_size=28, patch_size=7, channels=1), seed=0)
    g = build_vim_graph(m)
    p = lower_selective_scan(g)
    real = vcompile.VimRunner
    for off, fails in ((2e-4, True), (5e-5, False)):
        monkeypatch.setattr(vcompile, "VimRunner", lambda graph, off=off: (
            lambda x: real(graph)(x) * np.float32(1 + (off if graph is p else 0))))
        if fails:
            with pytest.raises(InternalError, match="the plugin and portable Vim graphs disagree"):
                vcompile._check(g, p, m, quantized=False)
        else:
            assert vcompile._check(g, p, m, quantized=False)["max_rel_error_plugin_vs_portable"] < 1e-4
    monkeypatch.setattr(vcompile, "VimRunner", real)
    for off, fails in ((2e-4, True), (5e-5, False)):
        monkeypatch.setattr(follow, "compare_following", lambda *a, off=off, **k: {"max_rel": off})
        if fails:
            with pytest.raises(InternalError, match="following the plugin graph's roundings on boundary cases"):
                vcompile._check(g, p, m, quantized=True)
        else:
            assert vcompile._check(g, p, m, quantized=True)["max_rel_error_portable_following_plugin"] == off


def test_stateful_self_check_holds_the_prefill_to_fp32_rounding(monkeypatch):
    """The prefill of a stateful pair computes the full graph's arithmetic: its logits are held to PREFILL_TOL (1e-4)
    even where the decode steps get a loose bound (a quantized pair's 0.25): a prefill 1e-3 off fails (mutant: the
    prefill gate removed), a correct one passes."""
    import mq_deploy.backends.ort as ort
    from mq_deploy.graph.mamba_lm import build_lm_graph
    from mq_deploy.graph.stateful import build_stateful_graphs, self_check

    model = random_model(MambaConfig(d_model=48, n_layer=2, vocab_size=97), seed=2)
    full = build_lm_graph(model)
    graphs = build_stateful_graphs(full, model.config)
    assert self_check(full, graphs, model.config, tol=0.25)["prefill_max_rel_error_vs_full_graph"]["tensorrt"] < 1e-5
    real = ort.OrtRunner

    class PrefillOff(real):
        def run(self, feeds, *a, **k):
            out = super().run(feeds, *a, **k)
            if "attention_mask" in feeds:  # the prefill
                out["logits"] = out["logits"] * np.float32(1 + 1e-3)
            return out

    monkeypatch.setattr(ort, "OrtRunner", PrefillOff)
    with pytest.raises(InternalError, match="prefill logits differ from the full graph's"):
        self_check(full, graphs, model.config, tol=0.25)
