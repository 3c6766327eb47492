"""The in-memory Vim classifier: a validated config and fp32 numpy weights in the official naming.

Official `VisionMamba` (hustvl/Vim `vim/models_mamba.py`, `bimamba_type="v2"`) state-dict names:

| state-dict name | shape | field |
|---|---|---|
| patch_embed.proj.weight / .bias | (d, C, p, p) / (d,) | patch_weight / patch_bias |
| cls_token | (1, 1, d) | cls_token (d,) |
| pos_embed | (1, T, d), T = patches + 1 | pos_embed (T, d) |
| layers.{i}.norm.weight | (d,) | norm |
| layers.{i}.mixer.in_proj.weight | (2·di, d) | in_proj (shared by both directions) |
| layers.{i}.mixer.conv1d{,_b}.weight / .bias | (di, 1, K) / (di,) | conv_weight{,_b} / conv_bias{,_b} |
| layers.{i}.mixer.x_proj{,_b}.weight | (R + 2N, di) | x_proj{,_b} |
| layers.{i}.mixer.dt_proj{,_b}.weight / .bias | (di, R) / (di,) | dt_proj{,_b} / dt_proj_bias{,_b} |
| layers.{i}.mixer.A_log, A_b_log | (di, N) | A_log / A_b_log |
| layers.{i}.mixer.D, D_b | (di,) | D / D_b |
| layers.{i}.mixer.out_proj.weight | (d, di) | out_proj (shared) |
| norm_f.weight | (d,) | norm_f |
| head.weight / head.bias | (classes, d) / (classes,) | head / head_bias |

Semantics (v2 block, fused_add_norm with residual_in_fp32, eval mode):

    tokens = Conv2d(pixels; stride)·flatten → (B, P, d); cls inserted at P//2 (middle) or 0; + pos_embed
    r = tokens; per block: h = RMSNorm(r)·γ;  [x; z] = h·W_inᵀ
        y_f = Scan_f(x),  y_b = flip(Scan_b(flip(x)))       Scan = conv1d → SiLU → x_proj → dt_proj → SSM
        r  ← r + ((y_f + y_b) / 2 ⊙ SiLU(z))·W_outᵀ          (/2 only with if_devide_out)
    logits = RMSNorm(r)[:, cls position]·headᵀ + b            (or the token mean without a class token)
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import UserError
from ..hub import provenance
from ..model import MambaConfig, MambaLayer

MODEL_TYPE = "vim"
BUNDLED_VIM_DIR = Path(__file__).resolve().parent.parent / "assets" / "vim-fmnist"  # (the README's example Vim)
BACKWARD = ("conv_weight", "conv_bias", "x_proj", "dt_proj", "dt_proj_bias", "A_log", "D")


@dataclass(frozen=True)
class VimConfig:
    d_model: int
    depth: int
    num_classes: int
    img_size: int = 28
    patch_size: int = 4
    stride: int = 0  # 0 means patch_size (non-overlapping patches)
    channels: int = 1
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int = 0  # 0 means ceil(d_model / 16)
    norm_eps: float = 1e-5
    if_cls_token: bool = True
    use_middle_cls_token: bool = True
    if_devide_out: bool = True
    conv_bias: bool = True
    proj_bias: bool = False

    def __post_init__(self) -> None:
        if self.stride == 0:
            object.__setattr__(self, "stride", self.patch_size)
        if self.dt_rank == 0:
            object.__setattr__(self, "dt_rank", math.ceil(self.d_model / 16))
        for name in ("d_model", "depth", "num_classes", "img_size", "patch_size", "stride", "channels", "d_state",
                     "d_conv", "expand", "dt_rank"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise UserError(f"Vim config: {name} must be a positive integer, got {v!r}")
        if self.patch_size > self.img_size:
            raise UserError(f"Vim config: patch_size {self.patch_size} is larger than img_size {self.img_size}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def grid(self) -> int:
        return (self.img_size - self.patch_size) // self.stride + 1

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def seq_len(self) -> int:
        return self.num_patches + (1 if self.if_cls_token else 0)

    @property
    def cls_position(self) -> Optional[int]:
        if not self.if_cls_token:
            return None
        return self.num_patches // 2 if self.use_middle_cls_token else 0

    def mamba(self) -> MambaConfig:
        """The per-block sizes as a MambaConfig (what the shared graph helpers read)."""
        return MambaConfig(d_model=self.d_model, n_layer=self.depth, vocab_size=self.num_classes,
                           d_state=self.d_state, d_conv=self.d_conv, expand=self.expand, dt_rank=self.dt_rank,
                           norm_eps=self.norm_eps, conv_bias=self.conv_bias, proj_bias=self.proj_bias,
                           tie_embeddings=False)

    def to_dict(self) -> dict:
        return {"model_type": MODEL_TYPE, **dataclasses.asdict(self)}

    @staticmethod
    def from_dict(raw: dict) -> "VimConfig":
        """The config of a Vim checkpoint: our keys or the official `VisionMamba` arguments (embed_dim, in_chans,
        if_divide_out, norm_epsilon, ssm_cfg, ...). Official options this compiler does not implement are refused
        when set to anything but the value it computes (silently ignoring them would compile another function);
        other keys (training settings) are ignored."""
        if not isinstance(raw, dict):
            raise UserError("Vim config.json must hold a JSON object")
        for key, (ok, what) in _UNSUPPORTED.items():
            if key in raw and not ok(raw[key], raw):
                raise UserError(f"Vim config.json: {key} = {raw[key]!r} ({what}) is not supported")
        fields = {f.name: f for f in dataclasses.fields(VimConfig)}
        kw = {}
        ssm = raw.get("ssm_cfg") or {}
        if not isinstance(ssm, dict):
            raise UserError("Vim config.json: ssm_cfg must be an object")
        items = list(raw.items()) + [(_SSM_KEYS[k], v) for k, v in ssm.items() if k in _SSM_KEYS]
        for k, v in items:
            k = _ALIASES.get(k, k)
            if k not in fields:
                continue
            if k in ("img_size", "patch_size", "stride") and isinstance(v, (list, tuple)):
                if len(v) != 2 or v[0] != v[1]:
                    raise UserError(f"Vim config.json: {k} = {v!r}: only square images and patches are supported")
                v = v[0]
            if k == "dt_rank" and v == "auto":
                v = 0
            if fields[k].type in ("bool", bool) and not isinstance(v, bool):
                raise UserError(f"Vim config.json: {k} must be true or false, got {v!r}")
            if k in kw and kw[k] != v:
                raise UserError(f"Vim config.json gives {k} twice, {kw[k]!r} and {v!r} (ssm_cfg or another spelling)")
            kw[k] = v
        missing = {"d_model", "depth", "num_classes"} - set(kw)
        if missing:
            raise UserError(f"Vim config.json is missing {sorted(missing)}")
        return VimConfig(**kw)


_ALIASES = {"embed_dim": "d_model", "in_chans": "channels", "n_layer": "depth", "if_divide_out": "if_devide_out",
            "norm_epsilon": "norm_eps"}
_SSM_KEYS = {"d_state": "d_state", "d_conv": "d_conv", "expand": "expand", "dt_rank": "dt_rank",
             "conv_bias": "conv_bias", "bias": "proj_bias"}  # ssm_cfg (the official Mamba block's arguments)
#: official VisionMamba options whose other settings compute another function: key -> (accepted(value, raw), meaning)
_UNSUPPORTED = {
    "bimamba_type": (lambda v, r: v == "v2", "only the v2 bidirectional block"),
    "if_bimamba": (lambda v, r: v is False, "the v1 bidirectional block"),
    "if_bidirectional": (lambda v, r: v is False, "a second, reversed pass over every layer"),
    "if_rope": (lambda v, r: v is False, "rotary position embedding"),
    "if_abs_pos_embed": (lambda v, r: v is True, "models without an absolute position embedding"),
    "use_double_cls_token": (lambda v, r: v is False, "two class tokens"),
    "rms_norm": (lambda v, r: v is True, "LayerNorm blocks; only RMSNorm is"),
    "init_layer_scale": (lambda v, r: v is None, "layer scale (gamma)"),
    "final_pool_type": (lambda v, r: v == "mean" or r.get("if_cls_token", True) is True,
                        "without a class token only mean pooling"),
}


@dataclass
class VimLayer(MambaLayer):
    """A v2 block: MambaLayer's fields are the forward direction (and the shared norm/in_proj/out_proj);
    the `_b` fields are the backward direction's own parameters."""
    conv_weight_b: Optional[np.ndarray] = None
    conv_bias_b: Optional[np.ndarray] = None
    x_proj_b: Optional[np.ndarray] = None
    dt_proj_b: Optional[np.ndarray] = None
    dt_proj_bias_b: Optional[np.ndarray] = None
    A_log_b: Optional[np.ndarray] = None
    D_b: Optional[np.ndarray] = None

    def direction(self, backward: bool) -> MambaLayer:
        """One direction as a plain MambaLayer (arrays shared, not copied)."""
        kw = {f.name: getattr(self, f.name) for f in dataclasses.fields(MambaLayer)}
        if backward:
            kw.update({n: getattr(self, n + "_b") for n in BACKWARD})
        return MambaLayer(**kw)


