"""onnxruntime runner for both ONNX flavours (plugin nodes run on the package's CPU kernels).

Weights kept as ONNX external data (an OUTDIR's weights.bin, or a file the compile writes first: `external_weights`)
are not read into Python: the sessions get the graph without them and onnxruntime maps the file (pages the kernel can
drop and read again; only the MatMul weights' packed copies are the session's own memory), where a graph handed over
with its weights inside costs its bytes, onnxruntime's parsed copy and its tensors.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import onnx

from ..errors import InternalError, UserError
from ..outdir import external_files
from ..ops.ort_kernels import PLUGIN_DOMAIN


INT8_FUSION_ENV = "MQ_DEPLOY_ORT_INT8_FUSION"
_VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


def int8_fusion_exact(machine: Optional[str] = None, cpu_flags: Optional[set] = None,
                      probe: Optional[bool] = None) -> bool:
    """Whether onnxruntime may fuse the graphs' QuantizeLinear/DequantizeLinear pairs into its int8 kernels here.

    Those kernels compute a QDQ graph exactly (int32 accumulation) only where the CPU multiplies int8 by int8 without
    an int16 intermediate: on x86-64 that needs VNNI (AVX-512 VNNI, AVX-VNNI or AMX). Without it onnxruntime's
    u8×s8 kernel (VPMADDUBSW) saturates pairs of products at int16, a documented onnxruntime limitation: on an
    AVX2-only AMD EPYC the W8A8 logits of the test models then moved by a median 4 % relative, far outside the
    quantization the graph describes. Elsewhere (other CPUs, unknown flags) the QDQ nodes run as written, in fp32.
    Where the flags allow it, the installed onnxruntime must also pass `_fusion_probe` (by default; `probe`: whether
    to run it): onnxruntime 1.23.2 on an AMX CPU returned garbage for some shapes (N 24). MQ_DEPLOY_ORT_INT8_FUSION=1
    / 0 forces either."""
    forced = os.environ.get(INT8_FUSION_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine not in ("x86_64", "amd64"):
        return False
    if cpu_flags is None:
        cpu_flags = _cpu_flags()
    if not _VNNI_FLAGS & cpu_flags:
        return False
    return _fusion_probe() if probe is None or probe else True


# (M, K, N) of the probe's MatMuls: rows of one token and of several tile widths, inner sizes below / above / off a
# kernel's block, and output widths that are and are not multiples of 16 (1.23.2's failures: N 24 from M 16 on)
_PROBE_SHAPES = tuple((m, k, n) for m in (1, 17, 33) for k in (8, 48, 96) for n in (8, 24, 40, 64))


def _probe_model() -> tuple[bytes, dict]:
    """The probe's graph and inputs: a QuantizeLinear → DequantizeLinear → MatMul branch for each of _PROBE_SHAPES,
    int8 weights and activations over their whole range (extremes included, where int16 pair sums would saturate);
    every second branch's weights scaled per output channel, every third branch's output quantized again, as the
    compiled graphs have them (onnxruntime fuses them into MatMulIntegerToFloat and QLinearMatMul)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.asarray(0.01, np.float32), "ws"),
             numpy_helper.from_array(np.asarray(0.05, np.float32), "xs"),
             numpy_helper.from_array(np.asarray(0, np.int8), "z")]
    nodes, ins, outs, feed = [], [], [], {}
    for i, (m, k, n) in enumerate(_PROBE_SHAPES):
        w = rng.integers(-128, 128, (k, n)).astype(np.int8)
        w[0, :], w[1, :] = -128, 127  # extremes: where a pair of products overflows int16
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        wq = ["ws", "z"]
        if i % 2:  # per output channel
            inits += [numpy_helper.from_array(rng.uniform(0.005, 0.02, n).astype(np.float32), f"ws{i}"),
                      numpy_helper.from_array(np.zeros(n, np.int8), f"wz{i}")]
            wq = [f"ws{i}", f"wz{i}"]
        y = f"y{i}" if i % 3 else f"m{i}"
        nodes += [helper.make_node("QuantizeLinear", [f"x{i}", "xs", "z"], [f"xq{i}"]),
                  helper.make_node("DequantizeLinear", [f"xq{i}", "xs", "z"], [f"xd{i}"]),
                  helper.make_node("DequantizeLinear", [f"w{i}", *wq], [f"wd{i}"], axis=1),
                  helper.make_node("MatMul", [f"xd{i}", f"wd{i}"], [y])]
        if not i % 3:  # quantized output (a step of 0.05·√k·6 keeps the codes in range)
            inits.append(numpy_helper.from_array(np.asarray(0.3 * np.sqrt(k), np.float32), f"ys{i}"))
            nodes += [helper.make_node("QuantizeLinear", [y, f"ys{i}", "z"], [f"yq{i}"]),
                      helper.make_node("DequantizeLinear", [f"yq{i}", f"ys{i}", "z"], [f"y{i}"])]
        ins.append(helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, [2, m, k]))
        outs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [2, m, n]))
        x = rng.uniform(-6.4, 6.35, (2, m, k)).astype(np.float32)
        x[..., :2] = (-6.4, 6.35)  # codes -128 and 127
        feed[f"x{i}"] = x
    model = helper.make_model(helper.make_graph(nodes, "int8_fusion_probe", ins, outs, inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model.SerializeToString(), feed


@functools.lru_cache(maxsize=None)
def _fusion_probe() -> bool:
    """Whether this onnxruntime's fused int8 MatMuls compute QDQ MatMuls as the graph says: _probe_model run with the
    fusion and with `session.disable_quant_qdq`; both must agree to fp32 rounding (a quantized output: to within one
    of its steps, where the two round a value on a boundary apart). Once a process (~30 ms); an error of the probe
    itself counts as a disagreement."""
    import onnxruntime as ort

    try:
        model, feed = _probe_model()
        got = []
        for disable in ("0", "1"):
            so = ort.SessionOptions()
            so.log_severity_level = 3
            so.add_session_config_entry("session.disable_quant_qdq", disable)
            got.append(ort.InferenceSession(model, so, providers=["CPUExecutionProvider"]).run(None, feed))
    except Exception:  # noqa: BLE001 - an onnxruntime that cannot run the probe: the QDQ nodes as written
        return False
    for i, (a, b) in enumerate(zip(*got)):
        if i % 3:
            if not np.abs(a - b).max() <= 1e-5 * max(float(np.abs(b).max()), 1e-30):
                return False
            continue
        steps = np.abs(a - b) / (0.3 * np.sqrt(_PROBE_SHAPES[i][1]))  # quantized: a boundary value a step apart, rarely
        if not (steps.max() <= 1.001 and np.mean(steps > 0.5) <= 0.01):
            return False
    return True


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


_EXTERNAL_DIR: list[Path] = []  # the folder of `external_weights`, innermost last


@contextlib.contextmanager
def external_weights(folder: str | Path) -> Iterator[None]:
    """Within this, graphs (ModelProtos) whose initializers are external data resolve them in `folder`, as a graph
    read from a file resolves them beside it (compile: graphs written to the OUTDIR's weights.bin before their
    checks run)."""
    _EXTERNAL_DIR.append(Path(folder))
    try:
        yield
    finally:
        _EXTERNAL_DIR.pop()


def _weights_dir(model: onnx.ModelProto, folder: Optional[Path]) -> Optional[Path]:
    """Where `model`'s external initializers are: `folder`, else the innermost `external_weights`; None for a graph
    that carries its weights."""
    if not external_files(model):
        return None
    folder = folder if folder is not None else (_EXTERNAL_DIR[-1] if _EXTERNAL_DIR else None)
    if folder is None:
        raise InternalError("a graph with external weights was given to onnxruntime without their folder")
    return Path(folder)


def _session_options(threads: Optional[int], has_plugins: bool, weights_dir: Optional[Path] = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if weights_dir is not None:
        # external data resolved there (a graph handed over as bytes has no folder of its own). Prepacking stays on
        # (MatMul weights copied into packed buffers: one copy, where a graph with its weights inside costs three at
        # the peak): without it MLAS sums in another order (~1e-6 relative), and calibration, compile's self-checks
        # and `validate --simulate` would no longer reproduce each other or earlier OUTDIRs
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(weights_dir))
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
                 plugins: str = "native", weights_dir: Optional[str | Path] = None):
        """`model`: an .onnx file (its external data stays in its file), or a graph; a graph whose initializers are
        external data finds them in `weights_dir`, else in the folder of the enclosing `external_weights`."""
        import onnxruntime as ort

        from ..ops.ort_kernels import prepare_plugin_model

        if isinstance(model, (str, Path)):
            from ..outdir import check_external_sizes, read_onnx, refuse_linked_weights

            proto = read_onnx(model, weights=False)  # (a missing weights file is named here)
            weights_dir = Path(model).parent
            refuse_linked_weights(weights_dir, external_files(proto))
            check_external_sizes(proto, Path(model))  # (a truncated one: onnxruntime's error is a C++ signature)
        else:
            proto = model
        weights_dir = _weights_dir(proto, None if weights_dir is None else Path(weights_dir))
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

            so = _session_options(threads, False, weights_dir)
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # kernels run between segments
            so.enable_cpu_mem_arena = False  # one arena per segment would each keep its peak
            try:  # the requested outputs are picked from the segments: no copy of the graph with them marked
                self._hybrid = HybridSession(
                    proto, lambda m: ort.InferenceSession(m.SerializeToString(), so, providers=list(providers)), outs,
                    weights_dir=weights_dir)
            except UserError:
                raise
            except Exception as e:
                raise UserError(f"onnxruntime could not load the model: {e}") from None
            return
        if extra_outputs:
            proto = _with_outputs(proto, extra_outputs, only_extra)
        proto, has_plugins = prepare_plugin_model(proto)
        so = _session_options(threads, has_plugins, weights_dir)
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
