"""The canonical in-memory Mamba-1 language model: a validated config and fp32 numpy weights.

Every loader (Hugging Face, state-spaces, bundled) produces a `MambaModel`; every later stage
(graph building, calibration, passes, the torch reference) reads only this, so checkpoint naming
lives in the loaders' adapter tables and nowhere else.

Weight layout follows torch `nn.Linear` (out_features × in_features), as in the checkpoints:

| name | shape |
|---|---|
| embedding | (V, d) |
| layers[i].norm | (d,) |
| layers[i].in_proj | (2·di, d) |
| layers[i].in_proj_bias | (2·di,) or None |
| layers[i].conv_weight | (di, 1, K) |
| layers[i].conv_bias | (di,) or None |
| layers[i].x_proj | (R + 2N, di) |
| layers[i].dt_proj | (di, R) |
| layers[i].dt_proj_bias | (di,) |
| layers[i].A_log | (di, N) |
| layers[i].D | (di,) |
| layers[i].out_proj | (d, di) |
| layers[i].out_proj_bias | (d,) or None |
| norm_f | (d,) |
| lm_head | (V, d), or None when tied to the embedding |
| head_mix | (d, d) or None: applied to the final norm's output before the head |
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .errors import UserError


@dataclass(frozen=True)
class MambaConfig:
    d_model: int
    n_layer: int
    vocab_size: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int = 0  # 0 means ceil(d_model / 16)
    d_inner: int = 0  # 0 means expand * d_model
    norm_eps: float = 1e-5
    conv_bias: bool = True
    proj_bias: bool = False
    tie_embeddings: bool = True
    residual_in_fp32: bool = True

    def __post_init__(self) -> None:
        # (checked before dt_rank / d_inner are derived from them: "2" * 192 was reported as d_inner '2222…'; and a
        # boolean is no size, though Python's True is an int)
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand", "dt_rank", "d_inner"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name in ("dt_rank", "d_inner") else 1):
                raise UserError(f"model config: {name} must be a positive integer, got {v!r}")
        if self.dt_rank == 0:
            object.__setattr__(self, "dt_rank", math.ceil(self.d_model / 16))
        if self.d_inner == 0:
            object.__setattr__(self, "d_inner", self.expand * self.d_model)
        if isinstance(self.norm_eps, bool) or not isinstance(self.norm_eps, (int, float)) or not self.norm_eps > 0:
            raise UserError(f"model config: norm epsilon must be > 0, got {self.norm_eps!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class MambaLayer:
    norm: np.ndarray
    in_proj: np.ndarray
    conv_weight: np.ndarray
    x_proj: np.ndarray
    dt_proj: np.ndarray
    dt_proj_bias: np.ndarray
    A_log: np.ndarray
    D: np.ndarray
    out_proj: np.ndarray
    conv_bias: Optional[np.ndarray] = None
    in_proj_bias: Optional[np.ndarray] = None
    out_proj_bias: Optional[np.ndarray] = None


@dataclass
class MambaModel:
    config: MambaConfig
    embedding: np.ndarray
    layers: list[MambaLayer]
    norm_f: np.ndarray
    lm_head: Optional[np.ndarray] = None
    # (d, d) or None: the final norm's output is multiplied by it before the head, h·head_mix·headᵀ (set by
    # fold_norms with keep_tied, so that a tied head stays tied through the residual rotation)
    head_mix: Optional[np.ndarray] = None
    source: dict = field(default_factory=dict)  # where it came from (path, format), for the manifest

    @property
    def head(self) -> np.ndarray:
        """The (V, d) output projection, tied or not."""
        return self.embedding if self.lm_head is None else self.lm_head

    def untied_head(self) -> np.ndarray:
        """The (V, d) head with head_mix folded in (h·M·Eᵀ = h·(E·Mᵀ)ᵀ): one matrix for formats without head_mix."""
        return self.head if self.head_mix is None else (self.head @ self.head_mix.T).astype(np.float32)

    def validate(self) -> None:
        """Check every shape against the config; raise UserError naming the first mismatch."""
        c = self.config
        d, di, R, N, K, V = c.d_model, c.d_inner, c.dt_rank, c.d_state, c.d_conv, c.vocab_size
        expect: list[tuple[str, Optional[np.ndarray], tuple]] = [
            ("embedding", self.embedding, (V, d)),
            ("norm_f", self.norm_f, (d,)),
        ]
        if self.lm_head is not None:
            expect.append(("lm_head", self.lm_head, (V, d)))
        if self.head_mix is not None:
            expect.append(("head_mix", self.head_mix, (d, d)))
        if len(self.layers) != c.n_layer:
            raise UserError(f"checkpoint has {len(self.layers)} layers but the config says {c.n_layer}")
        for i, L in enumerate(self.layers):
            p = f"layers.{i}."
            expect += [
                (p + "norm", L.norm, (d,)),
                (p + "in_proj", L.in_proj, (2 * di, d)),
                (p + "conv_weight", L.conv_weight, (di, 1, K)),
                (p + "x_proj", L.x_proj, (R + 2 * N, di)),
                (p + "dt_proj", L.dt_proj, (di, R)),
                (p + "dt_proj_bias", L.dt_proj_bias, (di,)),
                (p + "A_log", L.A_log, (di, N)),
                (p + "D", L.D, (di,)),
                (p + "out_proj", L.out_proj, (d, di)),
            ]
            if c.conv_bias:
                expect.append((p + "conv_bias", L.conv_bias, (di,)))
            if c.proj_bias:
                expect += [(p + "in_proj_bias", L.in_proj_bias, (2 * di,)), (p + "out_proj_bias", L.out_proj_bias, (d,))]
        for name, arr, shape in expect:
            if arr is None:
                raise UserError(f"checkpoint is missing weight '{name}'")
            if tuple(arr.shape) != shape:
                raise UserError(f"weight '{name}' has shape {tuple(arr.shape)}, expected {shape} from the config")
            if not np.all(np.isfinite(arr)):
                raise UserError(f"weight '{name}' contains NaN or Inf values")


def random_model(config: MambaConfig, seed: int = 0, scale: float = 1.0) -> MambaModel:
    """A random-init model with realistic magnitudes (for tests of sizes no checkpoint has)."""
    rng = np.random.default_rng(seed)
    c = config
    d, di, R, N, K, V = c.d_model, c.d_inner, c.dt_rank, c.d_state, c.d_conv, c.vocab_size

    def lin(o: int, i: int) -> np.ndarray:
        return (rng.standard_normal((o, i)) * scale / math.sqrt(i)).astype(np.float32)

    layers = []
    for _ in range(c.n_layer):
        dt = np.exp(rng.uniform(math.log(1e-3), math.log(1e-1), di))
        layers.append(MambaLayer(
            norm=(1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32),
            in_proj=lin(2 * di, d),
            conv_weight=(rng.standard_normal((di, 1, K)) * 0.5).astype(np.float32),
            conv_bias=(0.1 * rng.standard_normal(di)).astype(np.float32) if c.conv_bias else None,
            x_proj=lin(R + 2 * N, di),
            dt_proj=lin(di, R),
            dt_proj_bias=(dt + np.log(-np.expm1(-dt))).astype(np.float32),  # inverse softplus
            A_log=np.log(np.tile(np.arange(1, N + 1, dtype=np.float32), (di, 1))),
            D=np.ones(di, dtype=np.float32),
            out_proj=lin(d, di),
            in_proj_bias=(0.02 * rng.standard_normal(2 * di)).astype(np.float32) if c.proj_bias else None,
            out_proj_bias=(0.02 * rng.standard_normal(d)).astype(np.float32) if c.proj_bias else None,
        ))
    emb = (rng.standard_normal((V, d)) * 0.5).astype(np.float32)
    head = None if c.tie_embeddings else (rng.standard_normal((V, d)) / math.sqrt(d)).astype(np.float32)
    m = MambaModel(c, emb, layers, (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32), head,
                   source={"format": "random", "seed": seed})
    m.validate()
    return m
