"""Run a serialized TensorRT engine with TensorRT's own runtime API, torch CUDA tensors as its buffers.

    eng = TrtEngine("out/model.decode.engine", "build/plugins/libmq_trt_plugins.so")
    out = eng.run({"input_ids": ids, **states})   # {output name: torch CUDA tensor}

`run` takes numpy arrays (copied to the GPU in the engine's input type) or torch tensors already on the GPU (used in
place, converted only if their type differs), so a caller can hand one call's outputs to the next without a trip
through host memory: `mq-deploy generate --flavour tensorrt` keeps the layers' states on the GPU between decode
steps. What TensorRT needs that is absent (the Python package, a CUDA build of torch, an engine this TensorRT can
read) is one UserError each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .. import signals
from ..errors import UserError


def cuda_torch(why: str, alternative: str = ""):
    """torch, where it has a usable GPU; else a UserError saying what `why` needs (and `alternative`: another way,
    e.g. "pip install polygraphy")."""
    try:
        import torch
    except ImportError:
        raise UserError(f"{why} needs torch with CUDA{'; ' + alternative if alternative else ''}") from None
    if not torch.cuda.is_available():  # CPU-only torch (the docker images') would fail at .cuda()
        raise UserError(f"{why} needs torch with CUDA, and torch {torch.__version__} has no usable GPU: "
                        f"{alternative + ', or ' if alternative else ''}install a CUDA build of torch")
    return torch


class TrtEngine:
    """One deserialized engine and an execution context of it (TensorRT 10 / 11 name-based I/O)."""

    def __init__(self, engine_path: str | Path, plugin_lib: Optional[str], why: str = "running a TensorRT engine",
                 alternative: str = "", smaller: str = "pass a smaller input", stream=None):
        """`stream`: a torch.cuda.Stream to run on (default: a new one; TensorRT warns on, and synchronizes around,
        the legacy default stream)."""
        from .. import trt as mtrt

        self.path, self.smaller = str(engine_path), smaller
        trt = mtrt.import_tensorrt()
        self.torch = cuda_torch(why, alternative)
        logger = mtrt.trt_logger(trt)
        mtrt.load_plugins(trt, logger, plugin_lib)
        engine = trt.Runtime(logger).deserialize_cuda_engine(Path(self.path).read_bytes())
        signals.raise_pending()  # (a Ctrl-C while TensorRT logged on this thread: see signals.py)
        if engine is None:
            raise UserError(f"TensorRT could not deserialize {self.path} (built with another TensorRT version or GPU?)")
        self.engine, self.ctx = engine, engine.create_execution_context()
        if self.ctx is None:
            raise UserError(f"TensorRT could not create an execution context of {self.path} (out of device memory?)")
        self.stream = stream if stream is not None else self.torch.cuda.Stream()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.dtypes = {n: trt.nptype(engine.get_tensor_dtype(n)) for n in names}  # numpy types
        self.inputs = [n for n in names if is_input[n]]
        self.outputs = [n for n in names if not is_input[n]]

    def shape(self, name: str) -> tuple:
        """The engine's shape of a tensor (-1 for a dynamic dimension)."""
        return tuple(self.engine.get_tensor_shape(name))

    def _torch_dtype(self, name: str):
        return self.torch.from_numpy(np.empty(0, self.dtypes[name])).dtype

    def _outside(self, name: str, shape: tuple) -> UserError:
        lo, _, hi = (tuple(d) for d in self.engine.get_tensor_profile_shape(name, 0))
        which = ("--max-shapes" if any(s > h for s, h in zip(shape, hi)) else "--min-shapes") + " covering it"
        return UserError(f"{name} {shape} is outside the engine's optimization profile ({self.path}: {lo} to {hi}); "
                         f"rebuild with {which} or {self.smaller}")

    def run(self, feed: dict) -> dict:
        """{output: torch CUDA tensor} for `feed` {input: numpy array or torch tensor}; every input of the engine
        must be fed (extra entries are ignored). Outputs are new tensors each call (never an input's memory), written
        on the engine's stream, which is synchronized before this returns."""
        torch, ctx, stream = self.torch, self.ctx, self.stream
        stream.wait_stream(torch.cuda.current_stream())  # inputs made on the caller's stream
        bufs = {}
        with torch.cuda.stream(stream):
            for n in self.inputs:
                if n not in feed:
                    raise UserError(f"the engine's input {n!r} is not {', '.join(feed)}: was {self.path} built from "
                                    "this OUTDIR and graph?")
                x = feed[n]
                if isinstance(x, torch.Tensor):  # on the device already: used where it is (a host one is copied)
                    t = x.to(self._torch_dtype(n)).cuda().contiguous()
                else:
                    t = torch.from_numpy(np.ascontiguousarray(x, dtype=self.dtypes[n])).cuda()
                if t.is_cuda and t.data_ptr() % 256:  # TensorRT wants 256-byte aligned buffers (an offset view)
                    t = t.clone()
                bufs[n] = t
                if not ctx.set_input_shape(n, tuple(t.shape)):
                    raise self._outside(n, tuple(t.shape))
            for n in self.outputs:
                bufs[n] = torch.empty(tuple(ctx.get_tensor_shape(n)), dtype=self._torch_dtype(n), device="cuda")
            for n, t in bufs.items():
                if not ctx.set_tensor_address(n, t.data_ptr()):
                    raise UserError(f"TensorRT refused the buffer of {n} for {self.path} (see the log above)")
            if not ctx.execute_async_v3(stream.cuda_stream):
                raise UserError(f"TensorRT failed to run {self.path} (see the log above)")
        stream.synchronize()
        signals.raise_pending()
        return {n: bufs[n] for n in self.outputs}


__all__ = ["TrtEngine", "cuda_torch"]
