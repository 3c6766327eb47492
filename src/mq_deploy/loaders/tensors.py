"""Reading checkpoint tensors (safetensors, sharded or not, and torch .bin) into fp32 numpy."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import numpy as np

from ..errors import UserError


def _to_numpy(t) -> np.ndarray:
    return t.detach().to(dtype=__import__("torch").float32).cpu().numpy()


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    try:
        out = {}
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                out[k] = _to_numpy(f.get_tensor(k))
        return out
    except Exception as e:  # safetensors raises several types for truncated or garbage files
        raise UserError(f"could not read weights file {path}: {e}") from None


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    import torch

    # a training checkpoint ({"model": state dict, "optimizer": ..., "args": argparse.Namespace}, as DeiT / Vim save
    # them) holds one plain container type besides tensors; allowing it runs no code from the file
    allowed = getattr(torch.serialization, "safe_globals", None)
    try:
        with allowed([argparse.Namespace]) if allowed is not None else contextlib.nullcontext():
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        if "weights only load failed" in str(e).lower():  # torch's several-line advice does not apply here
            raise UserError(f"weights file {path} holds pickled Python objects (a whole model?), not only tensors, and "
                            "is not loaded (that would run code from the file): save the model's state_dict() with "
                            "torch.save, or as model.safetensors") from None
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"could not read weights file {path}: {first}") from None
    for key in ("model", "state_dict"):  # a training checkpoint's: DeiT / Vim, PyTorch Lightning
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            if key == "state_dict":  # Lightning names the tensors under the module's attribute: `model.backbone...`
                heads = {k.split(".", 1)[0] for k in sd if isinstance(k, str)}
                if len(heads) == 1 and all("." in k for k in sd) and not heads & {"backbone", "lm_head", "layers"}:
                    sd = {k.split(".", 1)[1]: v for k, v in sd.items()}
            break
    if not isinstance(sd, dict) or not all(hasattr(v, "shape") for v in sd.values()):
        held = ", ".join(repr(k) for k in list(sd)[:6]) if isinstance(sd, dict) else type(sd).__name__
        raise UserError(f"weights file {path} does not hold a state dict of tensors (it holds {held}): save the "
                        "model's state_dict() itself")
    return {k: _to_numpy(v) for k, v in sd.items()}


def weight_files(model_dir: Path, candidates: tuple[str, ...]) -> list[str]:
    """The files `read_tensors` reads: the first of `candidates` in `model_dir`, and a sharded index's shards ([] if
    none is there, or the index cannot be read: read_tensors says why)."""
    for name in candidates:
        if (Path(model_dir) / name).is_file():
            if not name.endswith(".index.json"):
                return [name]
            try:
                return [name] + sorted(set(json.loads((Path(model_dir) / name).read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError, OSError):
                return []
    return []


def read_tensors(model_dir: Path, candidates: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Read the first weight file (or sharded index) of `candidates` that exists in `model_dir`."""
    for name in candidates:
        p = model_dir / name
        if not p.is_file():
            continue
        if name.endswith(".index.json"):
            try:
                index = json.loads(p.read_text())
                shards = sorted(set(index["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise UserError(f"sharded index {p} is not valid ({e}); expected a 'weight_map' object") from None
            out: dict[str, np.ndarray] = {}
            for shard in shards:
                sp = model_dir / shard
                if not sp.is_file():
                    raise UserError(f"shard {sp} named in {p.name} is missing")
                out.update(_read_safetensors(sp) if shard.endswith(".safetensors") else _read_torch_bin(sp))
            missing = set(index["weight_map"]) - set(out)
            if missing:
                raise UserError(f"shards of {model_dir} lack tensors named in {p.name}: {sorted(missing)[:3]}")
            return out
        if name.endswith(".safetensors"):
            return _read_safetensors(p)
        return _read_torch_bin(p)
    raise UserError(f"no weight file in {model_dir}: looked for {', '.join(candidates)}")
