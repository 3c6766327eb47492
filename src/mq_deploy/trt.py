"""TensorRT engine build and the equivalent command lines (library code for `mq-deploy build` / `validate`).

TensorRT is imported lazily: everything else in mq-deploy works without it, and its absence is one
UserError naming what to install. Explicit quantization: the QDQ nodes in model.onnx carry the scales,
so INT8 is a builder flag (TensorRT 10), not a calibrator; TensorRT 11 has no precision flags (its networks
are always strongly typed), so there the Q/DQ nodes alone decide, and the printed trtexec / polygraphy
lines follow the TensorRT version at hand. `strongly_typed` asks TensorRT 10 for that same network (creation flag
STRONGLY_TYPED, no precision flags); on TensorRT 11 it changes nothing.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, TextIO

from . import signals, trt_progress
from .errors import UserError
from .outdir import MARKER, atomic_write_bytes, check_writable, missing_file, read_manifest, read_onnx
from .ops import selective_scan as ss

PLUGINS_ENV = "MQ_DEPLOY_PLUGINS"  # default plugin library when --plugins is not given
MAIN_LIB = "libmq_trt_plugins.so"  # the plugin library for IPluginRegistry::loadLibrary (getCreators)
REGISTER_LIB = "libmq_trt_plugins_register.so"  # the same plugins, registered when dlopened (polygraphy --plugins)
LIB_PLACEHOLDER = f"<{MAIN_LIB}>"  # in command lines printed where no plugin library is named
PLUGIN_BUILD_HINT = ("build it with `cmake -S plugins -B build/plugins -DTENSORRT_ROOT=<tensorrt> && "
                     "cmake --build build/plugins` (it is build/plugins/libmq_trt_plugins.so)")
INSTALL_HINT = ("TensorRT's Python package is not installed. Install the version whose headers the plugins "
                "are built against, e.g. `pip install \"tensorrt-cu12==10.3.*\"` (x86-64; plain `tensorrt` is now "
                "TensorRT 11), use the NGC container nvcr.io/nvidia/tensorrt, or on Jetson JetPack 6.1 or 6.2's package "
                "`python3-libnvinfer` (TensorRT 10.3; JetPack 6.0 has TensorRT 8.6). Then build the plugins: `cmake "
                "-S plugins -B build/plugins -DTENSORRT_ROOT=<tensorrt> && cmake --build build/plugins`.")
#: the oldest TensorRT the plugins (IPluginV3, the getCreators entry point) and the builder calls are written for
MIN_TENSORRT_MAJOR = 10

_LOGGER: list = []  # [(tensorrt module, its one Logger)]: TensorRT wants one logger per process
_LOADED_PLUGIN_LIBS: set[str] = set()  # IPluginRegistry.load_library fails for a library already registered


BATCH, SEQUENCE = "batch", "sequence"  # the dynamic dimensions of every graph mq-deploy compile writes
GRAPHS = {"model": "model.onnx", "prefill": "model.prefill.onnx", "decode": "model.decode.onnx"}  # build --graph
#: the largest d_state the SelectiveScan / SelectiveStateUpdate plugins take (plugins/kernels: N ≤ 16, a thread's
#: states in registers; every published Mamba-1 model has 16)
PLUGIN_MAX_D_STATE = 16


def d_state_note(d_state: int) -> Optional[str]:
    """Why a model of this d_state has no TensorRT engine, or None."""
    if d_state <= PLUGIN_MAX_D_STATE:
        return None
    return (f"d_state is {d_state}, and the TensorRT plugins take d_state <= {PLUGIN_MAX_D_STATE}: onnxruntime runs "
            "the compiled graphs, `mq-deploy build` cannot make an engine of them")


def int4_note(model) -> Optional[str]:
    """What TensorRT documents about a graph with INT4 weights, or None: INT4 is weight-only there, so the MatMuls of
    a W4A8 graph (int8 inputs) are not int8 GEMMs, and those of a weight-only W4A16 graph (float inputs) want fp16
    activations."""
    import onnx

    from .graph.fuse_scan_quant import quantizes_activations

    int4 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT4}
    kinds: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in int4:
            bs = next((a.i for a in n.attribute if a.name == "block_size"), 0)
            kind = f"in blocks of {bs}" if bs else "per channel"
            kinds[kind] = kinds.get(kind, 0) + 1
    if not kinds:
        return None
    how = ", ".join(f"{v} {k}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
    refused = (", and a TensorRT that refuses per-channel INT4 fails the build (the `-b64` and `-w4a16` recipes have "
               "none)" if "per channel" in kinds else "")
    if not quantizes_activations(model.graph.node):
        return (f"{sum(kinds.values())} MatMul weights are INT4 ({how}) with float inputs (weight-only, a W4A16 "
                "recipe): the form TensorRT documents INT4 in (its recent guides: weight-only, block scales of 64 or "
                "128 only), with fp16 or bf16 activations, so build with --fp16 (TensorRT 10); TensorRT 11, which has "
                "no precision flags, takes this fp32 graph's activations as fp32" + refused + ". `trtexec "
                "--profilingVerbosity=detailed --dumpLayerInfo` shows what it chose.")
    return (f"{sum(kinds.values())} MatMul weights are INT4 ({how}) with int8 inputs (a W4A8 recipe). TensorRT "
            "documents INT4 as weight-only quantization (its recent guides: block scales of 64 or 128 only), so "
            "expect these MatMuls to run in floating point with their int8 inputs quantized and dequantized around "
            "them, not as int8 GEMMs: the engine is not expected to be faster than a W8A8 one" + refused
            + ". `trtexec --profilingVerbosity=detailed --dumpLayerInfo` shows what it chose; a W8A8 recipe gives "
            "int8 GEMMs, a W4A16 one weight-only INT4.")


def build_notes(model) -> list[str]:
    """What TensorRT documents about this graph that is no error and no placement violation: `build` warns with it
    (a note with --dry-run), `lint` prints it."""
    return [n for n in (int4_note(model),) if n]


ENGINES = {"model": "model.engine", "prefill": "model.prefill.engine", "decode": "model.decode.engine"}
# `mq-deploy build --validation-engine [--graph G]`'s default file names
VALIDATION_ENGINES = {"model": "model.validate.engine", "prefill": "model.prefill.validate.engine",
                      "decode": "model.decode.validate.engine"}
VALIDATION_ENGINE = VALIDATION_ENGINES["model"]


def graph_inputs(model) -> list[tuple[str, list]]:
    """[(name, [dim, ...])] of a graph's inputs (not initializers): a named dimension as its name, else its size."""
    inits = {t.name for t in model.graph.initializer}
    return [(i.name, [d.dim_param if d.dim_param else d.dim_value for d in i.type.tensor_type.shape.dim])
            for i in model.graph.input if i.name not in inits]


