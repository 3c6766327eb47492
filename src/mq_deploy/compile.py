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

import contextlib
import datetime
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
from .graph.weights import WeightStore, scratch_weights
from .backends.ort import external_weights
from .memory import release
from .loaders import load_model, resolve_model_dir
from .trt import d_state_note
from .model import MambaModel
from .ops import selective_scan as ss
from .ops import state_update as su
from .ops.plugin_fields import plugin_inventory
from .outdir import FORMAT, atomic_dir, check_inputs_outside, sha256_file
from .passes import needs_stats
from .recipes import Recipe, check_family, load_recipe

EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GB limit: larger graphs keep weights beside the .onnx


def save_onnx(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Save `model`; weights go to `<name>.data` beside it when the graph would exceed protobuf's limit."""
    if model.ByteSize() > EXTERNAL_DATA_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
        return [path, path.with_name(path.name + ".data")]
    onnx.save_model(model, str(path))
    return [path]


def manifest_head(out_dir: Path, files: dict) -> dict:
    """The manifest's common head; fills each `files` entry with the written file's size and sha256."""
    for name, info in files.items():
        p = out_dir / name
        info.update(bytes=p.stat().st_size, sha256=sha256_file(p))
    return {"format": FORMAT,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv) if sys.argv else ""}


def _versions() -> dict:
    import onnxruntime

    from .backends.ort import int8_fusion_exact

    v = {"mq_deploy": __version__, "python": platform.python_version(), "numpy": np.__version__,
         "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
         # whether the self-check's onnxruntime sessions ran the QDQ nodes on fused int8 kernels (backends/ort.py)
         "onnxruntime_int8_fusion": int8_fusion_exact()}
    try:
        import torch

        v["torch"] = torch.__version__
    except ImportError:  # torch is only needed for checkpoints in .bin form and the torch backend
        pass
    return v


def _io(model: MambaModel) -> dict:
    return {"inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}],
            "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", "sequence", model.config.vocab_size]}]}


def simulation_check(model, plan, graph: onnx.ModelProto, vocab: int, points: dict, seq: int = 9,
                     keep: Optional[dict] = None, flavour: str = "portable", ids: Optional[np.ndarray] = None) -> dict:
    """Compare a graph (`flavour`: the portable one, or the plugin one on the CPU kernels) with the
    package's numpy (fake-quant) simulation of the same plan.

    `points` ({quantization point: tensor name}, from `build_lm_graph(..., with_points=True)`; both
    flavours keep these tensors) lets the simulation take the graph's side on roundings where both
    values agree to 1/1000 of a step (see `quant.simulate.layer`); without that, one boundary case in an
    early layer of a deep model (a random d768 x 24 one) grows into a difference as large as
    quantization's own effect on the logits. `keep` (a dict) receives the input ids and the graph's
    logits (for `plugin_check`); `ids` defaults to 2 x `seq` random ones (seed 1)."""
    from .backends.ort import OrtRunner
    from .graph.follow import point_values
    from .quant.simulate import forward

    if ids is None:
        ids = np.random.default_rng(1).integers(0, vocab, size=(2, seq))
    follow = None
    if plan.quant is not None:
        follow = point_values(graph, points, plan.quant.act_scales, ids)
        a = follow.pop("logits")
    else:
        a = OrtRunner(graph)(ids)
    if keep is not None:
        keep.update(ids=ids, logits=a)
    b = forward(model, plan, ids, follow)
    err = np.abs(a - b).max(axis=-1) / max(np.abs(b).max(), 1e-30)  # per position
    out = {f"max_rel_error_{flavour}_vs_simulation": float(err.max()),
           f"median_rel_error_{flavour}_vs_simulation": float(np.median(err))}
    if plan.quant is not None:
        if flavour == "portable":  # how far quantization itself moves the logits, for scale
            fp = forward(model, type(plan)(layers=plan.layers, quant=None), ids)
            out["max_rel_quantization_effect"] = float(np.abs(b - fp).max() / max(np.abs(b).max(), 1e-30))
        out["roundings_taken_from_graph" if flavour == "portable" else f"roundings_taken_from_{flavour}_graph"] = \
            int(follow.get("flipped", 0))
    return out


