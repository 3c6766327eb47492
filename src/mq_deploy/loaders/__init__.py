"""Checkpoint loaders: a model directory (or nothing, for the bundled model) → `MambaModel`.

    load_model(None)                      # the bundled model that ships in the package
    load_model("path/to/hf-mamba")        # config.json (model_type "mamba") + *.safetensors / *.bin
    load_model("path/to/state-spaces")    # config.json (d_model, n_layer, ...) + pytorch_model.bin

The format is recognised from config.json; naming differences are adapter tables in
`formats.py`, so adding a family means adding a table, not branches.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional

from ..errors import UserError
from ..hub import provenance
from ..model import MambaModel
from .formats import FORMATS, read_config, detect_format
from .tensors import read_tensors, weight_files

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "assets" / "mamba-tiny"


def bundled_model_dir() -> Path:
    if not (BUNDLED_DIR / "config.json").is_file():
        raise UserError(f"the bundled model is missing from the installation ({BUNDLED_DIR}); reinstall mq-deploy")
    return BUNDLED_DIR


def resolve_model_dir(path: Optional[str | Path]) -> Path:
    if path is None:
        return bundled_model_dir()
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"model directory not found: {p}")
    if p.is_file():
        raise UserError(f"{p} is a file; pass the model directory that holds config.json and the weights")
    if not (p / "config.json").is_file():
        if (p / "manifest.json").is_file():
            raise UserError(f"{p} is an output directory of `mq-deploy compile`, not a checkpoint: pass a checkpoint "
                            "directory (config.json and weights; an OUTDIR's manifest.json names the one it was "
                            "compiled from, model.path)")
        raise UserError(f"{p} has no config.json; expected a Hugging Face or state-spaces Mamba directory")
    return p


_warned: set = set()


def _stderr_warning(msg: str) -> None:
    """The default `warn` of the loaders: stderr, each message once a process (validate loads a checkpoint twice)."""
    if msg not in _warned:
        _warned.add(msg)
        print(f"warning: {msg}", file=sys.stderr, flush=True)


def load_model(path: Optional[str | Path] = None, warn: Callable[[str], None] = _stderr_warning) -> MambaModel:
    """Load a Mamba-1 checkpoint directory (None: the bundled model) into fp32 numpy weights. `warn` gets what the
    loader noticed and did not refuse (tensors the config does not use)."""
    model_dir = resolve_model_dir(path)
    raw = read_config(model_dir / "config.json")
    fmt = FORMATS[detect_format(raw, model_dir / "config.json")]
    config = fmt.parse_config(raw)
    if config.d_conv < 2:  # (a Vim has no decode step: vision/ takes any d_conv)
        raise UserError(f"model config: d_conv (conv_kernel) is {config.d_conv}; mq-deploy needs a causal convolution "
                        "of at least 2 taps (the decode step carries the last d_conv - 1 inputs as its state)")
    tensors = fmt.canonical_names(read_tensors(model_dir, fmt.weight_files))
    model = fmt.build(config, tensors, warn=warn)
    model.source = {
        "path": str(model_dir.resolve()),
        "format": fmt.name,
        "bundled": path is None,
        "tokenizer": str(model_dir / "tokenizer.json") if (model_dir / "tokenizer.json").is_file() else None,
        "weights": weight_files(model_dir, fmt.weight_files),  # (compile records their sha256)
        **provenance(model_dir),  # (a Hugging Face cache snapshot: its repository and commit)
    }
    model.validate()
    return model


__all__ = ["load_model", "resolve_model_dir", "bundled_model_dir", "BUNDLED_DIR"]
