"""`mq-deploy eval DIR --task fashion_mnist --json` on a tiny random Vim checkpoint; quantized recipe smoke test."""

import json

import numpy as np
import pytest

from mq_deploy.vision import data as vdata
from mq_deploy.vision.model import VimConfig, random_vim, to_state_dict

CFG = VimConfig(d_model=16, depth=1, num_classes=10, img_size=28, patch_size=7, channels=1)

needs_data = pytest.mark.skipif(not (vdata.DEFAULT_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                                reason="dataset-fashion-mnist is not installed")


def _save(tmp_path):
    from safetensors.numpy import save_file

    m = random_vim(CFG, seed=2)
    save_file({k: np.ascontiguousarray(v) for k, v in to_state_dict(m).items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(CFG.to_dict()))
    return m


@needs_data
def test_eval_cli_json(tmp_path, capsys):
    from mq_deploy.cli import main

    _save(tmp_path)
    assert main(["eval", str(tmp_path), "--task", "fashion_mnist", "--limit", "16", "--json", "-q"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["task"] == "fashion_mnist" and r["n"] == 16 and 0.0 <= r["top1"] <= 1.0


@needs_data
@pytest.mark.parametrize("recipe", ["vim-mambaquant-w8a8", "vim-gptq-w4a8"])
def test_quantized_recipe_runs(recipe):
    from mq_deploy.graph.lower import lower_selective_scan
    from mq_deploy.recipes import load_recipe
    from mq_deploy.vision.graph import VimRunner, build_vim_graph
    from mq_deploy.vision.quantize import prepare_vim

    m = random_vim(CFG, seed=2)
    imgs = vdata.calibration_images(8, 1, 0)
    m2, plan, _ = prepare_vim(m, load_recipe(recipe), imgs)
    g = build_vim_graph(m2, plan)
    assert sum(n.op_type == "QuantizeLinear" for n in g.graph.node) > 0
    a, b = VimRunner(g)(imgs[:2]), VimRunner(lower_selective_scan(g))(imgs[:2])
    assert np.abs(a - b).max() <= 1e-3 * np.abs(a).max()
    ref = VimRunner(build_vim_graph(m))(imgs[:2])
    assert np.abs(a - ref).max() <= 0.2 * np.abs(ref).max()