def plugin_check(plugin_graph: onnx.ModelProto, ids: np.ndarray, portable_logits: np.ndarray,
                 tol: Optional[float], logits: Optional[np.ndarray] = None) -> dict:
    """Run the plugin graph in onnxruntime (CPU kernels for the plugin nodes) on the ids the portable graph
    ran on (or take its `logits` from such a run) and compare the logits (same semantics); `tol` None:
    recorded, not gated (quantized graphs, see compile_model)."""
    from .backends.ort import OrtRunner

    a = OrtRunner(plugin_graph)(ids) if logits is None else logits
    if a.shape != portable_logits.shape:
        raise InternalError(f"self-check: logits shapes {a.shape} / {portable_logits.shape}")
    err = float(np.abs(a - portable_logits).max() / max(np.abs(portable_logits).max(), 1e-30))
    if not np.isfinite(err) or (tol is not None and err > tol):
        raise InternalError(f"self-check: the plugin and portable graphs disagree (max rel error {err:.3g})")
    return {"batch": int(ids.shape[0]), "sequence": int(ids.shape[1]), "max_rel_error_plugin_vs_portable": err}


def _stateful_derivation_check(model: MambaModel, plan, scratch: Path) -> dict:
    """The prefill / decode-step derivation, tightly (1e-4): on the first (up to) 4 layers (and 1024 vocabulary
    rows) of the transformed model with its quantized weights but activations left in fp32, so that no rounding boundary can
    amplify a last-bit difference between the step and the scan (see graph/stateful.self_check). The graphs' weights
    go to a file in `scratch` (removed after), which onnxruntime maps."""
    import dataclasses

    from .graph.plan import GraphPlan

    c = model.config
    k = min(c.n_layer, 4)
    V = min(c.vocab_size, 1024)  # the derivation does not depend on the vocabulary: keep the first rows
    mini = dataclasses.replace(model, config=dataclasses.replace(c, n_layer=k, vocab_size=V), layers=model.layers[:k],
                               embedding=model.embedding[:V],
                               lm_head=None if model.lm_head is None else model.lm_head[:V])
    mplan = None
    if plan is not None:
        q = plan.quant
        mplan = GraphPlan(layers=plan.layers[:k], quant=None if q is None else dataclasses.replace(q, act_scales={}))
    mfull = build_lm_graph(mini, mplan)
    with scratch_weights(mfull, scratch, ".derivation-") as (mfull, folder), external_weights(folder):
        release()
        out = stateful_self_check(mfull, build_stateful_graphs(mfull, mini.config), mini.config, tol=1e-4)
    return {**out, "layers": k, "vocabulary_rows": V, "activations": "fp32"}


def _stateful(config, quantized: bool, unfused: onnx.ModelProto, store: WeightStore, tmp: Path, files: dict) -> dict:
    """Build, check and write the prefill / decode-step graphs of the full model, one flavour at a time: same
    activation scales as the full graph, one scan / state-update plugin per layer, and a sanity run against the full
    graph. The graphs refer to `unfused`'s weights in weights.bin (`external_weights`)."""
    from .graph.lower import lower_state_update
    from .graph.stateful import build_decode_graph, build_prefill_graph

    c = config
    scales = _act_scales(unfused)
    out = {}
    for flavour in ("tensorrt", "portable"):
        if flavour == "tensorrt":
            pair = {"model.prefill.onnx": build_prefill_graph(unfused, c),
                    "model.decode.onnx": build_decode_graph(unfused, c)}
        else:  # the step's own plugin first; lower_selective_scan then lowers the rest and the domain
            pair = {"model.prefill.portable.onnx": lower_selective_scan(build_prefill_graph(unfused, c))}
            release()
            pair["model.decode.portable.onnx"] = lower_selective_scan(lower_state_update(build_decode_graph(unfused, c)))
        release()
        for name, g in pair.items():
            if _act_scales(g) != scales:
                raise InternalError(f"self-check: {name} does not carry the full graph's activation scales")
            want = {ss.PLUGIN_NAME: c.n_layer} if flavour == "tensorrt" and "prefill" in name else \
                {su.PLUGIN_NAME: c.n_layer} if flavour == "tensorrt" else {}
            for op, count in want.items():
                if sum(n.op_type == op for n in g.graph.node) != count:
                    raise InternalError(f"self-check: {name} has not one {op} node per layer")
        # the portable pair against the portable full graph: the same Scan / MatMul arithmetic as its prefill (the
        # plugin graph's FWHT and scan kernel round differently, and a quantized deep model amplifies that)
        out[flavour] = stateful_self_check(unfused if flavour == "tensorrt" else (lambda: lower_selective_scan(unfused)),
                                           pair, c)
        release()
        for name in list(pair):
            g = pair.pop(name)
            if quantized and flavour == "tensorrt":  # int8 straight into the prefill's scan plugins too, and int8
                from .graph.fuse_scan_quant import fuse_hadamard_quant, fuse_plugin_quant  # out of the Hadamards

                g = fuse_plugin_quant(g) if name == "model.prefill.onnx" else fuse_hadamard_quant(g, copy=False)
            store.save(g, tmp / name)
            files[name] = {"flavour": flavour, **({"plugins": plugin_inventory(g)} if flavour == "tensorrt" else {})}
            del g
            release()
    return out


