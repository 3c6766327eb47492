"""`mq-deploy` command line: each command only composes library calls.

    mq-deploy compile [MODEL] [--recipe fp32] -o OUTDIR
    mq-deploy eval [MODEL_OR_ONNX] --task wikitext2 [--seq-len N] [--limit N] [--data PATH] [--json]
    mq-deploy generate OUTDIR --prompt TEXT [--prompt TEXT ...] [--max-new-tokens N] [--greedy | --temperature T --top-p P]
                              [--flavour portable|plugin|tensorrt [--plugins LIB]]
    mq-deploy build OUTDIR [--graph model|prefill|decode] [--plugins LIB] [--int8 --fp16 | --strongly-typed]
                           [--min/opt/max-shapes B,L] [--validation-engine] [-o ENGINE]
    mq-deploy validate OUTDIR [--graph model|prefill|decode] [--plugins LIB] [--engine ENGINE] [--batch B --seq L]
                              [--simulate] [--torch] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Optional

from . import __version__
from .errors import Terminated, UserError


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- compile --------------------------------------------------------------------------------------
def cmd_compile(args: argparse.Namespace) -> int:
    from .compile import compile_model

    m = compile_model(args.model, args.recipe, args.output, tokenizer=args.tokenizer, force=args.force,
                      calib=args.calib, calib_samples=args.calib_samples, calib_seq_len=args.calib_seq_len,
                      report_passes=args.report_passes,
                      progress=not args.quiet, log=(lambda s: None) if args.quiet else _log,
                      warn=lambda s: _log(f"warning: {s}"))  # even with -q
    if args.json:
        print(json.dumps(m))
    return 0


# -- eval -----------------------------------------------------------------------------------------
def _eval_data(values: list[str], tasks: list[str]) -> dict[str, str]:
    """eval's --data values ("PATH" for the one task, or "TASK=PATH" as compare takes them) → {task: path}."""
    from .eval import TASK_NAMES

    named, bare = {}, []
    for v in values:
        task, _, path = v.partition("=")
        if path and task in tasks:
            if task in named and named[task] != path:
                raise UserError(f"--data {task}={named[task]} and --data {v}: one file for one task")
            named[task] = path
        elif path and task in TASK_NAMES + ("fashion_mnist",):
            raise UserError(f"--data {v}: no --task {task} asks for it")
        else:
            bare.append(v)
    if bare and (len(bare) > 1 or len(set(tasks)) > 1):
        raise UserError("--data names one task's file; with several --task, give each its file as --data TASK=PATH "
                        "(as `mq-deploy compare --data TASK=PATH` takes it)")
    if bare:
        if named:
            raise UserError(f"--data {bare[0]} and --data {next(iter(named))}=...: one file for one task")
        named[tasks[0]] = bare[0]
    return named


def resolve_eval_target(target: Optional[str], tokenizer: Optional[str], threads: Optional[int],
                        log=lambda s: None):
    """MODEL_OR_ONNX → (logits_fn, tokenizer path, description); `log`: an OUTDIR's hash check."""
    from .backends.ort import OrtRunner
    from .loaders import load_model, resolve_model_dir
    from .outdir import eval_graph
    from .vision.model import is_vim_dir

    vim = UserError(f"{target} is a Vision Mamba (Vim) image classifier: evaluate it with --task fashion_mnist")
    if target is not None and Path(target).is_file():
        p = Path(target)
        if p.suffix != ".onnx":
            raise UserError(f"{p} is neither an .onnx file nor a model directory")
        runner, tok_default, desc = OrtRunner(p, threads=threads), p.with_name("tokenizer.json"), f"onnxruntime:{p}"
    elif target is not None and (p := eval_graph(target, "input_ids", vim, log)) is not None:  # a compile OUTDIR
        runner, tok_default, desc = OrtRunner(p, threads=threads), Path(target) / "tokenizer.json", f"onnxruntime:{p}"
    else:
        from .backends.torch_hf import TorchRunner

        if target is not None and is_vim_dir(target):
            raise vim
        model_dir = resolve_model_dir(target)
        runner = TorchRunner(load_model(target), threads=threads)
        tok_default, desc = model_dir / "tokenizer.json", f"torch:{model_dir}"
    names = set(getattr(runner, "inputs", None) or ("input_ids",))  # an ONNX graph: its inputs
    if "pixel_values" in names:
        raise vim
    if names != {"input_ids"}:
        shown = sorted(names)[:3] + ([f"{len(names) - 3} more"] if len(names) > 3 else [])
        states = {n for n in names if re.fullmatch(r"(conv|ssm)_state\.\d+", n)}
        if names == {"input_ids", "attention_mask"} or (states and names == {"input_ids"} | states):
            raise UserError(f"{target} takes {', '.join(shown)}: it is a graph of `mq-deploy generate` (prefill / "
                            "decode step), not a whole-sequence model; evaluate model.onnx, model.portable.onnx or the "
                            "OUTDIR")
        raise UserError(f"{target} takes {', '.join(shown)}: it is not a Mamba language-model graph of mq-deploy (one "
                        "input, input_ids [batch, sequence] -> logits); evaluate an OUTDIR's model.portable.onnx / "
                        "model.onnx, or a checkpoint")
    tok = Path(tokenizer) if tokenizer else tok_default
    if not tok.is_file():
        hint = Path(os.environ.get("MQ_DEPLOY_DATA_DIR") or "../shared/data") / "tokenizer" / "gpt-neox-20b.json"
        vocab = _runner_vocab(runner)  # (GPT-NeoX's 50 277 ids, padded: a model of another vocabulary has another)
        neox = vocab is None or 50277 <= vocab <= 50432
        raise UserError(f"no tokenizer: {tok} does not exist; pass --tokenizer PATH/tokenizer.json or a Hub id"
                        + (f" (the reference models use the GPT-NeoX tokenizer: {hint})" if neox else
                           f" (the tokenizer this model of {vocab} ids was trained with)"))
    return runner, tok, desc