@dataclass
class VimModel:
    config: VimConfig
    patch_weight: np.ndarray
    patch_bias: np.ndarray
    cls_token: Optional[np.ndarray]
    pos_embed: np.ndarray
    layers: list
    norm_f: np.ndarray
    head: np.ndarray
    head_bias: np.ndarray
    source: dict = field(default_factory=dict)

    def validate(self) -> None:
        c = self.config
        d, di, R, N, K = c.d_model, c.d_inner, c.dt_rank, c.d_state, c.d_conv
        exp = [("patch_embed.proj.weight", self.patch_weight, (d, c.channels, c.patch_size, c.patch_size)),
               ("patch_embed.proj.bias", self.patch_bias, (d,)), ("pos_embed", self.pos_embed, (c.seq_len, d)),
               ("norm_f.weight", self.norm_f, (d,)), ("head.weight", self.head, (c.num_classes, d)),
               ("head.bias", self.head_bias, (c.num_classes,))]
        if c.if_cls_token:
            exp.append(("cls_token", self.cls_token, (d,)))
        if len(self.layers) != c.depth:
            raise UserError(f"checkpoint has {len(self.layers)} layers but the config says depth {c.depth}")
        for i, L in enumerate(self.layers):
            p = f"layers.{i}.mixer."
            exp += [(f"layers.{i}.norm.weight", L.norm, (d,)), (p + "in_proj.weight", L.in_proj, (2 * di, d)),
                    (p + "out_proj.weight", L.out_proj, (d, di))]
            if c.proj_bias:
                exp += [(p + "in_proj.bias", L.in_proj_bias, (2 * di,)), (p + "out_proj.bias", L.out_proj_bias, (d,))]
            for s in ("", "_b"):
                exp += [(p + f"conv1d{s}.weight", getattr(L, "conv_weight" + s), (di, 1, K)),
                        (p + f"x_proj{s}.weight", getattr(L, "x_proj" + s), (R + 2 * N, di)),
                        (p + f"dt_proj{s}.weight", getattr(L, "dt_proj" + s), (di, R)),
                        (p + f"dt_proj{s}.bias", getattr(L, "dt_proj_bias" + s), (di,)),
                        (p + ("A_b_log" if s else "A_log"), getattr(L, "A_log" + s), (di, N)),
                        (p + f"D{s}", getattr(L, "D" + s), (di,))]
                if c.conv_bias:
                    exp.append((p + f"conv1d{s}.bias", getattr(L, "conv_bias" + s), (di,)))
        for name, arr, shape in exp:
            if arr is None:
                raise UserError(f"Vim checkpoint is missing weight '{name}'")
            if tuple(arr.shape) != tuple(shape):
                raise UserError(f"Vim weight '{name}' has shape {tuple(arr.shape)}, expected {tuple(shape)}")
            if not np.all(np.isfinite(arr)):
                raise UserError(f"Vim weight '{name}' contains NaN or Inf values")