def _act_scales(g: onnx.ModelProto) -> dict:
    """{activation scale initializer: value} (the `<point>.scale` tensors of the Q/DQ pairs)."""
    return {t.name: float(onnx.numpy_helper.to_array(t)) for t in g.graph.initializer
            if t.name.endswith(".scale") and not t.dims}


def calibrates(recipe: Recipe) -> bool:
    """Whether compiling with `recipe` needs calibration data, text or a Vim's images (activation scales, GPTQ's
    Hessians, or a pass that takes statistics; a weight-only RTN recipe without such passes needs none)."""
    return recipe.quant_calibrates or needs_stats(recipe.passes)


NOTHING_CALIBRATES = "no activation scales, no GPTQ, no pass that takes statistics"


def unused_flags(given: dict, why: str) -> Optional[str]:
    """The warning for the flags of {"--flag": value} that were given (not None) but nothing reads, or None: said, not
    silently dropped."""
    names = [f for f, v in given.items() if v is not None]
    if not names:
        return None
    return f"{' and '.join(names)} {'is' if len(names) == 1 else 'are'} not read: {why}: ignored"


DEFAULT_CALIB = Path("text") / "wikitext2_val_sample.jsonl"  # under MQ_DEPLOY_DATA_DIR: calibration text without --calib


def _inputs(model_path: Optional[str], model_dir: Path, calib: Optional[str]) -> dict:
    """What a compile may read, {what: path}, for check_inputs_outside: the checkpoint (the bundled model where none
    is given) and the calibration data (where none is given, the defaults that exist: the language models' text
    under MQ_DEPLOY_DATA_DIR, the Vim's Fashion-MNIST folder). `model_dir`: resolve_model_dir(model_path)."""
    import os

    inputs = {"checkpoint" if model_path is not None else "bundled model": model_dir,
              "calibration data": calib}
    if calib is None:
        from .vision.data import data_dir

        d = os.environ.get("MQ_DEPLOY_DATA_DIR")
        inputs["default calibration text"] = Path(d) / DEFAULT_CALIB if d else None
        with contextlib.suppress(UserError):
            inputs["Fashion-MNIST data"] = data_dir()
    return inputs


def default_calib_path() -> Path:
    import os

    d = os.environ.get("MQ_DEPLOY_DATA_DIR")
    p = Path(d) / DEFAULT_CALIB if d else None
    if p is None or not p.is_file():
        flag = "pass --calib FILE (plain text, .jsonl of {\"text\"}, .xz/.bz2/.gz)"
        if not d:
            raise UserError(f"this recipe needs calibration text: {flag} or set MQ_DEPLOY_DATA_DIR to a folder with "
                            "text/wikitext2_val_sample.jsonl")
        why = "is not a folder" if not Path(d).is_dir() else "has no text/wikitext2_val_sample.jsonl"
        raise UserError(f"this recipe needs calibration text, and MQ_DEPLOY_DATA_DIR={d} {why}: {flag}, or point "
                        "MQ_DEPLOY_DATA_DIR at the data folder")
    return p


