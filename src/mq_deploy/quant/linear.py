"""One linear's weight quantized as a recipe's `weights` section says (shared by the language model and Vim)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..graph.plan import QuantSpec
from .gptq import gptq_quantize
from .qparams import quantize_weight


def quantize_linear(q: QuantSpec, name: str, w_in_out: np.ndarray, wcfg: dict, H: Optional[np.ndarray] = None) -> None:
    """Quantize the [in, out] weight into q.weights[name]: RTN or GPTQ (H = XᵀX/n), `wcfg["bits"]` per output channel
    or, with `block_size`, per block of input rows. A weight whose input size the block does not divide (dt_proj, K =
    dt_rank, in most models) is int8 per channel instead (recorded in q.int8_weights): per-channel INT4 is what
    TensorRT, which takes INT4 in blocks of 64 or 128, refuses, and such a linear is small."""
    bits, block = wcfg["bits"], wcfg.get("block_size", 0)
    if block and w_in_out.shape[0] % block:
        bits, block = 8, 0
        q.int8_weights.add(name)
    if wcfg["method"] == "gptq":
        q.weights[name] = gptq_quantize(w_in_out, H, bits, clip_search=wcfg["clip_search"], block=block,
                                        act_order=wcfg.get("act_order", False))
    else:
        q.weights[name] = quantize_weight(w_in_out, bits, wcfg["clip_search"], block=block)
