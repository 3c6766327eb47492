"""`mq-deploy validate OUTDIR`: the same random input_ids through every implementation at hand, and the
error statistics of every pair of them. A Vim OUTDIR (input pixel_values) gets the first `batch`
Fashion-MNIST test images (random normal pixels without the dataset) and a torch fp32 Vim as torch-fp32;
it has no simulation.

Implementations ("references"), each `input_ids -> {output name: array}`:

  portable    onnxruntime on model.portable.onnx (standard ONNX ops)                          always
  plugin      onnxruntime on model.onnx, plugin nodes on mq-deploy's CPU kernels               always
  simulation  numpy fake-quant simulation (quant/simulate.py) of the transformed model and      --simulate
              plan; those are not stored in OUTDIR, so they are re-derived from the manifest
              (checkpoint + recipe + calibration file, each checked by hash) and the
              re-derived activation scales are checked against the manifest's
  torch-fp32  Hugging Face MambaForCausalLM in fp32 on the original checkpoint: no recipe, so   --torch / --model
              for a quantized OUTDIR its distance is the quantization error, not a bug
  tensorrt    the serialized engine (default OUTDIR/model.engine) with the plugin library       TensorRT + engine

The onnxruntime and TensorRT runners go through polygraphy's `Comparator.run` when polygraphy is
installed (plain onnxruntime / TensorRT calls otherwise); the statistics are always computed here,
for pair (a, b) with a as the reference:

  max_abs = max|b - a|    max_rel = max_abs / max|a|    mean_abs = mean|b - a|
  top1    = share of (batch, position) whose argmax over the last axis agrees (logits)

Pairs among portable / plugin / simulation are gated by `tol` (default FP32_TOL: same semantics, different
code), pairs with tensorrt by `engine_tol` (default ENGINE_TOL); pairs with torch-fp32 are gated by `tol` for an
fp32 recipe's graphs and reported otherwise (what a recipe changes: compare / eval measure it). For a quantized OUTDIR the direct pairs among portable / plugin / simulation are reported only, and
rows that take the rounding-boundary cases out carry the `tol` gate (see FP32_TOL): `portable vs plugin~`
(graph/follow.py) and, with --simulate, `simulation~` vs each graph (FOLLOW_NAME). A validation engine
(`mq-deploy build --validation-engine`, which also outputs every QuantizeLinear input) is checked layer by layer:
model.portable.onnx is run on the engine's own int8 codes at every QuantizeLinear (`portable=`), so that each
tensor is computed from the same integers as the engine's and nothing carries over from earlier layers. Each
quantizer input's mean distance from the engine's, in steps of its QuantizeLinear, is held to ENGINE_STEP_TOL and
its relative scale (the gain of graph/follow.py step_distances) to ENGINE_GAIN_TOL (`Report.steps`, the `per
layer` line, which names the first tensor in graph order over either: where the engine computes something else),
and the logits of `portable= vs tensorrt` to ENGINE_FOLLOW_TOL. The engine's direct rows and `portable~ vs
tensorrt` (the portable graph taking the engine's rounding only within ENGINE_FOLLOW_STEPS, so that rounding
differences carry through the scan state) are then reported only. A Hadamard that quantizes its own output (its
QuantizeLinear fused) is marked twice: its kernel's codes, dequantized, which `portable=` follows, and a float
twin's output, on which its layer is checked; the codes are held against the twin's rounding (`Report.fused`,
FUSED_CODES_TOL). `--graph prefill|decode` compares the stateful graphs and their engine the same way
(_validate_stateful), a validation engine of that graph layer by layer too.
"""

from __future__ import annotations

import functools
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import trt as mtrt
from .errors import UserError
from .graph.follow import ENGINE_FOLLOW_STEPS, TWIN_REL
from .hub import compiled_from
from .outdir import check_files, graph_files, missing_file

# Limits on max_rel. Quantized OUTDIRs: two fp32 implementations of the same Q/DQ graph (and the simulation)
# sum in different orders, so now and then an activation sits within ~1e-7 of a rounding boundary and lands one
# int8 step apart; the scan state carries that step to every later position, and in a deep model it flips more
# roundings downstream. The direct distance is then bounded only by quantization's own effect: 1-3e-2 of
# max|logit| on the bundled model at sequence 17-128, 1.0e-1 (top-1 0.94) on mamba-ref-29m W8A8 at 2x64 with
# graphs that are right. So for quantized OUTDIRs the direct rows among portable / plugin / simulation are
# reported, not gated, and the gate (fp32 rounding, FP32_TOL or --tol) is on rows that take the boundary
# roundings out: `portable vs plugin~` (model.onnx taking the portable graph's side where both agree to 1/1000
# of a step, graph/follow.py) and, with --simulate, `simulation~` vs each graph (quant.simulate.layer `follow`).
# A wrong scale, weight or kernel moves values by more than 1/1000 of a step and still shows.
# Engines: a direct pair is gated at ENGINE_TOL (fp16 / TF32 float layers); for a quantized OUTDIR that holds
# only without cascades, so a validation engine (`mq-deploy build --validation-engine`, which also outputs the
# tensors before its QuantizeLinear nodes) is compared layer by layer on its own int8 codes (`portable=`, the
# per-layer line and ENGINE_FOLLOW_TOL on its logits), and the direct engine rows are then reported only, as is
# `portable~ vs tensorrt`: model.portable.onnx taking the engine's rounding only where both agree within
# ENGINE_FOLLOW_STEPS, which a correct engine whose float layers round twice as coarsely as the fp16 stand-in
# fails on the language models (2.9-3.5e-2: the rounding differences it cannot take carry through the scan
# state), and which misses a 0.3 % scale error on mamba-ref-29m that the per-layer gain shows
# (benchmarks/results/validate_engine_follow.md). --engine-tol sets the direct and the portable= limits.
FP32_TOL, ENGINE_TOL, ENGINE_FOLLOW_TOL = 1e-4, 5e-2, 1e-2
# A validation engine's quantizer inputs, each computed by model.portable.onnx from the engine's int8 codes
# (graph/follow.py step_distances), against the engine's: the mean distance in steps, and the gain (relative scale).
# An fp16 stand-in engine: means 0.012-0.018 step, |gain| ≤ 1.7e-4 (with twice fp16's rounding error in every float
# layer: ≤ 0.032 step, ≤ 1.5e-4); a C_scale error in one scan: on the language models gain 9e-4-2.3e-3 at 0.3 %,
# 3.1e-3-7.8e-3 at 1 %, on its output tensor; on the trained Vim 10 % shows (mean 0.61 step, gain 1.0e-3), 1 % does
# not (0.065 step against 0.016, gain 9e-5: below every limit, as on its logits)
# (benchmarks/results/validate_engine_follow.md).
ENGINE_STEP_TOL, ENGINE_GAIN_TOL = 0.1, 5e-4
# The decode step's (validate --graph decode) gain limit: one token a row gives each tensor B·width values, and the
# fp16 stand-in's decode step departs by more in scale than a prompt's graph does: |gain| up to 3.8e-4, and with
# twice fp16's rounding error up to 1.3e-3 (the worst of 8 draws), mostly at out_proj's input, where the state's
# fp16 rounding shows; a 1 % error in one state update's C gives 2.2e-3 to 8.4e-3 there, in its D 1.5e-3 to 7.7e-3,
# in a conv step's taps 1.1e-2 at x_proj's input (bundled rtn-w8a8 and mamba-ref-29m mambaquant-w8a8:
# benchmarks/stateful_engine_standin.py --layers [--draws 8], benchmarks/results/stateful_engine_standin.md).
ENGINE_GAIN_TOL_DECODE = 1.5e-3
# A validation engine's fused Hadamards (out_proj's QuantizeLinear in the kernel, as deployed) against their float twins
# on the same input: the share of codes that differ where the twin lies further from a rounding boundary than it can
# be from the kernel's own fp32 value (graph/follow.py fused_code_differences, TWIN_REL), and no code more than one
# apart anywhere. The fp16 stand-in (codes rounded from fp32, twin in fp16), correct or noisier: 0 of them on the
# bundled model, mamba-ref-29m and the Vim at 2x64; one kernel rounding with a 1 % wrong scale: 10 % / 2.8 % / 13 % of
# its codes, with 0.3 %: 0.51 % / 0.036 % / 0.95 % (mamba-ref-29m's codes are small: 0.3 % of them is within what fp16
# moves; benchmarks/validate_engine_follow.py, benchmarks/results/validate_engine_follow.md).
FUSED_CODES_TOL = 1e-3
PLUGIN_FOLLOW_WHAT = ("onnxruntime on model.onnx again, taking model.portable.onnx's side on values within 1/1000 of a "
                      "step of a rounding boundary (graph/follow.py); held to fp32 rounding")