@dataclass(frozen=True)
class Shapes:
    """min/opt/max [batch, sequence] of input_ids for the optimization profile. A Vim OUTDIR uses the batch
    only (its image size is fixed); sequence 0 = not given (accepted for Vim only, `plan_build` checks)."""
    min: tuple[int, int] = (1, 1)
    opt: tuple[int, int] = (1, 512)
    max: tuple[int, int] = (8, 4096)

    def __post_init__(self):
        def show(s):
            return ",".join(str(v) for v in s) if len(s) == 2 and s[1] else ",".join(str(v) for v in s[:1])

        got = f"min {show(self.min)}, opt {show(self.opt)}, max {show(self.max)}"
        for name, s in (("min", self.min), ("opt", self.opt), ("max", self.max)):
            if len(s) != 2 or s[0] < 1 or s[1] < 0:
                raise UserError(f"--{name}-shapes: batch and sequence must be >= 1, got {got}")
        for (na, a), (nb, b) in ((("min", self.min), ("opt", self.opt)), (("opt", self.opt), ("max", self.max))):
            for k, what in ((0, "batch"), (1, "sequence")):
                if a[k] and b[k] and a[k] > b[k]:
                    raise UserError(f"shapes need min <= opt <= max: the {what} of --{na}-shapes ({a[k]}) is above that "
                                    f"of --{nb}-shapes ({b[k]}); got {got} (a Vim OUTDIR's shapes are batch sizes)")

    def dims(self, fixed: tuple = ()) -> tuple[tuple, tuple, tuple]:
        """(min, opt, max) of the profile: [batch, sequence], or [batch, *fixed] for an input whose other
        dimensions are fixed (Vim: channels, height, width)."""
        ((_, *dims),) = self.profile([("x", [BATCH, *fixed] if fixed else [BATCH, SEQUENCE])])
        return tuple(dims)

    def profile(self, inputs: Sequence[tuple[str, Sequence]]) -> tuple:
        """((name, min, opt, max), ...) for a graph's inputs, each shape a list of "batch" / "sequence" / fixed sizes
        (the ONNX graph's dimensions, `graph_inputs`): the batch and sequence of min / opt / max put in."""
        lacking = [(flag, eg) for flag, s, eg in (("--min-shapes", self.min, "1,1"), ("--opt-shapes", self.opt, "1,512"),
                                                   ("--max-shapes", self.max, "8,4096")) if not s[1]]
        if any(d == SEQUENCE for _, shape in inputs for d in shape) and lacking:
            raise UserError(f"a language model's shapes need BATCH,SEQUENCE: {', '.join(f for f, _ in lacking)} "
                            f"give{'s' if len(lacking) == 1 else ''} a batch only (e.g. {lacking[0][0]} "
                            f"{lacking[0][1]})")
        out = []
        for name, shape in inputs:
            for d in shape:
                if d not in (BATCH, SEQUENCE) and not (isinstance(d, int) and d > 0):
                    raise UserError(f"input {name} has a dimension {d!r} that is neither batch, sequence nor fixed: "
                                    "not a graph of `mq-deploy compile`")
            out.append((name, *(tuple(s[0] if d == BATCH else s[1] if d == SEQUENCE else d for d in shape)
                                for s in (self.min, self.opt, self.max))))
        return tuple(out)


def import_tensorrt():
    try:
        import tensorrt  # noqa: PLC0415
    except ImportError as e:
        raise UserError(f"{INSTALL_HINT} (import tensorrt failed: {e})") from None
    refused = _too_old(tensorrt)
    if refused:
        raise UserError(refused)
    return tensorrt


def _too_old(tensorrt) -> Optional[str]:
    """Why this TensorRT module cannot be used (a version before MIN_TENSORRT_MAJOR), or None."""
    version = str(getattr(tensorrt, "__version__", ""))
    major = version.split(".")[0]
    if major.isdigit() and int(major) < MIN_TENSORRT_MAJOR:
        return (f"TensorRT {version} is installed; mq-deploy's plugins are TensorRT {MIN_TENSORRT_MAJOR} plugins "
                "(IPluginV3): install TensorRT 10 or later, e.g. `pip install \"tensorrt-cu12==10.3.*\"`, or on Jetson "
                "move to JetPack 6.1 or 6.2 (TensorRT 10.3; JetPack 6.0 has TensorRT 8.6)")
    return None


def tensorrt_refused() -> Optional[str]:
    """Why the installed TensorRT cannot be used (a version before MIN_TENSORRT_MAJOR), or None (usable, or none)."""
    try:
        import tensorrt  # noqa: PLC0415
    except ImportError:
        return None
    return _too_old(tensorrt)


def tensorrt_major() -> Optional[int]:
    """Major version of the importable TensorRT; None without it (printed command lines then follow 10.x)."""
    try:
        return int(import_tensorrt().__version__.split(".")[0])
    except (UserError, ValueError):
        return None


