"""onnxruntime runner for both ONNX flavours (plugin nodes run on the package's CPU kernels)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import onnx

from ..errors import UserError
from ..ops.ort_kernels import PLUGIN_DOMAIN


INT8_FUSION_ENV = "MQ_DEPLOY_ORT_INT8_FUSION"
_VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


def int8_fusion_exact(machine: Optional[str] = None, cpu_flags: Optional[set] = None) -> bool:
    """Whether onnxruntime may fuse the graphs' QuantizeLinear/DequantizeLinear pairs into its int8 kernels here.

    Those kernels compute a QDQ graph exactly (int32 accumulation) only where the CPU multiplies int8 by int8 without
    an int16 intermediate: on x86-64 that needs VNNI (AVX-512 VNNI, AVX-VNNI or AMX). Without it onnxruntime's
    u8×s8 kernel (VPMADDUBSW) saturates pairs of products at int16, a documented onnxruntime limitation: on an
    AVX2-only AMD EPYC the W8A8 logits of the test models then moved by a median 4 % relative, far outside the
    quantization the graph describes. Elsewhere (other CPUs, unknown flags) the QDQ nodes run as written, in fp32.
    MQ_DEPLOY_ORT_INT8_FUSION=1 / 0 forces either."""
    forced = os.environ.get(INT8_FUSION_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine not in ("x86_64", "amd64"):
        return False
    if cpu_flags is None:
        cpu_flags = _cpu_flags()
    return bool(_VNNI_FLAGS & cpu_flags)


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _session_options(threads: Optional[int], has_plugins: bool):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    # INT4 DequantizeLinear→MatMul fuses into MatMulNBits; its default accuracy level quantizes the
    # activations to int8 on the fly, which is not the graph's semantics. Level 0 computes in fp32.
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    if not int8_fusion_exact():  # int8 kernels that would not compute what the graph says (see int8_fusion_exact)
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    if threads:
        so.intra_op_num_threads = threads
    if has_plugins:
        from ..ops.ort_kernels import get_library_path

        so.register_custom_ops_library(get_library_path())
    return so


class OrtRunner:
    """Run an mq-deploy ONNX graph in onnxruntime: `runner(input_ids) -> logits`.

    Plugin nodes (model.onnx) run on the package's CPU kernels: by default called directly between
    onnxruntime segments of the graph (`plugins="native"`, backends/hybrid.py); `plugins="extensions"`
    keeps one onnxruntime session with the kernels registered through onnxruntime-extensions (slower:
    it copies tensors through Python lists), for tools that need a single session (polygraphy)."""

    def __init__(self, model: str | Path | onnx.ModelProto, providers: Sequence[str] = ("CPUExecutionProvider",),
                 threads: Optional[int] = None, extra_outputs: Sequence[str] = (), only_extra: bool = False,
                 plugins: str = "native"):
        import onnxruntime as ort

        from ..ops.ort_kernels import prepare_plugin_model

        if isinstance(model, (str, Path)):
            path = Path(model)
            if not path.is_file():
                raise UserError(f"ONNX file not found: {path}")
            try:
                proto = onnx.load(str(path))
            except Exception as e:
                raise UserError(f"could not read ONNX file {path}: "
                                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        else:
            proto = model
        inits = {t.name for t in proto.graph.initializer}  # (older exporters list initializers as inputs too)
        self.inputs = {i.name: _dims(i) for i in proto.graph.input if i.name not in inits}  # name -> [int | str | None]
        outs = [] if only_extra else [o.name for o in proto.graph.output]
        outs += [n for n in extra_outputs if n not in outs]
        self.output_names = outs
        self.outputs = {o.name: _dims(o) for o in proto.graph.output if o.name in outs}
        self.outputs.update({n: None for n in outs if n not in self.outputs})
        self.session, self._hybrid = None, None
        from .hybrid import has_subgraphs

        if plugins == "native" and any(n.domain == PLUGIN_DOMAIN for n in proto.graph.node) and not has_subgraphs(proto):
            from .hybrid import HybridSession

            so = _session_options(threads, False)
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # kernels run between segments
            so.enable_cpu_mem_arena = False  # one arena per segment would each keep its peak
            try:  # the requested outputs are picked from the segments: no copy of the graph with them marked
                self._hybrid = HybridSession(
                    proto, lambda m: ort.InferenceSession(m.SerializeToString(), so, providers=list(providers)), outs)
            except UserError:
                raise
            except Exception as e:
                raise UserError(f"onnxruntime could not load the model: {e}") from None
            return
        if extra_outputs:
            proto = _with_outputs(proto, extra_outputs, only_extra)
        proto, has_plugins = prepare_plugin_model(proto)
        so = _session_options(threads, has_plugins)
        try:
            self.session = ort.InferenceSession(proto.SerializeToString(), so, providers=list(providers))
        except Exception as e:
            raise UserError(f"onnxruntime could not load the model: {e}") from None
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict) -> dict[str, np.ndarray]:
        if self._hybrid is not None:
            return self._hybrid.run(feeds)
        outs = self.session.run(None, feeds)
        return dict(zip(self.output_names, outs))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """logits of the graph's one input: input_ids (int64 [B, L]) of a language model, pixel_values (float32
        [B, C, H, W]) of a Vim."""
        if "pixel_values" in self.inputs:
            return self.run({"pixel_values": np.asarray(x, dtype=np.float32)})["logits"]
        return self.run({"input_ids": np.asarray(x, dtype=np.int64)})["logits"]


def _with_outputs(model: onnx.ModelProto, names: Sequence[str], only: bool = False) -> onnx.ModelProto:
    """Copy of `model` with intermediate tensors `names` added as graph outputs (for calibration).

    With `only`, they replace the graph's outputs, so onnxruntime prunes what they do not need
    (for a language model: the final norm and the vocabulary projection)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if only:
        del m.graph.output[:]
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    return m


def _dims(vi) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in vi.type.tensor_type.shape.dim]


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