# -- official state-dict naming ------------------------------------------------------------------
_LAYER_NAMES = {  # field -> name under layers.{i}.
    "norm": "norm.weight", "in_proj": "mixer.in_proj.weight", "in_proj_bias": "mixer.in_proj.bias",
    "out_proj": "mixer.out_proj.weight", "out_proj_bias": "mixer.out_proj.bias",
    "conv_weight": "mixer.conv1d.weight", "conv_bias": "mixer.conv1d.bias", "x_proj": "mixer.x_proj.weight",
    "dt_proj": "mixer.dt_proj.weight", "dt_proj_bias": "mixer.dt_proj.bias", "A_log": "mixer.A_log", "D": "mixer.D",
    "conv_weight_b": "mixer.conv1d_b.weight", "conv_bias_b": "mixer.conv1d_b.bias",
    "x_proj_b": "mixer.x_proj_b.weight", "dt_proj_b": "mixer.dt_proj_b.weight",
    "dt_proj_bias_b": "mixer.dt_proj_b.bias", "A_log_b": "mixer.A_b_log", "D_b": "mixer.D_b",
}


def from_state_dict(config: VimConfig, sd: dict, source: Optional[dict] = None,
                    warn: Optional[Callable[[str], None]] = None) -> VimModel:
    """The model from official state-dict names; `warn` (when given) gets one line naming the tensors the config does
    not use (layers past depth, head_dist, ...)."""
    used: set = set()

    def f(k):
        if k not in sd:
            return None
        used.add(k)
        return np.asarray(sd[k], np.float32)

    # biases the config says the model has none of are not read (and so named as unused below)
    skip = set(() if config.proj_bias else ("in_proj_bias", "out_proj_bias")) | \
        set(() if config.conv_bias else ("conv_bias", "conv_bias_b"))
    layers = []
    for i in range(config.depth):
        layers.append(VimLayer(**{fld: None if fld in skip else f(f"layers.{i}.{n}")
                                  for fld, n in _LAYER_NAMES.items()}))
    cls = f("cls_token")
    pos = f("pos_embed")
    m = VimModel(config, f("patch_embed.proj.weight"), f("patch_embed.proj.bias"),
                 None if cls is None else cls.reshape(-1), None if pos is None else pos.reshape(-1, config.d_model),
                 layers, f("norm_f.weight"), f("head.weight"), f("head.bias"), source=dict(source or {}))
    m.validate()
    unused = sorted(set(sd) - used)
    if unused and warn is not None:
        from ..loaders.formats import unused_tensors_note

        warn(unused_tensors_note(unused, f"the Vim its config.json describes (depth {config.depth})"))
    return m