def _runner_vocab(runner) -> Optional[int]:
    """The vocabulary size of an eval target: its logits' last dimension (an ONNX graph) or its config (torch)."""
    dims = (getattr(runner, "outputs", None) or {}).get("logits")
    if dims and isinstance(dims[-1], int):
        return dims[-1]
    config = getattr(getattr(runner, "model", None), "config", None)
    return getattr(config, "vocab_size", None)


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval import run_task
    from .eval.tokenizer import TextTokenizer

    if args.seq_len is not None and args.seq_len < 2:
        raise UserError("--seq-len must be at least 2")
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    if "fashion_mnist" in args.task and len(set(args.task)) > 1:
        raise UserError("--task fashion_mnist cannot be combined with language-model tasks")
    twice = sorted({t for t in args.task if args.task.count(t) > 1})
    if twice:  # (it would score the same data twice)
        raise UserError(f"--task {', '.join(twice)} given more than once")
    data = _eval_data(args.data, args.task)
    log = (lambda s: None) if args.quiet else _log
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if "fashion_mnist" in args.task:  # image classification (Vim): no tokenizer
        from .compile import unused_flags
        from .vision.evaluate import run_fashion_mnist

        note = unused_flags({"--seq-len": args.seq_len, "--tokenizer": args.tokenizer},
                            "fashion_mnist classifies whole images, with no tokenizer")
        if note:
            _log(f"warning: {note}")
        r = run_fashion_mnist(args.model, data.get("fashion_mnist"), args.limit, args.batch_size or 64,
                              args.threads, progress=not args.quiet, log=log)
        print(json.dumps(r) if args.json else f"fashion_mnist: top1={r['top1']:.4f}, n={r['n']}", flush=True)
        return 0
    runner, tok_path, desc = resolve_eval_target(args.model, args.tokenizer, args.threads, log)
    tok = TextTokenizer(tok_path).for_model(_runner_vocab(runner))
    kw = {} if args.seq_len is None else {"seq_len": args.seq_len}
    results = []
    for task in args.task:
        r = run_task(task, runner, tok, data_path=data.get(task), limit=args.limit, batch_size=args.batch_size or 2,
                     progress=not args.quiet, **kw)
        r["model"] = desc
        results.append(r)
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            nums = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
                             if k not in ("task", "model"))
            print(f"{r['task']}: {nums}", flush=True)
    return 0


# -- generate -------------------------------------------------------------------------------------
def _row(row: int, text: str) -> str:
    """One row of a batch's output: `[k] text`, the lines of a text that holds newlines indented under the first."""
    head = f"[{row + 1}] "
    return head + text.replace("\n", "\n" + " " * len(head))


def _prompts(given: list, read_stdin: bool = True) -> list:
    """generate's --prompt values with `-` replaced by the text read from stdin (its one final newline dropped);
    UserError for an empty prompt or `-` given twice."""
    if given.count("-") > 1:
        raise UserError("--prompt - (read the prompt from stdin) can be given once")
    prompts = []
    for k, text in enumerate(given):
        if text == "-" and read_stdin:
            if sys.stdin is None:  # (fd 0 closed)
                raise UserError("--prompt - reads the prompt from stdin, which is closed")
            if sys.stdin.isatty():
                _log("reading the prompt from stdin (end it with Ctrl-D)")
            try:
                text = sys.stdin.read()
                text.encode("utf-8")  # (stdin's surrogateescape, e.g. in Python's UTF-8 mode, lets bad bytes through)
            except (UnicodeDecodeError, UnicodeEncodeError) as e:
                raise UserError(f"the prompt on stdin is not text of its encoding, {sys.stdin.encoding} ({e.reason} "
                                f"at {'byte' if isinstance(e, UnicodeDecodeError) else 'character'} {e.start})") \
                    from None
            text = text[:-1] if text.endswith("\n") else text
            text = text[:-1] if text.endswith("\r") else text
        if not text:
            raise UserError(f"prompt {k + 1}{' (stdin)' if given[k] == '-' else ''} is empty; give some text to "
                            "continue")
        prompts.append(text)
    return prompts


def cmd_generate(args: argparse.Namespace) -> int:
    from .eval.tokenizer import TextTokenizer
    from .outdir import read_manifest
    from .generate import (EngineSession, Sampling, StatefulSession, TextStream, check_outdir, check_request, generate,
                           outdir_graphs)

    if args.greedy and (args.temperature is not None or args.top_p is not None):
        raise UserError("--greedy cannot be combined with --temperature / --top-p")
    if args.max_prompt_tokens < 1:
        raise UserError("--max-prompt-tokens must be at least 1")
    sampling = Sampling(greedy=args.temperature is None and args.top_p is None,
                        temperature=1.0 if args.temperature is None else args.temperature,
                        top_p=1.0 if args.top_p is None else args.top_p, seed=args.seed)
    if sampling.greedy and args.seed is not None:
        _log("warning: --seed is unused: decoding is greedy (give --temperature and/or --top-p to sample)")
    out = Path(args.outdir)
    if args.plugins is not None and args.flavour != "tensorrt":
        raise UserError("--plugins is for --flavour tensorrt (the other flavours run the plugin nodes on mq-deploy's "
                        "CPU kernels)")
    _prompts(args.prompt, read_stdin=False)  # the texts given: checked now, stdin's after the other checks
    check_outdir(out)
    if args.flavour == "tensorrt":  # TensorRT before the engines: their build needs it too
        from .trt import import_tensorrt

        import_tensorrt()
    graphs = outdir_graphs(out, args.flavour)  # cheap checks first, then load
    lib = None
    if args.flavour == "tensorrt":
        from .trt import PLUGIN_BUILD_HINT, PLUGINS_ENV, resolve_plugin_lib

        lib = resolve_plugin_lib(args.plugins)
        if lib is None:
            raise UserError(f"the engines hold mq-deploy plugins: pass --plugins LIB or set {PLUGINS_ENV} "
                            f"({PLUGIN_BUILD_HINT})")
    if not args.tokenizer and not (out / "tokenizer.json").is_file():
        if "tokenizer.json" in (read_manifest(out).get("files") or {}):
            raise UserError(f"{out} has no tokenizer.json, which its manifest.json lists: copy it from the directory "
                            "`mq-deploy compile` wrote, or pass --tokenizer PATH/tokenizer.json")
        raise UserError(f"{out} has no tokenizer.json (compiled without one): pass --tokenizer PATH/tokenizer.json")
    args.prompt = _prompts(args.prompt)
    tok = TextTokenizer(Path(args.tokenizer) if args.tokenizer else out / "tokenizer.json")
    tok.for_model(read_manifest(out).get("model", {}).get("config", {}).get("vocab_size"))  # before anything is printed
    prompts = tok.encode_batch(args.prompt)
    check_request(prompts, args.max_new_tokens, args.max_prompt_tokens)  # before anything is printed
    eos = tok.eot_id  # (a tokenizer without one: before the sessions load)
    session = EngineSession(*graphs, plugin_lib=lib) if args.flavour == "tensorrt" else \
        StatefulSession(*graphs, threads=args.threads)
    streams = [TextStream(tok.decode, skip=[eos]) for _ in prompts]
    single = len(prompts) == 1
    line_open = [single]  # the streamed line has no newline yet
    if single:
        print(args.prompt[0], end="", flush=True)

    texts = [""] * len(prompts)  # (several prompts: each row's text so far, printed as it is if stopped)
    pending = set(range(len(prompts)))  # rows not printed yet

    def on_token(row: int, t: int) -> None:
        piece = streams[row].push(t)
        if single and piece:
            print(piece, end="", flush=True)
        texts[row] += piece

    def on_finish(row: int, ids: list) -> None:
        pending.discard(row)
        if single:
            print(flush=True)
            line_open[0] = False
        else:
            print(_row(row, args.prompt[row] + tok.decode([t for t in ids if t != eos])), flush=True)

    try:
        res = generate(session, prompts, max_new_tokens=args.max_new_tokens, sampling=sampling, eos_id=eos,
                       pad_id=tok.pad_id, max_prompt_tokens=args.max_prompt_tokens, on_token=on_token,
                       on_finish=on_finish)
    except KeyboardInterrupt:
        if line_open[0]:
            print(flush=True)  # end the streamed line: the interruption is said on a line of its own
        if not single:  # Ctrl-C / SIGTERM: the rows still running, as far as they got (not thrown away)
            for row in sorted(pending):
                print(_row(row, f"{args.prompt[row]}{texts[row]} [stopped]"), flush=True)
        raise
    n_prompt = sum(res.prompt_tokens)
    padded = res.decode_steps * len(prompts) - res.decode_tokens  # steps of rows that had finished
    idle = f"; {padded} idle row-steps of finished rows" if padded else ""
    _log(f"prefill: {len(prompts)} prompt(s), {n_prompt} tokens in {res.prefill_seconds * 1e3:.1f} ms; "
         f"decode: {res.decode_steps} steps, {res.decode_tokens} tokens in {res.decode_seconds:.2f} s "
         f"({res.decode_tokens_per_second:.1f} tokens/s{idle}) [{args.flavour}]")
    return 0


