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
    import logging

    import torch
    from transformers import MambaForCausalLM

    # its warnings that the fused CUDA kernels are absent and the reference path runs: expected here (a CPU reference)
    for name in ("transformers.models.mamba.modeling_mamba", "transformers.integrations.hub_kernels"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with torch.device("meta"):
        hf = MambaForCausalLM(hf_config(model))
    hf.load_state_dict(state_dict(model), assign=True, strict=True)
    if model.config.tie_embeddings and model.head_mix is None:
        hf.tie_weights()
    return hf.float().eval()


class TorchRunner:
    """`runner(input_ids) -> logits` through Hugging Face `MambaForCausalLM` in fp32."""

    def __init__(self, model: MambaModel, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.model = build_hf_model(model)

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
