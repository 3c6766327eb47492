"""Checkpoints as users bring them: what the loader takes (as transformers does), what it refuses in one line, and what
it names without refusing (tensors the config does not use)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mq_deploy.errors import UserError
from mq_deploy.loaders import load_model
from mq_deploy.model import MambaConfig, random_model
from mq_deploy.vision.model import VimConfig, load_vim, random_vim, to_state_dict

from .helpers import write_hf_checkpoint, write_state_spaces_checkpoint


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tied random model (d_model 48, 2 layers, vocab 70) written by transformers' save_pretrained."""
    m = random_model(MambaConfig(d_model=48, n_layer=2, vocab_size=70), seed=11)
    return m, write_hf_checkpoint(m, tmp_path_factory.mktemp("ckpt") / "hf")


def _variant(base_dir: Path, dst: Path, tensors=None, config=None, drop=()) -> Path:
    """A copy of the checkpoint in `base_dir` with `tensors(t)` applied to its tensors (a dict it may edit or replace)
    and `config` keys set (None deletes one), `drop` config keys removed."""
    import torch
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True)
    t = load_file(str(base_dir / "model.safetensors"))
    if tensors is not None:
        t = tensors(t) or t
    save_file({k: v.contiguous() for k, v in t.items()}, str(dst / "model.safetensors"))
    cfg = json.loads((base_dir / "config.json").read_text())
    for k, v in (config or {}).items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    for k in drop:
        cfg.pop(k, None)
    (dst / "config.json").write_text(json.dumps(cfg))
    assert torch is not None
    return dst


def _load(path):
    warnings = []
    return load_model(path, warn=warnings.append), warnings


def _same(a, b):
    assert a.config == b.config
    np.testing.assert_array_equal(a.embedding, b.embedding)
    np.testing.assert_array_equal(a.head, b.head)
    np.testing.assert_array_equal(a.norm_f, b.norm_f)
    for la, lb in zip(a.layers, b.layers):
        for f in ("norm", "in_proj", "conv_weight", "conv_bias", "x_proj", "dt_proj", "dt_proj_bias", "A_log", "D",
                  "out_proj", "in_proj_bias", "out_proj_bias"):
            x, y = getattr(la, f), getattr(lb, f)
            assert (x is None) == (y is None), f
            if x is not None:
                np.testing.assert_array_equal(x, y)


def test_a_stored_head_that_differs_from_a_tied_embedding_is_refused(base, tmp_path):
    """config ties the head (tie_word_embeddings true, or absent: transformers' default) but the checkpoint stores
    another lm_head: which one the model uses differs between transformers versions, so neither is guessed."""
    import torch

    m, d = base
    ref, warnings = _load(d)
    assert warnings == [] and ref.lm_head is None

    def other_head(t):
        t["lm_head.weight"] = t["backbone.embeddings.weight"] * 1.5

    for name, cfg in (("tied", {"tie_word_embeddings": True}), ("no_key", {"tie_word_embeddings": None})):
        with pytest.raises(UserError, match="tie_word_embeddings true.*stores an lm_head.weight that differs"):
            load_model(_variant(d, tmp_path / name, other_head, cfg))
    # the same values stored twice (a .bin of a tied model): fine; untied in the config: the stored head
    same, warnings = _load(_variant(d, tmp_path / "same", lambda t: t.__setitem__(
        "lm_head.weight", t["backbone.embeddings.weight"].clone())))
    assert warnings == [] and same.lm_head is None
    untied, _ = _load(_variant(d, tmp_path / "untied", other_head, {"tie_word_embeddings": False}))
    np.testing.assert_array_equal(untied.lm_head, ref.embedding * np.float32(1.5))
    assert torch is not None