# -- compare / lint -------------------------------------------------------------------------------
def _unused_calib_flags(args: argparse.Namespace, flags: tuple, why: str) -> None:
    """compile.unused_flags's warning for those of `flags` (e.g. "--calib-seq-len") the command line gave."""
    from .compile import unused_flags

    note = unused_flags({f: getattr(args, f.lstrip("-").replace("-", "_"), None) for f in flags}, why)
    if note:
        _log(f"warning: {note}")


def cmd_compare(args: argparse.Namespace) -> int:
    from collections import Counter

    from .compare import (SCORED, RunFiles, code_stamp, compare, file_stamp, markdown_table, model_stamp,
                          recipe_fingerprint)
    from .compile import NOTHING_CALIBRATES, calibrates, calibration_data
    from .eval.data import TASKS, resolve_data_path
    from .eval.tokenizer import TextTokenizer
    from .loaders import load_model, resolve_model_dir
    from .recipes import check_family, load_recipe
    from .vision.model import is_vim_dir

    resolve_model_dir(args.model)  # a missing model directory is said as such, not as a recipe of the wrong family
    vim = bool(args.model) and is_vim_dir(args.model)
    default_tasks = "fashion_mnist" if vim else "wikitext2"
    tasks = [t for t in (args.tasks if args.tasks is not None else default_tasks).split(",") if t]
    recipes = [r for r in args.recipes.split(",") if r]
    if not recipes or not tasks:
        raise UserError("--recipes and --tasks need at least one name each")
    data = {}
    for d in args.data:
        if "=" not in d:
            raise UserError(f"--data expects TASK=PATH, got '{d}'")
        t, p = d.split("=", 1)
        data[t] = p
    if (args.calib_samples is not None and args.calib_samples < 1) or (args.calib_seq_len is not None
                                                                       and args.calib_seq_len < 2):
        raise UserError("--calib-samples must be >= 1 and --calib-seq-len >= 2")  # (also where nothing calibrates)
    log = (lambda s: None) if args.quiet else _log
    recs = [load_recipe(r) for r in recipes]
    for r in recs:  # every name and its model family before any work
        check_family(r, vim)
    twice = sorted(n for n, k in Counter(r.name for r in recs).items() if k > 1)
    if twice:
        raise UserError(f"--recipes names {', '.join(twice)} more than once (a row per recipe)")
    reference = load_recipe("fp32")
    for r in recs:  # a recipe file of one's own named fp32 would be taken for the reference row and not run
        if r.name == "fp32" and recipe_fingerprint(r) != recipe_fingerprint(reference):
            raise UserError(f"recipe {r.source} is named fp32, the name of the reference row every comparison has: "
                            "give it another name")
    runs = [reference] + [x for x in recs if x.name != "fp32"]
    fingerprints = {r.name: recipe_fingerprint(r) for r in runs}
    command = " ".join(sys.argv)

    if vim:  # Vision Mamba: top-1 on Fashion-MNIST per recipe
        from .vision.compare import compare_vim
        from .vision.data import data_dir

        images = data.get("fashion_mnist")
        _unused_calib_flags(args, ("--calib-seq-len", "--tokenizer"), "a Vision Mamba (Vim) calibrates on images")
        if not any(calibrates(r) for r in recs):
            _unused_calib_flags(args, ("--calib", "--calib-samples"), "no recipe of --recipes calibrates")
        settings = {"model": model_stamp(args.model), "tasks": tasks, "limit": args.limit,
                    "data": file_stamp(data_dir(images)), "version": code_stamp(),
                    **({"calib": file_stamp(data_dir(args.calib))} if args.calib else {}),
                    **({"calib_samples": args.calib_samples} if args.calib_samples else {})}
        files = RunFiles(Path(args.output), tasks, {"model": {"path": str(args.model), "format": "vim"}, "tasks": tasks,
                                                     "limit": args.limit, "command": command}, settings, fingerprints)
        rows, model_info = files.run(args.resume, log, _log, lambda done, on_row: compare_vim(
            args.model, recipes, tasks, limit=args.limit, data=images, calib=args.calib,
            calib_samples=args.calib_samples, progress=not args.quiet, log=log, done=done, on_row=on_row))
        files.meta["model"] = model_info
        files.update(rows)
        print(json.dumps(rows) if args.json else markdown_table(rows, tasks), end="\n" if args.json else "")
        log(f"wrote {files.out_dir / 'compare.md'} and {files.json_path}")
        return 0
    log(f"loading {'the bundled model' if args.model is None else args.model}")
    model = load_model(args.model)
    tok_path = args.tokenizer or model.source.get("tokenizer")
    if not tok_path:
        raise UserError("pass --tokenizer PATH/tokenizer.json (the model directory has none)")
    tok = TextTokenizer(tok_path)
    calibrating = [r for r in recs if calibrates(r)]
    if calibrating:  # (the first such recipe's calibration block: seed and sizes, unless the flags say)
        windows, calib_info = calibration_data(model, calibrating[0], args.calib, tok_path, args.calib_samples,
                                               args.calib_seq_len, warn=lambda s: _log(f"warning: {s}"))
        log(f"calibration: {calib_info['samples']} x {calib_info['seq_len']} tokens from {calib_info['file']}")
    else:  # fp32 / fp16 / weight-only RTN only: no calibration text is read
        windows, calib_info = None, None
        _unused_calib_flags(args, ("--calib", "--calib-samples", "--calib-seq-len"),
                            f"no recipe of --recipes calibrates ({NOTHING_CALIBRATES})")
    note = SCORED.format(seq_len=args.seq_len)
    meta = {"model": model.source, "calibration": calib_info, "tasks": tasks, "seq_len": args.seq_len,
            "limit": args.limit, "windows": args.windows, "data": data, "scored": note, "command": command}
    task_files = {t: file_stamp(resolve_data_path(t, data.get(t), flag=f"--data {t}=PATH"))
                  for t in tasks if t in TASKS}  # (other names: compare's own errors)
    settings = {"model": model_stamp(model.source.get("path") or "."), "format": model.source.get("format"),
                "calibration": calib_info and {**calib_info, "tokenizer": file_stamp(calib_info["tokenizer"])},
                "tasks": tasks,
                "seq_len": args.seq_len, "limit": args.limit, "windows": args.windows, "data": task_files,
                "tokenizer": file_stamp(tok_path), "version": code_stamp()}
    files = RunFiles(Path(args.output), tasks, meta, settings, fingerprints, note)
    rows = files.run(args.resume, log, _log, lambda done, on_row: compare(
        model, recipes, tasks, tok, windows, data=data, seq_len=args.seq_len, limit=args.limit, windows=args.windows,
        progress=not args.quiet, log=log, done=done, on_row=on_row))
    if args.json:
        print(json.dumps(rows))
    else:
        print(markdown_table(rows, tasks) + f"\n{note}")
    log(f"wrote {files.out_dir / 'compare.md'} and {files.json_path}")
    return 0