ENGINE_FOLLOW_WHAT = ("onnxruntime on model.portable.onnx taking the engine's rounding wherever both agree within "
                      f"{ENGINE_FOLLOW_STEPS:g} of a step before a QuantizeLinear (the engine's float layers may be "
                      "fp16); rounding differences beyond that carry through the scan state: reported")
ENGINE_CODES_WHAT = ("onnxruntime on model.portable.onnx quantizing the engine's value at every QuantizeLinear: each "
                     "layer computed from the engine's own int8 codes")
NO_ENGINE_FOLLOW = ("tensorrt: a quantized OUTDIR's engine is compared directly only, and a correct one can exceed "
                    "the direct limit (its fp16 / TF32 layers round boundary values otherwise and the scan state "
                    "carries that on); for a tight check build a validation engine, `mq-deploy build {outdir} "
                    "--validation-engine`, and pass it as --engine {outdir}/{file}")
FOLLOW_NAME = "simulation~"
FOLLOW_WHAT = ("the simulation again, per graph, taking that graph's side on roundings where both agree to 1/1000 of "
               "a step (a boundary case, not a bug); held to fp32 rounding")


@dataclass
class Reference:
    name: str
    what: str
    run: Optional[Callable[[np.ndarray], dict]] = None  # numpy/torch references
    ort_session: object = None  # onnxruntime references (a polygraphy OnnxrtRunner when polygraphy exists)
    engine: Optional[str] = None  # the TensorRT reference
    plugin_lib: Optional[str] = None
    graph_file: Optional[Path] = None  # onnxruntime references: the ONNX file
    # the quantized simulation only: (input_ids, graph file) -> (graph logits, simulation logits taking the
    # graph's side on rounding boundaries, roundings taken)
    follow: Optional[Callable[[np.ndarray, Path], tuple]] = None


@dataclass
class Report:
    outdir: str
    recipe: str
    batch: int
    seq: int
    seed: int
    references: list = field(default_factory=list)  # [{name, what}]
    skipped: list = field(default_factory=list)  # [{name, reason}]
    pairs: list = field(default_factory=list)  # [{reference, test, output, max_abs, max_rel, mean_abs, top1, limit, ok}]
    runner: str = "numpy"  # "polygraphy" when polygraphy's Comparator ran the onnxruntime/TensorRT references
    input_name: str = "input_ids"
    input_shape: tuple = ()
    input_what: str = ""
    graph: str = "model"  # which graph of the OUTDIR (validate --graph)
    # a validation engine, per quantizer input: {tensors, limits: {mean_steps, gain}, ok, worst_mean: {tensor,
    # mean_steps, max_steps}, worst_gain: {tensor, gain}, first_over: {tensor, mean_steps, gain} or None,
    # per_tensor: {tensor: [mean_steps, max_steps, gain]} in graph order}
    steps: Optional[dict] = None
    # a validation engine's fused Hadamards, their kernel's codes against their float twins': {tensors, window_steps,
    # twin_rel (graph/follow.py fused_code_differences), limits: {share, codes}, ok, worst: {tensor, share, largest,
    # count}, per_tensor: {tensor: [share, largest, count]}}
    fused: Optional[dict] = None

    @property
    def ok(self) -> bool:
        return (all(p["ok"] is not False for p in self.pairs) and (self.steps is None or self.steps["ok"])
                and (self.fused is None or self.fused["ok"]))

    def to_dict(self) -> dict:
        return {"outdir": self.outdir, "recipe": self.recipe, "graph": self.graph,
                self.input_name: list(self.input_shape or (self.batch, self.seq)),
                "input": self.input_what, "seed": self.seed, "runner": self.runner, "references": self.references,
                "skipped": self.skipped, "pairs": self.pairs, **({"steps": self.steps} if self.steps else {}),
                **({"fused": self.fused} if self.fused else {}), "ok": self.ok}


# -- statistics (pure) ----------------------------------------------------------------------------
def error_stats(ref: np.ndarray, x: np.ndarray) -> dict:
    ref, x = np.asarray(ref, np.float64), np.asarray(x, np.float64)
    if ref.shape != x.shape:
        raise UserError(f"output shapes differ: {ref.shape} vs {x.shape}")
    d = np.abs(x - ref)
    s = {"max_abs": float(d.max()), "max_rel": float(d.max() / max(np.abs(ref).max(), 1e-30)),
         "mean_abs": float(d.mean())}
    if ref.ndim >= 2 and ref.shape[-1] > 1:  # (a row that is not finite on either side agrees with nothing)
        finite = np.isfinite(ref).all(-1) & np.isfinite(x).all(-1)
        s["top1"] = float(((ref.argmax(-1) == x.argmax(-1)) & finite).mean())
    return s


# -- references -----------------------------------------------------------------------------------
def have_polygraphy() -> bool:
    try:
        import polygraphy  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def _rederive(manifest: dict, outdir: Path, model_dir: Optional[str], calib: Optional[str], progress: bool = False):
    """(transformed model, plan) of OUTDIR from its manifest: the compile's own steps, inputs checked by hash;
    `progress`: the calibration runs' progress bars, as compile shows them."""
    from .compile import calibration_data
    from .outdir import sha256_file
    from .graph.plan import GraphPlan
    from .loaders import load_model
    from .quantize import prepare
    from .recipes import load_recipe

    if not manifest:
        raise UserError(f"{outdir} has no manifest.json: --simulate needs it to re-derive the plan")
    src = manifest["model"]
    model = load_model(model_dir)  # (collect_references resolved it: None is the bundled model)
    if model.config.to_dict() != src["config"]:
        raise UserError(f"the checkpoint {model.source['path']} is not the one {outdir} was compiled from "
                        "(config differs); pass --model DIR")
    r = manifest["recipe"]
    recipe = load_recipe(r["source"] if r.get("source") and Path(r["source"]).is_file() else r["name"])
    if r.get("sha256") and recipe.sha256 != r["sha256"]:
        raise UserError(f"recipe {recipe.source} changed since {outdir} was compiled (sha256 differs)")
    cal, windows = manifest.get("calibration"), None
    if cal:
        path = Path(calib or cal["file"])
        if not path.is_file():
            raise UserError(f"--simulate needs the calibration file {path} (pass --calib FILE)")
        if sha256_file(path) != cal["sha256"]:
            raise UserError(f"calibration file {path} is not the one {outdir} was compiled with (sha256 differs)")
        tok = cal.get("tokenizer")
        tok = tok if tok and Path(tok).is_file() else str(outdir / "tokenizer.json")
        windows, _ = calibration_data(model, recipe, str(path), tok, cal["samples"], cal["seq_len"])
    model, plan, _ = prepare(model, recipe, windows, progress=progress)
    if plan is None:
        plan = GraphPlan.plain(model.config.n_layer)
    q = manifest.get("quantization")
    if q:
        want, got = q["act_scales"], {k: float(v) for k, v in plan.quant.act_scales.items()}
        bad = [k for k in want if k not in got or abs(got[k] - want[k]) > 1e-6 * abs(want[k])]
        if bad or set(got) != set(want):
            raise UserError(f"re-derived activation scales differ from {outdir}/manifest.json at {bad[:3] or 'the set'}: "
                            "this mq-deploy's calibration does not reproduce the compile's (the OUTDIR was made by "
                            "other mq-deploy code?); recompile it, or validate without --simulate")
        # which linears are int8 in an INT4 recipe (since 2026-12-01 with block_size: those the block does not
        # divide, before: none); older manifests do not say, and mean none
        got8, want8 = sorted(plan.quant.int8_weights), q.get("int8_weights", [])
        if got8 != want8:
            def few(names: list, none: str) -> str:
                return ", ".join(names[:2]) + (" ..." if len(names) > 2 else "") if names else none

            raise UserError(f"this mq-deploy quantizes {few(got8, 'no weight')} to int8 where {outdir} has "
                            f"{few(want8, 'none')} (its manifest.json's quantization.int8_weights): it was compiled by "
                            "an older mq-deploy; recompile it, or validate without --simulate")
    return model, plan


