"""`mq-deploy eval MODEL --task fashion_mnist`: top-1 of a Vim checkpoint directory (fp32 portable
graph in onnxruntime), a Vim .onnx file, or a compile OUTDIR (its model.portable.onnx)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import UserError
from ..outdir import eval_graph, read_onnx
from .data import evaluate_top1

TASK = "fashion_mnist"


def resolve_vision_target(target: Optional[str], threads: Optional[int] = None, log=lambda s: None):
    """MODEL → (logits_fn, channels, image size, description); `log`: an OUTDIR's hash check."""
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
    graph = eval_graph(p, INPUT, UserError(f"{p} is a language-model OUTDIR: evaluate it with a text task (--task "
                                           "wikitext2, hellaswag, ...), not fashion_mnist"), log)
    if graph is not None:  # a compile OUTDIR
        p = graph
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
                      batch_size: int = 64, threads: Optional[int] = None, progress: bool = True,
                      log=lambda s: None) -> dict:
    fn, channels, size, desc = resolve_vision_target(target, threads, log)
    r = evaluate_top1(fn, channels, limit, batch_size=batch_size, path=data, progress=progress, img_size=size)
    r.pop("predictions")
    r["model"] = desc
    return r