def _float_note(path: Path) -> str:
    """A note for a graph without QuantizeLinear or int8-writing Hadamard: only scan-scales applied to it."""
    import onnx

    from .graph.fuse_scan_quant import quantizes_activations

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    if quantizes_activations(nodes):
        return ""
    if any(n.op_type == "DequantizeLinear" for n in nodes):
        return " (weight-only: dequantized weights, float activations; the activation rules do not apply)"
    return " (a float graph, no quantization nodes: only rule scan-scales applies)"


def _trt_notes(path: Path) -> list[str]:
    import onnx

    from .trt import build_notes

    return build_notes(onnx.load(str(path), load_external_data=False))


def cmd_lint(args: argparse.Namespace) -> int:
    from .lint import lint_file

    p = Path(args.onnx)
    if not p.is_dir():
        problems = lint_file(p)
        notes = _trt_notes(p)
        if args.json:
            print(json.dumps({"file": str(p), "violations": problems, "notes": notes}))
        else:
            for v in problems:
                print(f"{v['node']}: {v['rule']}: {v['message']}")
            print(f"{p}: {len(problems)} violation(s){_float_note(p)}", file=sys.stderr)
            for n in notes:
                print(f"note: {n}", file=sys.stderr)
        return 1 if problems else 0
    # an OUTDIR: every graph TensorRT builds from it (model.onnx, and the generation graphs where it has them: a copy
    # for `build` alone may leave them out), checked against its manifest first (a changed copy's violations would be
    # bogus); a manifest.json of something else is not read
    from .outdir import HASH_LOG_BYTES, check_files, graph_files, missing_file, read_manifest, written_by_us

    graphs = ("model.onnx", "model.prefill.onnx", "model.decode.onnx")
    absent = []
    if written_by_us(p) or (p / "manifest.json").is_file() and not (p / "model.onnx").is_file():
        manifest = read_manifest(p)  # (one that cannot be read, with no graph beside it: its error)
        if "model.onnx" in (manifest.get("files") or {}) and not (p / "model.onnx").is_file():
            raise missing_file(p, manifest, "model.onnx", "the graph lint checks")
        absent = [g for g in graphs if g in (manifest.get("files") or {}) and not (p / g).is_file()]
        check_files(p, manifest, graph_files(manifest, graphs), hashes=True,
                    log=_log if not args.json else lambda s: None, log_over=HASH_LOG_BYTES)
    if absent:
        _log(f"note: {', '.join(absent)} (in manifest.json) {'is' if len(absent) == 1 else 'are'} not in {p}: not "
             "linted")
    files = [p / f for f in graphs if (p / f).is_file()]
    if not files:
        raise UserError(f"{p} has no model.onnx; pass an ONNX file or the output directory of `mq-deploy compile`")
    found = [(f, lint_file(f)) for f in files]
    notes = {f: _trt_notes(f) for f in files}
    everything = [{**v, "file": f.name} for f, vs in found for v in vs]
    shared = sorted({n for ns in notes.values() for n in ns})  # the same note for each graph of an OUTDIR: once
    if args.json:
        print(json.dumps({"outdir": str(p), "files": [{"file": str(f), "violations": vs, "notes": notes[f]}
                                                      for f, vs in found], "violations": everything, "notes": shared}))
    else:
        for v in everything:
            print(f"{v['file']}: {v['node']}: {v['rule']}: {v['message']}")
        for f, vs in found:
            print(f"{f}: {len(vs)} violation(s){_float_note(f)}", file=sys.stderr)
        for n in shared:
            print(f"note: {n}", file=sys.stderr)
    return 1 if everything else 0


