"""`mq-deploy compile` for Vision Mamba checkpoints: the same recipe/calibration/pass/QDQ pipeline as
the language model, with `pixel_values [batch, C, H, W] → logits [batch, classes]` and two
SelectiveScan plugin nodes per block. Calibration uses Fashion-MNIST training images
(`--calib` = the dataset folder; default the Debian package's /usr/share/datasets/fashion-mnist).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import onnx

from ..compile import NOTHING_CALIBRATES, calibrates, unused_flags
from ..errors import InternalError, UserError
from ..graph.fuse_scan_quant import fuse_plugin_quant
from ..graph.lower import lower_selective_scan
from ..ops.plugin_fields import plugin_inventory
from ..outdir import atomic_dir
from ..recipes import check_family, load_recipe
from .data import calibration_images
from .graph import INPUT, OUTPUT, VimRunner, build_vim_graph
from .model import load_vim
from .passes import check_vim_passes
from .quantize import prepare_vim


def _check(graph, portable, model, quantized: bool) -> dict:
    """Plugin vs portable graph on a batch of 2 random images: float activations to 1e-4; quantized, the portable graph
    taking the plugin graph's side on rounding-boundary values (graph/follow.py) to 1e-4, the direct
    distance (boundary roundings carried on by the scan state) recorded only."""
    c = model.config
    x = np.random.default_rng(0).standard_normal((2, c.channels, c.img_size, c.img_size)).astype(np.float32)
    a, b = VimRunner(graph)(x), VimRunner(portable)(x)
    if a.shape != (2, c.num_classes):
        raise InternalError(f"self-check: logits shape {a.shape}, expected {(2, c.num_classes)}")
    err = float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))
    if not np.isfinite(err) or (not quantized and err > 1e-4):
        raise InternalError(f"self-check: the plugin and portable Vim graphs disagree ({err:.3g})")
    out = {"batch": 2, "max_rel_error_plugin_vs_portable": err}
    if quantized:
        from ..graph.follow import compare_following

        f = compare_following(graph, portable, {INPUT: x}, OUTPUT)["max_rel"]
        if not np.isfinite(f) or f > 1e-4:
            raise InternalError(f"self-check: the portable Vim graph, following the plugin graph's roundings on "
                                f"boundary cases, disagrees with it ({f:.3g})")
        out["max_rel_error_portable_following_plugin"] = f
    return out


def compile_vim(model_path: str, recipe_name: str, out_dir: str | Path, *, force: bool = False,
                calib: Optional[str] = None, calib_samples: Optional[int] = None,
                log: Callable[[str], None] = lambda s: None, warn: Optional[Callable[[str], None]] = None) -> dict:
    from ..compile import _versions, checkpoint_hashes, manifest_head, save_onnx
    from ..trt import d_state_note

    t0 = time.time()
    recipe = load_recipe(recipe_name)
    check_family(recipe, vim=True)
    check_vim_passes(recipe.passes)  # (a language-model recipe file of one's own: before the calibration)
    out_dir = Path(out_dir)
    warn = log if warn is None else warn
    images_read = calibrates(recipe)
    note = None if images_read else unused_flags({"--calib": calib, "--calib-samples": calib_samples},
                                                 f"recipe {recipe.name} calibrates nothing ({NOTHING_CALIBRATES})")
    if note:
        warn(note)
    with atomic_dir(out_dir, force=force, warn=warn) as tmp:
        log(f"loading Vim checkpoint {model_path}")
        model = load_vim(model_path, warn=warn)
        c = model.config
        if d_state_note(c.d_state):
            warn(d_state_note(c.d_state))
        plan, stats_runs, calib_info = None, [], None
        if recipe.passes or recipe.quantized or recipe.precision == "fp16":
            images = None
            if images_read:
                n = calib_samples or recipe.calibration["samples"]
                if n < 1:
                    raise UserError("--calib-samples must be >= 1")
                images = calibration_images(n, c.channels, recipe.calibration["seed"], calib, img_size=c.img_size)
                calib_info = {"dataset": "fashion_mnist train", "path": calib, "samples": int(len(images)),
                              "seed": recipe.calibration["seed"]}
                log(f"calibration: {len(images)} training images")
            model, plan, stats_runs = prepare_vim(model, recipe, images, log=log)
        graph = build_vim_graph(model, plan)
        portable = lower_selective_scan(graph)
        quantized = plan is not None and plan.quant is not None
        for g in (graph, portable):
            onnx.checker.check_model(g)
        check = _check(graph, portable, model, quantized and bool(plan.quant.act_scales))  # (weight-only: as fp32)
        if quantized:
            graph = fuse_plugin_quant(graph)
            onnx.checker.check_model(graph)
        files = {}
        for name, g, flavour in (("model.onnx", graph, "tensorrt"), ("model.portable.onnx", portable, "portable")):
            log(f"writing {name}")
            for p in save_onnx(g, tmp / name):
                files[p.name] = {"flavour": flavour, **({"plugins": plugin_inventory(g)}
                                                        if flavour == "tensorrt" and p.name == name else {})}
        if stats_runs:
            for p in stats_runs[-1].save(tmp):
                files[p.name] = {"what": "calibration statistics"}
        manifest = {
            **manifest_head(tmp, files),
            "model": {**model.source, "family": "vim", "config": c.to_dict(),
                      "weights": checkpoint_hashes(model.source)},
            "recipe": recipe.to_dict(),
            "calibration": calib_info,
            "quantization": None if not quantized else {
                "weight_bits": plan.quant.weight_bits, "act_bits": plan.quant.act_bits,
                "int8_weights": sorted(plan.quant.int8_weights),
                "act_scales": {k: float(v) for k, v in plan.quant.act_scales.items()},
                "token_scales": {k: {"token": int(t), "scale": float(v)} for k, (t, v) in plan.quant.token_scales.items()}},
            "versions": _versions(),
            "io": {"inputs": [{"name": INPUT, "dtype": "float32", "shape": ["batch", c.channels, c.img_size, c.img_size]}],
                   "outputs": [{"name": OUTPUT, "dtype": "float32", "shape": ["batch", c.num_classes]}]},
            "plugins": plugin_inventory(graph),
            "self_check": check,
            "files": files,
            "seconds": round(time.time() - t0, 2),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    log(f"wrote {out_dir} in {time.time() - t0:.1f}s")
    return manifest
