"""Torch backend: the Hugging Face `MambaForCausalLM` built from a `MambaModel` (the fp32 reference)."""

from __future__ import annotations

import numpy as np

from ..model import MambaModel


def hf_config(model: MambaModel):
    from transformers import MambaConfig as HFMambaConfig

    c = model.config
    return HFMambaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, state_size=c.d_state, num_hidden_layers=c.n_layer,
        layer_norm_epsilon=c.norm_eps, expand=c.expand, conv_kernel=c.d_conv, use_bias=c.proj_bias,
        use_conv_bias=c.conv_bias, time_step_rank=c.dt_rank, intermediate_size=c.d_inner,
        residual_in_fp32=c.residual_in_fp32, tie_word_embeddings=c.tie_embeddings and model.head_mix is None,
        use_mambapy=False,
        pad_token_id=1, bos_token_id=0, eos_token_id=0,
    )


def state_dict(model: MambaModel) -> dict:
    """The Hugging Face state dict (torch tensors, fp32) of `model`."""
    import torch

    sd = {"backbone.embeddings.weight": model.embedding, "backbone.norm_f.weight": model.norm_f,
          "lm_head.weight": model.untied_head()}
    for i, L in enumerate(model.layers):
        p = f"backbone.layers.{i}."
        sd.update({
            p + "norm.weight": L.norm, p + "mixer.in_proj.weight": L.in_proj, p + "mixer.conv1d.weight": L.conv_weight,
            p + "mixer.x_proj.weight": L.x_proj, p + "mixer.dt_proj.weight": L.dt_proj,
            p + "mixer.dt_proj.bias": L.dt_proj_bias, p + "mixer.A_log": L.A_log, p + "mixer.D": L.D,
            p + "mixer.out_proj.weight": L.out_proj,
        })
        for key, arr in ((p + "mixer.conv1d.bias", L.conv_bias), (p + "mixer.in_proj.bias", L.in_proj_bias),
                         (p + "mixer.out_proj.bias", L.out_proj_bias)):
            if arr is not None:
                sd[key] = arr
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in sd.items()}


def build_hf_model(model: MambaModel):
    """An fp32 `transformers.MambaForCausalLM` holding exactly `model`'s weights, in eval mode."""
    import torch
    from transformers import MambaForCausalLM

    _quiet_hf_logs()
    with torch.device("meta"):
        hf = MambaForCausalLM(hf_config(model))
    hf.load_state_dict(state_dict(model), assign=True, strict=True)
    if model.config.tie_embeddings and model.head_mix is None:
        hf.tie_weights()
    return hf.float().eval()


def _quiet_hf_logs() -> None:
    import logging

    # its warnings that the fused CUDA kernels are absent and the reference path runs: expected here (a CPU reference)
    for name in ("transformers.models.mamba.modeling_mamba", "transformers.integrations.hub_kernels"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _hf_names(model_dir) -> bool:
    """Whether the checkpoint's tensor names are transformers' own (`backbone.embeddings.weight`, every name under
    `backbone.` or `lm_head.`), by the safetensors header or the sharded index, without reading a weight; True where
    the names cannot be read cheaply (a .bin: transformers then decides)."""
    import json
    from pathlib import Path

    from ..loaders.formats import FORMATS
    from ..loaders.tensors import weight_files

    files = weight_files(Path(model_dir), FORMATS["hf"].weight_files)
    if not files:
        return False
    try:
        if files[0].endswith(".index.json"):
            names = list(json.loads((Path(model_dir) / files[0]).read_text())["weight_map"])
        elif files[0].endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(str(Path(model_dir) / files[0]), "np") as f:
                names = list(f.keys())
        else:
            return True
    except Exception:  # noqa: BLE001 - an unreadable file: mq-deploy's loader says why
        return False
    return "backbone.embeddings.weight" in names and all(n.startswith(("backbone.", "lm_head.")) for n in names)


def from_pretrained(model_dir) -> object | None:
    """transformers' own `MambaForCausalLM.from_pretrained` of a Hugging Face-format checkpoint directory, in fp32 and
    eval mode: a reference that does not go through mq-deploy's loader (which file it takes, how it names and converts
    the tensors). None where transformers does not read the checkpoint whole (a tensor it would initialise at random:
    names only mq-deploy's loader maps, such as DDP's `module.` prefix) or cannot read it at all."""
    try:
        from transformers import MambaForCausalLM
        from transformers.utils import logging as hf_logging
    except ImportError:
        return None
    if not _hf_names(model_dir):  # (not read twice: transformers would load it all, then find names it lacks)
        return None
    _quiet_hf_logs()
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # (its own report of missing keys: judged below)
    hf_logging.disable_progress_bar()  # (its loading bar: mq-deploy's commands say what they load, -q silences them)
    try:
        hf, info = MambaForCausalLM.from_pretrained(str(model_dir), output_loading_info=True, use_mambapy=False)
    except Exception:  # noqa: BLE001 - whatever transformers cannot read, mq-deploy's loader says why
        return None
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
    tied = hf.config.tie_word_embeddings
    missing = [k for k in info.get("missing_keys") or () if not (k == "lm_head.weight" and tied)]
    if missing or info.get("mismatched_keys"):
        return None
    return hf.float().eval()


def checkpoint_runner(path=None, threads: int | None = None) -> tuple["TorchRunner", str]:
    """The torch fp32 reference of a checkpoint directory (None: the bundled model) and how it was made: transformers'
    own `from_pretrained` for a Hugging Face-format checkpoint it reads whole, else the model mq-deploy's loader reads
    (a state-spaces checkpoint, or names only that loader maps)."""
    from ..loaders import load_model, resolve_model_dir
    from ..loaders.formats import detect_format, read_config

    model_dir = resolve_model_dir(path)
    fmt = detect_format(read_config(model_dir / "config.json"), model_dir / "config.json")
    hf = from_pretrained(model_dir) if fmt == "hf" else None
    if hf is not None:
        return TorchRunner(threads=threads, hf=hf), "transformers' MambaForCausalLM.from_pretrained"
    why = "a state-spaces checkpoint" if fmt != "hf" else "transformers' from_pretrained does not read it whole"
    return TorchRunner(load_model(path), threads=threads), f"MambaForCausalLM built by mq-deploy's loader ({why})"


class TorchRunner:
    """`runner(input_ids) -> logits` through Hugging Face `MambaForCausalLM` in fp32: built from `model`, or `hf` (a
    `from_pretrained` model) as it is."""

    def __init__(self, model: MambaModel | None = None, threads: int | None = None, hf=None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.model = hf if hf is not None else build_hf_model(model)

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        import torch

        # exp(Δ·A) underflows into denormals, which are 5-10x slower on x86; flushing them to zero
        # changes nothing measurable (exp(-88) is already below fp32's normal range)
        flushed = torch.set_flush_denormal(True)
        try:
            with torch.no_grad():
                ids = torch.from_numpy(np.asarray(input_ids, dtype=np.int64))
                return self.model(input_ids=ids, use_cache=False).logits.float().numpy()
        finally:
            if flushed:
                torch.set_flush_denormal(False)