def test_tensors_the_config_does_not_use_are_left_out_and_named(base, tmp_path):
    """Biases the config says the model has none of (use_bias / use_conv_bias false) and layers past
    num_hidden_layers are not part of the function (transformers ignores them too): the model loads without them,
    one warning names them. A stray bias of the wrong shape is no traceback either."""
    import torch

    m, d = base
    di = m.config.d_inner

    def stray(t):
        t["backbone.layers.0.mixer.in_proj.bias"] = torch.ones(2 * di)
        t["backbone.layers.1.mixer.out_proj.bias"] = torch.ones(7)  # wrong shape
        for k in [k for k in t if k.startswith("backbone.layers.1.")]:
            t[k.replace("layers.1.", "layers.2.")] = t[k].clone()  # 11 tensors, its stray bias too

    got, warnings = _load(_variant(d, tmp_path / "stray", stray))
    _same(got, load_model(d))
    assert all(L.in_proj_bias is None and L.out_proj_bias is None for L in got.layers) and len(got.layers) == 2
    (w,) = warnings
    assert w.startswith("13 tensor(s) of the checkpoint are not used by the model its config.json describes (2 layers, "
                        "no projection biases, conv biases): ")
    assert "backbone.layers.0.mixer.in_proj.bias" in w and "(13 in all)" in w

    def no_conv_bias(t):  # the checkpoint has conv biases, the config says it has none
        pass

    got, warnings = _load(_variant(d, tmp_path / "noconv", no_conv_bias, {"use_conv_bias": False}))
    assert all(L.conv_bias is None for L in got.layers)
    assert len(warnings) == 1 and "backbone.layers.0.mixer.conv1d.bias" in warnings[0]


def test_name_variants_of_one_checkpoint_load_alike(base, tmp_path):
    """A base model's save_pretrained (no `backbone.` prefix), DDP's `module.` and torch.compile's `_orig_mod.`
    prefixes (alone or nested either way), and a tied checkpoint that stores only the head all give the same model."""
    m, d = base
    ref = load_model(d)

    def no_backbone(t):
        return {k.removeprefix("backbone."): v for k, v in t.items()}

    def prefixed(p):
        return lambda t: {p + k: v for k, v in t.items()}

    def head_only(t):
        t["lm_head.weight"] = t.pop("backbone.embeddings.weight")
        return t

    for name, edit in (("base_model", no_backbone), ("ddp", prefixed("module.")), ("compiled", prefixed("_orig_mod.")),
                       ("ddp_compiled", prefixed("module._orig_mod.")), ("compiled_ddp", prefixed("_orig_mod.module.")),
                       ("head_only", head_only)):
        got, warnings = _load(_variant(d, tmp_path / name, edit))
        _same(got, ref)
        assert warnings == [], name
    # an untied checkpoint without its embedding is missing it (its head is not the embedding)
    with pytest.raises(UserError, match="missing tensor 'backbone.embeddings.weight'"):
        load_model(_variant(d, tmp_path / "untied_head_only", head_only, {"tie_word_embeddings": False}))


def test_training_checkpoints_in_pytorch_model_bin(base, tmp_path):
    """pytorch_model.bin holding a training checkpoint: the state dict under "model" (DeiT / Vim) or "state_dict"
    (PyTorch Lightning, its names under the module's attribute or not) beside other entries loads; anything else names
    what the file holds."""
    import shutil

    import torch
    from safetensors.torch import load_file

    m, d = base
    sd = load_file(str(d / "model.safetensors"))
    for key in ("model", "state_dict"):
        ck = tmp_path / key
        ck.mkdir()
        shutil.copy(d / "config.json", ck / "config.json")
        torch.save({key: sd, "epoch": 3}, str(ck / "pytorch_model.bin"))
        _same(load_model(ck), load_model(d))
    torch.save({"state_dict": {"model." + k: v for k, v in sd.items()}, "epoch": 3}, str(ck / "pytorch_model.bin"))
    _same(load_model(ck), load_model(d))  # Lightning's names: the LightningModule's attribute first
    torch.save({"weights": sd, "epoch": 3}, str(ck / "pytorch_model.bin"))
    with pytest.raises(UserError, match=r"does not hold a state dict of tensors \(it holds 'weights', 'epoch'\)"):
        load_model(ck)