def to_state_dict(model: VimModel) -> dict[str, np.ndarray]:
    d = model.config.d_model
    sd = {"patch_embed.proj.weight": model.patch_weight, "patch_embed.proj.bias": model.patch_bias,
          "pos_embed": model.pos_embed.reshape(1, -1, d), "norm_f.weight": model.norm_f,
          "head.weight": model.head, "head.bias": model.head_bias}
    if model.cls_token is not None:
        sd["cls_token"] = model.cls_token.reshape(1, 1, d)
    for i, L in enumerate(model.layers):
        for fld, n in _LAYER_NAMES.items():
            v = getattr(L, fld)
            if v is not None:
                sd[f"layers.{i}.{n}"] = v
    return sd


def is_vim_dir(path) -> bool:
    p = Path(path) / "config.json"
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("model_type") == MODEL_TYPE
    except (ValueError, AttributeError):
        return False


def _weight_files(p: Path) -> tuple[str, ...]:
    """The weights of a Vim directory, in read_tensors' order (transformers'): model.safetensors, its sharded index,
    pytorch_model.bin, its index, else the one *.safetensors / *.pth / *.bin file there is (several: which one is
    meant is not guessed)."""
    from ..loaders.formats import FORMATS

    named = [n for n in FORMATS["hf"].weight_files if (p / n).is_file()]
    if named:
        return tuple(named)
    files = sorted(f.name for ext in ("*.safetensors", "*.pth", "*.bin") for f in p.glob(ext))
    if len(files) > 1:
        raise UserError(f"{p} has several weight files ({', '.join(files)}) and no model.safetensors / "
                        "pytorch_model.bin / index: keep only the model's, or name it model.safetensors")
    if not files:
        raise UserError(f"{p} has no weights (model.safetensors, pytorch_model.bin, a sharded index, or one *.pth)")
    return tuple(files)


