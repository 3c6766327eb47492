"""Every Vim pass is function-preserving in fp32 (same logits before and after), as for the LM."""

import numpy as np
import pytest

from mq_deploy.graph.lower import lower_selective_scan
from mq_deploy.vision.graph import VimRunner, build_vim_graph, plain_plan
from mq_deploy.vision.model import VimConfig, random_vim
from mq_deploy.vision.passes import run_vim_passes
from mq_deploy.vision.quantize import fp32_stats

CFG = VimConfig(d_model=48, depth=2, num_classes=6, img_size=12, patch_size=4, channels=3)  # d=48=12·4, di=96
SEQUENCES = {
    "fold_norms": [("fold_norms", {})],
    "quarot": [("fold_norms", {}), ("rotate_residual", {}), ("rotate_dt", {}), ("online_hadamard", {})],
    "mambaquant": [("fold_norms", {}), ("rotate_residual", {"klt": True}), ("rotate_dt", {"klt": True}),
                   ("smooth_gate", {"alpha": 0.5}), ("online_hadamard", {}), ("smooth_state", {})],
    "smoothquant": [("smoothquant", {"alpha": 0.5})],
}


@pytest.fixture(scope="module")
def setup():
    m = random_vim(CFG, seed=5)
    imgs = np.random.default_rng(0).standard_normal((16, 3, 12, 12)).astype(np.float32)
    return m, imgs, fp32_stats(m, imgs), VimRunner(build_vim_graph(m))(imgs[:4])


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_pass_preserves_logits(setup, name):
    m, imgs, stats, ref = setup
    m2, plan = run_vim_passes(m, plain_plan(CFG.depth), SEQUENCES[name], stats)
    g = build_vim_graph(m2, plan)
    for graph in (g, lower_selective_scan(g)):
        out = VimRunner(graph)(imgs[:4])
        assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max(), name