@pytest.mark.parametrize("key,value,expect", [
    ("hidden_act", "gelu", "hidden_act is 'gelu'; Mamba-1 graphs use SiLU"),
    ("architectures", ["FalconMambaForCausalLM"], "architectures names FalconMambaForCausalLM"),
    ("mixer_rms_eps", 1e-6, "'mixer_rms_eps' is a key of falcon_mamba"),
    ("conv_kernel", 1, "d_conv (conv_kernel) is 1; mq-deploy needs a causal convolution of at least 2 taps"),
])
def test_configs_of_other_architectures_are_refused(base, tmp_path, key, value, expect):
    """What would compile to silently different numbers (another activation, falcon_mamba's mixer norms under
    model_type "mamba") or a broken decode state (no convolution) is one error."""
    with pytest.raises(UserError) as e:
        load_model(_variant(base[1], tmp_path / "v", config={key: value}))
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_config_spellings(base, tmp_path):
    """time_step_rank as a decimal string (mq-deploy is more lenient than transformers here); intermediate_size is
    d_inner (transformers reads it too: one that disagrees with the weights is refused); hidden_act "swish" (SiLU);
    no model_type but architectures MambaForCausalLM."""
    m, d = base
    got = load_model(_variant(d, tmp_path / "rank", config={"time_step_rank": str(m.config.dt_rank),
                                                             "hidden_act": "swish"}))
    assert got.config.dt_rank == m.config.dt_rank and got.config.d_inner == m.config.d_inner
    with pytest.raises(UserError, match=r"weight 'layers.0.in_proj' has shape \(192, 48\), expected \(24690, 48\)"):
        load_model(_variant(d, tmp_path / "inner", config={"intermediate_size": 12345}))
    wide = random_model(MambaConfig(d_model=48, n_layer=1, vocab_size=70, d_inner=80), seed=4)  # not expand · d
    assert load_model(write_hf_checkpoint(wide, tmp_path / "wide")).config.d_inner == 80
    # an older save without model_type, recognised by its architectures
    got = load_model(_variant(d, tmp_path / "no_type", config={"model_type": None,
                                                                "architectures": ["MambaForCausalLM"]}))
    _same(got, load_model(d))
    # a boolean written as a string: bool("false") is True, so it is refused (as transformers refuses it)
    with pytest.raises(UserError, match='config.json: .use_conv_bias. must be true or false, not "false"'):
        load_model(_variant(d, tmp_path / "strbool", config={"use_conv_bias": "false"}))


@pytest.mark.parametrize("config,expect", [
    ({"layer_norm_epsilon": "abc"}, "config.json: 'layer_norm_epsilon' must be a number, not \"abc\""),  # was a ValueError
    ({"layer_norm_epsilon": True}, "config.json: 'layer_norm_epsilon' must be a number, not true"),
    ({"expand": "2", "intermediate_size": None}, "model config: expand must be a positive integer, got '2'"),  # was '2222…'
    ({"hidden_size": True}, "model config: d_model must be a positive integer, got True"),  # was taken for 1
    ({"num_hidden_layers": 2.0}, "model config: n_layer must be a positive integer, got 2.0"),
    ({"vocab_size": None}, "config.json: missing 'vocab_size'"),
])
def test_config_values_of_the_wrong_type_are_one_line(base, tmp_path, config, expect):
    with pytest.raises(UserError) as e:
        load_model(_variant(base[1], tmp_path / "v", config=config))
    assert str(e.value) == expect


