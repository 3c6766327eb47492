"""Every pass preserves the function in fp32 (before quantization is added), on random configs whose
sizes are not powers of two; ONNX (both flavours) and the numpy simulation agree after each pass."""

import numpy as np
import pytest

from mq_deploy.backends.ort import OrtRunner
from mq_deploy.errors import UserError
from mq_deploy.graph.lower import lower_selective_scan
from mq_deploy.graph.mamba_lm import build_lm_graph
from mq_deploy.graph.plan import GraphPlan
from mq_deploy.model import MambaConfig, random_model
from mq_deploy.passes.rotate import rotation
from mq_deploy.passes.smooth import smooth_scales
from mq_deploy.quant import simulate
from mq_deploy.quant.hadamard import hadamard_matrix
from mq_deploy.quantize import calibrate, fp32_stats, prepare
from mq_deploy.recipes import _parse

from .helpers import rel_err

CONFIGS = [
    MambaConfig(d_model=96, n_layer=2, vocab_size=301),  # d 96 = 12·8, di 192, dt_rank 6 (no Hadamard: random orthogonal)
    MambaConfig(d_model=160, n_layer=2, vocab_size=257, d_state=12, proj_bias=True),  # 160 = 20·8, dt_rank 10
    MambaConfig(d_model=384, n_layer=1, vocab_size=200, tie_embeddings=False),  # dt_rank 24 = 12·2
]
PIPELINES = {
    "fold_norms": [{"name": "fold_norms"}],
    "rotate_residual_hadamard": [{"name": "fold_norms"}, {"name": "rotate_residual", "klt": False}],
    "rotate_residual_klt": [{"name": "fold_norms"}, {"name": "rotate_residual", "klt": True}],
    "rotate_dt_klt": [{"name": "rotate_dt", "klt": True}],
    "smooth_gate": [{"name": "smooth_gate", "alpha": 0.5}],
    "online_hadamard": [{"name": "online_hadamard"}],
    "smooth_state": [{"name": "smooth_state"}],
    "smoothquant": [{"name": "smoothquant", "alpha": 0.5}],
    "shift_delta": [{"name": "shift_delta"}],
    "mambaquant": [{"name": "fold_norms"}, {"name": "rotate_residual", "klt": True}, {"name": "rotate_dt", "klt": True},
                   {"name": "smooth_gate"}, {"name": "online_hadamard"}, {"name": "smooth_state"}],
    "fold_norms_keep_tied": [{"name": "fold_norms", "keep_tied": True}],
    "mambaquant_keep_tied": [{"name": "fold_norms", "keep_tied": True}, {"name": "rotate_residual", "klt": True},
                             {"name": "rotate_dt", "klt": True}, {"name": "smooth_gate"}, {"name": "online_hadamard"},
                             {"name": "smooth_state"}],
}
# fp32 reorderings of sums move logits by ~1e-7·max; a broken pass moves them by O(1)
TOL = 2e-5


@pytest.fixture(scope="module", params=range(len(CONFIGS)), ids=lambda i: f"d{CONFIGS[i].d_model}")
def setup(request):
    cfg = CONFIGS[request.param]
    m = random_model(cfg, seed=request.param + 10)
    rng = np.random.default_rng(0)
    windows = rng.integers(0, cfg.vocab_size, size=(6, 48))
    ids = rng.integers(0, cfg.vocab_size, size=(2, 37))
    base = OrtRunner(build_lm_graph(m))(ids)
    return m, windows, ids, base, fp32_stats(m, windows, progress=False)


@pytest.mark.parametrize("name", list(PIPELINES))
def test_pass_preserves_function(setup, name):
    m, windows, ids, base, stats0 = setup
    recipe = _parse({"name": name, "precision": "fp32", "passes": PIPELINES[name]}, name)
    m2, plan, _ = prepare(m, recipe, windows, progress=False, stats0=stats0)
    graph = build_lm_graph(m2, plan)
    for label, out in (("plugin", OrtRunner(graph)(ids)), ("portable", OrtRunner(lower_selective_scan(graph))(ids)),
                       ("simulation", simulate.forward(m2, plan, ids))):
        assert rel_err(base, out) <= TOL, f"{name} {label}: {rel_err(base, out):.3g}"
    # the pass really changed something (a no-op pass would pass the test above trivially)
    changed = any(not np.array_equal(getattr(a, f), getattr(b, f)) for a, b in zip(m.layers, m2.layers)
                  for f in ("in_proj", "x_proj", "dt_proj", "out_proj", "norm")) or plan.layers[0].out_hadamard \
        or plan.layers[0].delta_shift is not None
    assert changed, name


