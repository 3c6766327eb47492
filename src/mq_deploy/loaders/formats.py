"""Adapter tables for the checkpoint families: config keys and tensor names → `MambaModel`.

| family | recognised by | embedding key | weights |
|---|---|---|---|
| hf (transformers `MambaForCausalLM`) | `model_type == "mamba"` | `backbone.embeddings.weight` | model.safetensors[.index.json] or pytorch_model.bin |
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


def detect_format(raw: dict, path: Path) -> str:
    mt = raw.get("model_type")
    if mt == "mamba":
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
            dt_rank=0 if R == "auto" else R,
            d_inner=raw.get("intermediate_size") or 0,
            norm_eps=float(raw.get("layer_norm_epsilon", 1e-5)),
            conv_bias=bool(raw.get("use_conv_bias", True)),
            proj_bias=bool(raw.get("use_bias", False)),
            tie_embeddings=bool(raw.get("tie_word_embeddings", True)),
            residual_in_fp32=bool(raw.get("residual_in_fp32", True)),
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
    if mult and vocab % mult:
        vocab += mult - vocab % mult
    R = ssm.get("dt_rank", "auto")
    try:
        return MambaConfig(
            d_model=raw["d_model"],
            n_layer=raw["n_layer"],
            vocab_size=vocab,
            d_state=ssm.get("d_state", 16),
            d_conv=ssm.get("d_conv", 4),
            expand=ssm.get("expand", 2),
            dt_rank=0 if R == "auto" else R,
            norm_eps=float(raw.get("norm_epsilon", 1e-5)),
            conv_bias=bool(ssm.get("conv_bias", True)),
            proj_bias=bool(ssm.get("bias", False)),
            tie_embeddings=bool(raw.get("tie_embeddings", True)),
            residual_in_fp32=bool(raw.get("residual_in_fp32", True)),
        )
    except TypeError as e:
        raise UserError(f"config.json: {e}") from None


@dataclass(frozen=True)
class Format:
    name: str
    weight_files: tuple[str, ...]
    embedding_key: str
    parse_config: Callable[[dict], MambaConfig]

    def build(self, config: MambaConfig, t: dict[str, np.ndarray]) -> MambaModel:
        def need(key: str) -> np.ndarray:
            if key not in t:
                raise UserError(f"checkpoint is missing tensor '{key}' (is this a {self.name} Mamba checkpoint?)")
            return t[key]

        layers = []
        for i in range(config.n_layer):
            p = f"backbone.layers.{i}."
            fields = {}
            for canon, suffix in LAYER_KEYS.items():
                optional = canon.endswith("_bias") and canon != "dt_proj_bias"
                if optional:
                    fields[canon] = t.get(p + suffix)
                else:
                    fields[canon] = need(p + suffix)
            layers.append(MambaLayer(**fields))
        emb = need(self.embedding_key)
        head = t.get("lm_head.weight")
        if config.tie_embeddings:
            head = None  # tied: the checkpoint's lm_head (if stored) is the embedding
        elif head is None:
            raise UserError("config says embeddings are not tied but the checkpoint has no lm_head.weight")
        return MambaModel(config, emb, layers, need("backbone.norm_f.weight"), head)


FORMATS = {
    "hf": Format("hf", ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                        "pytorch_model.bin"), "backbone.embeddings.weight", _hf_config),
    "state-spaces": Format("state-spaces", ("pytorch_model.bin", "model.safetensors"), "backbone.embedding.weight",
                           _ss_config),
}