def test_state_spaces_config_values_of_the_wrong_type_are_one_line(tmp_path):
    m = random_model(MambaConfig(d_model=48, n_layer=1, vocab_size=70), seed=1)
    d = write_state_spaces_checkpoint(m, tmp_path / "ss")
    raw = json.loads((d / "config.json").read_text())
    for change, expect in (({"d_model": "48"}, "model config: d_model must be a positive integer, got '48'"),
                           ({"vocab_size": "70"}, "config.json: 'vocab_size' must be a positive integer, not \"70\""),
                           ({"norm_epsilon": "1e-5"}, "config.json: 'norm_epsilon' must be a number, not \"1e-5\"")):
        (d / "config.json").write_text(json.dumps({k: v for k, v in {**raw, **change}.items() if v is not None}))
        with pytest.raises(UserError) as e:
            load_model(d)
        assert str(e.value) == expect


def test_a_pickled_model_is_one_line(base, tmp_path):
    """A whole nn.Module saved with torch.save: torch's weights-only refusal is several lines of advice that does not
    apply here; mq-deploy says what the file is and what to save instead."""
    import torch

    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text((base[1] / "config.json").read_text())
    torch.save(torch.nn.Linear(3, 4), d / "pytorch_model.bin")
    with pytest.raises(UserError) as e:
        load_model(d)
    assert "holds pickled Python objects" in str(e.value) and "\n" not in str(e.value)
    assert "\x1b" not in str(e.value)


def test_compile_names_a_d_state_the_plugins_do_not_take_and_build_refuses_it(tmp_path):
    """d_state 32 compiles (onnxruntime runs it) with a warning; `build` refuses the OUTDIR before TensorRT."""
    from mq_deploy.compile import compile_model
    from mq_deploy.trt import plan_build

    m = random_model(MambaConfig(d_model=32, n_layer=1, vocab_size=40, d_state=32), seed=2)
    warnings = []
    compile_model(str(write_hf_checkpoint(m, tmp_path / "ck")), "fp32", tmp_path / "out", progress=False,
                  report_passes=False, warn=warnings.append)
    assert warnings == ["d_state is 32, and the TensorRT plugins take d_state <= 16: onnxruntime runs the compiled "
                        "graphs, `mq-deploy build` cannot make an engine of them"]
    for graph in ("model", "prefill", "decode"):
        with pytest.raises(UserError, match="d_state is 32, and the TensorRT plugins take d_state <= 16"):
            plan_build(tmp_path / "out", require_plugin_lib=False, graph=graph)