def test_keep_tied_keeps_one_table(setup):
    """fold_norms keep_tied + rotate_residual: a tied head stays the (rotated) embedding, γ_f lives in head_mix
    (Rᵀ·diag(γ_f)·R after the rotation), the graph holds one V×d table; without keep_tied the head is untied as
    before; the Hugging Face export unties it again with the same logits. Untied checkpoints are unaffected."""
    m, windows, ids, base, stats0 = setup
    tied = _parse({"name": "t", "precision": "fp32",
                   "passes": [{"name": "fold_norms", "keep_tied": True}, {"name": "rotate_residual", "klt": True}]}, "t")
    m2, plan, _ = prepare(m, tied, windows, progress=False, stats0=stats0)
    assert rel_err(base, OrtRunner(build_lm_graph(m2, plan))(ids)) <= TOL
    names = {t.name for t in build_lm_graph(m2, plan).graph.initializer}
    if m.lm_head is None:
        d = m.config.d_model
        assert m2.lm_head is None and m2.config.tie_embeddings and m2.head_mix.shape == (d, d)
        assert "head_mix" in names and "lm_head.weight" not in names
        assert not np.allclose(m2.head_mix, np.diag(np.diag(m2.head_mix)), atol=1e-3)  # rotated: no longer diagonal
        untied = _parse({"name": "u", "precision": "fp32", "passes": PIPELINES["rotate_residual_klt"]}, "u")
        m3, plan3, _ = prepare(m, untied, windows, progress=False, stats0=stats0)
        assert m3.lm_head is not None and "lm_head.weight" in {t.name for t in build_lm_graph(m3, plan3).graph.initializer}
        from mq_deploy.backends.torch_hf import TorchRunner
        assert rel_err(base, TorchRunner(m2)(ids)) <= 1e-4
    else:
        assert m2.head_mix is None and m2.lm_head is not None and "head_mix" not in names


def test_rotation_needs_folded_norms(setup):
    m, windows, *_ = setup
    with pytest.raises(UserError, match="fold_norms"):
        prepare(m, _parse({"name": "x", "precision": "fp32", "passes": [{"name": "rotate_residual"}]}, "x"), windows,
                progress=False)


def test_klt_equalizes_channel_variance(setup):
    """After R1 = K·H, every channel of the in_proj input has the same variance (paper eq. 13)."""
    m, windows, ids, base, stats0 = setup
    recipe = _parse({"name": "x", "precision": "fp32", "passes": PIPELINES["rotate_residual_klt"]}, "x")
    m2, plan, _ = prepare(m, recipe, windows, progress=False, stats0=stats0)
    from mq_deploy.quantize import calibrate

    st = calibrate(m2, plan, windows, cov_points=["layers.0.in_proj.input"], progress=False)
    var = np.diag(st.cov("layers.0.in_proj.input"))
    if m.config.n_layer == 1:  # R1 is fitted to layer 0 alone: exactly equal
        assert var.std() / var.mean() < 1e-6
    st0 = calibrate(m, GraphPlan.plain(m.config.n_layer), windows, cov_points=["layers.0.in_proj.input"],
                    progress=False)
    var0 = np.diag(st0.cov("layers.0.in_proj.input") / np.outer(m.layers[0].norm, m.layers[0].norm))
    assert var.std() / var.mean() < var0.std() / var0.mean()


# -- what each pass computes, beyond preserving the function (any smoothing scale or orthogonal R preserves it) ------


@pytest.fixture(scope="module")
def one_layer_384():
    cfg = MambaConfig(d_model=384, n_layer=1, vocab_size=200, tie_embeddings=False)  # dt_rank 24 = 12·2 (Hadamard)
    m = random_model(cfg, seed=12)
    windows = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(6, 48))
    return m, windows, fp32_stats(m, windows, progress=False)


def _apply(m, windows, stats0, passes):
    return prepare(m, _parse({"name": "x", "precision": "fp32", "passes": passes}, "x"), windows,
                   progress=False, stats0=stats0)[:2]


# the SmoothQuant form s = a^α / w^(1-α) (every recipe uses α 0.5, where a swap of α and 1-α is invisible)
def test_smooth_scales_follow_the_formula_for_any_alpha():
    a, w = np.array([4.0, 1.0, 0.25, 1e-9]), np.array([1.0, 2.0, 8.0, 1e3])
    for alpha in (0.25, 0.5, 0.8):
        want = np.clip(np.maximum(a, 1e-8) ** alpha / w ** (1 - alpha), 1e-5, 1e5)
        np.testing.assert_allclose(smooth_scales(a, w, alpha), want, rtol=1e-12)
    # α = 0.8 moves 80 % of the activation range into the weight: max|x/s| = a^0.2·w^0.2
    np.testing.assert_allclose(a[:3] / smooth_scales(a, w, 0.8)[:3], (a[:3] * w[:3]) ** 0.2, rtol=1e-12)


