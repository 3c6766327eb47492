"""Shared test utilities: relative max error, writing checkpoints in both families' formats, a small W8A8 OUTDIR."""

import json
from pathlib import Path

import numpy as np

from mq_deploy.backends.torch_hf import build_hf_model, state_dict
from mq_deploy.model import MambaModel


# the IR version of test graphs made with onnx.helper (whose default is the installed onnx's newest, which an older
# onnxruntime refuses: onnx 1.23's 14 against onnxruntime 1.23's 11); the graphs mq-deploy writes say theirs
IR_VERSION = 10


def rel_err(ref: np.ndarray, x: np.ndarray) -> float:
    """max |ref - x| / max |ref| (the issue's 1e-4 × max|logit| criterion)."""
    return float(np.abs(ref - x).max() / np.abs(ref).max())


def is_fp16_valued(a: np.ndarray) -> bool:
    """Every value of `a` is an fp16 number (a tensor rounded for deployment in fp16)."""
    return np.array_equal(a, np.asarray(a).astype(np.float16).astype(np.float32))


def write_hf_checkpoint(model: MambaModel, path: Path, dtype=None) -> Path:
    import torch

    hf = build_hf_model(model)
    if dtype is not None:
        hf = hf.to(dtype)
    hf.save_pretrained(path, safe_serialization=True)
    return path


def write_state_spaces_checkpoint(model: MambaModel, path: Path) -> Path:
    import torch

    c = model.config
    path.mkdir(parents=True, exist_ok=True)
    sd = state_dict(model)
    sd["backbone.embedding.weight"] = sd.pop("backbone.embeddings.weight")
    torch.save(sd, path / "pytorch_model.bin")
    cfg = {"d_model": c.d_model, "n_layer": c.n_layer, "vocab_size": c.vocab_size,
           "ssm_cfg": {"d_state": c.d_state, "d_conv": c.d_conv, "expand": c.expand},
           "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8,
           "tie_embeddings": c.tie_embeddings}
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def compile_small_w8(root: Path, name: str = "w8") -> Path:
    """The bundled model compiled with mambaquant-w8a8 into root/name, calibrated on 2 windows of 32 tokens of a
    repeated sentence (seconds: for tests of the graphs' form, not of accuracy)."""
    from mq_deploy.compile import compile_model

    calib = root / "calib.txt"
    calib.write_text(" ".join(["The quick brown fox jumps over the lazy dog, then naps in the sun."] * 100))
    compile_model(None, "mambaquant-w8a8", root / name, calib=str(calib), calib_samples=2, calib_seq_len=32,
                  progress=False, report_passes=False)
    return root / name


def as_compiled(outdir: Path, manifest: dict, *names: str) -> dict:
    """`manifest` with the size and sha256 of OUTDIR's files `names` as they are now: what a compile that wrote them
    would list (a test's stand-in for a compiler bug, not a corrupted copy, which commands refuse)."""
    from mq_deploy.outdir import sha256_file

    for name in names:
        manifest["files"][name].update(bytes=(outdir / name).stat().st_size, sha256=sha256_file(outdir / name))
    return manifest


def cuda_on_cpu(monkeypatch, torch, stream_id: int = 7) -> dict:
    """torch's CUDA calls that backends/trt_engine.py makes, kept on the CPU (tensors stay host tensors, so a fake
    TensorRT engine can read and write them at their addresses): `.cuda()` is the identity but records the tensors it
    saw (the returned dict's "cuda"), `torch.empty(device=...)` allocates on the CPU, and the stream (`cuda_stream`
    `stream_id`) records its use ("synchronized", "waited")."""
    seen = {"cuda": [], "synchronized": 0, "waited": 0}

    def cuda(t):
        seen["cuda"].append(t)
        return t

    class Stream:
        cuda_stream = stream_id

        def synchronize(self):
            seen["synchronized"] += 1

        def wait_stream(self, other):
            seen["waited"] += 1

    class StreamContext:
        def __init__(self, s):
            seen["stream"] = s.cuda_stream

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    empty = torch.empty
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.Tensor, "cuda", cuda)
    monkeypatch.setattr(torch, "empty", lambda *a, device=None, **k: empty(*a, **k))
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", StreamContext)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: Stream())
    return seen


class StopAt:
    """A compare's prepare function (`module.attr`) wrapped: the recipes it was asked for, in `prepared`, and
    Ctrl-C (KeyboardInterrupt) when it reaches recipe `recipe` (None: never)."""

    def __init__(self, monkeypatch, module, attr: str, recipe=None):
        self.prepared, self.recipe, real = [], recipe, getattr(module, attr)

        def prepare(model, rec, *a, **k):
            self.prepared.append(rec.name)
            if rec.name == self.recipe:
                raise KeyboardInterrupt
            return real(model, rec, *a, **k)

        monkeypatch.setattr(module, attr, prepare)
