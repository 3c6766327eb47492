"""`mq-deploy eval MODEL --task fashion_mnist`: top-1 of a Vim checkpoint directory (fp32 portable
graph in onnxruntime), a Vim .onnx file, or a compile OUTDIR (its model.portable.onnx)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import UserError
from ..outdir import read_onnx
from .data import evaluate_top1

TASK = "fashion_mnist"


def resolve_vision_target(target: Optional[str], threads: Optional[int] = None):
    """MODEL → (logits_fn, channels, image size, description)."""
    from ..graph.lower import lower_selective_scan
    from .graph import INPUT, VimRunner, build_vim_graph
    from .model import is_vim_dir, load_vim

    if target is None:
        raise UserError(f"task {TASK} needs a Vim model: a checkpoint directory, an .onnx file or a compile OUTDIR")
    p = Path(target)
    if p.is_dir() and is_vim_dir(p):
        m = load_vim(p)
        return (VimRunner(lower_selective_scan(build_vim_graph(m)), threads=threads), m.config.channels,
                m.config.img_size, f"onnxruntime(fp32):{p}")
    if p.is_dir() and (p / "manifest.json").is_file():  # a compile OUTDIR: its manifest's checks, as for a language model
        from ..outdir import missing_file, read_manifest
        from ..trt import manifest_input

        manifest = read_manifest(p)  # (format, and each graph's size against what the compile wrote)
        if manifest_input(manifest)[0] != INPUT:
            raise UserError(f"{p} is a language-model OUTDIR: evaluate it with a text task (--task wikitext2, "
                            "hellaswag, ...), not fashion_mnist")
        if not (p / "model.portable.onnx").is_file():
            raise missing_file(p, manifest, "model.portable.onnx", "the graph eval runs")
        p = p / "model.portable.onnx"
    elif p.is_dir() and any((p / g).is_file() for g in ("model.portable.onnx", "model.onnx")):
        g = next(g for g in ("model.portable.onnx", "model.onnx") if (p / g).is_file())
        raise UserError(f"{p} holds {g} but no manifest.json: copy it from the directory `mq-deploy compile` wrote, "
                        f"or evaluate the graph itself ({p / g})")
    if p.is_file() and p.suffix == ".onnx":
        g = read_onnx(p)
        ins = {i.name: i for i in g.graph.input}
        if INPUT not in ins:
            raise UserError(f"{p} has no '{INPUT}' input: it is not a Vim graph")
        dims = ins[INPUT].type.tensor_type.shape.dim
        channels, size = dims[1].dim_value, dims[2].dim_value or None
        return VimRunner(g, threads=threads), channels, size, f"onnxruntime:{p}"
    raise UserError(f"{p} is not a Vim checkpoint directory (config.json with model_type \"vim\"), "
                    "a Vim .onnx file or a compile OUTDIR")


def run_fashion_mnist(target: Optional[str], data: Optional[str] = None, limit: Optional[int] = None,
                      batch_size: int = 64, threads: Optional[int] = None, progress: bool = True) -> dict:
    fn, channels, size, desc = resolve_vision_target(target, threads)
    r = evaluate_top1(fn, channels, limit, batch_size=batch_size, path=data, progress=progress, img_size=size)
    r.pop("predictions")
    r["model"] = desc
    return r