# smooth_state gives Bm and Cm the same per-channel maxima
def test_smooth_state_equalizes_B_and_C(one_layer_384):
    m, windows, stats0 = one_layer_384
    m2, plan = _apply(m, windows, stats0, [{"name": "smooth_state"}])
    st = calibrate(m2, plan, windows, progress=False)
    b, c = st.chan_absmax("layers.0.scan.B"), st.chan_absmax("layers.0.scan.C")
    b0, c0 = stats0.chan_absmax("layers.0.scan.B"), stats0.chan_absmax("layers.0.scan.C")
    assert np.abs(b0 / c0 - 1).max() > 0.1  # not equal before
    np.testing.assert_allclose(b, c, rtol=1e-4)


# rotate_dt klt: every channel of δ·R5 has the same variance (K·H with H a Hadamard of size dt_rank)
def test_rotate_dt_klt_equalizes_dt_input_variance(one_layer_384):
    m, windows, stats0 = one_layer_384
    m2, plan = _apply(m, windows, stats0, [{"name": "rotate_dt", "klt": True}])
    st = calibrate(m2, plan, windows, cov_points=["layers.0.dt_proj.input"], progress=False)
    var = np.diag(st.cov("layers.0.dt_proj.input"))
    var0 = np.diag(stats0.cov("layers.0.dt_proj.input"))
    assert var0.std() / var0.mean() > 0.05
    assert var.std() / var.mean() < 1e-5


# random_signs really randomizes: R = diag(±1)·H with signs that depend on the seed
def test_rotation_random_signs():
    n, H = 96, hadamard_matrix(96)
    R0 = rotation(n, signs=False)
    assert np.array_equal(R0, H)
    R1, R2 = rotation(n, signs=True, seed=1), rotation(n, signs=True, seed=2)
    for R in (R1, R2):
        s = np.diag(R @ H.T)
        assert np.allclose(np.abs(s), 1) and np.allclose(R, s[:, None] * H) and 0.3 < np.mean(s < 0) < 0.7
    assert not np.array_equal(R1, R2)


# rotate_residual klt fits R1 to every layer, each weighted equally: Σ_i C_i'/tr(C_i') has equal diagonal
def test_klt_residual_rotation_uses_every_layer():
    cfg = MambaConfig(d_model=96, n_layer=2, vocab_size=301)
    m = random_model(cfg, seed=10)
    windows = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(6, 48))
    stats0 = fp32_stats(m, windows, progress=False)
    m2, plan = _apply(m, windows, stats0, [{"name": "fold_norms"}, {"name": "rotate_residual", "klt": True}])
    pts = [f"layers.{i}.in_proj.input" for i in range(2)]
    st = calibrate(m2, plan, windows, cov_points=pts, progress=False)
    C = sum(st.cov(p) / np.trace(st.cov(p)) for p in pts)
    v = np.diag(C)
    assert v.std() / v.mean() < 1e-5
    v0 = np.diag(st.cov(pts[0]))
    assert v0.std() / v0.mean() > 1e-3  # one layer alone is not equalized: the pooled statistic is what R1 fits


# -- the recipe's α reaches the smoothing passes, and what they compute (any scale preserves the function, so the
#    equivalence test above cannot see a lost α or a wrong scale) --------------------------------------------------


def test_smooth_gate_scales_and_equalizes_with_the_recipes_alpha(one_layer_384):
    """smooth_gate α 0.8 (through the recipe parser): s = a^α / w^(1-α) of the out_proj input's channel maxima a and
    out_proj's column maxima w; afterwards max|g'_j| = (a·w)^(1-α) and max|W_out'[:, j]| = (a·w)^α (mutants: α
    dropped by the parser or fixed in the pass, a constant scale)."""
    m, windows, stats0 = one_layer_384
    m2, plan = _apply(m, windows, stats0, [{"name": "smooth_gate", "alpha": 0.8}])
    a = stats0.chan_absmax("layers.0.out_proj.input").astype(np.float64)
    w = np.abs(m.layers[0].out_proj).max(axis=0).astype(np.float64)
    np.testing.assert_allclose(plan.layers[0].gate_scale, smooth_scales(a, w, 0.8), rtol=1e-6)
    assert not np.allclose(plan.layers[0].gate_scale, smooth_scales(a, w, 0.5), rtol=1e-2)
    np.testing.assert_allclose(np.abs(m2.layers[0].out_proj).max(axis=0), (a * w) ** 0.8, rtol=1e-5)
    st = calibrate(m2, plan, windows, progress=False)
    np.testing.assert_allclose(st.chan_absmax("layers.0.out_proj.input"), (a * w) ** 0.2, rtol=1e-4)


