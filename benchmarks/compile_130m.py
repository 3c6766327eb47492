"""Compile time and peak memory of a 130m-shape Mamba (d_model 768, 24 layers, vocab 50280; other shapes with
--d-model / --layers) with a recipe, on this machine's CPU. Random-init weights (the shape, not the values, sets the
cost).

    python benchmarks/compile_130m.py --recipe mambaquant-w8a8 --calib ../shared/data/text/wikitext2_val_sample.jsonl

Target (issue 3): <= 5 minutes and <= 4 GB RSS on 2 CPU cores. Prints a markdown row and appends it
to benchmarks/results/compile_130m.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="mambaquant-w8a8")
    ap.add_argument("--calib", required=True)
    ap.add_argument("--tokenizer", default=str(ROOT.parent / "shared/data/tokenizer/gpt-neox-20b.json"))
    ap.add_argument("--calib-samples", type=int, default=None, help="default: the recipe's (128)")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--d-model", type=int, default=768, help="768 (130m); 1024 with --layers 48 is the 370m shape")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT / "tests"))
    from mq_deploy.model import MambaConfig, random_model
    from mq_deploy.backends.torch_hf import build_hf_model

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "mamba-130m-shape"
        m = random_model(MambaConfig(d_model=args.d_model, n_layer=args.layers, vocab_size=50280), seed=0)
        build_hf_model(m).half().save_pretrained(ckpt, safe_serialization=True)
        del m
        cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "mq_deploy", "compile", str(ckpt), "--recipe", args.recipe,
               "--calib", args.calib, "--tokenizer", args.tokenizer, "-o", str(Path(tmp) / "out"), "-q"]
        if args.calib_samples:
            cmd += ["--calib-samples", str(args.calib_samples)]
        t0 = time.time()
        r = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.time() - t0
        if r.returncode != 0:
            sys.exit(r.stderr[-3000:])
        rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    row = (f"| {args.recipe} | d{args.d_model} x {args.layers} layers, vocab 50280 | {args.calib_samples or 128} x 512"
           f" | {wall:.0f} s | {rss_kb / 1e6:.2f} GB"
           f" | {os.cpu_count()} cores, {platform.processor() or platform.machine()} |")
    print(row)
    out = ROOT / "benchmarks/results/compile_130m.md"
    if not out.exists():
        out.write_text("# Compile time and peak RSS, 130m-shape model\n\nCommand: `python benchmarks/compile_130m.py "
                       "--recipe R --calib ../shared/data/text/wikitext2_val_sample.jsonl`\n\n"
                       "| recipe | model | calibration | wall | peak RSS | machine |\n|---|---|---|---|---|---|\n")
    with open(out, "a") as f:
        f.write(row + "\n")


if __name__ == "__main__":
    main()