def load_vim(path, warn: Optional[Callable[[str], None]] = None) -> VimModel:
    """A Vim checkpoint directory: config.json (model_type "vim") + weights (`_weight_files`; an official training
    checkpoint's {"model": state dict, ...} too). `warn` gets what the loader noticed and did not refuse (default:
    stderr)."""
    from ..loaders import _stderr_warning
    from ..loaders.formats import strip_wrappers
    from ..loaders.tensors import read_tensors, weight_files

    p = Path(path)
    try:
        raw = json.loads((p / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"could not read {p / 'config.json'}: {e}") from None
    config = VimConfig.from_dict(raw)
    files = _weight_files(p)
    sd = strip_wrappers(read_tensors(p, files))
    source = {"path": str(p.resolve()), "format": "vim",
              # the bundled Vim is where each installation keeps it (hub.compiled_from), not at this path
              "bundled": p.resolve() == BUNDLED_VIM_DIR,
              "tokenizer": None,
              "weights": weight_files(p, files),  # (compile records their sha256; validate --torch checks them)
              **provenance(p)}
    return from_state_dict(config, sd, source, warn=_stderr_warning if warn is None else warn)


def random_vim(config: VimConfig, seed: int = 0) -> VimModel:
    """Random-init Vim with realistic magnitudes (for tests)."""
    rng = np.random.default_rng(seed)
    c = config
    d, di, R, N, K = c.d_model, c.d_inner, c.dt_rank, c.d_state, c.d_conv

    def lin(o, i):
        return (rng.standard_normal((o, i)) / math.sqrt(i)).astype(np.float32)

    def direction():
        dt = np.exp(rng.uniform(math.log(1e-3), math.log(1e-1), di))
        return dict(conv_weight=(rng.standard_normal((di, 1, K)) * 0.5).astype(np.float32),
                    conv_bias=(0.1 * rng.standard_normal(di)).astype(np.float32) if c.conv_bias else None,
                    x_proj=lin(R + 2 * N, di), dt_proj=lin(di, R),
                    dt_proj_bias=(dt + np.log(-np.expm1(-dt))).astype(np.float32),
                    A_log=np.log(np.tile(np.arange(1, N + 1, dtype=np.float32), (di, 1))),
                    D=(1.0 + 0.1 * rng.standard_normal(di)).astype(np.float32))

    layers = []
    for _ in range(c.depth):
        f, b = direction(), direction()
        layers.append(VimLayer(norm=(1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32), in_proj=lin(2 * di, d),
                               out_proj=lin(d, di),
                               in_proj_bias=(0.02 * rng.standard_normal(2 * di)).astype(np.float32) if c.proj_bias else None,
                               out_proj_bias=(0.02 * rng.standard_normal(d)).astype(np.float32) if c.proj_bias else None,
                               **f, **{k + "_b": v for k, v in b.items()}))
    fan = c.channels * c.patch_size ** 2
    m = VimModel(c, (rng.standard_normal((d, c.channels, c.patch_size, c.patch_size)) / math.sqrt(fan)).astype(np.float32),
                 (0.1 * rng.standard_normal(d)).astype(np.float32),
                 (0.5 * rng.standard_normal(d)).astype(np.float32) if c.if_cls_token else None,
                 (0.2 * rng.standard_normal((c.seq_len, d))).astype(np.float32), layers,
                 (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32), lin(c.num_classes, d),
                 (0.1 * rng.standard_normal(c.num_classes)).astype(np.float32), source={"format": "random", "seed": seed})
    m.validate()
    return m