def test_smoothquant_scales_every_linear_input_with_the_recipes_alpha(one_layer_384):
    """smoothquant α 0.8: in_proj's scale divides the norm weight, dt_proj's the δ rows of x_proj, x_proj's and
    out_proj's are the plan's online multiplies, each s = a^α / w^(1-α) of the weight it multiplies (x_proj's after
    its δ rows were scaled); the out_proj input reaches the linear as (a·w)^(1-α)."""
    m, windows, stats0 = one_layer_384
    m2, plan = _apply(m, windows, stats0, [{"name": "smoothquant", "alpha": 0.8}])
    L, L2, lp, R = m.layers[0], m2.layers[0], plan.layers[0], m.config.dt_rank
    a = {k: stats0.chan_absmax(f"layers.0.{k}.input").astype(np.float64)
         for k in ("in_proj", "dt_proj", "x_proj", "out_proj")}
    s_in = smooth_scales(a["in_proj"], np.abs(L.in_proj).max(axis=0), 0.8)
    np.testing.assert_allclose(L2.norm, L.norm / s_in, rtol=1e-6)
    s_dt = smooth_scales(a["dt_proj"], np.abs(L.dt_proj).max(axis=0), 0.8)
    np.testing.assert_allclose(L2.dt_proj, L.dt_proj * s_dt[None, :], rtol=1e-6)
    x_dt = L.x_proj.astype(np.float64).copy()
    x_dt[:R] /= s_dt[:, None]
    np.testing.assert_allclose(lp.xproj_smooth, smooth_scales(a["x_proj"], np.abs(x_dt).max(axis=0), 0.8), rtol=1e-5)
    w_out = np.abs(L.out_proj).max(axis=0).astype(np.float64)
    np.testing.assert_allclose(lp.out_smooth, smooth_scales(a["out_proj"], w_out, 0.8), rtol=1e-6)
    np.testing.assert_allclose(np.abs(L2.out_proj).max(axis=0), (a["out_proj"] * w_out) ** 0.8, rtol=1e-5)
    assert not np.allclose(lp.out_smooth, smooth_scales(a["out_proj"], w_out, 0.5), rtol=1e-2)


def test_shift_delta_centres_every_channel_of_delta(setup):
    """shift_delta: the scan.delta quantization point (Δ − c) has every channel centred, min = −max, and its range
    shrinks (mutant: c = 0, which leaves the function and delta_shift's presence as they were)."""
    m, windows, ids, base, stats0 = setup
    m2, plan = _apply(m, windows, stats0, [{"name": "shift_delta"}])
    st = calibrate(m2, plan, windows, progress=False)
    for i in range(m.config.n_layer):
        pt = f"layers.{i}.scan.delta"
        lo0, hi0 = stats0.chan_lo[pt], stats0.chan_hi[pt]
        assert np.abs(lo0 + hi0).max() > 0.05 * np.abs(hi0).max()  # not centred before
        np.testing.assert_allclose(plan.layers[i].delta_shift, (lo0.astype(np.float64) + hi0) / 2, rtol=1e-6)
        lo, hi = st.chan_lo[pt], st.chan_hi[pt]
        np.testing.assert_allclose(lo + hi, 0, atol=1e-5 * np.abs(hi).max())
        assert st.absmax[pt] < stats0.absmax[pt]


def test_klt_residual_rotation_normalizes_each_layers_trace():
    """rotate_residual klt fits R1 to Σ_i C_i / tr(C_i) (each layer weighted equally), not Σ_i C_i: with one
    layer's covariance 10⁴ times the other's, the unnormalized sum is that layer alone (mutant: the trace division
    dropped). The statistics are synthetic; R1 is read back from the rotated embedding."""
    from mq_deploy.calibrate import Stats
    from mq_deploy.passes.rotate import rotate_residual

    cfg = MambaConfig(d_model=96, n_layer=2, vocab_size=301)
    m = random_model(cfg, seed=10)
    for L in m.layers:
        L.norm = np.ones_like(L.norm)
    m.norm_f = np.ones_like(m.norm_f)
    rng = np.random.default_rng(3)
    covs = []
    for scale in (1.0, 1e4):
        q = random_orthogonal_matrix(96, rng)
        covs.append(scale * (q * rng.uniform(0.1, 10, 96)) @ q.T)
    st = Stats(second={f"layers.{i}.in_proj.input": c for i, c in enumerate(covs)}, gamma=[np.ones(96)] * 2)
    m2, _ = rotate_residual(m, GraphPlan.plain(2), st, klt=True)
    R1 = np.linalg.lstsq(m.embedding.astype(np.float64), m2.embedding.astype(np.float64), rcond=None)[0]
    pooled = sum(c / np.trace(c) for c in covs)
    v = np.diag(R1.T @ pooled @ R1)
    assert v.std() / v.mean() < 1e-4
    u = np.diag(R1.T @ sum(covs) @ R1)
    assert u.std() / u.mean() > 1e-2  # the unnormalized sum is not what R1 diagonalizes


def random_orthogonal_matrix(n, rng):
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))[None, :]
