"""Dump the plugin nodes of compiled OUTDIRs, with the values onnxruntime gives them on real text, for the GPU check of
the TensorRT plugins (plugin_check.py `nodes`). Runs on the CPU, where mq-deploy and onnxruntime are installed:

    python benchmarks/gpu/plugin_nodes.py OUTDIR [OUTDIR ...] -o .carry/nodes/nodes.npz [--batch 2] [--seq 300]

For each OUTDIR, model.onnx (the TensorRT flavour: SelectiveScan with int8 inputs straight from their QuantizeLinear
in quantized recipes, Hadamard) runs on `--batch` windows of `--seq` tokens of `--text` (a Vim OUTDIR: on the first
`--batch` Fashion-MNIST test images, as `mq-deploy validate` gives it); model.decode.onnx
(SelectiveStateUpdate) runs one step from the states model.prefill.onnx leaves after those windows. Each selected plugin
node is stored as its attributes (the fields TensorRT's ONNX parser would forward), its inputs exactly as the node
receives them (int8 where the graph feeds int8) and its outputs as onnxruntime computed them (the plugin nodes on
mq-deploy's CPU kernels). `--layers` picks which occurrences of each plugin in a graph (default: all).

File layout: `meta` is a JSON list, one entry a node ({"source", "node", "op", "fields", "kinds", "inputs",
"outputs"}); node k's arrays are `k.in0`, `k.in1`, ... and `k.out0`, ...
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
DEFAULT_TEXT = ROOT.parent / "shared" / "data" / "text" / "wikitext2_val_sample.jsonl"


def plugin_nodes(model, layers):
    """[(node, fields {name: value}, kinds {name: 'int' | 'float'})] of the selected occurrences of every plugin op."""
    from onnx import AttributeProto, helper

    from mq_deploy.ops.ort_kernels import PLUGIN_DOMAIN

    nodes = [n for n in model.graph.node if n.domain == PLUGIN_DOMAIN]
    picked = []
    for node in nodes:
        same = [n for n in nodes if n.op_type == node.op_type]
        if layers is not None and not any(same.index(node) == j % len(same) for j in layers if -len(same) <= j < len(same)):
            continue
        fields, kinds = {}, {}
        for a in node.attribute:
            if a.name in ("plugin_version", "plugin_namespace"):  # the parser reads these to find the creator
                continue
            if a.type not in (AttributeProto.INT, AttributeProto.FLOAT):
                raise SystemExit(f"{node.name}: attribute {a.name} is neither INT nor FLOAT")
            fields[a.name] = helper.get_attribute_value(a)
            kinds[a.name] = "int" if a.type == AttributeProto.INT else "float"
        picked.append((node, fields, kinds))
    return picked


def run_graph(path, feeds, nodes, initializers=()):
    from mq_deploy.backends.ort import OrtRunner

    names = [t for node, _, _ in nodes for t in list(node.input) + list(node.output) if t not in initializers]
    return OrtRunner(path, extra_outputs=names).run(feeds)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdirs", nargs="+", metavar="OUTDIR", help="mq-deploy compile output directories (language models or Vim)")
    ap.add_argument("-o", "--output", required=True, help="the .npz to write")
    ap.add_argument("--batch", type=int, default=2, help="windows of text a run (default 2)")
    ap.add_argument("--seq", type=int, default=300, help="tokens a window (default 300)")
    ap.add_argument("--text", default=str(DEFAULT_TEXT), help="text to tokenize (.jsonl with 'text' rows, or plain text)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer.json (default: each OUTDIR's)")
    ap.add_argument("--layers", default=None, help="comma-separated occurrences of each plugin to keep, e.g. 0,-1 "
                    "(default: all)")
    args = ap.parse_args(argv)
    from onnx import load

    from mq_deploy.eval.data import read_text
    from mq_deploy.eval.tokenizer import TextTokenizer

    layers = None if args.layers is None else [int(s) for s in args.layers.split(",")]
    text = read_text(args.text)
    meta, arrays = [], {}

    def store(source, nodes, values):
        for node, fields, kinds in nodes:
            k = len(meta)
            meta.append(dict(source=source, node=node.name, op=node.op_type, fields=fields, kinds=kinds,
                             inputs=list(node.input), outputs=list(node.output)))
            for j, t in enumerate(node.input):
                arrays[f"{k}.in{j}"] = values[t] if t in values else initializers[t]
            for j, t in enumerate(node.output):
                arrays[f"{k}.out{j}"] = values[t]
            print(f"  {node.op_type:21s} {node.name:40s} inputs " +
                  " ".join(f"{arrays[f'{k}.in{j}'].dtype}{list(arrays[f'{k}.in{j}'].shape)}" for j in range(len(node.input))))

    for outdir in map(Path, args.outdirs):
        if not (outdir / "model.onnx").is_file():
            raise SystemExit(f"plugin_nodes: {outdir} has no model.onnx (pass mq-deploy compile output directories)")
        man = json.loads((outdir / "manifest.json").read_text()) if (outdir / "manifest.json").is_file() else {}
        if man.get("model", {}).get("family") == "vim":  # a Vision Mamba OUTDIR: the images validate gives it
            from mq_deploy.validate import _vim_images

            c = man["model"]["config"]
            feeds, what = _vim_images(args.batch, (c["channels"], c["img_size"], c["img_size"]), 0)
            print(f"{outdir}: {what}")
            graphs = (("model.onnx", feeds),)
        else:
            tok = TextTokenizer(args.tokenizer or outdir / "tokenizer.json")
            ids = np.asarray(tok.encode(text)[: args.batch * args.seq + 1], np.int64)
            if ids.size < args.batch * args.seq + 1:
                raise SystemExit(f"{args.text}: fewer than {args.batch * args.seq + 1} tokens")
            prompt, next_tok = ids[:-1].reshape(args.batch, args.seq), ids[args.seq::args.seq][: args.batch].reshape(-1, 1)
            graphs = (("model.onnx", {"input_ids": prompt}), ("model.decode.onnx", None))
        for graph, feeds in graphs:
            path = outdir / graph
            if not path.is_file():
                continue
            from onnx import numpy_helper

            model = load(str(path))
            initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
            nodes = plugin_nodes(model, layers)
            if not nodes:
                continue
            if feeds is None:  # one decode step from the prefill graph's states
                pre = run_graph(outdir / "model.prefill.onnx", {"input_ids": prompt, "attention_mask": np.ones_like(prompt)}, [])
                feeds = {"input_ids": next_tok, **{n: v for n, v in pre.items() if n != "logits"}}
            print(f"{outdir}/{graph}: {len(nodes)} plugin nodes")
            store(f"{outdir.name}/{graph}", nodes, run_graph(path, feeds, nodes, initializers))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, out)
    print(f"wrote {out}: {len(meta)} nodes, {out.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    from mq_deploy.errors import UserError

    try:
        main()
    except UserError as e:
        raise SystemExit(f"plugin_nodes: {e}") from None
