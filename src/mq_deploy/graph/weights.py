"""One weights file shared by every graph of an output directory.

model.onnx, model.portable.onnx and the four stateful graphs carry the same weights; saved
self-contained, a 130m-shape model wrote ~3 GB. `WeightStore.save` writes each graph with its
initializers as ONNX external data (`location`, `offset`, `length`) into one `weights.bin`, storing
identical tensors once. onnxruntime, TensorRT's ONNX parser and `onnx.load` resolve the file relative
to the .onnx file, so the directory moves as a whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from pathlib import Path
from typing import Iterator

import onnx

from ..errors import InternalError

MIN_EXTERNAL_BYTES = 1024  # smaller tensors (scales, shapes) stay inside the graph
ALIGN = 64


class WeightStore:
    def __init__(self, directory: Path, name: str = "weights.bin"):
        self.path = Path(directory) / name
        self.name = name
        self._index: dict[tuple, tuple[int, int]] = {}
        self._f = open(self.path, "wb")
        self._size = 0

    def _put(self, t: onnx.TensorProto) -> tuple[int, int]:
        raw = t.raw_data
        key = (t.data_type, tuple(t.dims), hashlib.blake2b(raw, digest_size=20).digest())
        hit = self._index.get(key)
        if hit is None:
            pad = (-self._size) % ALIGN
            if pad:
                self._f.write(b"\0" * pad)
                self._size += pad
            hit = (self._size, len(raw))
            self._f.write(raw)
            self._size += len(raw)
            self._index[key] = hit
        return hit

    def save(self, model: onnx.ModelProto, path: Path) -> None:
        """Write `model` to `path` with its large initializers in the shared file; `model` is unchanged."""
        Path(path).write_bytes(self.externalize(model).SerializeToString())

    def externalize(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """A copy of `model` whose large initializers are references into the shared file, written there now (ones
        that are references into it already stay so): the graph without its weights, for onnxruntime to map them
        (`backends.ort.external_weights`) and to save later."""
        from onnx.external_data_helper import uses_external_data

        out = onnx.ModelProto()
        out.ir_version, out.producer_name, out.producer_version = (model.ir_version, model.producer_name,
                                                                   model.producer_version)
        out.domain, out.model_version, out.doc_string = model.domain, model.model_version, model.doc_string
        out.opset_import.extend(model.opset_import)
        out.metadata_props.extend(model.metadata_props)
        out.functions.extend(model.functions)
        g, og = model.graph, out.graph
        og.name, og.doc_string = g.name, g.doc_string
        og.node.extend(g.node)
        og.input.extend(g.input)
        og.output.extend(g.output)
        og.value_info.extend(g.value_info)
        og.sparse_initializer.extend(g.sparse_initializer)
        for t in g.initializer:
            if uses_external_data(t):
                where = {e.key: e.value for e in t.external_data}.get("location")
                if where != self.name:
                    raise InternalError(f"initializer {t.name} is external data in {where}, not in {self.name}")
                og.initializer.append(t)
            elif t.HasField("raw_data") and len(t.raw_data) >= MIN_EXTERNAL_BYTES:
                off, n = self._put(t)
                e = og.initializer.add()
                e.name, e.data_type = t.name, t.data_type
                e.dims.extend(t.dims)
                e.data_location = onnx.TensorProto.EXTERNAL
                for k, v in (("location", self.name), ("offset", str(off)), ("length", str(n))):
                    kv = e.external_data.add()
                    kv.key, kv.value = k, v
            else:
                og.initializer.append(t)
        self._f.flush()
        return out

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextlib.contextmanager
def scratch_weights(model: onnx.ModelProto, scratch: Path, prefix: str) -> Iterator[tuple[onnx.ModelProto, Path]]:
    """(`model` without its weights, the folder of the file they were written to): a temporary folder in `scratch`,
    removed on exit, for a graph that is run but not kept (calibration, the derivation check); run it with
    `backends.ort.external_weights(folder)` or `OrtRunner(..., weights_dir=folder)`."""
    with tempfile.TemporaryDirectory(prefix=prefix, dir=scratch) as folder:
        with WeightStore(Path(folder)) as store:
            light = store.externalize(model)
        yield light, Path(folder)
