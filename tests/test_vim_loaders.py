"""Vision Mamba checkpoints as users bring them (the official hustvl/Vim `VisionMamba` arguments and files): what loads,
what is one error (an option that would compile another function if ignored), what is named without refusing."""

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest

from mq_deploy.errors import UserError
from mq_deploy.vision import data as vdata
from mq_deploy.vision.model import VimConfig, load_vim, random_vim, to_state_dict

CFG = VimConfig(d_model=16, depth=2, num_classes=5, img_size=16, patch_size=4, channels=1, d_state=8)


def _write(d, config=None, sd=None, name="model.safetensors"):
    """A Vim checkpoint directory: CFG's config with `config` keys set (None deletes), weights `sd` (default: a
    random CFG model's) under `name` (.safetensors or torch .bin / .pth)."""
    import torch
    from safetensors.numpy import save_file

    d.mkdir(parents=True, exist_ok=True)
    sd = to_state_dict(random_vim(CFG, seed=7)) if sd is None else sd
    if name.endswith(".safetensors"):
        save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(d / name))
    else:
        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, d / name)
    cfg = CFG.to_dict()
    for k, v in (config or {}).items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _load(d):
    warnings = []
    return load_vim(d, warn=warnings.append), warnings


def _same(a, b):
    for L, M in zip(a.layers, b.layers):
        for f in ("in_proj", "out_proj", "x_proj", "x_proj_b", "A_log_b", "D"):
            np.testing.assert_array_equal(getattr(L, f), getattr(M, f))
    np.testing.assert_array_equal(a.head, b.head)


@pytest.mark.parametrize("key,value,expect", [
    ("bimamba_type", "v1", "only the v2 bidirectional block"),
    ("if_bimamba", True, "the v1 bidirectional block"),
    ("if_bidirectional", True, "a second, reversed pass"),
    ("if_rope", True, "rotary position embedding"),
    ("if_abs_pos_embed", False, "without an absolute position embedding"),
    ("use_double_cls_token", True, "two class tokens"),
    ("rms_norm", False, "LayerNorm blocks"),
    ("init_layer_scale", 1e-5, "layer scale"),
    ("if_devide_out", "false", "if_devide_out must be true or false, got 'false'"),
    ("img_size", [16, 12], "only square images"),
])
def test_official_options_it_does_not_implement_are_one_error(tmp_path, key, value, expect):
    """Each would compile another function if ignored (before: silently, e.g. if_bidirectional rel. error 0.96,
    a string "false" read as true)."""
    with pytest.raises(UserError) as e:
        load_vim(_write(tmp_path / "v", {key: value}))
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_pooling_without_a_class_token_must_be_the_mean(tmp_path):
    cfg = {"if_cls_token": False}
    sd = to_state_dict(random_vim(VimConfig(**{**_fields(CFG), "if_cls_token": False}), seed=1))
    for pool, ok in (("mean", True), ("none", False), ("max", False)):
        d = _write(tmp_path / pool, {**cfg, "final_pool_type": pool}, sd)
        if ok:
            assert load_vim(d).config.cls_position is None
        else:
            with pytest.raises(UserError, match="without a class token only mean pooling"):
                load_vim(d)
    load_vim(_write(tmp_path / "cls_none", {"final_pool_type": "none"}))  # with a class token: the class token


def test_official_spellings_load_as_ours(tmp_path):
    """if_divide_out (the current argument name), norm_epsilon, ssm_cfg's block sizes, img_size as a pair, dt_rank
    "auto": the same model as our spelling; a key given twice with two values is refused."""
    sd = to_state_dict(random_vim(VimConfig(**{**_fields(CFG), "if_devide_out": False, "norm_eps": 1e-6}), seed=3))
    ours = load_vim(_write(tmp_path / "ours", {"if_devide_out": False, "norm_eps": 1e-6}, sd))
    theirs = load_vim(_write(tmp_path / "theirs", {"if_devide_out": None, "if_divide_out": False, "norm_eps": None,
                                                   "norm_epsilon": 1e-6, "d_state": None, "img_size": [16, 16],
                                                   "ssm_cfg": {"d_state": 8}, "dt_rank": "auto"}, sd))
    assert theirs.config == ours.config
    _same(theirs, ours)
    with pytest.raises(UserError, match="gives d_state twice, 8 and 16"):
        load_vim(_write(tmp_path / "twice", {"ssm_cfg": {"d_state": 16}}, sd))


def _fields(c):
    return {k: v for k, v in c.to_dict().items() if k != "model_type"}