# -- build / validate (TensorRT) ------------------------------------------------------------------
def cmd_build(args: argparse.Namespace) -> int:
    from .trt import (LIB_PLACEHOLDER, Shapes, build_outdir, dlopen_plugin_lib, loadlibrary_plugin_lib, parse_shape,
                      plan_build, tensorrt_major, tensorrt_refused)

    shapes = Shapes(min=parse_shape(args.min_shapes, "--min-shapes"), opt=parse_shape(args.opt_shapes, "--opt-shapes"),
                    max=parse_shape(args.max_shapes, "--max-shapes"))
    dry_run = args.dry_run or args.polygraphy
    plan = plan_build(args.outdir, engine=args.output, plugin_lib=args.plugins, int8=args.int8, fp16=args.fp16,
                      shapes=shapes, timing_cache=args.timing_cache, require_plugin_lib=not dry_run,
                      strongly_typed=args.strongly_typed, validation=args.validation_engine, graph=args.graph)
    major = tensorrt_major()
    cmds = plan.command_lines(major)  # TensorRT 11's trtexec has no --int8 / --fp16
    if dry_run:
        tool = "polygraphy" if args.polygraphy else "trtexec"
        if plan.mark:
            raise UserError(f"--validation-engine has no {tool} equivalent here (the command lines do not mark the "
                            "tensors before the QuantizeLinear nodes as outputs): run `mq-deploy build OUTDIR "
                            f"{'' if args.graph == 'model' else f'--graph {args.graph} '}--validation-engine` on the "
                            "machine that has TensorRT")
        pick = dlopen_plugin_lib if args.polygraphy else loadlibrary_plugin_lib  # the one this tool loads
        lib = pick(plan.plugin_lib or LIB_PLACEHOLDER)
        if plan.plugin_lib is None:
            print(f"note: {lib} stands for the plugin library (no --plugins, no $MQ_DEPLOY_PLUGINS "
                  "here): docs/deploy.md says how to build it", file=sys.stderr)
        elif not Path(lib).is_file() and Path(plan.plugin_lib).is_file():
            print(f"note: {lib} is not beside {plan.plugin_lib}: rebuild the plugins (`cmake --build build/plugins`, "
                  "which writes both libraries)", file=sys.stderr)
        elif not Path(lib).is_file():
            print(f"note: {lib} is not on this machine; the command is for the one that has it", file=sys.stderr)
        if args.polygraphy and args.output:
            print("note: -o is not used by the polygraphy check (it builds its own engine from "
                  f"{Path(plan.onnx).name})", file=sys.stderr)
        for note in plan.notes:
            print(f"note: {note}", file=sys.stderr)
        refused = tensorrt_refused()
        if refused:  # (an installed TensorRT too old for the plugins: the lines are for TensorRT 10)
            print(f"note: {refused}", file=sys.stderr)
        if major is None and (plan.int8 or plan.fp16):
            print("note: no TensorRT here; the command is for TensorRT 10 (on TensorRT 11 leave out --int8 / "
                  f"--fp16{' and the layer precision options' if plan.fp32 else ''}: TensorRT 11 has no precision "
                  "flags, the Q/DQ nodes decide)", file=sys.stderr)
        elif major is None and plan.strongly_typed:
            print(f"note: no TensorRT here; the command is for TensorRT 10 (TensorRT 11 needs no "
                  f"{'--strongly-typed' if args.polygraphy else '--stronglyTyped'}: its networks are always strongly "
                  "typed)", file=sys.stderr)
        if args.polygraphy:  # the onnxruntime reference first: the TensorRT run compares against its saved outputs
            print(cmds["polygraphy_reference"])
            print(cmds["polygraphy"])
        else:
            print(cmds["trtexec"])
        return 0
    log = (lambda s: None) if args.quiet else _log
    engine = build_outdir(plan, log=log, warn=lambda s: _log(f"warning: {s}"),  # warnings even with -q
                          progress=None if args.quiet else sys.stderr)
    log(f"equivalent: {cmds['trtexec']}")
    print(engine)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .validate import format_report, validate

    rep = validate(args.outdir, graph=args.graph, batch=args.batch, seq=args.seq, seed=args.seed,
                   simulate=args.simulate, torch_ref=args.torch, model_dir=args.model, calib=args.calib,
                   engine=args.engine, plugin_lib=args.plugins, tol=args.tol, engine_tol=args.engine_tol,
                   engine_step_tol=args.engine_step_tol, engine_gain_tol=args.engine_gain_tol,
                   engine_codes_tol=args.engine_codes_tol, threads=args.threads,
                   log=(lambda s: None) if args.quiet else _log, progress=not args.quiet)
    print(json.dumps(rep.to_dict()) if args.json else format_report(rep))
    return 0 if rep.ok else 1


