"""Adapter tables for the checkpoint families: config keys and tensor names → `MambaModel`.

| family | recognised by | embedding key | weights |
|---|---|---|---|
| hf (transformers `MambaForCausalLM`) | `model_type == "mamba"` | `backbone.embeddings.weight` | model.safetensors, its .index.json, pytorch_model.bin or its .index.json (transformers' order) |
| state-spaces (mamba-ssm `MambaLMHeadModel`) | `d_model` and `n_layer` keys | `backbone.embedding.weight` | pytorch_model.bin or model.safetensors |

Both name the per-layer tensors `backbone.layers.{i}.mixer.{in_proj.weight, conv1d.weight, ...}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UserError
from ..model import MambaConfig, MambaLayer, MambaModel

# canonical layer field -> tensor name suffix under backbone.layers.{i}.
LAYER_KEYS = {
    "norm": "norm.weight",
    "in_proj": "mixer.in_proj.weight",
    "in_proj_bias": "mixer.in_proj.bias",
    "conv_weight": "mixer.conv1d.weight",
    "conv_bias": "mixer.conv1d.bias",
    "x_proj": "mixer.x_proj.weight",
    "dt_proj": "mixer.dt_proj.weight",
    "dt_proj_bias": "mixer.dt_proj.bias",
    "A_log": "mixer.A_log",
    "D": "mixer.D",
    "out_proj": "mixer.out_proj.weight",
    "out_proj_bias": "mixer.out_proj.bias",
}


def read_config(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"could not read {path}: {e}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} must hold a JSON object")
    return raw


# Hugging Face architectures that are not Mamba-1 but may carry model_type "mamba" in a relabelled config
_NOT_MAMBA1_KEYS = {"mixer_rms_eps": "falcon_mamba (RMS norms on B, C and Δ inside the mixer)"}


def detect_format(raw: dict, path: Path) -> str:
    mt = raw.get("model_type")
    if mt is None and any(k in raw for k in ("img_size", "patch_size", "in_chans")):
        raise UserError(f"{path} looks like a Vision Mamba config (image and patch sizes) but has no model_type: add "
                        '"model_type": "vim" to compile it as a Vim')
    if mt is None and "MambaForCausalLM" in (raw.get("architectures") or []) and "hidden_size" in raw:
        mt = "mamba"  # an older save without model_type
    if mt == "mamba":
        arch = [a for a in raw.get("architectures") or [] if a not in ("MambaForCausalLM", "MambaModel")]
        if arch:
            raise UserError(f"{path}: model_type is 'mamba' but architectures names {arch[0]}; mq-deploy compiles "
                            "Mamba-1 checkpoints (MambaForCausalLM)")
        for key, what in _NOT_MAMBA1_KEYS.items():
            if key in raw:
                raise UserError(f"{path}: '{key}' is a key of {what}, which is not Mamba-1 and is not supported")
        act = raw.get("hidden_act", "silu")
        if act not in ("silu", "swish"):  # (transformers' swish is SiLU)
            raise UserError(f"{path}: hidden_act is {act!r}; Mamba-1 graphs use SiLU (the conv output and the gate), "
                            "other activations are not supported")
        return "hf"
    if mt is not None:
        raise UserError(f"{path}: model_type is '{mt}', not a Mamba-1 model ('mamba'); mq-deploy compiles Mamba-1 checkpoints")
    if "d_model" in raw and "n_layer" in raw:
        return "state-spaces"
    raise UserError(f"{path} is not a Mamba config: expected model_type 'mamba' (Hugging Face) or d_model/n_layer (state-spaces)")


def _get(raw: dict, key: str, default=None, *, path: str = "config.json"):
    v = raw.get(key, default)
    if v is None:
        raise UserError(f"{path}: missing '{key}'")
    return v


def _rank(R):
    """time_step_rank / dt_rank: "auto" → 0 (ceil(d_model / 16)), an integer or its decimal string → that integer."""
    if R == "auto":
        return 0
    if isinstance(R, str) and R.strip().isdigit():
        return int(R)
    return R


def _number(raw: dict, key: str, default: float) -> float:
    """A real-number config value (an epsilon); UserError for a string, a boolean or anything else."""
    v = raw.get(key)
    v = default if v is None else v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise UserError(f"config.json: '{key}' must be a number, not {json.dumps(v)}")
    return float(v)


def _flag(raw: dict, key: str, default: bool, where: str = "") -> bool:
    """A boolean config value; UserError for anything else (a string "false" is true to bool(), and transformers
    refuses it too)."""
    v = raw.get(key)
    v = default if v is None else v
    if not isinstance(v, bool):
        raise UserError(f"config.json: '{where}{key}' must be true or false, not {json.dumps(v)}")
    return v


def _hf_config(raw: dict) -> MambaConfig:
    R = raw.get("time_step_rank", "auto")
    d = _get(raw, "hidden_size")
    try:
        return MambaConfig(
            d_model=d,
            n_layer=_get(raw, "num_hidden_layers"),
            vocab_size=_get(raw, "vocab_size"),
            d_state=raw.get("state_size", 16),
            d_conv=raw.get("conv_kernel", 4),
            expand=raw.get("expand", 2),
            dt_rank=_rank(R),
            d_inner=raw.get("intermediate_size") or 0,
            norm_eps=_number(raw, "layer_norm_epsilon", 1e-5),
            conv_bias=_flag(raw, "use_conv_bias", True),
            proj_bias=_flag(raw, "use_bias", False),
            tie_embeddings=_flag(raw, "tie_word_embeddings", True),
            residual_in_fp32=_flag(raw, "residual_in_fp32", True),
        )
    except TypeError as e:
        raise UserError(f"config.json: {e}") from None


def _ss_config(raw: dict) -> MambaConfig:
    ssm = raw.get("ssm_cfg") or {}
    layer = ssm.get("layer", "Mamba1")
    if layer != "Mamba1":
        raise UserError(f"config.json: ssm_cfg.layer is '{layer}'; mq-deploy compiles Mamba-1 models")
    if not raw.get("rms_norm", True):
        raise UserError("config.json: rms_norm is false (LayerNorm blocks); only RMSNorm Mamba models are supported")
    if raw.get("d_intermediate", 0):
        raise UserError("config.json: d_intermediate > 0 (MLP blocks between mixers) is not supported")
    if raw.get("attn_layer_idx"):
        raise UserError("config.json: attention layers (attn_layer_idx) are not supported")
    vocab = _get(raw, "vocab_size")
    mult = raw.get("pad_vocab_size_multiple", 8)
    for key, v in (("vocab_size", vocab), ("pad_vocab_size_multiple", mult)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise UserError(f"config.json: '{key}' must be a positive integer, not {json.dumps(v)}")
    if mult and vocab % mult:
        vocab += mult - vocab % mult
    R = ssm.get("dt_rank", "auto")
    try:
        return MambaConfig(
            d_model=_get(raw, "d_model"),
            n_layer=_get(raw, "n_layer"),
            vocab_size=vocab,
            d_state=ssm.get("d_state", 16),
            d_conv=ssm.get("d_conv", 4),
            expand=ssm.get("expand", 2),
            dt_rank=_rank(R),
            norm_eps=_number(raw, "norm_epsilon", 1e-5),
            conv_bias=_flag(ssm, "conv_bias", True, "ssm_cfg."),
            proj_bias=_flag(ssm, "bias", False, "ssm_cfg."),
            tie_embeddings=_flag(raw, "tie_embeddings", True),
            residual_in_fp32=_flag(raw, "residual_in_fp32", True),
        )
    except TypeError as e:
        raise UserError(f"config.json: {e}") from None


def unused_tensors_note(unused: list[str], model: str) -> str:
    """One warning line naming checkpoint tensors that `model` (its description) does not use: the first four."""
    shown = ", ".join(unused[:4]) + (f", ... ({len(unused)} in all)" if len(unused) > 4 else "")
    return f"{len(unused)} tensor(s) of the checkpoint are not used by {model}: {shown}"


def strip_wrappers(t: dict) -> dict:
    """`t` without the prefixes every name has when wrappers saved it: DDP's `module.`, torch.compile's `_orig_mod.`,
    in either nesting (`module._orig_mod.`, `_orig_mod.module.`)."""
    stripped = True
    while t and stripped:
        stripped = False
        for prefix in ("module.", "_orig_mod."):
            if all(k.startswith(prefix) for k in t):
                t = {k[len(prefix):]: v for k, v in t.items()}
                stripped = True
    return t


@dataclass(frozen=True)
class Format:
    name: str
    weight_files: tuple[str, ...]
    embedding_key: str
    parse_config: Callable[[dict], MambaConfig]
    tie_key: str  # the config key that ties the head to the embedding
    title: str  # the family's name in messages

    def build(self, config: MambaConfig, t: dict[str, np.ndarray], warn: Callable[[str], None] = lambda s: None
              ) -> MambaModel:
        """The model from checkpoint tensors `t` (names as `self` stores them; see `canonical_names`). Tensors the
        config does not use (biases it says the model has none of, layers past n_layer, anything else) are named in
        one `warn` line, as transformers' load report does: they are not part of the function."""
        used: set[str] = set()

        def need(key: str) -> np.ndarray:
            if key not in t:
                raise UserError(f"checkpoint is missing tensor '{key}' (is this a {self.title} Mamba checkpoint?)")
            used.add(key)
            return t[key]

        taken = {"in_proj_bias": config.proj_bias, "out_proj_bias": config.proj_bias, "conv_bias": config.conv_bias}
        layers = []
        for i in range(config.n_layer):
            p = f"backbone.layers.{i}."
            fields = {}
            for canon, suffix in LAYER_KEYS.items():
                if canon in taken:  # optional: only where the config says the model has it (validate checks it)
                    fields[canon] = need(p + suffix) if taken[canon] and p + suffix in t else None
                else:
                    fields[canon] = need(p + suffix)
            layers.append(MambaLayer(**fields))
        if config.tie_embeddings and self.embedding_key not in t and "lm_head.weight" in t:
            t = {**t, self.embedding_key: t["lm_head.weight"]}  # a tied checkpoint that stores only the head
        emb = need(self.embedding_key)
        if self.name == "state-spaces" and emb.ndim == 2 and emb.shape[0] < config.vocab_size:
            raise UserError(f"the checkpoint's embedding has {emb.shape[0]} rows, the model {config.vocab_size}: "
                            "config.json's vocab_size padded to a multiple of pad_vocab_size_multiple (default 8), "
                            "as mamba-ssm builds it; for a checkpoint saved without that padding set "
                            "pad_vocab_size_multiple to 1 in config.json")
        stored = t.get("lm_head.weight")
        head = None
        if config.tie_embeddings:
            if stored is not None and not np.array_equal(stored, emb):
                raise UserError(f"config.json ties the head to the embedding ({self.tie_key} true, or absent: its default) "
                                "but the checkpoint stores an lm_head.weight that differs from it: set "
                                f"{self.tie_key} to false to use the stored head, or remove lm_head.weight")
            used.add("lm_head.weight")
        elif stored is None:
            raise UserError("config says embeddings are not tied but the checkpoint has no lm_head.weight")
        else:
            head = need("lm_head.weight")
        model = MambaModel(config, emb, layers, need("backbone.norm_f.weight"), head)
        unused = sorted(set(t) - used)
        if unused:
            warn(unused_tensors_note(unused, f"the model its config.json describes ({config.n_layer} layers, "
                                             f"{'' if config.proj_bias else 'no '}projection biases, "
                                             f"{'' if config.conv_bias else 'no '}conv biases)"))
        return model

    def canonical_names(self, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`t` under this format's names: wrapper prefixes (DDP's `module.`, torch.compile's `_orig_mod.`) dropped, a
        base model's tensors (MambaModel.save_pretrained: `layers.…`, no `backbone.`) put under `backbone.` (`build`
        gives a tied checkpoint that stores only the head its embedding)."""
        t = strip_wrappers(t)
        if not any(k.startswith("backbone.") for k in t) and any(k.startswith("layers.") for k in t):
            t = {(k if k == "lm_head.weight" else "backbone." + k): v for k, v in t.items()}
        return t


FORMATS = {
    # transformers' from_pretrained order: a single file before its sharded index, safetensors before .bin (a folder
    # holding both a model.safetensors and an index compiles the weights transformers loads)
    "hf": Format("hf", ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                        "pytorch_model.bin.index.json"), "backbone.embeddings.weight", _hf_config, "tie_word_embeddings",
                 "Hugging Face"),
    "state-spaces": Format("state-spaces", ("pytorch_model.bin", "model.safetensors"), "backbone.embedding.weight",
                           _ss_config, "tie_embeddings", "state-spaces (mamba-ssm)"),
}
