"""PyTorch reference of the Vim classifier (official `VisionMamba` v2 semantics and parameter names).

Pure PyTorch (no mamba-ssm / causal-conv1d), so it runs on CPU for the equivalence tests and on the
GPU for `scripts/train_vim.py`; `state_dict()` keys are the official ones (see `model.py`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .model import VimConfig, VimModel, from_state_dict


def selective_scan(u, delta, A, Bm, Cm, D, delta_bias):
    """u, delta (B, L, Di); A (Di, N); Bm, Cm (B, L, N) → y (B, L, Di). Δ = softplus(delta + bias)."""
    dt = F.softplus(delta + delta_bias)
    dA = torch.exp(dt.unsqueeze(-1) * A)  # (B, L, Di, N)
    dBu = (dt * u).unsqueeze(-1) * Bm.unsqueeze(2)
    h = torch.zeros_like(dA[:, 0])
    hs = []
    for t in range(u.shape[1]):  # one fused kernel per step; the read-out is one einsum afterwards
        h = torch.addcmul(dBu[:, t], dA[:, t], h)
        hs.append(h)
    return torch.einsum("bldn,bln->bld", torch.stack(hs, dim=1), Cm) + u * D


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class BiMambaMixer(nn.Module):
    """Mamba mixer with bimamba_type="v2": forward params and `_b` backward params, shared in/out_proj."""

    def __init__(self, c: VimConfig):
        super().__init__()
        d, di, R, N, K = c.d_model, c.d_inner, c.dt_rank, c.d_state, c.d_conv
        self.c = c
        self.in_proj = nn.Linear(d, 2 * di, bias=c.proj_bias)
        self.out_proj = nn.Linear(di, d, bias=c.proj_bias)
        A = torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(di, 1)
        for s in ("", "_b"):
            setattr(self, "conv1d" + s, nn.Conv1d(di, di, K, groups=di, padding=K - 1, bias=c.conv_bias))
            setattr(self, "x_proj" + s, nn.Linear(di, R + 2 * N, bias=False))
            dt_proj = nn.Linear(R, di, bias=True)
            nn.init.uniform_(dt_proj.weight, -R ** -0.5, R ** -0.5)
            dt = torch.exp(torch.rand(di) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
            with torch.no_grad():
                dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            setattr(self, "dt_proj" + s, dt_proj)
            setattr(self, "A_b_log" if s else "A_log", nn.Parameter(A.clone()))
            setattr(self, "D" + s, nn.Parameter(torch.ones(di)))

    def _direction(self, x, backward: bool):
        s = "_b" if backward else ""
        c = self.c
        R, N, L = c.dt_rank, c.d_state, x.shape[1]
        conv = getattr(self, "conv1d" + s)
        u = F.silu(conv(x.transpose(1, 2))[..., :L].transpose(1, 2))
        dlow, Bm, Cm = getattr(self, "x_proj" + s)(u).split([R, N, N], dim=-1)
        dt_proj = getattr(self, "dt_proj" + s)
        delta = dlow @ dt_proj.weight.t()
        A = -torch.exp(getattr(self, "A_b_log" if backward else "A_log").float())
        return selective_scan(u, delta, A, Bm, Cm, getattr(self, "D" + s), dt_proj.bias)

    def forward(self, h):
        di = self.c.d_inner
        x, z = self.in_proj(h).split([di, di], dim=-1)
        y = self._direction(x, False) + self._direction(x.flip(1), True).flip(1)
        if self.c.if_devide_out:
            y = y / 2
        return self.out_proj(y * F.silu(z))


class Block(nn.Module):
    def __init__(self, c: VimConfig):
        super().__init__()
        self.mixer = BiMambaMixer(c)
        self.norm = RMSNorm(c.d_model, c.norm_eps)


class PatchEmbed(nn.Module):
    def __init__(self, c: VimConfig):
        super().__init__()
        self.proj = nn.Conv2d(c.channels, c.d_model, c.patch_size, stride=c.stride)


class VimTorch(nn.Module):
    def __init__(self, c: VimConfig):
        super().__init__()
        self.config = c
        self.patch_embed = PatchEmbed(c)
        if c.if_cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, c.d_model))
        self.pos_embed = nn.Parameter(torch.zeros(1, c.seq_len, c.d_model))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if c.if_cls_token:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.depth))
        self.norm_f = RMSNorm(c.d_model, c.norm_eps)
        self.head = nn.Linear(c.d_model, c.num_classes)

    def tokens(self, pixel_values):
        c = self.config
        x = self.patch_embed.proj(pixel_values).flatten(2).transpose(1, 2)
        if c.if_cls_token:
            p = c.cls_position
            cls = self.cls_token.expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :p], cls, x[:, p:]], dim=1)
        return x + self.pos_embed

    def forward(self, pixel_values):
        c = self.config
        r = self.tokens(pixel_values)
        for blk in self.layers:  # fused_add_norm: residual = residual + hidden; hidden = norm(residual)
            r = r + blk.mixer(blk.norm(r))
        h = self.norm_f(r)
        h = h[:, c.cls_position] if c.if_cls_token else h.mean(dim=1)
        return self.head(h)

    def to_model(self) -> VimModel:
        sd = {k: v.detach().float().cpu().numpy() for k, v in self.state_dict().items()}
        return from_state_dict(self.config, sd, {"format": "vim"})

    @staticmethod
    def from_model(model: VimModel) -> "VimTorch":
        from .model import to_state_dict

        m = VimTorch(model.config)
        sd = {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in to_state_dict(model).items()}
        m.load_state_dict(sd, strict=True)
        return m.eval()