def test_weight_files_as_they_come(tmp_path):
    """model.safetensors wins over a stray *.safetensors beside it (an EMA copy replaced the weights before); one
    *.pth (official checkpoints) loads, also as a training checkpoint {"model": ..., "args": Namespace}; DDP's
    `module.` prefix is dropped; two unnamed weight files are one error."""
    import torch
    from safetensors.numpy import save_file

    ref = load_vim(_write(tmp_path / "ref"))
    d = _write(tmp_path / "ema")
    save_file({k: np.ascontiguousarray(v) * 2 for k, v in to_state_dict(ref).items()}, str(d / "model_ema.safetensors"))
    _same(load_vim(d), ref)
    sd = to_state_dict(ref)
    pth = tmp_path / "pth"
    _write(pth, sd=sd, name="vim_t_midclstok.pth")
    _same(load_vim(pth), ref)
    train = tmp_path / "train"
    train.mkdir()
    (train / "config.json").write_text((pth / "config.json").read_text())
    torch.save({"model": {"module." + k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()},
                "epoch": 3, "args": argparse.Namespace(lr=1e-3)}, train / "checkpoint.pth")
    _same(load_vim(train), ref)
    two = _write(tmp_path / "two", name="a.safetensors")
    _write(two, name="b.safetensors")
    with pytest.raises(UserError, match=r"several weight files \(a.safetensors, b.safetensors\)"):
        load_vim(two)


def test_tensors_the_config_does_not_use_are_named(tmp_path):
    """A third layer (depth 2), a distillation head and conv biases with conv_bias false: left out, one warning; a
    config with proj_bias but no biases is refused (it was compiled without them)."""
    sd = to_state_dict(random_vim(CFG, seed=7))
    sd.update({k.replace("layers.1.", "layers.2."): v for k, v in sd.items() if k.startswith("layers.1.")})
    sd["head_dist.weight"] = np.zeros((5, 16), np.float32)
    m, warnings = _load(_write(tmp_path / "extra", {"conv_bias": False}, sd))
    assert len(m.layers) == 2 and all(L.conv_bias is None and L.conv_bias_b is None for L in m.layers)
    (w,) = warnings
    n_extra = sum(k.startswith("layers.2.") for k in sd) + 1 + 4  # + head_dist + the 2 × 2 conv biases
    assert w.startswith(f"{n_extra} tensor(s) of the checkpoint are not used by the Vim its config.json describes "
                        "(depth 2): head_dist.weight, layers.0.mixer.conv1d.bias")
    with pytest.raises(UserError, match="missing weight 'layers.0.mixer.in_proj.bias'"):
        load_vim(_write(tmp_path / "nobias", {"proj_bias": True}))


def test_images_of_another_size_are_one_error(tmp_path):
    """Fashion-MNIST is 28×28: a 16×16 model's eval, calibration and compare refuse it in one line (eval was an
    onnxruntime traceback; calibration and the plugin graph ran on the wrong size without a word)."""
    with pytest.raises(UserError, match="the model takes 16×16 images and Fashion-MNIST's are 28×28: calibration"):
        vdata.calibration_images(4, 1, 0, img_size=16)
    with pytest.raises(UserError, match="16×16 images .* evaluation"):
        vdata.evaluate_top1(lambda x: x, 1, 4, img_size=16)
    d = _write(tmp_path / "ck")
    run = lambda *a: subprocess.run([sys.executable, "-m", "mq_deploy", *map(str, a)], capture_output=True,  # noqa
                                    text=True, timeout=300)
    assert run("compile", d, "-o", tmp_path / "out", "-q").returncode == 0
    from mq_deploy.backends.ort import OrtRunner  # OrtRunner(x) takes a Vim's pixel_values (README)

    x = np.random.default_rng(0).standard_normal((2, 1, 16, 16)).astype(np.float32)
    for name in ("model.onnx", "model.portable.onnx"):
        r = OrtRunner(tmp_path / "out" / name)
        np.testing.assert_array_equal(r(x), r.run({"pixel_values": x})["logits"])
        assert r(x).shape == (2, 5)
    for args in (["eval", d, "--task", "fashion_mnist", "--limit", "4"],
                 ["eval", tmp_path / "out", "--task", "fashion_mnist", "--limit", "4"],
                 ["compile", d, "--recipe", "vim-rtn-w8a8", "-o", tmp_path / "q"]):
        r = run(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (args, r.stderr)
        assert "mq-deploy: error: the model takes 16×16 images and Fashion-MNIST's are 28×28" in r.stderr, args
    assert not (tmp_path / "q").exists()


def test_a_vim_config_without_model_type_says_so(tmp_path):
    d = _write(tmp_path / "v", {"model_type": None})
    from mq_deploy.loaders import load_model

    with pytest.raises(UserError, match='looks like a Vision Mamba config .* add "model_type": "vim"'):
        load_model(d)