# -- parser ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mq-deploy", description="Export and deployment compiler for Mamba models.")
    ap.add_argument("--version", action="version", version=f"mq-deploy {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("compile", help="compile a Mamba checkpoint to ONNX (TensorRT-plugin and portable flavours)",
                       description="Compile a Mamba checkpoint into OUTDIR: model.onnx (SelectiveScan / Hadamard "
                                   "TensorRT plugin nodes), model.portable.onnx (standard ONNX ops) and manifest.json; "
                                   "for a language model also the stateful graphs of `mq-deploy generate` "
                                   "(model.prefill.onnx, model.decode.onnx and their .portable.onnx), weights.bin (the "
                                   "weights of every graph), the model's tokenizer.json, and for recipes that calibrate "
                                   "calib.json / calib.npz and report.html (README: the OUTDIR table). A Vision Mamba "
                                   "(Vim) directory takes fp32, fp16 or the vim-* recipes.")
    c.add_argument("model", nargs="?", default=None,
                   help="Hugging Face or state-spaces Mamba directory, or a Hugging Face Hub id owner/name[@REVISION] "
                        "(fetched into the Hugging Face cache; default: the bundled model)")
    c.add_argument("--recipe", default="fp32", help="recipe name from export_configs/ or a .yaml path (default: fp32)")
    c.add_argument("-o", "--output", required=True, help="output directory (written atomically)")
    c.add_argument("--tokenizer", help="tokenizer.json to copy into OUTDIR, or a Hub id whose tokenizer.json to take "
                                       "(default: the model directory's)")
    c.add_argument("--force", action="store_true", help="replace a non-empty OUTDIR not written by mq-deploy")
    c.add_argument("--json", action="store_true", help="print the manifest as JSON on stdout")
    c.add_argument("--calib", help="calibration text for quantized recipes, not read by a weight-only RTN one "
                                   "(plain text, .jsonl / .json of {\"text\"}, .xz/.bz2/.gz; default "
                                   "$MQ_DEPLOY_DATA_DIR/text/wikitext2_val_sample.jsonl)")
    c.add_argument("--calib-samples", type=int, help="calibration windows (default: the recipe's, 128)")
    c.add_argument("--calib-seq-len", type=int, help="tokens per calibration window (default: the recipe's, 512)")
    c.add_argument("--report-passes", action=argparse.BooleanOptionalAction, default=None,
                   help="statistics after every pass in report.html (default: on up to 50M parameters)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    c.set_defaults(func=cmd_compile)

    k = sub.add_parser("compare", help="several recipes side by side on one model (paper-style table)",
                       description="Compile MODEL with each recipe (in memory, one calibration), run the graphs in "
                                   "onnxruntime and print a table: rows = recipes, columns = tasks. Perplexity tasks "
                                   "also report KL(fp32 || recipe) and top-1 agreement with fp32. A Vision Mamba "
                                   "directory is compared with the vim-* recipes on --tasks fashion_mnist (top-1 and "
                                   "agreement with fp32 on the 10k test images, or the first --limit).")
    k.add_argument("model", nargs="?", default=None, help="model directory or Hugging Face Hub id owner/name[@REVISION] "
                                                          "(default: the bundled model)")
    k.add_argument("--recipes", required=True, help="comma-separated recipe names or .yaml paths")
    k.add_argument("--tasks", default=None, help="comma-separated tasks (default wikitext2; fashion_mnist for a Vim "
                                                 "model)")
    k.add_argument("--data", action="append", default=[], metavar="TASK=PATH", help="data file for a task (repeatable)")
    k.add_argument("--tokenizer", help="tokenizer.json or a Hub id (default: the model directory's)")
    k.add_argument("--calib", help="calibration text, read where a recipe calibrates (default $MQ_DEPLOY_DATA_DIR/"
                                   "text/wikitext2_val_sample.jsonl); a Vim: the Fashion-MNIST folder of its training "
                                   "images (default: --data fashion_mnist=DIR's, else the dataset package's)")
    k.add_argument("--calib-samples", type=int, help="calibration windows (a Vim: images) for every recipe (default: "
                                                     "the recipes', 128)")
    k.add_argument("--calib-seq-len", type=int, help="tokens a calibration window (default: the recipes', 512)")
    k.add_argument("--seq-len", type=int, default=512, help="perplexity window / zero-shot max length (default 512)")
    k.add_argument("--limit", type=int, help="first N items per zero-shot task (and windows, unless --windows)")
    k.add_argument("--windows", type=int, help="first N windows per perplexity task")
    k.add_argument("-o", "--output", default="compare-out", help="folder for compare.md / compare.json (default "
                                                                 "./compare-out)")
    k.add_argument("--json", action="store_true", help="print the rows as JSON on stdout")
    k.add_argument("--resume", action="store_true",
                   help="continue a run that stopped: compare.json / compare.md are saved after every recipe, and "
                        "with --resume the recipes whose rows OUTPUT/compare.json already has are not run again (the "
                        "same model files, calibration, tasks in order, lengths, data files, tokenizer, mq-deploy "
                        "version and recipe definition; other settings are refused)")
    k.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    k.set_defaults(func=cmd_compare)

    ln = sub.add_parser("lint", help="check a QDQ ONNX graph against TensorRT's explicit-quantization rules",
                        description="Report QDQ placement violations by node name; exit 1 if there are any.")
    ln.add_argument("onnx", help="model.onnx, model.portable.onnx, a prefill / decode graph, or a compile OUTDIR "
                                 "(its model.onnx, model.prefill.onnx and model.decode.onnx: what TensorRT builds)")
    ln.add_argument("--json", action="store_true", help="print the violations as JSON on stdout (for an OUTDIR: per "
                                                        "file, and all of them, each naming its file)")
    ln.set_defaults(func=cmd_lint)

    from .eval import TASK_NAMES

    e = sub.add_parser("eval", help="perplexity and zero-shot accuracy of a checkpoint or an ONNX graph",
                       description="Evaluate a model: a checkpoint directory (torch, Hugging Face MambaForCausalLM), "
                                   "an .onnx file or a compile OUTDIR (onnxruntime, model.portable.onnx).")
    e.add_argument("model", nargs="?", default=None, metavar="MODEL_OR_ONNX",
                   help="model directory, .onnx file, compile output directory, or Hugging Face Hub id "
                        "owner/name[@REVISION] (default: the bundled model)")
    e.add_argument("--task", required=True, action="append", choices=TASK_NAMES + ("fashion_mnist",),
                   help="task to run (repeatable): " + ", ".join(TASK_NAMES + ("fashion_mnist",)))
    e.add_argument("--data", action="append", default=[], metavar="PATH or TASK=PATH",
                   help="data file for the task, or TASK=PATH for one of several (repeatable; default: "
                        "$MQ_DEPLOY_DATA_DIR/<standard path>)")
    e.add_argument("--tokenizer", help="tokenizer.json or a Hub id (default: the one beside the model)")
    e.add_argument("--seq-len", type=int, default=None, help="window length for perplexity / max length (default 2048)")
    e.add_argument("--limit", type=int, default=None, help="only the first N windows / items")
    e.add_argument("--batch-size", type=int, default=None, help="sequences per forward pass (default 2; logits are batch x seq x "
                                                               "vocab floats), images for fashion_mnist (default 64)")
    e.add_argument("--threads", type=int, default=None, help="CPU threads (default, or 0: all)")
    e.add_argument("--json", action="store_true", help="print one JSON object per task on stdout")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_eval)

    from .generate import DEFAULT_MAX_NEW_TOKENS, DEFAULT_MAX_PROMPT_TOKENS

    g = sub.add_parser("generate", help="generate text with the prefill and decode-step graphs in onnxruntime (or "
                                        "their TensorRT engines)",
                       description="Generate text from a compile OUTDIR: prefill the prompt(s), then one decode step "
                                   "per token, streaming to stdout; timings go to stderr. Several --prompt values "
                                   "run as one left-padded batch.")
    g.add_argument("outdir", metavar="OUTDIR", help="output directory of `mq-deploy compile`")
    g.add_argument("--prompt", required=True, action="append", help="prompt text (repeatable: one batch); - reads "
                                                                     "one prompt from stdin")
    g.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                   help=f"stop after N new tokens (default {DEFAULT_MAX_NEW_TOKENS})")
    g.add_argument("--greedy", action="store_true", help="argmax decoding (the default without --temperature / "
                                                          "--top-p)")
    g.add_argument("--temperature", type=float, default=None, help="sample with this temperature (default 1.0 when "
                                                                   "--top-p alone is given)")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass (default 1.0 when --temperature "
                                                             "alone is given)")
    g.add_argument("--seed", type=int, default=None, help="random seed for sampling (default: a fresh one each run; "
                                                          "unused with greedy decoding)")
    g.add_argument("--flavour", choices=["portable", "plugin", "tensorrt"], default="portable",
                   help="what runs (default portable): portable (standard ONNX ops) or plugin (plugin nodes on CPU kernels) in "
                        "onnxruntime, or tensorrt: the engines OUTDIR/model.prefill.engine and model.decode.engine "
                        "(`mq-deploy build OUTDIR --graph prefill` / `--graph decode`; needs TensorRT, the plugin "
                        "library and a CUDA build of torch)")
    g.add_argument("--plugins", metavar="LIB", help="--flavour tensorrt: the plugin library, "
                                                    "build/plugins/libmq_trt_plugins.so (default: $MQ_DEPLOY_PLUGINS)")
    g.add_argument("--max-prompt-tokens", type=int, default=DEFAULT_MAX_PROMPT_TOKENS,
                   help=f"reject longer prompts (default {DEFAULT_MAX_PROMPT_TOKENS})")
    g.add_argument("--tokenizer", help="tokenizer.json (default: OUTDIR/tokenizer.json)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads (default, or 0: all)")
    g.set_defaults(func=cmd_generate)

    b = sub.add_parser("build", help="build a TensorRT engine from a compile OUTDIR (needs TensorRT)",
                       description="Parse OUTDIR/model.onnx (or, with --graph, the prefill or decode-step graph) "
                                   "with TensorRT, load the plugin library, build with an optimization profile for "
                                   "input_ids (a Vim OUTDIR: pixel_values, batch only; the stateful graphs: every "
                                   "input) and write the engine atomically. A quantized "
                                   "OUTDIR builds with INT8 on (explicit quantization: the Q/DQ nodes carry the scales). "
                                   "Engines are specific to the GPU and TensorRT version: build on the target.")
    b.add_argument("outdir", metavar="OUTDIR", help="output directory of `mq-deploy compile`")
    b.add_argument("--graph", choices=("model", "prefill", "decode"), default="model",
                   help="which graph: model (model.onnx, input_ids -> logits of every position; the default), or a "
                        "language model's prefill / decode step (model.prefill.onnx / model.decode.onnx, the graphs "
                        "of `mq-deploy generate`, with the layers' states as inputs and outputs; engine "
                        "OUTDIR/model.prefill.engine / model.decode.engine). The decode step takes the batch of the "
                        "shapes only")
    b.add_argument("--plugins", metavar="LIB", help="plugin library, build/plugins/libmq_trt_plugins.so "
                                                    "(default: $MQ_DEPLOY_PLUGINS)")
    b.add_argument("--int8", action="store_true",
                   help="allow INT8 (on by default for a quantized OUTDIR; refused for a float one: no scales)")
    b.add_argument("--fp16", action="store_true", help="allow FP16 kernels for the float layers (the RMSNorm layers "
                                                       "stay fp32: their squares overflow fp16 on trained models)")
    b.add_argument("--strongly-typed", action="store_true",
                   help="build a strongly typed network with no precision flags (TensorRT 10's form of what TensorRT "
                        "11 always does; not with --int8 / --fp16): the Q/DQ nodes set INT8 and float layers stay in "
                        "the ONNX graph's precision (fp32 here), so the weakly typed --int8 --fp16 build may be faster")
    b.add_argument("--min-shapes", default="1,1", metavar="B,L", help="smallest batch,sequence, as B,L or BxL (default 1,1; "
                                                                      "a Vim OUTDIR takes B alone, its image size is fixed)")
    b.add_argument("--opt-shapes", default="1,512", metavar="B,L", help="batch,sequence to tune for (default 1,512)")
    b.add_argument("--max-shapes", default="8,4096", metavar="B,L", help="largest batch,sequence (default 8,4096)")
    b.add_argument("--timing-cache", metavar="FILE", help="TensorRT timing cache to read and update")
    b.add_argument("--validation-engine", action="store_true",
                   help="quantized OUTDIRs: also output the tensor before every QuantizeLinear, so that `mq-deploy "
                        "validate --engine OUTDIR/model.validate.engine` (with --graph G: `validate --graph G --engine "
                        "OUTDIR/model.G.validate.engine`) can check it layer by layer on its own int8 codes; for "
                        "checking, not deployment (extra outputs, other fusions)")
    b.add_argument("-o", "--output", metavar="ENGINE", help="engine file (default: OUTDIR/model.engine, with "
                                                            "--validation-engine OUTDIR/model.validate.engine, with "
                                                            "--graph prefill / decode OUTDIR/model.<graph>.engine, "
                                                            "or with both OUTDIR/model.<graph>.validate.engine)")
    b.add_argument("--dry-run", action="store_true", help="print the equivalent trtexec command and exit "
                                                          "(no TensorRT needed)")
    b.add_argument("--polygraphy", action="store_true",
                   help="print the equivalent polygraphy check instead and exit (implies --dry-run): an onnxruntime "
                        "run of model.portable.onnx that saves inputs and outputs, then a TensorRT run of model.onnx "
                        "with the plugins (libmq_trt_plugins_register.so beside the plugin library) compared "
                        "against them")
    b.add_argument("-q", "--quiet", action="store_true",
                   help="no progress messages (without -q TensorRT's build phases are shown as it goes; warnings "
                        "are shown either way; Ctrl-C cancels the build at TensorRT's next step either way)")
    b.set_defaults(func=cmd_build)

    v = sub.add_parser("validate", help="compare a compile OUTDIR's graphs (and TensorRT engine) on the same input",
                       description="Run the same random input_ids (a Vim OUTDIR: Fashion-MNIST test images when the "
                                   "dataset is installed, else random pixel_values) through onnxruntime on "
                                   "model.portable.onnx and on "
                                   "model.onnx (plugin nodes on mq-deploy's CPU kernels), optionally the fake-quant "
                                   "simulation (--simulate) and the torch fp32 checkpoint (--torch), and the TensorRT "
                                   "engine where TensorRT exists; print max abs / max rel / mean abs error and top-1 "
                                   "agreement for every pair. A quantized OUTDIR also gets model.onnx taking "
                                   "model.portable.onnx's side on rounding-boundary values (plugin~; with --simulate "
                                   "also simulation~), held to fp32 rounding. Exit 1 if a gated pair exceeds its "
                                   "limit.")
    v.add_argument("outdir", metavar="OUTDIR", help="output directory of `mq-deploy compile`")
    v.add_argument("--graph", choices=("model", "prefill", "decode"), default="model",
                   help="which graph: model (model.onnx and model.portable.onnx; the default), or a language model's "
                        "prefill / decode step (model.<graph>.onnx, model.<graph>.portable.onnx and the engine "
                        "OUTDIR/model.<graph>.engine of `mq-deploy build --graph`): random input_ids with left-padded "
                        "rows / one token from the prompt's states; rows for the logits and the worst state")
    v.add_argument("--plugins", metavar="LIB", help="plugin library for the engine (default: $MQ_DEPLOY_PLUGINS)")
    v.add_argument("--engine", metavar="ENGINE", help="TensorRT engine (default: OUTDIR/model.engine, with --graph "
                                                      "OUTDIR/model.<graph>.engine, if present); for a quantized "
                                                      "OUTDIR, a validation engine (`mq-deploy build "
                                                      "--validation-engine`, with --graph G for that graph) gets the "
                                                      "layer-by-layer check")
    v.add_argument("--batch", type=int, default=2, help="batch of random input_ids / images (default 2)")
    v.add_argument("--seq", type=int, default=32, help="sequence length of random input_ids (default 32; "
                                                       "not used for a Vim OUTDIR)")
    v.add_argument("--seed", type=int, default=0, help="seed of the random input_ids (default 0)")
    v.add_argument("--simulate", action="store_true",
                   help="add the fake-quant simulation, re-derived from the manifest's checkpoint, recipe and "
                        "calibration file (repeats the compile's calibration); for a quantized OUTDIR also the "
                        "simulation following each graph's boundary roundings (rows simulation~, held to 1e-4)")
    v.add_argument("--torch", action="store_true", help="add the torch fp32 reference of the original checkpoint")
    v.add_argument("--model", metavar="DIR", help="the checkpoint directory or Hugging Face Hub id (default: the "
                                                  "manifest's; compiled from the Hub and not on this machine: fetched "
                                                  "again at the recorded commit); implies --torch, "
                                                  "except with --simulate (add --torch for both)")
    v.add_argument("--calib", metavar="FILE", help="calibration file for --simulate (default: the manifest's)")
    v.add_argument("--tol", type=float, help="max rel limit between portable / plugin / simulation (default 1e-4); "
                                             "for quantized recipes it gates the plugin~ / simulation~ rows, which "
                                             "follow the graphs' rounding-boundary cases, and the direct rows are "
                                             "reported only")
    v.add_argument("--engine-tol", type=float, default=None,
                   help="max rel limit for pairs with the engine: a direct pair 5e-2 (default); a quantized OUTDIR's "
                        "validation engine: portable= vs tensorrt 1e-2 (the portable graph on the engine's own int8 "
                        "codes; logits, with --graph also the worst state), its direct rows then reported only; a "
                        "quantized OUTDIR's prefill / decode deployment engine (--graph): 0.5, gross errors only")
    v.add_argument("--engine-step-tol", type=float, default=None, metavar="STEPS",
                   help="a validation engine's quantizer inputs, each computed by the portable graph from the "
                        "engine's int8 codes: limit on a tensor's mean distance from the engine's, in quantization "
                        "steps (default 0.1); the first tensor over a limit is named")
    v.add_argument("--engine-gain-tol", type=float, default=None, metavar="REL",
                   help="the same tensors: limit on the relative scale between the engine's and the graph's "
                        "(least squares; default 5e-4, 1.5e-3 for --graph decode, whose one token a row gives few "
                        "values; a wrong scale shows there)")
    v.add_argument("--engine-codes-tol", type=float, default=None, metavar="SHARE",
                   help="a validation engine's fused Hadamards (out_proj's quantization in the kernel): limit on the "
                        "share of their int8 codes that differ from their float twin's rounding away from a rounding "
                        "boundary (default 0.001; no code may differ by more than one)")
    v.add_argument("--threads", type=int, default=None, help="CPU threads (default, or 0: all)")
    v.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    v.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    v.set_defaults(func=cmd_validate)
    ap.set_defaults(subcommands=sub.choices)  # (main: an unknown flag is the subcommand's error, with its usage)
    return ap