def test_a_recipe_needing_a_hadamard_of_d_inner_is_refused_before_calibration(tmp_path):
    """mambaquant's online Hadamard of d_inner = 100 (no Hadamard matrix): one error before any calibration work."""
    m = random_model(MambaConfig(d_model=50, n_layer=1, vocab_size=40), seed=2)
    ck = write_hf_checkpoint(m, tmp_path / "ck")
    r = subprocess.run([sys.executable, "-m", "mq_deploy", "compile", str(ck), "--recipe", "mambaquant-w8a8", "-o",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "runs online_hadamard, a Hadamard transform of size d_inner = 100, which has none" in r.stderr
    assert "calibration" not in r.stderr.replace("before calibration", "")  # no calibration line came first
    assert not (tmp_path / "out").exists()


def test_the_default_warning_is_printed_once_a_process(base, tmp_path, capsys):
    """validate loads a checkpoint twice (the torch reference, the re-derivation): the loader's stderr warning comes
    once."""
    import torch

    def stray(t):
        t["backbone.extra"] = torch.ones(3)

    d = _variant(base[1], tmp_path / "stray", stray)
    load_model(d)
    load_model(d)
    err = capsys.readouterr().err
    assert err.count("warning: 1 tensor(s) of the checkpoint are not used") == 1 and "backbone.extra" in err


def test_a_state_spaces_embedding_without_the_vocabulary_padding_is_named(tmp_path):
    """mamba-ssm pads vocab_size to a multiple of pad_vocab_size_multiple (8) when it builds the model; a checkpoint
    saved without that padding gets a message that names it, and loads with pad_vocab_size_multiple 1."""
    from .helpers import write_state_spaces_checkpoint

    m = random_model(MambaConfig(d_model=32, n_layer=1, vocab_size=67), seed=3)  # 67: not a multiple of 8
    d = write_state_spaces_checkpoint(m, tmp_path / "ss")
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["pad_vocab_size_multiple"] == 8
    with pytest.raises(UserError, match=r"embedding has 67 rows, the model 72: config.json's vocab_size padded .*"
                                        r"set pad_vocab_size_multiple to 1"):
        load_model(d)
    (d / "config.json").write_text(json.dumps({**cfg, "pad_vocab_size_multiple": 1}))
    got = load_model(d)
    assert got.config.vocab_size == 67
    np.testing.assert_array_equal(got.embedding, m.embedding)


def test_a_folder_with_a_single_file_and_a_sharded_index_loads_what_transformers_loads(base, tmp_path):
    """model.safetensors beside model.safetensors.index.json (an older export left in place): transformers'
    from_pretrained takes the single file, so must the compile, or its numbers are of other weights."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import MambaForCausalLM

    m, src = base
    d = _variant(src, tmp_path / "both")
    t = load_file(str(d / "model.safetensors"))
    names = sorted(t)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: t[k].contiguous() for k in keys}, str(d / shard))
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: s for s, keys in shards.items() for k in keys}}))
    key = "backbone.layers.0.mixer.D"
    t[key] = t[key] * 3  # the single file differs from the shards
    save_file({k: v.contiguous() for k, v in t.items()}, str(d / "model.safetensors"))
    hf = MambaForCausalLM.from_pretrained(str(d), dtype=torch.float32)
    got, _ = _load(d)
    np.testing.assert_array_equal(got.layers[0].D, hf.backbone.layers[0].mixer.D.detach().numpy())
    np.testing.assert_array_equal(got.layers[0].D, 3 * m.layers[0].D)
    assert got.source["weights"] == ["model.safetensors"]  # (what compile records the sha256 of)
    (d / "model.safetensors").unlink()  # the index alone: the shards
    got, _ = _load(d)
    np.testing.assert_array_equal(got.layers[0].D, m.layers[0].D)
    assert got.source["weights"] == ["model.safetensors.index.json", *sorted(shards)]


def test_the_torch_reference_is_transformers_own_where_it_reads_the_checkpoint(base, tmp_path):
    """validate --torch / eval CHECKPOINT: transformers' from_pretrained for a checkpoint it reads whole; names only
    mq-deploy's loader maps (DDP's `module.` prefix: transformers would initialise those tensors at random) fall back
    to the model that loader reads, which computes the same logits."""
    from mq_deploy.backends.torch_hf import checkpoint_runner

    _, src = base
    ids = np.arange(12, dtype=np.int64).reshape(2, 6) % 70
    plain, how = checkpoint_runner(src)
    assert how == "transformers' MambaForCausalLM.from_pretrained"
    wrapped = _variant(src, tmp_path / "ddp", tensors=lambda t: {"module." + k: v for k, v in t.items()})
    other, how2 = checkpoint_runner(wrapped)
    assert how2.startswith("MambaForCausalLM built by mq-deploy's loader (transformers' from_pretrained does not read")
    np.testing.assert_allclose(other(ids), plain(ids), rtol=0, atol=1e-5)


# -- what the loaders read (from a mutation audit): dt_rank "auto", bf16, wrapper nesting, a sharded index, ssm_cfg --

def test_dt_rank_auto_is_transformers_own():
    """"auto" → ceil(d_model / 16), as transformers' MambaConfig and mamba-ssm compute it (Vim-tiny d 192: 12)."""
    transformers = pytest.importorskip("transformers")
    from mq_deploy.loaders.formats import _hf_config, _ss_config

    for d in (24, 48, 100, 192, 768):
        want = transformers.MambaConfig(hidden_size=d, time_step_rank="auto").time_step_rank
        assert _hf_config({"hidden_size": d, "num_hidden_layers": 1, "vocab_size": 8,
                           "time_step_rank": "auto"}).dt_rank == want
        assert _ss_config({"d_model": d, "n_layer": 1, "vocab_size": 8}).dt_rank == want
        assert VimConfig.from_dict({"d_model": d, "depth": 1, "num_classes": 2, "dt_rank": "auto"}).dt_rank == want
    assert VimConfig(d_model=192, depth=1, num_classes=2).dt_rank == 12


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_checkpoints_load_as_fp32(tmp_path, dtype):
    """A bf16 / fp16 checkpoint (as many are published) loads as the fp32 values of its weights, in fp32 arrays."""
    torch = pytest.importorskip("torch")
    m = random_model(MambaConfig(d_model=32, n_layer=1, vocab_size=40), seed=2)
    d = write_hf_checkpoint(m, tmp_path / dtype, dtype=getattr(torch, dtype))
    got = load_model(d)
    want = torch.from_numpy(m.layers[0].in_proj).to(getattr(torch, dtype)).float().numpy()
    assert got.layers[0].in_proj.dtype == np.float32 and got.embedding.dtype == np.float32
    np.testing.assert_array_equal(got.layers[0].in_proj, want)


def _vim_dir(d, sd, cfg, config_extra=None):
    from safetensors.numpy import save_file

    d.mkdir(parents=True)
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({**cfg.to_dict(), **(config_extra or {})}))
    return d