def trt_logger(trt):
    """The process's one TensorRT logger (WARNING and worse), shared by the builder, the runtime and the plugin
    registry. TensorRT's own trt.Logger prints on stdout, where mq-deploy's results go (the engine path, --json
    rows); this one prints `[TensorRT] WARNING: ...` on stderr, over a drawn progress line (trt_progress.log_line).
    A TensorRT module without ILogger (a test's fake) gets its trt.Logger."""
    if not _LOGGER or _LOGGER[0][0] is not trt:
        _LOGGER[:] = [(trt, _stderr_logger(trt))]
    return _LOGGER[0][1]


def _stderr_logger(trt):
    base = getattr(trt, "ILogger", None)
    if base is None:
        return trt.Logger(trt.Logger.WARNING)
    worst = int(trt.ILogger.Severity.WARNING)  # INTERNAL_ERROR 0 ... VERBOSE 4: lower is worse

    class StderrLogger(base):
        def __init__(self):
            super().__init__()  # pybind11: the C++ side exists only once the base __init__ ran

        @signals.defer_in  # a Ctrl-C landing here is kept until TensorRT returns (TensorRT would drop it)
        def log(self, severity, msg):  # TensorRT calls this from its threads, for every message of every level
            try:
                if int(severity) <= worst:
                    trt_progress.log_line(f"[TensorRT] {getattr(severity, 'name', severity)}: {msg}")
            except Exception:  # noqa: BLE001 (TensorRT's bindings would print it and drop it)
                pass

    return StderrLogger()


def parse_shape(text: str, what: str = "shape") -> tuple[int, int]:
    """'B,L' or 'BxL' → (B, L); 'B' alone → (B, 0) (a Vim OUTDIR: batch only)."""
    parts = text.replace("x", ",").split(",")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) not in (1, 2):
        raise UserError(f"{what} must be BATCH,SEQUENCE (e.g. 1,512), or BATCH for a Vim model, got {text!r}")
    if min(vals) < 1:  # (a sequence of 0 would read as "not given", i.e. a batch alone)
        raise UserError(f"{what}: batch and sequence must be >= 1, got {text!r}")
    return vals[0], vals[1] if len(vals) == 2 else 0


def check_plugin_lib(plugin_lib: Optional[str]) -> Optional[str]:
    if plugin_lib is None:
        return None
    if not os.path.isfile(plugin_lib):
        raise UserError(f"plugin library {plugin_lib!r} not found: {PLUGIN_BUILD_HINT}")
    return os.path.abspath(plugin_lib)


def resolve_plugin_lib(plugin_lib: Optional[str], must_exist: bool = True) -> Optional[str]:
    """--plugins LIB, else $MQ_DEPLOY_PLUGINS, else None; a named library must exist (unless `must_exist` is
    False: a command line for the machine that has it, `build --dry-run`)."""
    if plugin_lib is None and os.environ.get(PLUGINS_ENV):
        plugin_lib = os.environ[PLUGINS_ENV]
    if plugin_lib is not None and not plugin_lib.strip():
        raise UserError(f"--plugins: an empty path: {PLUGIN_BUILD_HINT}")
    if not must_exist and plugin_lib is not None and not os.path.isfile(plugin_lib):
        return plugin_lib
    return check_plugin_lib(plugin_lib)


def dlopen_plugin_lib(plugin_lib: str) -> str:
    """The library to hand a tool that only dlopens plugin libraries (polygraphy's `--plugins`, trtexec
    `--staticPlugins`, `ctypes.CDLL`): libmq_trt_plugins_register.so beside `plugin_lib`, which registers the
    plugins when loaded. libmq_trt_plugins.so itself registers nothing until TensorRT's loadLibrary asks it."""
    return _sibling(plugin_lib, REGISTER_LIB)


def loadlibrary_plugin_lib(plugin_lib: str) -> str:
    """The library for TensorRT's loadLibrary (trtexec `--dynamicPlugins`): libmq_trt_plugins.so beside a
    libmq_trt_plugins_register.so, any other library as it is."""
    return _sibling(plugin_lib, MAIN_LIB) if _name(plugin_lib) == REGISTER_LIB else plugin_lib


def _placeholder(plugin_lib: str) -> bool:  # <name>: no library on this machine
    return plugin_lib.startswith("<") and plugin_lib.endswith(">")


def _name(plugin_lib: str) -> str:
    return plugin_lib[1:-1] if _placeholder(plugin_lib) else Path(plugin_lib).name


def _sibling(plugin_lib: str, name: str) -> str:
    if _placeholder(plugin_lib):
        return f"<{name}>"
    path = Path(plugin_lib)
    return plugin_lib if path.name == name else str(path.parent / name)


def load_plugins(trt, logger, lib: Optional[str]) -> None:
    """Register TensorRT's own plugins and `lib`'s, once per process: `IPluginRegistry::loadLibrary` returns
    nullptr when any of a library's plugins is already registered (build, then validate, in one process).
    libmq_trt_plugins_register.so is dlopened instead (it registers its plugins itself, and has no loadLibrary
    entry points)."""
    trt.init_libnvinfer_plugins(logger, "")
    if lib is None or lib in _LOADED_PLUGIN_LIBS:
        return
    registry = trt.get_plugin_registry()

    def registered():
        return registry.get_creator(ss.PLUGIN_NAME, ss.PLUGIN_VERSION, ss.PLUGIN_NAMESPACE) is not None

    if not registered():
        if Path(lib).name == REGISTER_LIB:
            try:
                _dlopen(lib)
            except OSError as e:
                raise UserError(f"could not load the plugin library {lib!r}: {e}") from None
            if not registered():
                raise UserError(f"loading {lib!r} registered no {ss.PLUGIN_NAME} plugin (TensorRT's messages above "
                                "say why; built for another TensorRT?)")
        elif registry.load_library(lib) is None and not registered():  # registered: a renamed register library
            raise UserError(f"TensorRT could not load the plugin library {lib!r} (built for another TensorRT/CUDA?)")
    _LOADED_PLUGIN_LIBS.add(lib)


def _dlopen(lib: str):
    import ctypes
    return ctypes.CDLL(lib)