_VALUE_FLAGS = ("--min-shapes", "--opt-shapes", "--max-shapes")


def _attach_dash_values(argv: list[str]) -> list[str]:
    """`--opt-shapes -1,512` → `--opt-shapes=-1,512`: argparse takes a value starting with '-' and a digit for an
    option (only plain negative numbers are exempt), which would print a usage error instead of the shape check's."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in _VALUE_FLAGS and i + 1 < len(argv) and argv[i + 1][:1] == "-" and argv[i + 1][1:2].isdigit():
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


TRACEBACK_ENV = "MQ_DEPLOY_TRACEBACK"  # set to 1: a system error's traceback instead of its one line (bug reports)


def _stdout_gone() -> bool:
    """Whether stdout's reader has gone (the BrokenPipeError is stdout's, not some other pipe's): poll reports an
    error on the write end of a pipe nobody reads."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # stdout not a file (a caller's main([...])), no poll
        return False


def _fetch_from_hub(args: argparse.Namespace) -> None:
    """A MODEL or --tokenizer that is not a local path but a Hugging Face Hub id (owner/name[@revision]) becomes the
    files it names, fetched into the Hugging Face cache (hub.py); what the command would refuse anyway (a recipe, the
    output, the calibration file) is checked before the download."""
    from . import hub

    if args.command not in ("compile", "compare", "eval", "validate"):
        return
    quiet = bool(getattr(args, "quiet", False))
    model = getattr(args, "model", None)
    if model is not None and hub.parse_id(model) is not None:
        _check_before_download(args)
        args.model = hub.fetch_model(model, quiet=quiet, log=(lambda s: None) if quiet else _log,
                                     warn=lambda s: _log(f"warning: {s}"))
    tokenizer = getattr(args, "tokenizer", None)
    unread = args.command == "eval" and "fashion_mnist" in (args.task or ())  # (said by cmd_eval, not fetched)
    if tokenizer is not None and hub.parse_id(tokenizer) is not None and not unread:
        args.tokenizer = hub.fetch_tokenizer(tokenizer)


