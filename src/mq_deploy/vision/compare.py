"""`mq-deploy compare VIM_DIR --recipes ... --tasks fashion_mnist`: every vision recipe side by side.

Per recipe: calibrate on the recipe's `calibration.samples` (or `calib_samples`) training images (its seed; from the
folder `calib`, else `data`) where it calibrates, apply the
passes, quantize, build the plugin graph and score top-1 on the Fashion-MNIST test images (all 10k
unless `limit`), with the agreement of its predictions with fp32's. The fp32 statistics the passes read
are computed once per (samples, seed) and shared by every recipe.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

from ..compare import reuse_row
from ..compile import calibrates
from ..errors import UserError
from ..passes import needs_stats
from ..recipes import check_family, load_recipe
from .data import calibration_images, evaluate_top1
from .graph import VimRunner, build_vim_graph
from .model import load_vim
from .quantize import fp32_stats, prepare_vim

TASK = "fashion_mnist"


def compare_vim(model_dir: str, recipes: Sequence[str], tasks: Sequence[str], limit: Optional[int] = None,
                data: Optional[str] = None, calib: Optional[str] = None, calib_samples: Optional[int] = None,
                progress: bool = True,
                log: Callable[[str], None] = lambda s: None, done: Optional[dict] = None,
                on_row: Callable[[list], None] = lambda rows: None) -> tuple[list[dict], dict]:
    """Rows [{recipe, fashion_mnist: {acc, agreement, n}, seconds}] (fp32 first) and the model's description.
    `done`: rows of an earlier run by recipe name, taken as they are (`--resume`; fp32 is still run when any recipe
    is left, for the predictions the agreement compares with); `on_row(rows)`: after each row."""
    if list(tasks) != [TASK]:
        raise UserError(f"a Vision Mamba model is compared on --tasks {TASK} only (got {','.join(tasks)})")
    recs = [load_recipe(r) for r in recipes]  # unknown names fail before any work
    for r in recs:
        check_family(r, vim=True)
    done = done or {}
    model = load_vim(model_dir)
    c = model.config
    info = {"path": str(model_dir), "format": "vim", "config": c.to_dict()}
    names = [x.name for x in recs if x.name != "fp32"]
    if "fp32" in done and all(n in done for n in names):
        rows = [done["fp32"]] + [done[n] for n in names]
        log("--resume: every recipe's row is from the earlier run")
        on_row(rows)
        return rows, info
    t0 = time.time()
    log("fp32")
    fp = evaluate_top1(VimRunner(build_vim_graph(model)), c.channels, limit, path=data, progress=progress,
                       img_size=c.img_size)
    ref = fp.pop("predictions")
    rows = [done.get("fp32") or {"recipe": "fp32", TASK: {"acc": fp["top1"], "agreement": 1.0, "n": fp["n"]},
                                 "seconds": round(time.time() - t0, 1)}]  # (the earlier row: the same numbers)
    on_row(rows)
    stats0: dict = {}
    for recipe in recs:
        if recipe.name == "fp32":
            continue
        if reuse_row(rows, done, recipe.name, log, on_row):
            continue
        t0 = time.time()
        log(f"recipe {recipe.name}")
        seed, n = recipe.calibration["seed"], calib_samples or recipe.calibration["samples"]
        imgs = (calibration_images(n, c.channels, seed, path=calib or data, img_size=c.img_size)
                if calibrates(recipe) else None)  # (a weight-only RTN recipe reads none)
        if imgs is not None:
            log(f"  calibration: {len(imgs)} training images")
        key = (n, seed)
        if needs_stats(recipe.passes) and key not in stats0:
            stats0[key] = fp32_stats(model, imgs, seed)
        m2, plan, _ = prepare_vim(model, recipe, imgs, stats0=stats0.get(key), log=log)
        r = evaluate_top1(VimRunner(build_vim_graph(m2, plan)), c.channels, limit, path=data, progress=progress,
                          reference=ref)
        rows.append({"recipe": recipe.name, TASK: {"acc": r["top1"], "agreement": r["agreement"], "n": r["n"]},
                     "seconds": round(time.time() - t0, 1)})
        log(f"  top1 {r['top1']:.4f}, agreement with fp32 {r['agreement']:.4f} ({rows[-1]['seconds']} s)")
        on_row(rows)
    return rows, info