def _points(manifest: dict, model, plan) -> dict:
    """{quantization point: tensor name} of the OUTDIR's graphs (both flavours keep these tensors): from the
    manifest, or, for an OUTDIR compiled before the manifest recorded them, from rebuilding the graph."""
    pts = (manifest.get("quantization") or {}).get("points")
    if pts:
        return dict(pts)
    from .graph.mamba_lm import build_lm_graph

    return build_lm_graph(model, plan, with_points=True)[1]


def _follower(model, plan, points: dict, threads: Optional[int]) -> Callable[[np.ndarray, Path], tuple]:
    def follow(ids: np.ndarray, graph_file: Path) -> tuple:
        from .graph.follow import point_values
        from .quant.simulate import forward

        f = point_values(graph_file, points, plan.quant.act_scales, ids, threads=threads, plugins="extensions")
        got = f.pop("logits")
        sim = forward(model, plan, ids, f)
        return got, sim, int(f.get("flipped", 0))

    return follow


def _same_config(outdir: Path, manifest: dict, checkpoint: Optional[str]) -> None:
    """A UserError naming the config values in which the checkpoint differs from the one the OUTDIR was compiled from
    (its config.json alone is read: before any weight)."""
    from .loaders import resolve_model_dir
    from .loaders.formats import FORMATS, detect_format, read_config

    want = (manifest.get("model") or {}).get("config") or {}
    root = resolve_model_dir(checkpoint)
    raw = read_config(root / "config.json")
    got = FORMATS[detect_format(raw, root / "config.json")].parse_config(raw).to_dict()
    if any(k in got and got[k] != v for k, v in want.items()):
        diff = ", ".join(f"{k} {got[k]} here, {v} there" for k, v in want.items() if k in got and got[k] != v)
        raise UserError(f"{'the bundled model' if checkpoint is None else f'the checkpoint {checkpoint}'} is not the "
                        f"one {outdir} was compiled from ({diff}): pass --model DIR, the checkpoint it was compiled "
                        "from")


def _same_checkpoint(outdir: Path, manifest: dict, checkpoint: Optional[str], log: Callable[[str], None]) -> None:
    """A UserError when a weight file the compile read (manifest model.weights: {file: sha256}) is missing from the
    checkpoint --torch / --simulate load, or differs: its weights changed since, and every row against it would
    measure that instead. Manifests of older compiles list none: nothing to check."""
    from .loaders import resolve_model_dir
    from .outdir import sha256_file

    want = (manifest.get("model") or {}).get("weights")
    if not isinstance(want, dict) or not want:
        return
    root = resolve_model_dir(checkpoint)
    log(f"checking {', '.join(want)} of {root} against manifest.json's sha256")
    for name, sha in want.items():
        f = root / name
        if not f.is_file() or sha256_file(f) != sha:
            why = "is missing there" if not f.is_file() else "differs from the file compiled (sha256)"
            raise UserError(f"the checkpoint {root} is not the one {outdir} was compiled from: {name} {why}; pass "
                            "--model DIR, the checkpoint it was compiled from (or compile again)")