def _check_before_download(args: argparse.Namespace) -> None:
    """compile's / compare's cheap refusals, made before a download of gigabytes rather than after it. Whether the
    model is a Vim is not known before it is fetched: the calibration text is checked only where the recipes say it is
    a language model (a bundled one, not vim-*, fp32 or fp16)."""
    from .calibrate import check_calib_file
    from .compile import calibrates, default_calib_path
    from .outdir import check_target, check_writable
    from .recipes import family, load_recipe

    if args.command == "compile":
        recipes = [load_recipe(args.recipe)]
        check_target(Path(args.output), args.force)
        needs_text = any(calibrates(r) for r in recipes)
    elif args.command == "compare":
        recipes = [load_recipe(n) for n in args.recipes.split(",") if n]
        check_writable(Path(args.output) / "compare.json", "compare's results")
        needs_text = any(calibrates(r) for r in recipes)  # (with only fp32 / fp16, which a Vim takes too, the family
        # is unknown before the download: nothing to check then)
    else:
        return
    if needs_text and any(family(r) == "lm" for r in recipes):
        if args.calib is None:
            default_calib_path()  # (its error says to pass --calib)
        else:
            check_calib_file(args.calib)


def _run(args: argparse.Namespace) -> int:
    """The command, its failures as one line and an exit status."""
    from . import signals

    try:
        if getattr(args, "threads", None) is not None and args.threads < 0:
            raise UserError(f"--threads must be 0 (all) or more, not {args.threads}")
        _fetch_from_hub(args)
        rc = args.func(args)
        signals.raise_pending()  # a Ctrl-C kept while TensorRT called back, not raised since
        return rc
    except UserError as e:
        print(f"mq-deploy: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM as Terminated (signals.py)
        terminated = isinstance(e, Terminated)
        print(f"mq-deploy: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    except OSError as e:
        if isinstance(e, BrokenPipeError) and _stdout_gone():  # `mq-deploy ... | head`: say nothing more
            try:  # (else Python reports the failed flush of stdout at exit)
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):  # io.UnsupportedOperation: stdout is not a file (a caller's main([...]))
                pass
            return 141
        if os.environ.get(TRACEBACK_ENV):
            raise
        # no space left, a file that vanished, ...: one line, not a traceback
        print(f"mq-deploy: error: {e} ({TRACEBACK_ENV}=1 shows where)", file=sys.stderr)
        return 1


def main(argv: Optional[list[str]] = None) -> int:
    import signal
    import threading

    from . import signals

    ap = build_parser()
    words = _attach_dash_values(list(sys.argv[1:] if argv is None else argv))
    args, unknown = ap.parse_known_args(words)
    if unknown:  # the subcommand's usage lines and `mq-deploy SUBCOMMAND: error: ...`, as for a bad value (exit 2)
        at = words.index(args.command) if args.command in words else 0
        if any(w in words[:at] for w in unknown):  # (`mq-deploy --quiet compile`: an option of the command's)
            ap.error(f"unrecognized arguments: {' '.join(unknown)} (a command's options go after its name: "
                     f"mq-deploy {args.command} ... {unknown[0]})")
        (args.subcommands.get(args.command) or ap).error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "func", None):
        ap.print_help()
        return 2
    with signals.installed():
        rc = _run(args)
    if argv is None and threading.current_thread() is threading.main_thread():
        # the program is exiting (its result said, its files written): a Ctrl-C now (a second one, or one during the
        # libraries' clean-up at exit) ends it, without Python's "Exception ignored in atexit callback" traceback
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    return rc


if __name__ == "__main__":
    sys.exit(main())
