"""Vim: ONNX (plugin and portable flavours) vs the PyTorch reference, random-init configs, fp32."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mq_deploy.graph.lower import lower_selective_scan  # noqa: E402
from mq_deploy.vision.graph import VimRunner, build_vim_graph  # noqa: E402
from mq_deploy.vision.model import VimConfig, from_state_dict, random_vim, to_state_dict  # noqa: E402
from mq_deploy.vision.torch_ref import VimTorch  # noqa: E402

CONFIGS = {
    "p4-c3-middle": VimConfig(d_model=24, depth=2, num_classes=5, img_size=12, patch_size=4, channels=3),
    "p7-c1-front": VimConfig(d_model=48, depth=2, num_classes=10, img_size=28, patch_size=7, channels=1,
                             use_middle_cls_token=False),
    "p4-c1-mean-nodiv": VimConfig(d_model=20, depth=1, num_classes=3, img_size=8, patch_size=4, channels=1,
                                  if_cls_token=False, if_devide_out=False),
    "p4-stride2-c3": VimConfig(d_model=16, depth=1, num_classes=4, img_size=12, patch_size=4, stride=2, channels=3),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_onnx_matches_torch(name):
    cfg = CONFIGS[name]
    m = random_vim(cfg, seed=3)
    x = np.random.default_rng(0).standard_normal((3, cfg.channels, cfg.img_size, cfg.img_size)).astype(np.float32)
    ref = VimTorch.from_model(m)(torch.from_numpy(x)).detach().numpy()
    g = build_vim_graph(m)
    scans = [n for n in g.graph.node if n.op_type == "SelectiveScan"]
    assert len(scans) == 2 * cfg.depth
    for graph in (g, lower_selective_scan(g)):
        out = VimRunner(graph)(x)
        assert out.shape == (3, cfg.num_classes)
        assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


def test_state_dict_round_trip_uses_official_names():
    cfg = CONFIGS["p4-c3-middle"]
    m = random_vim(cfg, seed=1)
    sd = to_state_dict(m)
    t = VimTorch(cfg).state_dict()
    assert set(sd) == set(t)
    for k in ("layers.0.mixer.A_b_log", "layers.1.mixer.conv1d_b.weight", "layers.0.mixer.dt_proj_b.bias",
              "cls_token", "pos_embed", "patch_embed.proj.weight", "head.bias"):
        assert k in sd and tuple(sd[k].shape) == tuple(t[k].shape)
    m2 = from_state_dict(cfg, sd)
    assert np.array_equal(m2.layers[1].x_proj_b, m.layers[1].x_proj_b)


def test_dynamic_batch():
    cfg = CONFIGS["p4-c3-middle"]
    r = VimRunner(build_vim_graph(random_vim(cfg)))
    x = np.random.default_rng(1).standard_normal((5, 3, 12, 12)).astype(np.float32)
    full = r(x)
    assert np.allclose(r(x[:1]), full[:1], atol=1e-5)
