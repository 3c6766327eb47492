"""`mq-deploy eval DIR --task fashion_mnist --json` on a tiny random Vim checkpoint; quantized recipe smoke test."""

import json
from pathlib import Path

import numpy as np
import pytest

from mq_deploy.vision import data as vdata
from mq_deploy.vision.model import VimConfig, random_vim, to_state_dict

from .conftest import needs_fashion_mnist
from .helpers import StopAt

CFG = VimConfig(d_model=16, depth=1, num_classes=10, img_size=28, patch_size=7, channels=1)

needs_data = needs_fashion_mnist


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


def test_compile_vim_checkpoint_fp32_and_w8a8(tmp_path):
    """`mq-deploy compile` on a Vim directory: both flavours, manifest, quantized lint-clean graph."""
    import json
    import subprocess
    import sys

    from mq_deploy.lint import lint_file
    from mq_deploy.vision.data import data_dir

    ckpt = Path(__file__).resolve().parents[1] / "src/mq_deploy/assets/vim-fmnist"
    if not (ckpt / "config.json").is_file():
        pytest.skip("no bundled Vim checkpoint")
    run = lambda *a: subprocess.run([sys.executable, "-m", "mq_deploy", *map(str, a)], capture_output=True, text=True)  # noqa: E731
    r = run("compile", ckpt, "-o", tmp_path / "fp32", "-q")
    assert r.returncode == 0, r.stderr
    man = json.loads((tmp_path / "fp32" / "manifest.json").read_text())
    assert man["io"]["inputs"][0]["name"] == "pixel_values" and man["plugins"] == [
        {"name": "SelectiveScan", "version": "1", "namespace": "mq_deploy", "count": 2 * 6}]
    assert man["self_check"]["max_rel_error_plugin_vs_portable"] < 1e-4
    try:
        data_dir()
    except Exception:
        pytest.skip("Fashion-MNIST (Debian dataset-fashion-mnist) is not installed")
    r = run("compile", ckpt, "--recipe", "vim-mambaquant-w8a8", "--calib-samples", "16", "-o", tmp_path / "q", "-q")
    assert r.returncode == 0, r.stderr
    assert lint_file(tmp_path / "q" / "model.onnx") == []
    man = json.loads((tmp_path / "q" / "manifest.json").read_text())  # + one Hadamard a block (out_proj's input)
    assert [(p["name"], p["count"]) for p in man["plugins"]] == [("SelectiveScan", 2 * 6), ("Hadamard", 6)]
    assert man["files"]["model.onnx"]["plugins"] == man["plugins"] and "plugins" not in man["files"]["model.portable.onnx"]
    assert json.loads((tmp_path / "q" / "manifest.json").read_text())["quantization"]["weight_bits"] == 8


@needs_data
def test_compare_vision_resumes(tmp_path, monkeypatch, capsys):
    """A Vim compare stopped half-way keeps its rows (partial), and --resume runs the recipes left (fp32 again, for
    the predictions the agreement needs), with the rows a run without a stop gives."""
    import mq_deploy.vision.compare as vcmp
    from mq_deploy.cli import main

    _save(tmp_path)
    stop = StopAt(monkeypatch, vcmp, "prepare_vim", "vim-quarot-w4a8")
    prepared = stop.prepared
    args = ["compare", str(tmp_path), "--recipes", "vim-rtn-w8a8,vim-quarot-w4a8", "--limit", "16", "--json", "-q"]
    out = tmp_path / "cmp"
    assert main(args + ["-o", str(out)]) == 130
    saved = json.loads((out / "compare.json").read_text())
    assert [r["recipe"] for r in saved["rows"]] == ["fp32", "vim-rtn-w8a8"] and saved["meta"]["complete"] is False
    assert "partial: 2 of 3 recipes" in (out / "compare.md").read_text()
    capsys.readouterr()
    stop.recipe = None
    prepared.clear()
    assert main(args + ["-o", str(out), "--resume"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert prepared == ["vim-quarot-w4a8"] and rows[:2] == saved["rows"]
    meta = json.loads((out / "compare.json").read_text())["meta"]
    assert meta["complete"] is True and meta["model"]["config"]["d_model"] > 0
    assert main(args + ["-o", str(tmp_path / "whole")]) == 0
    whole = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in rows] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in whole]
    prepared.clear()
    assert main(args + ["-o", str(out), "--resume"]) == 0 and prepared == []  # all done: nothing run


@needs_data
def test_compare_cli_vision_mode(tmp_path, capsys):
    """`compare` on a Vim directory: fp32 + recipes, top-1 and agreement per row; language tasks and
    language-model recipes are refused with one clear error."""
    from mq_deploy.cli import main

    _save(tmp_path)
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path), "--recipes", "vim-rtn-w8a8,vim-quarot-w4a8",  # --tasks fashion_mnist by default
                 "--limit", "32", "-o", str(out), "--json", "-q"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["recipe"] for r in rows] == ["fp32", "vim-rtn-w8a8", "vim-quarot-w4a8"]
    assert rows[0]["fashion_mnist"]["agreement"] == 1.0
    for r in rows:
        m = r["fashion_mnist"]
        assert m["n"] == 32 and 0.0 <= m["acc"] <= 1.0 and 0.0 <= m["agreement"] <= 1.0
    saved = json.loads((out / "compare.json").read_text())
    assert saved["rows"] == rows and saved["meta"]["model"]["format"] == "vim"
    assert "| vim-rtn-w8a8 |" in (out / "compare.md").read_text()
    # --calib-samples is the images' count for every recipe that calibrates; the text-only flags are said ignored
    capsys.readouterr()
    assert main(["compare", str(tmp_path), "--recipes", "vim-rtn-w8a8,vim-rtn-w4a16", "--limit", "8", "--calib-samples",
                 "4", "--calib-seq-len", "9", "-o", str(tmp_path / "cmp2"), "--json"]) == 0
    err = capsys.readouterr().err
    assert err.count("calibration: 4 training images") == 1  # (vim-rtn-w4a16 reads none)
    assert "warning: --calib-seq-len is not read: a Vision Mamba (Vim) calibrates on images: ignored" in err
    for bad, msg in ((["--tasks", "wikitext2", "--recipes", "vim-rtn-w8a8"], "fashion_mnist only"),
                     (["--tasks", "fashion_mnist", "--recipes", "rtn-w8a8"], "language-model recipe"),
                     (["--recipes", "vim-rtn-w8a8", "--tasks", ""], "at least one name")):
        assert main(["compare", str(tmp_path), *bad, "--limit", "8", "-o", str(out), "-q"]) == 2
        assert msg in capsys.readouterr().err


def test_missing_fashion_mnist_names_each_commands_flag(tmp_path, monkeypatch):
    """Without the data set, the error names how each command takes its folder (compile's is --calib: it has no
    --data), so the hint works whichever command gave it."""
    import mq_deploy.vision.data as vdata
    from mq_deploy.errors import UserError

    monkeypatch.setattr(vdata, "DEFAULT_DIR", tmp_path / "none")
    monkeypatch.setenv("MQ_DEPLOY_DATA_DIR", str(tmp_path))
    with pytest.raises(UserError) as e:
        vdata.data_dir()
    for hint in ("$MQ_DEPLOY_DATA_DIR/fashion-mnist", "compile --calib DIR", "eval --data DIR",
                 "compare --data fashion_mnist=DIR"):
        assert hint in str(e.value)
