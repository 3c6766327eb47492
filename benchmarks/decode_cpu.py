"""Decode tokens/s and prefill latency of compiled OUTDIRs on this CPU (onnxruntime, stateful graphs).

    python benchmarks/decode_cpu.py                                  # bundled + reference model, fp32
    python benchmarks/decode_cpu.py --outdirs out/fp32 out/w8a8 out/w4a8 --batches 1 8 -o results/x.md

Without --outdirs the bundled model and /work/shared/models/mamba-ref-29m (if present) are compiled
with the fp32 recipe into a temporary folder first. For each OUTDIR and batch size:

  prefill   a random prompt of --prompt-len tokens per row (no padding), median wall time of --repeat runs
  decode    --new-tokens steps after two warm-up steps, greedy feed-back of the step's own argmax;
            tokens/s = batch × steps / time (all rows together), ms/step = time / steps

Timings are wall-clock on whatever else the machine is doing: the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REF_MODEL = Path(os.environ.get("MQ_DEPLOY_SHARED", ROOT.parent / "shared")) / "models" / "mamba-ref-29m"
NEOX = REF_MODEL.parents[1] / "data" / "tokenizer" / "gpt-neox-20b.json"


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {n} cores available, onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}"


def default_outdirs(tmp: Path) -> list[Path]:
    from mq_deploy.compile import compile_model

    outs = [tmp / "bundled-fp32"]
    compile_model(None, "fp32", outs[0])
    if REF_MODEL.is_dir():
        outs.append(tmp / "ref29m-fp32")
        compile_model(str(REF_MODEL), "fp32", outs[1], tokenizer=str(NEOX) if NEOX.is_file() else None)
    return outs


def bench(outdir: Path, batch: int, prompt_len: int, new_tokens: int, repeat: int, flavour: str,
          threads: int) -> dict:
    from mq_deploy.generate import StatefulSession

    man = json.loads((outdir / "manifest.json").read_text())
    cfg = man["model"]["config"]
    sess = StatefulSession.from_outdir(outdir, flavour=flavour, threads=threads)
    rng = np.random.default_rng(0)
    ids = rng.integers(2, cfg["vocab_size"], size=(batch, prompt_len))
    mask = np.ones_like(ids)
    sess.prefill(ids, mask)  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        logits, states = sess.prefill(ids, mask)
        times.append(time.perf_counter() - t)
    tok = np.argmax(logits, -1)
    for _ in range(2):  # warm-up steps
        logits, states = sess.step(tok, states)
        tok = np.argmax(logits, -1)
    t = time.perf_counter()
    for _ in range(new_tokens):
        logits, states = sess.step(tok, states)
        tok = np.argmax(logits, -1)
    dt = time.perf_counter() - t
    name = Path(man["model"].get("path", "?")).name
    params = man["model"].get("parameters")
    return {"model": f"{'bundled ' if man['model'].get('bundled') else ''}{name}"
                     f"{f' ({params / 1e6:.1f}M)' if params else ''}",
            "recipe": man["recipe"]["name"], "flavour": flavour, "threads": threads, "batch": batch,
            "prompt": prompt_len,
            "prefill_ms": 1e3 * statistics.median(times), "prefill_tok_s": batch * prompt_len / statistics.median(times),
            "step_ms": 1e3 * dt / new_tokens, "decode_tok_s": batch * new_tokens / dt}


def table(rows: list[dict]) -> str:
    head = ("| model | recipe | flavour | threads | batch | prompt | prefill ms (median) | prefill tok/s "
            "| decode ms/step | decode tok/s |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
    return head + "".join(
        f"| {r['model']} | {r['recipe']} | {r['flavour']} | {r['threads']} | {r['batch']} | {r['prompt']} "
        f"| {r['prefill_ms']:.1f} "
        f"| {r['prefill_tok_s']:.0f} | {r['step_ms']:.2f} | {r['decode_tok_s']:.1f} |\n" for r in rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--outdirs", nargs="*", type=Path, help="compile OUTDIRs (default: compile bundled + reference fp32)")
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5, help="prefill repetitions (median)")
    ap.add_argument("--flavour", nargs="*", default=["portable"], choices=["portable", "plugin"])
    ap.add_argument("--threads", nargs="*", type=int, default=None,
                    help="onnxruntime intra-op thread counts to try (default: all cores)")
    ap.add_argument("-o", "--output", type=Path, help="also write the markdown report here")
    args = ap.parse_args(argv)
    from mq_deploy.backends.ort import default_threads

    thread_counts = args.threads or [default_threads()]
    with tempfile.TemporaryDirectory(prefix="decode-bench-") as tmp:
        outdirs = args.outdirs or default_outdirs(Path(tmp))
        rows = []
        for out in outdirs:
            for flavour in args.flavour:
                for threads in thread_counts:
                    for b in args.batches:
                        rows.append(bench(out, b, args.prompt_len, args.new_tokens, args.repeat, flavour, threads))
                    print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    report = (f"Command: `python benchmarks/{Path(__file__).name} {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
              f"Machine: {machine()}; load average (1, 5, 15 min) at the end: "
              f"{', '.join(f'{x:.2f}' for x in load)}\n\n" + table(rows))
    print(report, end="")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