def collect_references(outdir: Path, manifest: dict, *, simulate: bool = False, torch_ref: bool = False,
                       model_dir: Optional[str] = None, calib: Optional[str] = None, engine: Optional[str] = None,
                       plugin_lib: Optional[str] = None, threads: Optional[int] = None,
                       log: Callable[[str], None] = lambda s: None,
                       progress: bool = False) -> tuple[list[Reference], list[dict]]:
    from .backends.ort import OrtRunner

    refs, skipped = [], []
    torch_ref = torch_ref or (model_dir is not None and not simulate)  # --model alone implies --torch
    vim = mtrt.manifest_input(manifest)[0] == "pixel_values"
    if vim and simulate:
        raise UserError("--simulate is for language-model OUTDIRs; a Vim OUTDIR is checked as portable vs plugin "
                        "(and --torch / the engine)")
    # the checkpoint --torch / --simulate load (None: the bundled model), resolved once: the manifest's, which for a
    # model compiled from the Hub may be fetched here
    checkpoint = model_dir
    if checkpoint is None and (torch_ref or simulate) and manifest:
        checkpoint = compiled_from(manifest.get("model", {}), log=log, warn=log)
        if checkpoint is not None and not Path(checkpoint).is_dir():  # (a device the OUTDIR was copied to)
            flags = " and ".join(f for f, on in (("--torch", torch_ref), ("--simulate", simulate)) if on)
            raise UserError(f"{flags} need{'s' if ' and ' not in flags else ''} the checkpoint {outdir} was compiled "
                            f"from, {checkpoint} (its manifest.json), which is not on this machine: pass --model DIR "
                            f"(a copy of it), or leave out {flags}")
    if checkpoint is not None and (Path(checkpoint) / "config.json").is_file():
        from .vision.model import is_vim_dir

        if is_vim_dir(checkpoint) != vim:  # (each loader's own message would name the wrong problem)
            kinds = ("a language-model checkpoint", "a Vision Mamba (Vim)") if vim else \
                ("a Vision Mamba (Vim) checkpoint", "a language model")
            raise UserError(f"{checkpoint} is {kinds[0]}, but {outdir} was compiled from {kinds[1]}: pass --model "
                            "DIR, the checkpoint it was compiled from")
    if (torch_ref or simulate) and not vim:  # the config first: cheap, and the clearer message before hashing
        _same_config(outdir, manifest, checkpoint)
        _same_checkpoint(outdir, manifest, checkpoint, log)
    if vim and torch_ref:
        try:
            import torch

            from .vision.model import load_vim
            from .vision.torch_ref import VimTorch
        except ImportError as e:
            raise UserError(f"--torch needs torch ({e}); pip install torch") from None
        path = checkpoint
        if not path:
            raise UserError(f"{outdir}/manifest.json names no checkpoint: pass --model DIR")
        from .loaders import resolve_model_dir

        resolve_model_dir(path)  # (missing, a file, an OUTDIR: said as for a language model)
        vm = load_vim(path)
        want = {k: v for k, v in manifest.get("model", {}).get("config", {}).items() if k != "model_type"}
        if want and {k: v for k, v in vm.config.to_dict().items() if k != "model_type"} != want:
            raise UserError(f"the checkpoint {path} is not the one {outdir} was compiled from (config differs)")
        _same_checkpoint(outdir, manifest, path, log)  # (its weights; manifests before 2026-12-02 list none)
        net = VimTorch.from_model(vm)

        def run_vim(x):
            with torch.no_grad():
                return {"logits": net(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()}

        refs.append(Reference("torch-fp32", f"torch fp32 Vim on the original checkpoint ({path}; no recipe applied)",
                              run=run_vim))
    elif torch_ref:
        try:
            from .backends.torch_hf import checkpoint_runner
        except ImportError as e:
            raise UserError(f"--torch needs torch and transformers ({e}); pip install torch transformers") from None
        path = checkpoint
        runner, how = checkpoint_runner(path, threads)
        refs.append(Reference("torch-fp32", f"torch fp32, {how}, on the original checkpoint "
                                            f"({'bundled model' if path is None else path}; no recipe applied)",
                              run=lambda ids: {"logits": runner(ids)}))
    if simulate:
        from .quant.simulate import forward

        log("re-deriving the transformed model and plan from the manifest (checkpoint, recipe, calibration)")
        model, plan = _rederive(manifest, outdir, checkpoint, calib, progress)
        acts = plan.quant is not None and bool(plan.quant.act_scales)  # (weight-only: no rounding to follow)
        sim = Reference("simulation", "numpy fake-quant simulation (mq_deploy.quant.simulate) of the plan "
                                      "re-derived from the manifest (" + ("activation scales match it)" if acts else
                                                                          "weights only, activations float)"
                                                                          if plan.quant is not None else "float)"),
                        run=lambda ids: {"logits": forward(model, plan, ids)})
        if acts:
            sim.follow = _follower(model, plan, _points(manifest, model, plan), threads)
        refs.append(sim)
    for name, file, what in (("portable", "model.portable.onnx", "standard ONNX ops"),
                             ("plugin", "model.onnx", "plugin nodes on mq-deploy's CPU kernels")):
        if not (outdir / file).is_file():
            raise missing_file(outdir, manifest, file)
        refs.append(Reference(name, f"onnxruntime on {file} ({what})",
                              ort_session=OrtRunner(outdir / file, threads=threads, plugins="extensions").session,
                              graph_file=outdir / file))
    refs.extend(_engine_reference(outdir, manifest, engine, plugin_lib, skipped))
    return refs, skipped


def _check_named_engine(path: Path) -> None:
    """An engine named with --engine must exist and TensorRT must be here to run it (a check asked for and not run is
    not OK): one UserError otherwise."""
    if not path.is_file():
        raise UserError(f"engine {path} not found")
    try:
        mtrt.import_tensorrt()
    except UserError as e:
        raise UserError(f"--engine {path} cannot be run here: {e}") from None


def _engine_reference(outdir: Path, manifest: dict, engine: Optional[str], plugin_lib: Optional[str],
                      skipped: list, graph: str = "model") -> list[Reference]:
    """[the TensorRT reference] (`engine`, default OUTDIR/model.engine, or model.<graph>.engine), or [] with the
    reason in `skipped` (no TensorRT, no engine at the default path); an engine named (`engine`) was checked by
    validate first (_check_named_engine: it exists and TensorRT is here)."""
    engine_path = Path(engine) if engine else outdir / mtrt.ENGINES[graph]
    try:
        trt = mtrt.import_tensorrt()
    except UserError as e:
        skipped.append({"name": "tensorrt", "reason": f"engine comparison skipped: {e}"})
        return []
    if not engine_path.is_file():  # the default path (a named engine was checked above)
        how = f"--graph {graph} " if graph != "model" else ""
        skipped.append({"name": "tensorrt", "reason": f"engine comparison skipped: no engine at {engine_path}; build it "
                                                      f"with `mq-deploy build {outdir} {how}--plugins LIB`"})
        return []
    lib = mtrt.resolve_plugin_lib(plugin_lib)  # only now: a skipped engine comparison needs no plugin library
    if lib is None and mtrt.manifest_plugin_nodes(manifest):
        raise UserError(f"the engine {engine_path} holds mq-deploy plugins: pass --plugins LIB or set "
                        f"{mtrt.PLUGINS_ENV} ({mtrt.PLUGIN_BUILD_HINT})")
    return [Reference("tensorrt", f"TensorRT {trt.__version__} engine {engine_path}", engine=str(engine_path),
                      plugin_lib=lib)]


# -- running --------------------------------------------------------------------------------------
def _trt_direct(engine_path: str, plugin_lib: Optional[str], feed: dict) -> dict:
    """Run a serialized engine with TensorRT's own API (torch CUDA tensors as buffers): the no-polygraphy path."""
    from .backends.trt_engine import TrtEngine

    eng = TrtEngine(engine_path, plugin_lib, why="running the engine without polygraphy",
                    alternative="pip install polygraphy", smaller="pass smaller --batch/--seq")
    return {n: t.float().cpu().numpy() for n, t in eng.run(feed).items()}


def run_references(refs: list[Reference], feed: dict, use_polygraphy: bool) -> dict[str, dict]:
    """`feed`: {input name: array} (input_ids int64, or a Vim's pixel_values float32; the stateful graphs' several
    inputs, which only the onnxruntime and TensorRT references take)."""
    results: dict[str, dict] = {}
    backend = [r for r in refs if r.run is None]
    if use_polygraphy and backend:
        from polygraphy.backend.onnxrt import OnnxrtRunner
        from polygraphy.comparator import Comparator
        from polygraphy.logger import G_LOGGER

        runners = []
        for r in backend:
            if r.engine is not None:
                from polygraphy.backend.common import BytesFromPath
                from polygraphy.backend.trt import EngineFromBytes, TrtRunner

                # not polygraphy's LoadPlugins: it only dlopens the library, and ours registers its
                # IPluginV3 creators through getCreators, which only IPluginRegistry.load_library calls
                trt = mtrt.import_tensorrt()
                mtrt.load_plugins(trt, mtrt.trt_logger(trt), r.plugin_lib)
                runners.append(TrtRunner(EngineFromBytes(BytesFromPath(r.engine)), name=r.name))
            else:
                runners.append(OnnxrtRunner(r.ort_session, name=r.name))
        G_LOGGER.module_severity = G_LOGGER.ERROR
        try:
            run = Comparator.run(runners, data_loader=[feed])
        except Exception as e:  # polygraphy reports failures (e.g. shapes outside the profile) as its own errors
            raise UserError(f"polygraphy could not run the references: {e}") from None
        for r in backend:
            results[r.name] = {k: np.asarray(v) for k, v in run[r.name][0].items()}
    else:
        for r in backend:
            if r.engine is not None:
                results[r.name] = _trt_direct(r.engine, r.plugin_lib, feed)
            else:
                names = [o.name for o in r.ort_session.get_outputs()]
                results[r.name] = dict(zip(names, r.ort_session.run(None, feed)))
    for r in refs:
        if r.run is not None:
            (x,) = feed.values()
            results[r.name] = r.run(x)
    return {r.name: results[r.name] for r in refs}


def _limit(a: str, b: str, quantized: bool, tol: Optional[float], engine_tol: Optional[float],
           engine_followed: bool = False, fp32: bool = False) -> Optional[float]:
    if "torch-fp32" in (a, b):  # the checkpoint against an fp32 recipe's graphs: fp32 rounding; otherwise what the
        # recipe changes, reported (compare / eval measure it)
        return (tol if tol is not None else FP32_TOL) if fp32 and not quantized and "tensorrt" not in (a, b) else None
    if "tensorrt" in (a, b):  # with a validation engine the gate is on portable= vs tensorrt and the per-layer line
        return None if engine_followed else (engine_tol if engine_tol is not None else ENGINE_TOL)
    if quantized:  # boundary roundings: reported; the gate is on the plugin~ / simulation~ rows
        return None
    return tol if tol is not None else FP32_TOL


def validate(outdir: str | Path, *, batch: int = 2, seq: int = 32, seed: int = 0, simulate: bool = False,
             torch_ref: bool = False, model_dir: Optional[str] = None, calib: Optional[str] = None,
             engine: Optional[str] = None, plugin_lib: Optional[str] = None, tol: Optional[float] = None,
             engine_tol: Optional[float] = None, threads: Optional[int] = None, use_polygraphy: Optional[bool] = None,
             engine_step_tol: Optional[float] = None, engine_gain_tol: Optional[float] = None,
             engine_codes_tol: Optional[float] = None, log: Callable[[str], None] = lambda s: None,
             graph: str = "model", progress: bool = False) -> Report:
    if batch < 1 or seq < 1:
        raise UserError("--batch and --seq must be at least 1")
    for flag, v in (("--tol", tol), ("--engine-tol", engine_tol), ("--engine-step-tol", engine_step_tol),
                    ("--engine-gain-tol", engine_gain_tol), ("--engine-codes-tol", engine_codes_tol)):
        if v is not None and not v > 0:  # NaN too: every row would pass or fail whatever the distance
            raise UserError(f"{flag} must be a number above 0, not {v}")
    if engine_codes_tol is not None and engine_codes_tol >= 1:
        raise UserError(f"--engine-codes-tol is a share of the codes, below 1, not {engine_codes_tol}")
    out = Path(outdir)
    _, manifest = mtrt.read_outdir(out)
    _check_memory(manifest, batch, seq)  # (the decode step's states come from a prefill of that prompt)
    if engine:  # an engine asked for by name must run here: said before any other work
        _check_named_engine(Path(engine))
    # a corrupted copy of what this validate reads (its two graphs would agree on the same wrong weights)
    plugin_graph = mtrt.GRAPHS.get(graph, "model.onnx")
    check_files(out, manifest, graph_files(manifest, [plugin_graph, plugin_graph.replace(".onnx", ".portable.onnx")]),
                hashes=True, log=log)
    if graph != "model":
        if graph not in mtrt.GRAPHS:
            raise UserError(f"--graph must be one of {', '.join(mtrt.GRAPHS)}, not {graph!r}")
        for flag, on in (("--simulate", simulate), ("--torch", torch_ref), ("--model", model_dir), ("--calib", calib)):
            if on:
                raise UserError(f"{flag} is for model.onnx; --graph {graph} compares the {graph} graph's two "
                                "flavours and its engine")
        return _validate_stateful(out, manifest, graph, batch=batch, seq=seq, seed=seed, tol=tol,
                                  engine=engine, plugin_lib=plugin_lib, engine_tol=engine_tol,
                                  engine_step_tol=engine_step_tol, engine_gain_tol=engine_gain_tol,
                                  engine_codes_tol=engine_codes_tol, threads=threads, use_polygraphy=use_polygraphy,
                                  log=log)
    name, fixed = mtrt.manifest_input(manifest)
    if name == "pixel_values":
        feed, what = _vim_images(batch, fixed, seed)
    else:
        vocab = manifest.get("model", {}).get("config", {}).get("vocab_size")
        if not vocab:
            raise UserError(f"{out}/manifest.json has no model.config.vocab_size; recompile with `mq-deploy compile`")
        ids = np.random.default_rng(seed).integers(0, vocab, size=(batch, seq), dtype=np.int64)
        feed, what = {"input_ids": ids}, f"random input_ids {batch}x{seq}, seed {seed}"
    quantized = mtrt.manifest_act_quantized(manifest)  # (weight-only: float activations, as fp16)
    fp32 = manifest.get("recipe", {}).get("precision", "fp32") == "fp32"  # (float graphs: every recipe unquantized)
    refs, skipped = collect_references(out, manifest, simulate=simulate, torch_ref=torch_ref, model_dir=model_dir,
                                       calib=calib, engine=engine, plugin_lib=plugin_lib, threads=threads, log=log,
                                       progress=progress)
    use_polygraphy = have_polygraphy() if use_polygraphy is None else use_polygraphy
    log(f"running {what} through {', '.join(r.name for r in refs)}")
    outs = run_references(refs, feed, use_polygraphy)
    rep = Report(str(out), manifest.get("recipe", {}).get("name", "?"), batch, seq, seed,
                 references=[{"name": r.name, "what": r.what} for r in refs], skipped=skipped,
                 runner="polygraphy" if use_polygraphy else "numpy", input_name=name,
                 input_shape=tuple(next(iter(feed.values())).shape), input_what=what)
    row = functools.partial(_row, rep)

    graphs = {r.name: r.graph_file for r in refs if r.graph_file is not None}
    marked = _split_marked(outs, graphs.get("plugin"), graphs.get("portable"), rep,
                           (engine_step_tol, engine_gain_tol, engine_codes_tol))
    engine_followed = quantized and bool(marked)
    for a, b in itertools.combinations([r.name for r in refs], 2):
        for o in [k for k in outs[a] if k in outs[b]]:
            row(a, b, o, outs[a][o], outs[b][o], _limit(a, b, quantized, tol, engine_tol, engine_followed, fp32))
    if engine_followed:
        def rows(a: str, ref: dict, lim: Optional[float], **extra) -> None:
            for o in [k for k in outs["tensorrt"] if k in ref]:
                row(a, "tensorrt", o, ref[o], outs["tensorrt"][o], lim, **extra)

        _follow_engine(rep, graphs["portable"], marked, feed, rows, plugin_file=graphs["plugin"],
                       engine_tol=engine_tol, engine_step_tol=engine_step_tol, engine_gain_tol=engine_gain_tol,
                       engine_codes_tol=engine_codes_tol, threads=threads, log=log)
    elif quantized and "tensorrt" in outs:
        rep.skipped.append({"name": "tensorrt~", "reason": NO_ENGINE_FOLLOW.format(
            outdir=out, file=mtrt.VALIDATION_ENGINE)})
    # quantized: the rows that take the rounding-boundary cases out, held to fp32 rounding (see FP32_TOL)
    follow_lim = tol if tol is not None else FP32_TOL
    if quantized and {"portable", "plugin"} <= set(graphs):
        import onnx

        from .graph.follow import compare_following

        log("plugin graph following the roundings of model.portable.onnx")
        rep.references.append({"name": "plugin~", "what": PLUGIN_FOLLOW_WHAT})
        f = compare_following(graphs["portable"], onnx.load(str(graphs["plugin"])), feed, "logits", threads=threads)
        row("portable", "plugin~", "logits", f["reference"], f["test"], follow_lim)
    sim = next((r for r in refs if r.follow is not None), None)
    if sim is not None:
        rep.references.append({"name": FOLLOW_NAME, "what": FOLLOW_WHAT})
        for name, file in graphs.items():
            log(f"simulation following the roundings of {file.name}")
            got, ref, taken = sim.follow(feed["input_ids"], file)
            row(FOLLOW_NAME, name, "logits", ref, got, follow_lim, roundings_taken_from_graph=taken)
    return rep


# A quantized OUTDIR's prefill / decode deployment engine is held only to this (--engine-tol replaces it): a correct
# engine's float layers round values across int8 boundaries and the state carries that on, so its direct distance has
# no tight bound. fp16 stand-ins (benchmarks/stateful_engine_standin.py, benchmarks/results/stateful_engine_standin.md;
# prompts 2x32, 3x20, 4x64 and 1x8, seeds 0 and 1): logits up to 0.096 and the worst state up to 0.16; with twice
# fp16's rounding error (4 draws) 0.12 and 0.285 (mamba-ref-29m, prefill, 1x8: a short prompt's small states). 0.5
# leaves that 1.75x room; all-zero logits (1.0) or a NaN still fail. A validation engine (--graph G
# --validation-engine) gets the layer-by-layer check instead.
QUANTIZED_STATEFUL_ENGINE_TOL = 0.5
QUANTIZED_STATEFUL_ENGINE = (
    "the {graph} engine of a quantized OUTDIR is held to {tol:g} only (a broken or wrong engine): its float layers round "
    "values across int8 boundaries and the state carries that on, so a correct engine's direct distance has no tight "
    "bound; for a layer-by-layer check build its validation engine with this engine's --plugins and shape options, "
    "`mq-deploy build {outdir} --graph {graph} --validation-engine ...`, then `mq-deploy validate {outdir} --graph "
    "{graph} --engine {outdir}/{file}`")


LOGITS_COPIES = 6  # logits held at once while validate compares its runs (each reference's, and the followed runs')


def _check_memory(manifest: dict, batch: int, seq: int) -> None:
    """One line instead of the kernel's out-of-memory kill: a language model's --batch x --seq x vocabulary logits,
    LOGITS_COPIES of them in fp32, against this machine's memory."""
    vocab = manifest.get("model", {}).get("config", {}).get("vocab_size")
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    need = LOGITS_COPIES * 4 * batch * seq * int(vocab or 0)
    if mtrt.manifest_input(manifest)[0] == "input_ids" and need > total:
        raise UserError(f"--batch {batch} x --seq {seq} tokens of a {vocab}-token vocabulary need about "
                        f"{need / 2**30:.0f} GiB for the logits validate compares, more than this machine's "
                        f"{total / 2**30:.0f} GiB: use a smaller --seq or --batch")


def _follow_engine(rep: Report, portable_file: Path, marked: dict, feed: dict, rows: Callable[..., None], *,
                   plugin_file: Path, engine_tol: Optional[float], engine_step_tol: Optional[float],
                   engine_gain_tol: Optional[float], threads: Optional[int], log: Callable[[str], None],
                   gain_default: float = ENGINE_GAIN_TOL, engine_codes_tol: Optional[float] = None) -> None:
    """A validation engine's layer-by-layer check: the portable graph on the engine's int8 codes at every
    QuantizeLinear (`portable=`: rows(name, outputs, limit) gated at ENGINE_FOLLOW_TOL or engine_tol), following its
    roundings within ENGINE_FOLLOW_STEPS (`portable~`, reported), and each quantizer input's distance from the
    engine's in steps (rep.steps, held to ENGINE_STEP_TOL / `gain_default`, or the limits given). `marked`: {tensor: the engine's value
    before its QuantizeLinear} of the tensors the portable graph quantizes, and the float twins of the fused Hadamards
    (_split_marked). Where a fused Hadamard of `plugin_file` has its twin, its tensor is the kernel's codes,
    dequantized: followed as codes, the layer checked on the twin, and the codes against the twin's (rep.fused,
    FUSED_CODES_TOL); an engine without twins (built by an earlier version: the Hadamard unfused) is checked on its
    float values as they are."""
    import onnx

    from .graph.follow import fused_code_differences, run_following, step_distances
    from .graph.fuse_scan_quant import float_twin, hadamard_out_scale

    fused = [n.name for n in onnx.load(str(plugin_file), load_external_data=False).graph.node if hadamard_out_scale(n)]
    twins = {t: marked[float_twin(t)] for t in fused if t in marked and float_twin(t) in marked}
    lone = [t for t in fused if t in marked and t not in twins]
    if twins and lone:  # codes without their twin would be compared as float values: a wrong verdict, not a check
        raise UserError(f"the engine marks the float twins of {len(twins)} fused Hadamard(s) but not of "
                        f"{', '.join(lone[:3])}{' …' if len(lone) > 3 else ''}: build the validation engine again "
                        "with `mq-deploy build OUTDIR [--graph G] --validation-engine`")
    marked = {t: v for t, v in marked.items() if t not in {float_twin(f) for f in fused}}
    codes = set(twins)
    name = portable_file.name
    portable, own = onnx.load(str(portable_file)), {}
    log(f"{name} on the engine's int8 codes at its {len(marked)} QuantizeLinear inputs")
    rep.references.append({"name": "portable=", "what": ENGINE_CODES_WHAT.replace("model.portable.onnx", name)})
    ref, _ = run_following(portable, marked, feed, float("inf"), threads=threads, own=own, codes=codes)
    rows("portable=", ref, engine_tol if engine_tol is not None else ENGINE_FOLLOW_TOL)
    log(f"{name} following the engine's roundings within a tenth of a step")
    rep.references.append({"name": "portable~", "what": ENGINE_FOLLOW_WHAT.replace("model.portable.onnx", name)})
    ref, taken = run_following(portable, marked, feed, ENGINE_FOLLOW_STEPS, threads=threads, codes=codes)
    rows("portable~", ref, None, roundings_taken_from_graph=taken)
    if twins:
        rep.fused = _fused(fused_code_differences(portable, marked, twins),
                           FUSED_CODES_TOL if engine_codes_tol is None else engine_codes_tol)
    rep.steps = _steps(step_distances(portable, own, {**marked, **twins}),  # a fused point: its twin's float value
                       engine_step_tol if engine_step_tol is not None else ENGINE_STEP_TOL,
                       engine_gain_tol if engine_gain_tol is not None else gain_default)


def _row(rep: Report, a: str, b: str, o: str, ref: np.ndarray, x: np.ndarray, lim: Optional[float],
         drop_top1: bool = False, **extra) -> None:
    """One pair's error statistics on output `o`, gated at `lim` (None: reported only)."""
    s = error_stats(ref, x)
    if drop_top1:
        s.pop("top1", None)
    rep.pairs.append({"reference": a, "test": b, "output": o, **s, "limit": lim,
                      "ok": None if lim is None else bool(np.isfinite(s["max_rel"]) and s["max_rel"] <= lim), **extra})


def _validate_stateful(out: Path, manifest: dict, graph: str, *, batch: int, seq: int, seed: int,
                       tol: Optional[float], engine: Optional[str], plugin_lib: Optional[str],
                       engine_tol: Optional[float], engine_step_tol: Optional[float],
                       engine_gain_tol: Optional[float], threads: Optional[int], use_polygraphy: Optional[bool],
                       log: Callable[[str], None], engine_codes_tol: Optional[float] = None) -> Report:
    """`validate --graph prefill|decode`: model.<graph>.portable.onnx, model.<graph>.onnx (plugin nodes on the CPU
    kernels) and its engine (model.<graph>.engine) on one input. The prefill takes random input_ids, rows 2, 3, ...
    left-padded where the prompt is long enough; the decode step one random token a row and the states
    model.prefill.portable.onnx leaves after that prompt. Two rows a pair: the logits, and `states`, the state output
    furthest from the reference (max rel, a non-finite one first). Limits: FP32_TOL between the float graphs; a
    quantized OUTDIR's direct rows reported, its plugin~ rows (logits and states, following the portable graph's
    rounding-boundary cases) at FP32_TOL; an engine's logits and states at ENGINE_TOL for a float OUTDIR, at
    QUANTIZED_STATEFUL_ENGINE_TOL for a quantized one (gross errors only, QUANTIZED_STATEFUL_ENGINE); --engine-tol
    replaces either. A quantized OUTDIR's validation engine of the graph (`build --graph G --validation-engine`)
    is checked layer by layer as model.onnx's is (_follow_engine: portable= logits and states at ENGINE_FOLLOW_TOL,
    the per-layer line), including the decode step's state update and conv step; its direct rows are then
    reported only."""
    from .backends.ort import OrtRunner
    from .graph.follow import compare_following

    if mtrt.manifest_input(manifest)[0] != "input_ids":
        raise UserError(f"{out} is a Vim OUTDIR: it has no prefill / decode-step graphs (validate it without --graph)")
    files = {"portable": out / f"model.{graph}.portable.onnx", "plugin": out / mtrt.GRAPHS[graph]}
    for f in (*files.values(), out / "model.prefill.portable.onnx"):
        if not f.is_file():
            raise missing_file(out, manifest, f.name, "a stateful graph")
    vocab = manifest.get("model", {}).get("config", {}).get("vocab_size")
    if not vocab:
        raise UserError(f"{out}/manifest.json has no model.config.vocab_size; recompile with `mq-deploy compile`")
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(batch, seq), dtype=np.int64)
    mask = np.ones_like(ids)
    for r in range(1, batch):  # left padding of growing length, at least one token kept
        mask[r, :min(seq - 1, r * seq // (2 * batch))] = 0
    prompt = {"input_ids": ids, "attention_mask": mask}
    padded = int((mask == 0).any(1).sum())
    what = f"random input_ids {batch}x{seq}{f', {padded} row(s) left-padded' if padded else ''}, seed {seed}"
    if graph == "prefill":
        feed = prompt
    else:
        log("the prompt's states from model.prefill.portable.onnx")
        states = OrtRunner(out / "model.prefill.portable.onnx", threads=threads).run(prompt)
        feed = {"input_ids": rng.integers(0, vocab, size=(batch, 1), dtype=np.int64),
                **{k: v for k, v in states.items() if k != "logits"}}
        what = f"one decode step (a random token a row) from the states model.prefill.portable.onnx leaves after {what}"
    refs = [Reference(name, f"onnxruntime on {f.name} ({how})",
                      ort_session=OrtRunner(f, threads=threads, plugins="extensions").session, graph_file=f)
            for (name, f), how in zip(files.items(), ("standard ONNX ops", "plugin nodes on mq-deploy's CPU kernels"))]
    skipped: list = []
    refs += _engine_reference(out, manifest, engine, plugin_lib, skipped, graph=graph)
    quantized = mtrt.manifest_act_quantized(manifest)  # (weight-only: float activations, as fp16)
    use_polygraphy = have_polygraphy() if use_polygraphy is None else use_polygraphy
    log(f"running {what} through {', '.join(r.name for r in refs)}")
    outs = run_references(refs, feed, use_polygraphy)
    rep = Report(str(out), manifest.get("recipe", {}).get("name", "?"), batch, seq, seed,
                 references=[{"name": r.name, "what": r.what} for r in refs], skipped=skipped,
                 runner="polygraphy" if use_polygraphy else "numpy", input_shape=ids.shape if graph == "prefill" else
                 (batch, 1), input_what=what, graph=graph)
    marked = _split_marked(outs, files["plugin"], files["portable"], rep,
                           (engine_step_tol, engine_gain_tol, engine_codes_tol))
    engine_followed = quantized and bool(marked)
    want = set(outs["portable"])
    for name, got in outs.items():
        if set(got) != want or "logits" not in got:
            raise UserError(f"{name} gives the outputs {', '.join(sorted(got))}, not model.{graph}.portable.onnx's "
                            f"{', '.join(sorted(want))}: was it built from this OUTDIR's {graph} graph?")
    if "tensorrt" in outs and quantized and not engine_followed and engine_tol is None:
        rep.skipped.append({"name": "tensorrt gate", "reason": QUANTIZED_STATEFUL_ENGINE.format(
            graph=graph, outdir=out, tol=QUANTIZED_STATEFUL_ENGINE_TOL, file=mtrt.VALIDATION_ENGINES[graph])})

    def pair(a: str, b: str, ref: dict, got: dict, lim: Optional[float], **extra) -> None:
        _row(rep, a, b, "logits", ref["logits"], got["logits"], lim, **extra)
        names = [k for k in ref if k != "logits"]
        worst = max(names, key=lambda k: _nan_last(error_stats(ref[k], got[k])["max_rel"]))
        _row(rep, a, b, "states", ref[worst], got[worst], lim, drop_top1=True, worst_state=worst, states=len(names),
             **extra)

    for a, b in itertools.combinations([r.name for r in refs], 2):
        if "tensorrt" in (a, b) and quantized and not engine_followed:
            lim = engine_tol if engine_tol is not None else QUANTIZED_STATEFUL_ENGINE_TOL
        else:
            lim = _limit(a, b, quantized, tol, engine_tol, engine_followed)
        pair(a, b, outs[a], outs[b], lim)
    if engine_followed:
        _follow_engine(rep, files["portable"], marked, feed,
                       lambda a, ref, lim, **extra: pair(a, "tensorrt", ref, outs["tensorrt"], lim, **extra),
                       plugin_file=files["plugin"], engine_tol=engine_tol, engine_step_tol=engine_step_tol,
                       engine_gain_tol=engine_gain_tol, engine_codes_tol=engine_codes_tol, threads=threads, log=log,
                       gain_default=ENGINE_GAIN_TOL_DECODE if graph == "decode" else ENGINE_GAIN_TOL)
    if quantized:
        import onnx

        log(f"{files['plugin'].name} following the roundings of {files['portable'].name}")
        rep.references.append({"name": "plugin~", "what": PLUGIN_FOLLOW_WHAT.replace("model.onnx", files["plugin"].name)
                              .replace("model.portable.onnx", files["portable"].name)})
        f = compare_following(files["portable"], onnx.load(str(files["plugin"])), feed, "logits", threads=threads)
        pair("portable", "plugin~", f["reference_outputs"], f["test_outputs"], tol if tol is not None else FP32_TOL)
    return rep


def _nan_last(v: float) -> float:
    """A sort key that puts a non-finite error above every finite one."""
    return v if np.isfinite(v) else np.inf


def _steps(dist: dict, step_limit: float, gain_limit: float) -> dict:
    """Report.steps from step_distances' {tensor: (mean, max, gain)} (graph order)."""
    def over(t):  # NaN is over
        return not (dist[t][0] <= step_limit and abs(dist[t][2]) <= gain_limit)

    wm = max(dist, key=lambda t: _nan_last(dist[t][0]))
    wg = max(dist, key=lambda t: _nan_last(abs(dist[t][2])))
    first = next((t for t in dist if over(t)), None)
    return {"tensors": len(dist), "limits": {"mean_steps": step_limit, "gain": gain_limit}, "ok": first is None,
            "worst_mean": {"tensor": wm, "mean_steps": dist[wm][0], "max_steps": dist[wm][1]},
            "worst_gain": {"tensor": wg, "gain": dist[wg][2]},
            "first_over": None if first is None else {"tensor": first, "mean_steps": dist[first][0],
                                                      "gain": dist[first][2]},
            "per_tensor": {t: list(v) for t, v in dist.items()}}


def _fused(diff: dict, limit: float = FUSED_CODES_TOL) -> dict:
    """Report.fused from fused_code_differences' {tensor: (share, largest, count)} (graph order), the share held to
    `limit` and every code to one apart."""
    worst = max(diff, key=lambda t: (diff[t][0], diff[t][1]))
    return {"tensors": len(diff), "window_steps": ENGINE_FOLLOW_STEPS, "twin_rel": TWIN_REL,
            "limits": {"share": limit, "codes": 1},
            "ok": all(v[0] <= limit and v[1] <= 1 for v in diff.values()),
            "worst": {"tensor": worst, "share": diff[worst][0], "largest": diff[worst][1], "count": diff[worst][2]},
            "per_tensor": {t: list(v) for t, v in diff.items()}}


def _split_marked(outs: dict, plugin_file: Optional[Path], portable_file: Optional[Path], rep: Report,
                  layer_limits: tuple = ()) -> dict:
    """Take the engine's extra outputs (a validation engine's tensors before its QuantizeLinear nodes, and the float
    twins of its fused Hadamards: graph/follow.py validation_marks) out of outs["tensorrt"]; {tensor: value} of those
    the portable graph quantizes too, with their twins (what _follow_engine can follow). An extra output that is none
    of those of the plugin graph is one UserError (an engine of another graph or build); marked tensors the portable
    graph does not quantize, or per-layer limits given (`layer_limits`, None where not) for an engine with nothing
    to follow, are a note in rep.skipped."""
    if "tensorrt" not in outs or plugin_file is None:
        return {}
    import onnx

    from .graph.follow import quantizer_params, validation_marks
    from .graph.fuse_scan_quant import float_twin

    g = onnx.load(str(plugin_file), load_external_data=False)
    keep = {o.name for o in g.graph.output}
    extra = {k: outs["tensorrt"].pop(k) for k in [k for k in outs["tensorrt"] if k not in keep]}
    quantized = validation_marks(g)
    unknown = sorted(set(extra) - set(quantized))
    if unknown:
        raise UserError(f"the engine has the output(s) {', '.join(unknown[:5])}"
                        f"{f' (and {len(unknown) - 5} more)' if len(unknown) > 5 else ''}, which {plugin_file.name} "
                        "neither outputs nor quantizes: was it built from this OUTDIR's graph (`mq-deploy build OUTDIR "
                        "[--graph prefill|decode] [--validation-engine]`)?")
    marked = {t: np.asarray(extra[t], np.float32) for t in quantized if t in extra}
    followable = marked
    if marked and portable_file is not None:
        ours = quantizer_params(onnx.load(str(portable_file), load_external_data=False))
        ours = set(ours) | {float_twin(t) for t in ours}
        followable = {t: v for t, v in marked.items() if t in ours}
        points = [t for t in marked if not t.endswith(float_twin(""))]  # counted without the twins
        lost = [t for t in points if t not in followable]
        if lost:
            rep.skipped.append({"name": "per layer", "reason": f"{len(lost)} of the engine's {len(points)} marked "
                                f"tensors are not quantized by {portable_file.name} and not compared (an engine of an "
                                "older compile of this OUTDIR? rebuild it)"})
    if not followable and any(v is not None for v in layer_limits):
        rep.skipped.append({"name": "per layer", "reason": "--engine-step-tol / --engine-gain-tol / --engine-codes-tol "
                            "apply to a "
                            "validation engine's layer-by-layer check (`mq-deploy build OUTDIR [--graph G] "
                            "--validation-engine`); this engine has no marked tensors to check"})
    return followable


def _vim_images(batch: int, fixed: tuple, seed: int) -> tuple[dict, str]:
    """The first `batch` Fashion-MNIST test images, normalised as in training (random normal pixels when the
    dataset is not installed or the model's input is not 28×28)."""
    c, h, w = fixed
    if (h, w) == (28, 28):
        from .vision.data import load_split, normalize

        try:
            imgs, _ = load_split("test")
        except UserError:
            imgs = None
        if imgs is not None:
            if batch > len(imgs):
                raise UserError(f"--batch {batch} is more than the {len(imgs)} test images")
            return {"pixel_values": normalize(imgs[:batch], c)}, f"Fashion-MNIST test images 0..{batch - 1}"
    x = np.random.default_rng(seed).standard_normal((batch, c, h, w)).astype(np.float32)
    return {"pixel_values": x}, f"random normal pixel_values {batch}x{c}x{h}x{w}, seed {seed}"


def format_report(rep: Report) -> str:
    what = rep.input_what or f"random input_ids {rep.batch}x{rep.seq}, seed {rep.seed}"
    lines = [f"validate {rep.outdir} (recipe {rep.recipe}): {what}, runners via {rep.runner}"]
    w = max(len(r["name"]) for r in rep.references)
    lines += [f"  {r['name']:<{w}}  {r['what']}" for r in rep.references]
    head = f"{'reference vs test':<26}{'output':<9}{'max_abs':>11}{'max_rel':>11}{'mean_abs':>11}{'top1':>8}{'limit':>9}"
    lines += [head]
    for p in rep.pairs:
        top1 = f"{p['top1']:.4f}" if "top1" in p else "-"
        lim = "-" if p["limit"] is None else f"{p['limit']:.0e}"
        verdict = "" if p["ok"] is None else ("  ok" if p["ok"] else "  FAIL")
        if "roundings_taken_from_graph" in p:
            verdict += f"  ({p['roundings_taken_from_graph']} roundings taken from {p['test']})"
        lines.append(f"{p['reference'] + ' vs ' + p['test']:<26}{p['output']:<9}{p['max_abs']:>11.3e}"
                     f"{p['max_rel']:>11.3e}{p['mean_abs']:>11.3e}{top1:>8}{lim:>9}{verdict}")
    if rep.steps:
        st, lim = rep.steps, rep.steps["limits"]
        lines.append(f"{'per layer vs tensorrt':<26}{st['tensors']} quantizer inputs from the engine's int8 codes: "
                     f"worst mean {st['worst_mean']['mean_steps']:.2g} step ({st['worst_mean']['tensor']}), worst "
                     f"scale {st['worst_gain']['gain']:+.1e} ({st['worst_gain']['tensor']}); limits "
                     f"{lim['mean_steps']:g} / {lim['gain']:g}  {'ok' if st['ok'] else 'FAIL'}")
        if st["first_over"]:
            f = st["first_over"]
            lines.append(f"  the engine computes {f['tensor']} differently (mean {f['mean_steps']:.2g} step, scale "
                         f"{f['gain']:+.1e}): the first quantizer input in graph order over a limit")
        else:
            failed = [p for p in rep.pairs if p["ok"] is False and p["reference"] == "portable="]
            if any(p["output"] == "states" for p in failed):
                worst = next(p.get("worst_state", "?") for p in failed if p["output"] == "states")
                lines.append(f"  every quantizer input matches: the state {worst} differs, which its layer's scan / "
                             "state update writes (the SSM state) or its conv step copies (the conv state) after the "
                             "layer's quantizers, or --engine-tol is tighter than the engine's float layers round")
            if any(p["output"] != "states" for p in failed):
                lines.append("  every quantizer input matches: the logits differ in the layers after the last "
                             "QuantizeLinear (the head), or --engine-tol is tighter than the engine's float layers "
                             "round")
    if rep.fused:
        fu, w = rep.fused, rep.fused["worst"]
        lines.append(f"{'fused Hadamard codes':<26}{fu['tensors']} kernels against their float twins: worst "
                     f"{100 * w['share']:.2g}% of codes differ clear of a rounding boundary, "
                     f"largest {w['largest']:g} code(s) ({w['tensor']}); limits {100 * fu['limits']['share']:g}% / "
                     f"{fu['limits']['codes']} code  {'ok' if fu['ok'] else 'FAIL'}")
        if not fu["ok"]:
            bad = next(t for t, v in fu["per_tensor"].items() if v[0] > fu["limits"]["share"] or v[1] > 1)
            lines.append(f"  the fused Hadamard {bad} rounds otherwise than its float twin: the kernel's quantization "
                         "(out_scale, rounding, saturation) is wrong, not the layers before it")
    lines += [s["reason"] for s in rep.skipped]
    lines.append("validate: OK" if rep.ok else "validate: FAILED (above the limit)")
    return "\n".join(lines)