def _flag(trt, name: str):
    """BuilderFlag.INT8 / FP16, or None on TensorRT versions without precision flags (11: strong typing only)."""
    return getattr(trt.BuilderFlag, name, None)


def _check_strongly_typed(strongly_typed: bool, int8: bool, fp16: bool) -> None:
    """A strongly typed network takes every precision from the graph: TensorRT allows no precision flags with it."""
    given = [f for f, on in (("--int8", int8), ("--fp16", fp16)) if on]
    if strongly_typed and given:
        raise UserError(f"--strongly-typed cannot be combined with {' / '.join(given)}: a strongly typed network "
                        "takes its precisions from the ONNX graph (INT8 from its Q/DQ nodes); drop one of them")


def _network_flags(trt, strongly_typed: bool) -> int:
    """create_network's flags: 0, or STRONGLY_TYPED when asked (TensorRT 10). TensorRT 11's networks are strongly
    typed whatever the flags, so a version without the enum member needs none."""
    member = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    if not strongly_typed or (member is None and _flag(trt, "INT8") is None):
        return 0
    if member is None:
        raise UserError(f"TensorRT {trt.__version__} cannot build strongly typed networks (no "
                        "NetworkDefinitionCreationFlag.STRONGLY_TYPED): use TensorRT 10, or build without "
                        "--strongly-typed")
    return 1 << int(member)


def _no_fp16(version) -> str:
    return (f"TensorRT {version} has no FP16 builder flag (strongly typed networks only): "
            "build without --fp16, or convert the model's float tensors to fp16 before building")


def _set_timing_cache(config, path: str, warn: Callable[[str], None]):
    """Attach the timing cache read from `path` to `config`: an empty one when the file does not exist, cannot be
    read by this TensorRT, or was made on another device."""
    data = Path(path).read_bytes() if os.path.isfile(path) else b""
    cache = config.create_timing_cache(data)
    if cache is None:  # corrupt, or not a timing cache of this TensorRT
        if data:
            warn(f"TensorRT could not read the timing cache {path}; starting an empty one (it replaces the file)")
    elif not config.set_timing_cache(cache, ignore_mismatch=False):  # made on another device
        warn(f"the timing cache {path} is from another device or TensorRT; starting an empty one (it replaces "
             "the file)")
        cache = None
    if cache is None:
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            raise UserError("TensorRT could not create an empty timing cache (see the log above)")


def build_engine(onnx_path: str, out_path: str, plugin_lib: Optional[str] = None, int8: bool = False,
                 fp16: bool = False, shapes: Shapes = Shapes(), timing_cache: Optional[str] = None,
                 input_name: str = "input_ids", workspace_gib: float = 4.0, fixed_dims: tuple = (),
                 warn: Callable[[str], None] = lambda s: None, strongly_typed: bool = False,
                 mark: Sequence[str] = (), fp32: Sequence[str] = (), hadamard_codes: bool = False,
                 profile: Sequence[tuple] = (), progress: Optional[TextIO] = None) -> str:
    """Parse onnx_path, load the plugin library, build and write a serialized engine to out_path
    (`fixed_dims`: the input's dimensions after the batch when only the batch is dynamic, e.g. Vim's C, H, W;
    `profile`: ((name, min, opt, max), ...) of every input instead of `input_name` / `fixed_dims` / `shapes`, for a
    graph of several inputs (`Shapes.profile`: the prefill and decode-step graphs);
    `warn`: told when the timing cache is unusable and an empty one is used instead; `strongly_typed`: the
    network is created strongly typed and no precision flag is set, so int8 / fp16 must be False; `mark`:
    tensors of the graph to make network outputs too, the validation engine's values before its
    QuantizeLinear nodes; `fp32`: tensors whose layers keep fp32 compute and outputs when FP16 is allowed, the
    RMSNorm layers of graph/precision.py; `hadamard_codes`: parse a copy of the graph in which each Hadamard that
    writes int8 (its QuantizeLinear fused, as deployed) also has its codes dequantized into a float tensor named as
    the node and a float twin beside it (graph/fuse_scan_quant.py, dequantize_hadamard_codes), as a validation engine
    of such a graph marks both); `progress`: TensorRT's build phases are shown there (trt_progress). Ctrl-C during
    the build cancels it at TensorRT's next step (KeyboardInterrupt, nothing written); a second one exits at once."""
    _check_strongly_typed(strongly_typed, int8, fp16)
    profile = tuple(profile) or ((input_name, *shapes.dims(fixed_dims)),)
    if not os.path.isfile(onnx_path):
        raise UserError(f"ONNX model {onnx_path!r} not found (run `mq-deploy compile` first)")
    lib = check_plugin_lib(plugin_lib)
    trt = import_tensorrt()
    check_writable(out_path, "the engine")  # before a build of minutes, not after it
    if timing_cache is not None:
        check_writable(timing_cache, "the timing cache")
    logger = trt_logger(trt)
    load_plugins(trt, logger, lib)
    if fp16 and _flag(trt, "FP16") is None:
        raise UserError(_no_fp16(trt.__version__))
    network_flags = _network_flags(trt, strongly_typed)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    signals.raise_pending()  # (a Ctrl-C while TensorRT logged on this thread: see signals.py)
    with _codes_copy(onnx_path) if hadamard_codes else contextlib.nullcontext(onnx_path) as parse_path:
        parsed = parser.parse_from_file(parse_path)
        signals.raise_pending()
        if not parsed:
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise UserError(f"TensorRT could not parse {onnx_path}: {errs}")
    if mark:
        mark_outputs(network, mark, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if int8 and _flag(trt, "INT8") is not None:  # without the flag the Q/DQ nodes alone decide (TensorRT 11)
        config.set_flag(_flag(trt, "INT8"))
    if fp16:
        config.set_flag(_flag(trt, "FP16"))
        if fp32:
            keep_fp32(trt, network, config, fp32, onnx_path)
    opt_profile = builder.create_optimization_profile()
    for name, *dims in profile:
        opt_profile.set_shape(name, *dims)
    config.add_optimization_profile(opt_profile)
    if timing_cache is not None:
        _set_timing_cache(config, timing_cache, warn)
    monitor = trt_progress.attach(trt, config, progress)  # also with no progress shown: Ctrl-C cancels through it
    engine = trt_progress.run_build(lambda: builder.build_serialized_network(network, config), monitor, warn)
    signals.raise_pending()
    if engine is None:
        raise UserError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    atomic_write_bytes(out_path, engine)
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, config.get_timing_cache().serialize())
    return out_path