@pytest.mark.parametrize("prefix", ["module._orig_mod.", "_orig_mod.module."])
def test_wrapped_models_load_in_either_nesting(tmp_path, prefix):
    """DDP(torch.compile(model)) names every tensor `module._orig_mod.…`, torch.compile(DDP(model)) `_orig_mod.module.…`:
    both prefixes go (they were stripped in one fixed order, and the second was "missing weight")."""
    cfg = VimConfig(d_model=16, depth=1, num_classes=3, img_size=8, patch_size=4, channels=1)
    sd = to_state_dict(random_vim(cfg, seed=1))
    got = load_vim(_vim_dir(tmp_path / "w", {prefix + k: v for k, v in sd.items()}, cfg), warn=lambda s: None)
    for k, v in to_state_dict(got).items():
        np.testing.assert_array_equal(np.asarray(v).reshape(np.shape(sd[k])), sd[k])


def test_official_ssm_cfg_without_conv_bias_loads(tmp_path):
    """ssm_cfg {"conv_bias": false} (the Mamba block's argument): a model without conv1d biases, in both directions."""
    cfg = VimConfig(d_model=16, depth=1, num_classes=3, img_size=8, patch_size=4, channels=1, conv_bias=False)
    sd = to_state_dict(random_vim(cfg, seed=2))
    raw = {k: v for k, v in cfg.to_dict().items() if k != "conv_bias"}
    d = tmp_path / "v"
    _vim_dir(d, sd, cfg)
    (d / "config.json").write_text(json.dumps({**raw, "ssm_cfg": {"conv_bias": False}}))
    got = load_vim(d, warn=lambda s: None)
    assert got.config.conv_bias is False and got.layers[0].conv_bias is None and got.layers[0].conv_bias_b is None


def test_a_sharded_index_naming_a_tensor_no_shard_holds_is_one_error(tmp_path):
    from safetensors.numpy import save_file

    from mq_deploy.loaders.tensors import read_tensors

    save_file({"a": np.ones(2, np.float32)}, str(tmp_path / "s1.safetensors"))
    save_file({"b": np.zeros(3, np.float32)}, str(tmp_path / "s2.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors", "c": "s2.safetensors"}}))
    with pytest.raises(UserError, match=r"shards of .* lack tensors named in model.safetensors.index.json: \['c'\]"):
        read_tensors(tmp_path, ("model.safetensors.index.json",))