def _effective(recipe: dict, calib_info: Optional[dict]) -> dict:
    """The recipe as run: its calibration block with the sizes --calib-samples / --calib-seq-len gave (the manifest's
    `calibration` says how many windows there were)."""
    if not calib_info:
        return recipe
    return {**recipe, "calibration": {**recipe["calibration"], "samples": calib_info["samples"],
                                      "seq_len": calib_info["seq_len"]}}


def checkpoint_hashes(source: dict) -> dict:
    """{file: sha256} of the checkpoint files the model was read from (`validate --torch / --simulate` check that the
    checkpoint they load is still that one)."""
    from .outdir import sha256_file

    root = Path(source.get("path") or ".")
    return {name: sha256_file(root / name) for name in source.get("weights") or () if (root / name).is_file()}


def _check_tokenizer(path, vocab_size: int, warn: Callable[[str], None]) -> bool:
    """Whether the model directory's tokenizer can be copied into OUTDIR: not when it cannot be read (an OUTDIR
    holding it would fail eval and generate, where one without it asks for --tokenizer); a warning either way, and
    when it has more ids than the model's vocabulary (eval and generate refuse the text whose ids fall outside it)."""
    from .eval.tokenizer import TextTokenizer

    try:
        n = TextTokenizer(path).vocab_size
    except UserError as e:
        warn(f"{e}: not copied into OUTDIR (eval and generate of it will need --tokenizer; compile with --tokenizer "
             "PATH to include a readable one)")
        return False
    if n > vocab_size:
        warn(f"tokenizer {path} has {n} ids, the model's vocabulary {vocab_size}: is it this model's tokenizer? (eval "
             "and generate refuse text with ids outside the vocabulary)")
    elif n < 0.9 * vocab_size:  # (a vocabulary padded to a multiple of 8 to 128 leaves a few ids unused, not 10 %)
        warn(f"tokenizer {path} has {n} ids, the model's vocabulary {vocab_size}: is it this model's tokenizer? (its "
             "ids are valid here, but would mean other tokens than the model learnt)")
    return True


def calibration_data(model, recipe: Recipe, calib: Optional[str], tokenizer: Optional[str], samples: Optional[int],
                     seq_len: Optional[int], warn: Callable[[str], None] = lambda s: None) -> tuple[np.ndarray, dict]:
    """Token windows for calibration and a description of them for the manifest; `warn` gets it when the text holds
    fewer windows than asked for."""
    from .calibrate import calibration_windows, read_calib_text
    from .eval.tokenizer import TextTokenizer

    samples = recipe.calibration["samples"] if samples is None else samples
    seq_len = recipe.calibration["seq_len"] if seq_len is None else seq_len
    if samples < 1 or seq_len < 2:
        raise UserError("--calib-samples must be >= 1 and --calib-seq-len >= 2")
    path = Path(calib) if calib else default_calib_path()
    tok_path = tokenizer or model.source.get("tokenizer")
    if not tok_path:
        where = model.source.get("path", "the model directory")
        raise UserError(f"calibration needs the model's tokenizer, and {where} has no tokenizer.json (state-spaces "
                        "checkpoints have none): pass --tokenizer PATH/tokenizer.json or a Hub id, e.g. --tokenizer "
                        "EleutherAI/gpt-neox-20b")
    tok = TextTokenizer(tok_path)
    text = read_calib_text(path, max_chars=samples * seq_len * 12)
    ids = np.asarray(tok.encode(text), dtype=np.int64)
    if ids.max(initial=0) >= model.config.vocab_size:
        raise UserError(f"tokenizer {tok_path} produces ids beyond the model's vocabulary ({model.config.vocab_size})")
    windows = calibration_windows(ids, samples, seq_len, recipe.calibration["seed"])
    if len(windows) < samples:
        warn(f"calibration text {path} holds {len(ids)} tokens, {len(windows)} windows of {seq_len}: fewer than the "
             f"{samples} asked for (--calib-samples, or the recipe's); calibrating on {len(windows)}")
    return windows, {"file": str(path.resolve()), "sha256": sha256_file(path), "samples": int(len(windows)),
                     "seq_len": int(seq_len), "seed": recipe.calibration["seed"],
                     "tokenizer": str(Path(tok_path).resolve())}  # (absolute: validate --simulate runs elsewhere)