@contextlib.contextmanager
def _codes_copy(onnx_path: str):
    """A temporary copy of onnx_path beside it (so that its external weights resolve) in which every fused Hadamard's
    int8 codes are also dequantized into the tensor named as its node, beside a float twin of it
    (graph/fuse_scan_quant.py, dequantize_hadamard_codes); removed on exit."""
    import onnx

    from .graph.fuse_scan_quant import dequantize_hadamard_codes

    proto = onnx.load(onnx_path, load_external_data=False)
    dequantize_hadamard_codes(proto)
    path = Path(onnx_path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.codes-", suffix=".onnx", dir=path.parent)
    except OSError as e:
        raise UserError(f"a validation engine is built from a copy of {path.name} written beside it (its weights are "
                        f"found relative to it), and {path.parent} refused it: {e}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(proto.SerializeToString())
        yield tmp
    finally:
        os.unlink(tmp)


def _producers(network, names: Sequence[str], what: str, why: str) -> dict:
    """{tensor name: (layer, output index)} for the tensors `names` of the parsed network (named as in the ONNX
    graph); one UserError naming those that are not there."""
    want, found = set(names), {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            t = layer.get_output(j)
            if t is not None and t.name in want:
                found.setdefault(t.name, (layer, j))
    missing = sorted(want - set(found))
    if missing:
        raise UserError(f"TensorRT's network of {what} has no tensor {', '.join(missing[:5])}"
                        f"{f' (and {len(missing) - 5} more)' if len(missing) > 5 else ''} {why}: was the ONNX file "
                        "edited, or does this TensorRT parser rename tensors?")
    return found


def mark_outputs(network, names: Sequence[str], what: str = "the network") -> None:
    """Make the tensors `names` network outputs as well (a validation engine)."""
    found = _producers(network, names, what, "to mark as an output")
    for n in sorted(found):
        layer, j = found[n]
        network.mark_output(layer.get_output(j))


def keep_fp32(trt, network, config, names: Sequence[str], what: str = "the network") -> None:
    """The layers making the tensors `names` compute in fp32 and write fp32 (graph/precision.py: RMSNorm's
    squares overflow fp16), with the builder preferring those constraints over faster fp16 tactics."""
    flag = getattr(trt.BuilderFlag, "PREFER_PRECISION_CONSTRAINTS", None)
    if flag is None:
        raise UserError(f"TensorRT {trt.__version__} has no BuilderFlag.PREFER_PRECISION_CONSTRAINTS, which --fp16 "
                        "needs to keep the RMSNorm layers in fp32: build without --fp16")
    for layer, j in _producers(network, names, what, "to keep in fp32").values():
        layer.precision = trt.float32
        layer.set_output_type(j, trt.float32)
    config.set_flag(flag)


# -- OUTDIR level ---------------------------------------------------------------------------------
def read_outdir(outdir: str | Path) -> tuple[Path, dict]:
    """OUTDIR of `mq-deploy compile` → (path of model.onnx, its manifest: required, since whether the engine is INT8
    and the vocabulary for polygraphy's inputs come from it)."""
    out = Path(outdir)
    if not out.is_dir():
        raise UserError(f"{out} is not a directory; pass the output directory of `mq-deploy compile`")
    onnx_path = out / "model.onnx"
    if not onnx_path.is_file() and (out / "manifest.json").is_file():  # an OUTDIR copied without it
        raise missing_file(out, read_manifest(out), onnx_path.name, "the plugin graph")
    if not onnx_path.is_file():
        raise UserError(f"{out} has no model.onnx; pass the output directory of `mq-deploy compile -o OUTDIR`")
    return onnx_path, read_manifest(out)


def manifest_plugin_nodes(manifest: dict) -> int:
    return sum(int(p.get("count", 0)) for p in manifest.get("plugins", []))


def manifest_quantized(manifest: dict) -> bool:
    """Weights quantized (any Q/DQ nodes)."""
    return manifest.get("quantization") is not None


def manifest_act_quantized(manifest: dict) -> bool:
    """Activations quantized too (QuantizeLinear nodes, static scales): not a weight-only (W4A16) OUTDIR."""
    return bool((manifest.get("quantization") or {}).get("act_scales"))


@dataclass(frozen=True)
class BuildPlan:
    """What `mq-deploy build OUTDIR` will do, decided before TensorRT is imported."""
    onnx: str
    engine: str
    plugin_lib: Optional[str]
    int8: bool
    fp16: bool
    shapes: Shapes
    timing_cache: Optional[str]
    vocab: Optional[int]
    input_name: str = "input_ids"
    fixed_dims: tuple = ()  # Vim: (channels, height, width); the profile varies the batch only
    strongly_typed: bool = False  # the graph's types decide (int8 and fp16 are then False)
    mark: tuple = ()  # a validation engine: the tensors before the QuantizeLinear nodes, marked as outputs
    fp32: tuple = ()  # with fp16: (layer, tensor) of the RMSNorm layers kept in fp32 (graph/precision.py)
    hadamard_codes: bool = False  # a validation engine: built from a copy whose fused Hadamards' codes are dequantized
    graph: str = "model"  # which graph of the OUTDIR (GRAPHS): model.onnx, or the prefill / decode-step graph
    profile: tuple = ()  # ((input, min, opt, max), ...) of every input of the graph (Shapes.profile)
    plugin_nodes: int = 0  # plugin nodes in the graph (the library is required when there are any)
    quantized: bool = False  # a QDQ graph (the manifest's quantization)
    notes: tuple = ()  # what TensorRT documents about this graph that the user should know before building

    def command_lines(self, trt_major: Optional[int] = None) -> dict[str, str]:
        return command_lines(self.onnx, self.engine, self.plugin_lib or LIB_PLACEHOLDER, int8=self.int8,
                             fp16=self.fp16, shapes=self.shapes, timing_cache=self.timing_cache, vocab=self.vocab,
                             input_name=self.input_name, fixed_dims=self.fixed_dims, trt_major=trt_major,
                             strongly_typed=self.strongly_typed, fp32_layers=tuple(n for n, _ in self.fp32),
                             profile=self.profile, quantized=self.quantized)


def manifest_input(manifest: dict) -> tuple[str, tuple]:
    """(input name, fixed dimensions after the batch) from the manifest's io: ("input_ids", ()) for a language
    model, ("pixel_values", (C, H, W)) for a Vim classifier."""
    ins = manifest.get("io", {}).get("inputs") or [{"name": "input_ids", "shape": ["batch", "sequence"]}]
    name, shape = ins[0]["name"], ins[0]["shape"]
    rest = shape[1:]
    if all(isinstance(d, int) for d in rest):
        return name, tuple(rest)
    return name, ()


def _outputs_not_outdir_files(outdir: str | Path, manifest: dict, outputs: dict) -> None:
    """A UserError when an output of the build ({flag: path}) is a file the compile wrote into OUTDIR (a graph, its
    weights, manifest.json): the engine or timing cache written there would replace what the build and the other
    commands read."""
    listed = set(manifest.get("files") or {}) | {MARKER}
    home = Path(outdir).expanduser().resolve()
    for flag, path in outputs.items():
        if path is None:
            continue
        p = Path(path).expanduser().resolve()
        if p.parent == home and p.name in listed:
            raise UserError(f"{flag} {path} is {outdir}'s {p.name}, a file of the compile that writing it would "
                            f"replace: name another file (the default engine is {Path(outdir) / ENGINES['model']})")


def plan_build(outdir: str | Path, engine: Optional[str] = None, plugin_lib: Optional[str] = None,
               int8: bool = False, fp16: bool = False, shapes: Shapes = Shapes(),
               timing_cache: Optional[str] = None, require_plugin_lib: bool = True,
               strongly_typed: bool = False, validation: bool = False, graph: str = "model") -> BuildPlan:
    """Check OUTDIR and the plugin library (a missing one is kept as named when not `require_plugin_lib`: the
    dry run prints the command for the machine that has it); INT8 is on for a quantized OUTDIR (its Q/DQ nodes
    carry the scales), unless `strongly_typed` (no precision flags: the Q/DQ nodes decide by themselves).
    `validation`: the engine (default OUTDIR/VALIDATION_ENGINES[graph]) also outputs the tensor before every
    QuantizeLinear, which `mq-deploy validate [--graph]` uses to check it layer by layer (quantized OUTDIRs only).
    `graph`: "model" (model.onnx, input_ids → logits), or a language model's "prefill" / "decode" graph (the
    stateful graphs of `mq-deploy generate`; default engine OUTDIR/model.prefill.engine / model.decode.engine),
    whose optimization profile covers every input: the decode step's input_ids [batch, 1] and states [batch, ...]
    take the batch of `shapes` only."""
    _check_strongly_typed(strongly_typed, int8, fp16)
    if graph not in GRAPHS:
        raise UserError(f"--graph must be one of {', '.join(GRAPHS)}, not {graph!r}")
    onnx_path, manifest = read_outdir(outdir)
    _outputs_not_outdir_files(outdir, manifest, {"-o": engine, "--timing-cache": timing_cache})
    too_wide = d_state_note(int(manifest.get("model", {}).get("config", {}).get("d_state") or 0))
    if too_wide:
        raise UserError(f"{outdir}: {too_wide}")
    if graph != "model":
        onnx_path = onnx_path.with_name(GRAPHS[graph])
        if not onnx_path.is_file() and manifest_input(manifest)[0] == "pixel_values":
            raise UserError(f"{outdir} has no {onnx_path.name} (a Vim classifier has no stateful graphs)")
        if not onnx_path.is_file():
            raise missing_file(outdir, manifest, onnx_path.name, f"the {graph} graph")
    if validation and not manifest_act_quantized(manifest):
        what = "weight-only (no QuantizeLinear)" if manifest_quantized(manifest) else "not quantized"
        raise UserError(f"{outdir} is {what}: a validation engine is for OUTDIRs with int8 activations (an engine "
                        "with float activations is compared with the graphs directly; build it without "
                        "--validation-engine)")
    if int8 and not manifest_quantized(manifest):
        raise UserError(f"{outdir} is not quantized, so --int8 has no scales to use: its graph has no Q/DQ nodes and "
                        "mq-deploy does not calibrate inside TensorRT (trtexec --int8 would make up placeholder "
                        "ranges); compile with a quantized recipe, e.g. `--recipe mambaquant-w8a8`, or drop --int8")
    from .graph.follow import validation_marks
    from .graph.fuse_scan_quant import float_twin, hadamard_out_scale
    from .graph.precision import rms_norm_nodes
    from .ops.plugin_fields import plugin_inventory

    model = read_onnx(onnx_path, weights=False, require_weights=False)  # (--dry-run prints lines without them)
    # a validation engine marks the value before every QuantizeLinear; a Hadamard that quantizes its own output
    # (the deployed fused kernel) keeps doing so, and in the copy the engine is built from (_codes_copy) its codes,
    # dequantized under the node's name, and the output of a float twin are marked (validate checks the layer on the
    # twin and the kernel's codes against it)
    fused = {n.name for n in model.graph.node if hadamard_out_scale(n)}
    codes = validation and bool(fused)
    made = {o for n in model.graph.node for o in n.output} | fused | {float_twin(t) for t in fused}  # (not an input)
    mark = tuple(t for t in validation_marks(model) if t in made) if validation else ()
    fp32 = tuple((n.name, n.output[0]) for n in rms_norm_nodes(model)) if fp16 else ()
    lib = resolve_plugin_lib(plugin_lib, must_exist=False)
    vocab = manifest.get("model", {}).get("config", {}).get("vocab_size")
    name, fixed = manifest_input(manifest)
    profile = shapes.profile(graph_inputs(model))  # a language model needs BATCH,SEQUENCE
    if require_plugin_lib:  # a real build: TensorRT before the library, whose hint (build it against TensorRT) would
        import_tensorrt()   # send a machine without TensorRT in a circle
        lib = check_plugin_lib(lib)
    default = (VALIDATION_ENGINES if validation else ENGINES)[graph]
    return BuildPlan(onnx=str(onnx_path), engine=str(engine or Path(outdir) / default), plugin_lib=lib,
                     int8=(int8 or manifest_quantized(manifest)) and not strongly_typed, fp16=fp16, shapes=shapes,
                     timing_cache=timing_cache, vocab=vocab, input_name=name, fixed_dims=fixed,
                     strongly_typed=strongly_typed, mark=mark, fp32=fp32, hadamard_codes=codes, graph=graph,
                     profile=profile, plugin_nodes=sum(p["count"] for p in plugin_inventory(model)),
                     quantized=manifest_quantized(manifest),
                     notes=tuple(build_notes(model)) + _fp16_recipe_note(manifest, fp16, strongly_typed))


def _fp16_recipe_note(manifest: dict, fp16: bool, strongly_typed: bool) -> tuple[str, ...]:
    """(the note,) for an OUTDIR of the fp16 recipe built without --fp16, else (): its graph is fp32 with fp16-rounded
    weights, meant for an fp16 engine, and nothing in the graph says so (a strongly typed build follows the graph's
    fp32 types)."""
    if fp16 or (manifest.get("recipe") or {}).get("precision") != "fp16":
        return ()
    how = "a strongly typed build follows the graph's fp32 types" if strongly_typed else "without it TensorRT runs fp32"
    return (f"this OUTDIR's recipe is fp16 (weights rounded to fp16, the graph in fp32): build with --fp16 (TensorRT 10) "
            f"for an fp16 engine; {how}",)


def build_outdir(plan: BuildPlan, log: Callable[[str], None] = lambda s: None,
                 warn: Callable[[str], None] = lambda s: None, progress: Optional[TextIO] = None) -> str:
    """Build plan.engine from plan.onnx (the plugin library is required when the graph has plugin nodes);
    `progress`: where TensorRT's build phases are shown (None: nowhere)."""
    trt = import_tensorrt()
    read_onnx(plan.onnx, weights=False)  # its weights file named if missing (TensorRT's parser would fail on it)
    n = plan.plugin_nodes
    if plan.plugin_lib is None and n:
        raise UserError(f"{plan.onnx} has {n} TensorRT plugin node(s): pass --plugins LIB or set {PLUGINS_ENV} "
                        f"(the plugin library: {PLUGIN_BUILD_HINT})")
    typed = " (strongly typed: the ONNX graph's types and Q/DQ nodes set the precisions)" if plan.strongly_typed else ""
    log(f"building {plan.engine} from {plan.onnx} with TensorRT {trt.__version__}"
        f"{' (INT8: explicit quantization from the Q/DQ nodes)' if plan.int8 else ''}{' (FP16)' if plan.fp16 else ''}"
        f"{typed}")
    for note in plan.notes:
        warn(note)
    if plan.fp32:
        log(f"FP16: the {len(plan.fp32)} RMSNorm layers stay fp32 (their squares overflow fp16)")
    if plan.mark:
        from .graph.fuse_scan_quant import float_twin

        twins = [t for t in plan.mark if float_twin(t) in plan.mark]
        log(f"validation engine: the {len(plan.mark) - len(twins)} tensors before its QuantizeLinear nodes are outputs "
            f"too (for `mq-deploy validate{'' if plan.graph == 'model' else f' --graph {plan.graph}'} --engine "
            f"{plan.engine}`; not for deployment: extra outputs, other fusions)")
        if twins:
            log(f"validation engine: its {len(twins)} Hadamard layers write int8 as deployed; those outputs are their "
                "codes, dequantized, and a float twin of each is an output too (the layer is checked on the twin, "
                "the kernel's codes against it)")
    return build_engine(plan.onnx, plan.engine, plan.plugin_lib, int8=plan.int8, fp16=plan.fp16, shapes=plan.shapes,
                        timing_cache=plan.timing_cache, input_name=plan.input_name, fixed_dims=plan.fixed_dims,
                        warn=warn, strongly_typed=plan.strongly_typed, mark=plan.mark,
                        fp32=tuple(t for _, t in plan.fp32), hadamard_codes=plan.hadamard_codes, profile=plan.profile,
                        progress=progress)


def _trtexec_shape(name: str, s: tuple) -> str:
    """trtexec's `name:1x512`."""
    return f"{name}:" + "x".join(str(d) for d in s)


def _polygraphy_shape(name: str, s: tuple) -> str:
    """polygraphy's `name:[1,512]`, quoted for the shell (polygraphy reads `name:1x512` as the shape
    ('1', 'x', '5', '1', '2'): dynamic, so it silently runs its default shape)."""
    return shlex.quote(f"{name}:[" + ",".join(str(d) for d in s) + "]")


def command_lines(onnx_path: str, engine_path: str, plugin_lib: str, int8: bool = False, fp16: bool = False,
                  shapes: Shapes = Shapes(), input_name: str = "input_ids",
                  timing_cache: Optional[str] = None, vocab: Optional[int] = None,
                  fixed_dims: tuple = (), trt_major: Optional[int] = None,
                  strongly_typed: bool = False, fp32_layers: Sequence[str] = (),
                  profile: Sequence[tuple] = (), quantized: bool = False) -> dict[str, str]:
    """The trtexec build and polygraphy comparison command lines equivalent to build_engine / validate, for
    TensorRT `trt_major` (None: not known here, 10.x assumed). TensorRT 10 takes INT8 / FP16 as builder flags
    (`--int8`, `--fp16`), or `strongly_typed` (`--stronglyTyped` / `--strongly-typed`, no precision flags);
    TensorRT 11 has none (always strongly typed: the Q/DQ nodes decide), and its trtexec removed those options.

    polygraphy's onnxrt runner cannot run the plugin nodes of model.onnx (mq-deploy's CPU kernels are
    registered through onnxruntime-extensions, which polygraphy's CLI does not load), so the comparison
    is two runs: `polygraphy_reference` saves inputs and outputs of model.portable.onnx in onnxruntime,
    `polygraphy` builds model.onnx with the plugins in TensorRT and compares against them. polygraphy's
    `--plugins` only dlopens, so its line names libmq_trt_plugins_register.so beside `plugin_lib`
    (`dlopen_plugin_lib`); trtexec's `--dynamicPlugins` goes through loadLibrary and takes libmq_trt_plugins.so
    (`loadlibrary_plugin_lib`). Either library may be given.

    With fp16, `fp32_layers` (the RMSNorm layers, graph/precision.py) are kept in fp32 as build_engine keeps
    them: trtexec `--precisionConstraints=prefer --layerPrecisions --layerOutputTypes`; polygraphy has no
    option for layer output types, so its line sets the layer precisions only.

    A `quantized` graph's reference runs at onnxruntime's basic optimization level
    (`--graph-optimization-level ORT_ENABLE_BASIC`, polygraphy 0.53.6): its QuantizeLinear / DequantizeLinear nodes as
    written, in fp32, as mq-deploy's own onnxruntime sessions run them where the int8 kernels would not be exact
    (backends/ort.py, `int8_fusion_exact`): at its default level onnxruntime fuses them into int8 kernels, which on an
    x86-64 CPU without VNNI saturate at int16 and would move the reference by more than the comparison's tolerance.

    `profile` ((name, min, opt, max), ...; `Shapes.profile`) gives every input's shapes instead of `input_name`,
    `fixed_dims` and `shapes` (the prefill and decode-step graphs); the polygraphy reference then runs that graph's
    portable flavour (model.prefill.portable.onnx, ...) with an all-ones attention_mask, into files named after
    the graph."""
    q = shlex.quote
    _check_strongly_typed(strongly_typed, int8, fp16)
    profile = tuple(profile) or ((input_name, *shapes.dims(fixed_dims)),)
    precision_flags = trt_major is None or trt_major < 11
    if fp16 and not precision_flags:
        raise UserError(_no_fp16(trt_major))
    flags = [f for f, on in (("--int8", int8), ("--fp16", fp16)) if on and precision_flags]
    typed = strongly_typed and precision_flags  # TensorRT 11: always strongly typed, the lines need no option
    trtexec = [f"trtexec --onnx={q(onnx_path)} --saveEngine={q(engine_path)} "
               f"--dynamicPlugins={q(loadlibrary_plugin_lib(plugin_lib))}",
               " ".join(f"--{k}Shapes=" + ",".join(_trtexec_shape(p[0], p[j]) for p in profile)
                        for j, k in ((1, "min"), (2, "opt"), (3, "max"))),
               *flags, *(["--stronglyTyped"] if typed else [])]
    keep = list(fp32_layers) if fp16 else []
    if keep:
        spec = ",".join(f"{n}:fp32" for n in keep)
        trtexec.append(f"--precisionConstraints=prefer --layerPrecisions={q(spec)} --layerOutputTypes={q(spec)}")
    if timing_cache:
        trtexec.append(f"--timingCacheFile={q(timing_cache)}")
    pshape = {k: " ".join(_polygraphy_shape(p[0], p[j]) for p in profile)
              for j, k in ((1, "min"), (2, "opt"), (3, "max"))}
    path = Path(onnx_path)
    stem = path.name[:-len(".onnx")] if path.name.endswith(".onnx") else path.stem  # model, model.prefill, ...
    portable = str(path.with_name(f"{stem}.portable.onnx"))
    tag = stem.split(".", 1)[1] + "_" if "." in stem else ""  # model.decode → decode_
    inputs, outputs = (str(path.with_name(f"polygraphy_{tag}inputs.json")),
                       str(path.with_name(f"polygraphy_{tag}ort_outputs.json")))
    ref = [f"polygraphy run {q(portable)} --onnxrt"]
    if quantized:  # the Q/DQ nodes as written (see above)
        ref.append("--graph-optimization-level ORT_ENABLE_BASIC")
    ref.append(f"--input-shapes {pshape['opt']}")
    ranges = [f"{p[0]}:[0,{vocab - 1}]" for p in profile if vocab and p[0] == "input_ids"] + \
        [f"{p[0]}:[1,1]" for p in profile if p[0] == "attention_mask"]  # no padding in the check's input
    if ranges:
        ref.append("--val-range " + " ".join(q(r) for r in ranges))
    ref.append(f"--save-inputs {q(inputs)} --save-outputs {q(outputs)}")
    poly = [f"polygraphy run {q(onnx_path)} --trt --plugins {q(dlopen_plugin_lib(plugin_lib))}",
            f"--trt-min-shapes {pshape['min']} --trt-opt-shapes {pshape['opt']} --trt-max-shapes {pshape['max']}",
            *flags, *(["--strongly-typed"] if typed else [])]
    if keep:
        poly.append("--precision-constraints prefer --layer-precisions " + " ".join(q(f"{n}:float32") for n in keep))
    if timing_cache:
        poly.append(f"--load-timing-cache {q(timing_cache)} --save-timing-cache {q(timing_cache)}")
    poly.append(f"--load-inputs {q(inputs)} --load-outputs {q(outputs)} --atol 1e-2 --rtol 1e-2")
    return {"trtexec": " ".join(trtexec), "polygraphy_reference": " ".join(ref), "polygraphy": " ".join(poly)}
