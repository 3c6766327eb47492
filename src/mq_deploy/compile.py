"""The compile pipeline: load → build graph → passes (per recipe) → emit both ONNX flavours + manifest.

    compile_model("path/to/model", "fp32", "out/")   # or model=None for the bundled model

Writes into OUTDIR (atomically):
  model.onnx            TensorRT flavour: SelectiveScan plugin nodes
  model.portable.onnx   standard ONNX ops only (the scan lowered to the ONNX Scan op)
  model.prefill.onnx, model.decode.onnx (+ .portable.onnx)   stateful generation graphs (graph/stateful.py)
  manifest.json         model, recipe, versions, shapes, hashes, self-check
  tokenizer.json        when the model directory (or --tokenizer) has one
"""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import onnx

from . import __version__
from .errors import InternalError, UserError
from .graph.lower import lower_selective_scan
from .graph.mamba_lm import build_lm_graph
from .graph.stateful import build_stateful_graphs
from .graph.stateful import io_spec as stateful_io_spec
from .graph.stateful import self_check as stateful_self_check
from .loaders import load_model
from .model import MambaModel
from .ops import selective_scan as ss
from .ops import state_update as su
from .outdir import atomic_dir
from .recipes import Recipe, load_recipe

EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GB limit: larger graphs keep weights beside the .onnx


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_onnx(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Save `model`; weights go to `<name>.data` beside it when the graph would exceed protobuf's limit."""
    if model.ByteSize() > EXTERNAL_DATA_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
        return [path, path.with_name(path.name + ".data")]
    onnx.save_model(model, str(path))
    return [path]


def _versions() -> dict:
    import onnxruntime

    v = {"mq_deploy": __version__, "python": platform.python_version(), "numpy": np.__version__,
         "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    try:
        import torch

        v["torch"] = torch.__version__
    except ImportError:  # torch is only needed for checkpoints in .bin form and the torch backend
        pass
    return v


def _io(model: MambaModel) -> dict:
    return {"inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}],
            "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", "sequence", model.config.vocab_size]}]}


def self_check(plugin_graph: onnx.ModelProto, portable_graph: onnx.ModelProto, vocab: int, seq: int = 9) -> dict:
    """Run both graphs in onnxruntime on a short random batch and compare them (same semantics)."""
    from .backends.ort import OrtRunner

    ids = np.random.default_rng(0).integers(0, vocab, size=(2, seq))
    a = OrtRunner(plugin_graph)(ids)
    b = OrtRunner(portable_graph)(ids)
    if a.shape != (2, seq, vocab) or b.shape != a.shape:
        raise InternalError(f"self-check: logits shapes {a.shape} / {b.shape}, expected {(2, seq, vocab)}")
    err = float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))
    if not np.isfinite(err) or err > 1e-4:
        raise InternalError(f"self-check: the plugin and portable graphs disagree (max rel error {err:.3g})")
    return {"batch": 2, "sequence": seq, "max_rel_error_plugin_vs_portable": err}


def compile_model(model_path: Optional[str], recipe_name: str, out_dir: str | Path, *,
                  tokenizer: Optional[str] = None, force: bool = False,
                  log: Callable[[str], None] = lambda s: None) -> dict:
    """Compile a checkpoint with a recipe into OUTDIR; returns the manifest."""
    t0 = time.time()
    recipe: Recipe = load_recipe(recipe_name)  # validate cheap inputs before any heavy work
    if tokenizer is not None and not Path(tokenizer).is_file():
        raise UserError(f"tokenizer file not found: {tokenizer}")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, force=force) as tmp:
        log(f"loading {'the bundled model' if model_path is None else model_path}")
        model = load_model(model_path)
        c = model.config
        log(f"  Mamba d_model={c.d_model} layers={c.n_layer} d_inner={c.d_inner} d_state={c.d_state} "
            f"dt_rank={c.dt_rank} vocab={c.vocab_size} ({model.source['format']})")
        log("building graph")
        graph = build_lm_graph(model)
        if recipe.passes:
            raise InternalError(f"recipe {recipe.name}: passes are not implemented yet")
        log("lowering SelectiveScan to ONNX Scan for the portable graph")
        portable = lower_selective_scan(graph)
        for g in (graph, portable):
            onnx.checker.check_model(g)
        log("self-check: running both graphs in onnxruntime")
        check = self_check(graph, portable, c.vocab_size)
        files: dict[str, dict] = {}
        for name, g, flavour in (("model.onnx", graph, "tensorrt"), ("model.portable.onnx", portable, "portable")):
            log(f"writing {name}")
            for p in save_onnx(g, tmp / name):
                files[p.name] = {"flavour": flavour}
        # -- stateful graphs for `mq-deploy generate` (issue 5): prefill + decode step, derived from the
        #    final `graph` above, so they share its weights, recipe and scales (graph/stateful.py) --------
        log("building the prefill and decode-step graphs")
        stateful_graphs = build_stateful_graphs(graph, c)
        stateful = {**stateful_io_spec(c), "self_check": stateful_self_check(graph, stateful_graphs, c),
                    "plugins": [{"name": su.PLUGIN_NAME, "version": su.PLUGIN_VERSION,
                                 "namespace": su.PLUGIN_NAMESPACE, "count": c.n_layer}]}
        for name, g in stateful_graphs.items():
            log(f"writing {name}")
            for p in save_onnx(g, tmp / name):
                files[p.name] = {"flavour": "portable" if name.endswith(".portable.onnx") else "tensorrt"}
        # -------------------------------------------------------------------------------------------------
        tok_src = tokenizer or model.source.get("tokenizer")
        if tok_src:
            shutil.copyfile(tok_src, tmp / "tokenizer.json")
            files["tokenizer.json"] = {"source": str(Path(tok_src).resolve())}
        for name, info in files.items():
            p = tmp / name
            info.update(bytes=p.stat().st_size, sha256=sha256_file(p))
        n_params = int(model.embedding.size + (0 if model.lm_head is None else model.lm_head.size) + model.norm_f.size
                       + sum(a.size for L in model.layers for a in vars(L).values() if a is not None))
        manifest = {
            "format": "mq-deploy/1",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv) if sys.argv else "",
            "model": {**model.source, "config": c.to_dict(), "parameters": n_params},
            "recipe": recipe.to_dict(),
            "versions": _versions(),
            "io": _io(model),
            "plugins": [{"name": ss.PLUGIN_NAME, "version": ss.PLUGIN_VERSION, "namespace": ss.PLUGIN_NAMESPACE,
                         "count": sum(1 for n in graph.graph.node if n.op_type == ss.PLUGIN_NAME)}],
            "self_check": check,
            "stateful": stateful,
            "files": files,
            "seconds": round(time.time() - t0, 2),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"wrote {out_dir} in {time.time() - t0:.1f}s")
    return manifest