def compile_model(model_path: Optional[str], recipe_name: str, out_dir: str | Path, *,
                  tokenizer: Optional[str] = None, force: bool = False, calib: Optional[str] = None,
                  calib_samples: Optional[int] = None, calib_seq_len: Optional[int] = None, progress: bool = True,
                  report_passes: Optional[bool] = None,
                  log: Callable[[str], None] = lambda s: None, warn: Optional[Callable[[str], None]] = None) -> dict:
    """Compile a checkpoint with a recipe into OUTDIR; returns the manifest. `warn` (default `log`): what replacing
    an OUTDIR removes."""
    warn = log if warn is None else warn
    if calib_samples is not None and calib_samples < 1 or calib_seq_len is not None and calib_seq_len < 2:
        raise UserError("--calib-samples must be >= 1 and --calib-seq-len >= 2")  # whether the recipe calibrates or not
    model_dir = resolve_model_dir(model_path)  # a missing or wrong directory first: one line, before any recipe check
    # (a tokenizer there is copied into the new OUTDIR before the swap: recompiling with OUTDIR/tokenizer.json is fine)
    check_inputs_outside(out_dir, _inputs(model_path, model_dir, calib))
    if model_path is not None:
        from .vision.model import is_vim_dir

        if is_vim_dir(model_path):  # Vision Mamba: pixel_values -> logits
            from .vision.compile import compile_vim

            unused = [f for f, v in (("--tokenizer", tokenizer), ("--calib-seq-len", calib_seq_len)) if v is not None]
            if unused:  # (said, not silently dropped)
                warn(f"{' and '.join(unused)} {'is' if len(unused) == 1 else 'are'} for language models; a Vision "
                     "Mamba (Vim) takes images: ignored")

            return compile_vim(model_path, recipe_name, out_dir, force=force, calib=calib, warn=warn,
                               calib_samples=calib_samples, log=log)
    t0 = time.time()
    recipe: Recipe = load_recipe(recipe_name)  # validate cheap inputs before any heavy work
    check_family(recipe, vim=False)
    if recipe.activations.get("cls_token", "shared") != "shared":
        raise UserError(f"recipe {recipe.name}: activations.cls_token applies to Vision Mamba (Vim) models only")
    if tokenizer is not None and Path(tokenizer).is_dir():  # a folder holding one (as eval and compare take it)
        tokenizer = str(Path(tokenizer) / "tokenizer.json")
    if tokenizer is not None and not Path(tokenizer).is_file():
        raise UserError(f"tokenizer file not found: {tokenizer}; pass a Hugging Face tokenizer.json (or the folder "
                        "that holds one)")
    if tokenizer is not None:  # one that cannot be read: said before the work, not copied into OUTDIR after it
        from .eval.tokenizer import TextTokenizer

        TextTokenizer(tokenizer)
    note = None if calibrates(recipe) else unused_flags(
        {"--calib": calib, "--calib-samples": calib_samples, "--calib-seq-len": calib_seq_len},
        f"recipe {recipe.name} calibrates nothing ({NOTHING_CALIBRATES})")
    if note:
        warn(note)
    if calibrates(recipe):  # (a file that is not read is not checked either: the warning above says so)
        if calib is not None:
            from .calibrate import check_calib_file

            check_calib_file(calib)
        else:
            default_calib_path()  # (no --calib and no default text: said before the model is loaded)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, force=force, warn=warn) as tmp:
        log(f"loading {'the bundled model' if model_path is None else model_path}")
        model = load_model(model_path, warn=warn)
        c = model.config
        log(f"  Mamba d_model={c.d_model} layers={c.n_layer} d_inner={c.d_inner} d_state={c.d_state} "
            f"dt_rank={c.dt_rank} vocab={c.vocab_size} ({model.source['format']})")
        if d_state_note(c.d_state):
            warn(d_state_note(c.d_state))
        if any(name == "online_hadamard" for name, _ in recipe.passes):
            from .quant.hadamard import is_supported

            if not is_supported(c.d_inner):  # before calibration, which would come first
                raise UserError(f"recipe {recipe.name} runs online_hadamard, a Hadamard transform of size d_inner = "
                                f"{c.d_inner}, which has none (n = m·2^k with m in 1, 12, 20, 28, ...): use a recipe "
                                "without it, e.g. rtn-w8a8, smoothquant-w8a8 or gptq-w8a8")
        plan, calib_info, stats_runs, trace = None, None, [], []
        if recipe.passes or recipe.quantized or recipe.precision == "fp16":
            from .quantize import prepare

            windows = None
            if calibrates(recipe):
                windows, calib_info = calibration_data(model, recipe, calib, tokenizer, calib_samples, calib_seq_len,
                                                       warn=warn)
                log(f"calibration: {calib_info['samples']} x {calib_info['seq_len']} tokens from {calib_info['file']}")
            # per-pass statistics for report.html cost one small calibration per pass: on by default for
            # models up to 50M parameters, forced with report_passes=True
            n_params = model.embedding.size + sum(L.in_proj.size + L.out_proj.size for L in model.layers)
            trace = [] if (report_passes if report_passes is not None else n_params <= 50_000_000) else None
            held = [model]  # handed over: the passes' output replaces the loaded weights (memory)
            del model
            model, plan, stats_runs = prepare(held.pop(), recipe, windows, progress=progress, log=log, trace=trace,
                                              scratch=tmp)
            trace = trace or []
        quantized = plan is not None and plan.quant is not None
        calib_files = stats_runs[-1].save(tmp) if stats_runs else []  # statistics of the emitted graph
        if quantized and stats_runs:
            from .report import build_report

            before = stats_runs[0] if len(stats_runs) > 1 else None
            (tmp / "report.html").write_text(build_report(model, plan, before, stats_runs[-1], recipe.name, trace))
            calib_files.append(tmp / "report.html")
        del stats_runs, trace
        log("checking the prefill/decode derivation on the first layers")
        derivation = _stateful_derivation_check(model, plan, tmp)
        n_params = int(model.embedding.size + (0 if model.lm_head is None else model.lm_head.size) + model.norm_f.size
                       + (0 if model.head_mix is None else model.head_mix.size)
                       + sum(a.size for L in model.layers for a in vars(L).values() if a is not None))
        source, io = model.source, _io(model)
        # one graph at a time: build, check, write, drop; the Q→DQ form `unfused` stays for the stateful graphs
        log("building graph")
        files: dict[str, dict] = {}
        # every graph's weights in one shared weights.bin, written first: the graphs below are built, checked in
        # onnxruntime (which maps the file) and saved without a copy of the weights in memory
        with WeightStore(tmp) as store, external_weights(tmp):
            unfused, points = build_lm_graph(model, plan, with_points=True)
            unfused = store.externalize(unfused)
            release()
            log("lowering SelectiveScan to ONNX Scan for the portable graph")
            portable = lower_selective_scan(unfused)
            log("writing model.portable.onnx")  # (written before its checks: a failing one discards the OUTDIR)
            store.save(portable, tmp / "model.portable.onnx")
            onnx.checker.check_model(str(tmp / "model.portable.onnx"))  # (as written, its weights in weights.bin)
            log("self-check: portable graph vs the numpy simulation of the recipe")
            keep: dict = {}
            if plan is not None:
                check = simulation_check(model, plan, portable, c.vocab_size, points, keep=keep)
                if not check["max_rel_error_portable_vs_simulation"] <= 1e-4:
                    raise InternalError(f"the {'quantized ' if quantized else ''}graph disagrees with the "
                                        "simulation of the same recipe (max rel error "
                                        f"{check['max_rel_error_portable_vs_simulation']:.3g}, median "
                                        f"{check['median_rel_error_portable_vs_simulation']:.3g})")
            else:
                from .backends.ort import OrtRunner

                check = {}
                keep["ids"] = np.random.default_rng(1).integers(0, c.vocab_size, size=(2, 9))
                keep["logits"] = OrtRunner(portable)(keep["ids"])
            files["model.portable.onnx"] = {"flavour": "portable"}
            del portable  # the graphs carry everything from here on (the model until the plugin graph's check)
            release()
            graph = unfused
            if quantized:
                from .graph.fuse_scan_quant import fuse_plugin_quant

                graph = fuse_plugin_quant(unfused)  # TensorRT flavour: int8 into the scan plugin and out of the Hadamard
            log("writing model.onnx")
            store.save(graph, tmp / "model.onnx")
            onnx.checker.check_model(str(tmp / "model.onnx"))
            plugin_logits = None
            if quantized:  # the plugin graph as tightly as the portable one: simulation, following its roundings
                log("self-check: plugin graph vs the numpy simulation of the recipe")
                kp: dict = {}
                check.update(simulation_check(model, plan, graph, c.vocab_size, points, keep=kp, flavour="plugin",
                                              ids=keep["ids"]))
                plugin_logits = kp["logits"]
                if not check["max_rel_error_plugin_vs_simulation"] <= 1e-4:
                    raise InternalError("the plugin graph (onnxruntime with the CPU kernels) disagrees with the "
                                        "simulation of the same recipe (max rel error "
                                        f"{check['max_rel_error_plugin_vs_simulation']:.3g})")
            del model
            release()
            log("self-check: plugin graph vs portable graph")
            # activations quantized: the two flavours sum in different orders, so now and then one value lands on
            # the other side of a rounding boundary and the scan state carries that int8 step on, up to
            # quantization's own effect; each flavour is held to the simulation above, this direct distance is
            # recorded only
            acts = quantized and bool(plan.quant.act_scales)  # (weight-only: float activations, held as fp32)
            check.update(plugin_check(graph, keep["ids"], keep["logits"], tol=None if acts else 1e-4,
                                      logits=plugin_logits))
            plugins = plugin_inventory(graph)
            files["model.onnx"] = {"flavour": "tensorrt", "plugins": plugins}
            del graph
            release()
            # stateful graphs for `mq-deploy generate` (issue 5), derived from the final graph above, so they
            # share its weights, recipe and scales (graph/stateful.py)
            log("building and checking the prefill and decode-step graphs")
            stateful = {**stateful_io_spec(c), "self_check": {"derivation": derivation,
                                                               **_stateful(c, quantized, unfused, store, tmp, files)},
                        "plugins": {k: files[k]["plugins"] for k in ("model.prefill.onnx", "model.decode.onnx")}}
        del unfused
        files[store.name] = {"what": "weights of every graph above (ONNX external data)"}
        for p in calib_files:
            files[p.name] = {"what": "quantization report" if p.suffix == ".html" else "calibration statistics"}
        tok_src = tokenizer or source.get("tokenizer")
        if not tok_src:
            log("no tokenizer.json (the model directory has none): eval and generate of OUTDIR will need --tokenizer; "
                "compile with --tokenizer PATH (or a Hub id) to include one")
        if tok_src and _check_tokenizer(tok_src, c.vocab_size, warn):
            shutil.copyfile(tok_src, tmp / "tokenizer.json")
            files["tokenizer.json"] = {"source": str(Path(tok_src).resolve())}
        manifest = {
            **manifest_head(tmp, files),
            "model": {**source, "config": c.to_dict(), "parameters": n_params,
                      "weights": checkpoint_hashes(source)},
            "recipe": _effective(recipe.to_dict(), calib_info),
            "calibration": calib_info,
            "quantization": None if plan is None or plan.quant is None else {
                "weight_bits": plan.quant.weight_bits, "act_bits": plan.quant.act_bits,
                "act_scales": {k: float(v) for k, v in plan.quant.act_scales.items()},
                # each point's tensor before its QuantizeLinear, in both graphs (`validate --simulate` follows them)
                "points": {k: points[k] for k in plan.quant.act_scales if k in points},
                "weights": sorted(plan.quant.weights), "int8_weights": sorted(plan.quant.int8_weights)},
            "versions": _versions(),
            "io": io,
            "plugins": plugins,
            "self_check": check,
            "stateful": stateful,
            "files": files,
            "seconds": round(time.time() - t0, 2),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"wrote {out_dir} in {time.time() - t0:.1f}s")
    return manifest
