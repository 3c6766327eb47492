"""Resident memory an onnxruntime session of a compiled language model holds, with the embedding gathered from its
fp16 table (as compiled since 2026-12-01) and with the earlier form, one Cast of the whole table feeding the Gather.

    python benchmarks/ort_embedding_memory.py OUTDIR [--graph model.portable.onnx] [--repeat 2]

Each measurement runs in a fresh process: VmRSS after an `OrtRunner(graph, threads=1)` has run one [1, 64] batch,
minus VmRSS before it was made. The earlier form is made from the same graph in memory (the Gather reads the head's
Cast of the table; the Cast after the Gather then casts fp32 to fp32), so both carry the same weights. Prints MB for
each form and whether the logits are equal. An OUTDIR whose embedding is stored in fp32 has no fp16 table: refused.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def earlier_form(model):
    """The graph with the Gather reading the whole table's Cast (the form before the change); None when the graph
    does not gather from an fp16 table."""
    nodes = {n.name: n for n in model.graph.node}
    gather, cast = nodes.get("embed"), nodes.get("embed/to_fp32")
    table_cast = next((n for n in model.graph.node if n.op_type == "Cast" and n.input[0] == "embedding.weight"), None)
    if gather is None or cast is None or table_cast is None or gather.input[0] != "embedding.weight":
        return None
    gather.input[0] = table_cast.output[0]
    return model


def measure(graph: str, form: str) -> dict:
    import onnx

    from mq_deploy.backends.ort import OrtRunner

    model = onnx.load(graph)  # with its weights: the session gets the model in memory in both forms
    if form == "earlier" and earlier_form(model) is None:
        raise SystemExit(f"{graph}: the embedding is not gathered from an fp16 table")
    before = _rss_mb()
    runner = OrtRunner(model, threads=1)
    del model
    ids = (np.arange(64, dtype=np.int64) % 1000).reshape(1, 64)
    logits = runner.run({"input_ids": ids})["logits"]
    return {"form": form, "mb": round(_rss_mb() - before, 1), "logits_sum": float(logits.astype(np.float64).sum())}


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(measure(sys.argv[2], sys.argv[3])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--graph", default="model.portable.onnx")
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    graph = str(Path(a.outdir) / a.graph)
    rows = []
    for _ in range(a.repeat):
        for form in ("earlier", "now"):
            r = subprocess.run([sys.executable, __file__, "--child", graph, form], capture_output=True, text=True)
            if r.returncode:
                print(r.stderr.strip() or r.stdout.strip(), file=sys.stderr)
                return 1
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    for form in ("earlier", "now"):
        print(f"{form:8s} resident MB: " + ", ".join(str(r["mb"]) for r in rows if r["form"] == form))
    print("logits equal:", len({r["logits_sum"] for r in rows}) == 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
