"""TensorRT engine build and the equivalent command lines (library code for `mq-deploy build` / `validate`).

TensorRT is imported lazily: everything else in mq-deploy works without it, and its absence is one
UserError naming what to install. Explicit quantization: the QDQ nodes in model.onnx carry the scales,
so INT8 is a builder flag, not a calibrator.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from typing import Optional

from .errors import UserError

INSTALL_HINT = ("TensorRT's Python package is not installed. Install it with "
                "`pip install tensorrt` (x86-64, CUDA 12/13; NVIDIA's index), use the NGC container "
                "nvcr.io/nvidia/tensorrt, or on Jetson the JetPack 6 package `python3-libnvinfer` "
                "(TensorRT 10.3). Then build the plugins: `cmake -S plugins -B build/plugins "
                "-DTENSORRT_ROOT=<tensorrt> && cmake --build build/plugins`.")


@dataclass(frozen=True)
class Shapes:
    """min/opt/max [batch, sequence] of input_ids for the optimization profile."""
    min: tuple[int, int] = (1, 1)
    opt: tuple[int, int] = (1, 512)
    max: tuple[int, int] = (8, 4096)

    def __post_init__(self):
        for a, b in ((self.min, self.opt), (self.opt, self.max)):
            if len(a) != 2 or len(b) != 2 or any(x < 1 for x in a + b) or a[0] > b[0] or a[1] > b[1]:
                raise UserError(f"shapes must be [batch, sequence] with min <= opt <= max, got {self}")


def import_tensorrt():
    try:
        import tensorrt  # noqa: PLC0415
    except ImportError as e:
        raise UserError(f"{INSTALL_HINT} (import tensorrt failed: {e})") from None
    return tensorrt


def check_plugin_lib(plugin_lib: Optional[str]) -> Optional[str]:
    if plugin_lib is None:
        return None
    if not os.path.isfile(plugin_lib):
        raise UserError(f"plugin library {plugin_lib!r} not found: build it with `cmake -S plugins -B build/plugins "
                        "-DTENSORRT_ROOT=<tensorrt> && cmake --build build/plugins` (it is "
                        "build/plugins/libmq_trt_plugins.so)")
    return os.path.abspath(plugin_lib)


def build_engine(onnx_path: str, out_path: str, plugin_lib: Optional[str] = None, int8: bool = False,
                 fp16: bool = False, shapes: Shapes = Shapes(), timing_cache: Optional[str] = None,
                 input_name: str = "input_ids", workspace_gib: float = 4.0) -> str:
    """Parse onnx_path, load the plugin library, build and write a serialized engine to out_path."""
    if not os.path.isfile(onnx_path):
        raise UserError(f"ONNX model {onnx_path!r} not found (run `mq-deploy compile` first)")
    lib = check_plugin_lib(plugin_lib)
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    if lib is not None:
        trt.init_libnvinfer_plugins(logger, "")
        if trt.get_plugin_registry().load_library(lib) is None:
            raise UserError(f"TensorRT could not load the plugin library {lib!r} (built for another TensorRT/CUDA?)")
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT could not parse {onnx_path}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, shapes.min, shapes.opt, shapes.max)
    config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        data = open(timing_cache, "rb").read() if os.path.isfile(timing_cache) else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=False)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise UserError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    with open(out_path, "wb") as fh:
        fh.write(engine)
    if cache is not None:
        with open(timing_cache, "wb") as fh:
            fh.write(cache.serialize())
    return out_path


def _shape_arg(name: str, s: tuple[int, int]) -> str:
    return f"{name}:{s[0]}x{s[1]}"


def command_lines(onnx_path: str, engine_path: str, plugin_lib: str, int8: bool = False, fp16: bool = False,
                  shapes: Shapes = Shapes(), input_name: str = "input_ids",
                  timing_cache: Optional[str] = None) -> dict[str, str]:
    """The trtexec build and polygraphy comparison command lines equivalent to build_engine / validate."""
    q = shlex.quote
    trtexec = [f"trtexec --onnx={q(onnx_path)} --saveEngine={q(engine_path)} --dynamicPlugins={q(plugin_lib)}",
               f"--minShapes={_shape_arg(input_name, shapes.min)} --optShapes={_shape_arg(input_name, shapes.opt)} "
               f"--maxShapes={_shape_arg(input_name, shapes.max)}"]
    if int8:
        trtexec.append("--int8")
    if fp16:
        trtexec.append("--fp16")
    if timing_cache:
        trtexec.append(f"--timingCacheFile={q(timing_cache)}")
    poly = [f"polygraphy run {q(onnx_path)} --trt --onnxrt --plugins {q(plugin_lib)}",
            f"--trt-min-shapes {_shape_arg(input_name, shapes.min)} --trt-opt-shapes {_shape_arg(input_name, shapes.opt)} "
            f"--trt-max-shapes {_shape_arg(input_name, shapes.max)}",
            f"--input-shapes {_shape_arg(input_name, shapes.opt)}"]
    if int8:
        poly.append("--int8")
    if fp16:
        poly.append("--fp16")
    poly.append("--atol 1e-2 --rtol 1e-2")
    return {"trtexec": " ".join(trtexec), "polygraphy": " ".join(poly)}
