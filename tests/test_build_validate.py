"""`mq-deploy build` and `mq-deploy validate` on freshly compiled bundled OUTDIRs (CPU; no TensorRT here).

The TensorRT builder itself is replaced by a fake module in one test, which checks what build_engine
asks of TensorRT (plugin library, flags, optimization profile, atomic write); the real builder only
runs on a TensorRT machine (docker/, docs/deploy.md).
"""

import builtins
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import onnx
import pytest

from mq_deploy import trt as mtrt
from mq_deploy import trt_progress
from mq_deploy import validate as mval
from mq_deploy.backends.ort import OrtRunner
from mq_deploy.cli import main
from mq_deploy.errors import UserError
from mq_deploy.loaders import BUNDLED_DIR
from mq_deploy.graph.follow import fp16_stand_in, quantized_tensors, quantizer_params, validation_marks
from mq_deploy.graph.fuse_scan_quant import hadamard_out_scale
from mq_deploy.graph.precision import rms_norm_nodes
from mq_deploy.model import MambaConfig, random_model

from . import trt_api
from .helpers import cuda_on_cpu, write_hf_checkpoint
from .conftest import DATA_DIR, need


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def _compile(out, *args):
    r = subprocess.run([sys.executable, "-m", "mq_deploy", "compile", "-q", "-o", str(out), *map(str, args)],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def fp32_out(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("bv") / "fp32")


@pytest.fixture(scope="module")
def w8_out(tmp_path_factory):
    calib = need(DATA_DIR / "text" / "wikitext2_val_sample.jsonl")
    return _compile(tmp_path_factory.mktemp("bv") / "w8", "--recipe", "rtn-w8a8", "--calib", calib,
                    "--calib-samples", "4")


@pytest.fixture(scope="module")
def mq_out(tmp_path_factory):
    """MambaQuant W8A8 of the bundled model: every layer's Hadamard quantizes its own output (fused)."""
    return _compile(tmp_path_factory.mktemp("bv") / "mq", "--recipe", "mambaquant-w8a8", "--calib",
                    need(DATA_DIR / "text" / "wikitext2_val_sample.jsonl"), "--calib-samples", "2", "--calib-seq-len",
                    "32")


@pytest.fixture(scope="module")
def w4_out(tmp_path_factory):
    """RTN W4A8 with int4 blocks of 64 (the bundled model's dt_proj, 12 rows, is int8 per channel)."""
    return _compile(tmp_path_factory.mktemp("bv") / "w4", "--recipe", "rtn-w4a8-b64", "--calib",
                    need(DATA_DIR / "text" / "wikitext2_val_sample.jsonl"), "--calib-samples", "2", "--calib-seq-len",
                    "32")


@pytest.fixture(scope="module")
def w16_out(tmp_path_factory):
    """RTN W4A16 (weight-only) of the bundled model: compiled without calibration text (none is read)."""
    return _compile(tmp_path_factory.mktemp("bv") / "w16", "--recipe", "rtn-w4a16")


@pytest.fixture
def no_tensorrt(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "tensorrt" or name.startswith("tensorrt."):
            raise ImportError("No module named 'tensorrt'")
        return real_import(name, *a, **k)

    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.delenv("MQ_DEPLOY_PLUGINS", raising=False)


def _errors(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip()]


# -- build ----------------------------------------------------------------------------------------
def test_build_without_tensorrt_is_one_error_line_and_writes_nothing(fp32_out, no_tensorrt, capsys):
    before = sorted(os.listdir(fp32_out))
    assert main(["build", str(fp32_out)]) == 2
    cap = capsys.readouterr()
    lines = _errors(cap.err)
    assert len(lines) == 1 and lines[0].startswith("mq-deploy: error: ")
    for what in ("pip install \"tensorrt-cu12==10.3.*\"", "nvcr.io/nvidia/tensorrt", "python3-libnvinfer"):
        assert what in lines[0]
    assert cap.out == ""
    assert sorted(os.listdir(fp32_out)) == before  # no engine, no temporary file


def test_build_missing_outdir_and_missing_model(tmp_path, capsys):
    assert main(["build", str(tmp_path / "nowhere")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["build", str(tmp_path)]) == 2
    assert "has no model.onnx" in capsys.readouterr().err


def test_build_missing_plugin_library(fp32_out, tmp_path, monkeypatch, capsys):
    """With TensorRT, a missing plugin library is named with how to build it; without TensorRT, TensorRT is named
    first (building the library needs it: the library's hint alone would send the user in a circle)."""
    args = ["build", str(fp32_out), "--plugins", str(tmp_path / "libmq_trt_plugins.so")]
    if not _has_tensorrt():
        assert main(args) == 2
        (line,) = _errors(capsys.readouterr().err)
        assert "TensorRT's Python package is not installed" in line and "not found" not in line
    monkeypatch.setitem(sys.modules, "tensorrt", _trt(_FakeTRT(log := {})))
    assert main(args) == 2
    lines = _errors(capsys.readouterr().err)
    assert len(lines) == 1 and "not found" in lines[0] and "cmake -S plugins" in lines[0]
    assert not (fp32_out / "model.engine").exists() and not log


def test_build_bad_shapes(fp32_out, capsys):
    assert main(["build", str(fp32_out), "--opt-shapes", "1"]) == 2
    assert "BATCH,SEQUENCE" in capsys.readouterr().err
    assert main(["build", str(fp32_out), "--max-shapes", "1,8"]) == 2
    err = capsys.readouterr().err
    assert ("min <= opt <= max: the sequence of --opt-shapes (512) is above that of --max-shapes (8); got min 1,1, "
            "opt 1,512, max 1,8") in err and "Shapes(" not in err
    assert main(["build", str(fp32_out), "--opt-shapes", "0,512"]) == 2
    assert "--opt-shapes: batch and sequence must be >= 1" in capsys.readouterr().err
    # a value starting with '-' reaches the shape check (argparse alone would print its usage text)
    assert main(["build", str(fp32_out), "--opt-shapes", "-1,512"]) == 2
    err = capsys.readouterr().err
    assert "--opt-shapes: batch and sequence must be >= 1" in err and "expected one argument" not in err
    # a sequence of 0 given is a bad value, not "a batch only" (which is what it read as), and is shown as given
    for given in ("4,0", "0,0"):
        assert main(["build", str(fp32_out), "--dry-run", "--max-shapes", given]) == 2
        assert capsys.readouterr().err.strip() == (f"mq-deploy: error: --max-shapes: batch and sequence must be >= 1, "
                                                   f"got '{given}'")


def test_build_dry_run_prints_trtexec(fp32_out, w8_out, no_tensorrt, capsys):
    assert main(["build", str(fp32_out), "--dry-run", "--plugins", sys.executable, "--opt-shapes", "2x128",
                 "--fp16"]) == 0
    cmd = capsys.readouterr().out.strip()
    assert cmd.startswith(f"trtexec --onnx={fp32_out}/model.onnx --saveEngine={fp32_out}/model.engine")
    assert f"--dynamicPlugins={sys.executable}" in cmd and "--optShapes=input_ids:2x128" in cmd
    assert "--fp16" in cmd and "--int8" not in cmd
    assert main(["build", str(w8_out), "--dry-run"]) == 0  # quantized OUTDIR: INT8 on (explicit Q/DQ)
    assert "--int8" in capsys.readouterr().out
    assert main(["build", str(fp32_out), "--dry-run", "--int8"]) == 2  # a float OUTDIR has no scales for INT8
    assert "is not quantized, so --int8 has no scales to use" in capsys.readouterr().err
    # the dry run prints the command for the machine that has the plugin library, even where it is not built
    assert main(["build", str(w8_out), "--dry-run", "--plugins", "build/plugins/libmq_trt_plugins.so"]) == 0
    io = capsys.readouterr()
    assert "--dynamicPlugins=build/plugins/libmq_trt_plugins.so" in io.out and "not on this machine" in io.err
    assert "recipe is fp16" not in io.err


def test_build_outputs_may_not_be_the_outdirs_own_files(fp32_out, no_tensorrt, capsys):
    """-o / --timing-cache naming a graph, weights.bin or manifest.json of the OUTDIR (through any path spelling) is
    refused before any work: the engine would have replaced it. Other names inside the OUTDIR are fine."""
    for flag, name in (("-o", "model.onnx"), ("-o", "weights.bin"), ("--timing-cache", "manifest.json"),
                       ("-o", "model.decode.onnx")):
        given = str(fp32_out / ".." / fp32_out.name / name)
        assert main(["build", str(fp32_out), "--dry-run", flag, given]) == 2
        err = capsys.readouterr().err
        assert f"{flag} {given} is {fp32_out}'s {name}, a file of the compile that writing it would replace" in err
    assert main(["build", str(fp32_out), "--dry-run", "-o", str(fp32_out / "fast.engine"), "--timing-cache",
                 str(fp32_out / "timing.cache")]) == 0
    capsys.readouterr()


def test_build_of_an_fp16_outdir_says_to_build_with_fp16(tmp_path, no_tensorrt, capsys):
    """The fp16 recipe's graph is fp32 with fp16-rounded weights: without --fp16 the build says that it gives an fp32
    engine (strongly typed too: that build follows the graph's fp32 types)."""
    out = _compile(tmp_path / "f16", "--recipe", "fp16")
    note = "this OUTDIR's recipe is fp16 (weights rounded to fp16, the graph in fp32): build with --fp16 (TensorRT 10)"
    assert main(["build", str(out), "--dry-run"]) == 0
    assert f"{note} for an fp16 engine; without it TensorRT runs fp32" in capsys.readouterr().err
    assert main(["build", str(out), "--dry-run", "--strongly-typed"]) == 0
    assert f"{note} for an fp16 engine; a strongly typed build follows the graph's fp32 types" in capsys.readouterr().err
    assert main(["build", str(out), "--dry-run", "--fp16"]) == 0
    assert note not in capsys.readouterr().err


def test_build_polygraphy_prints_the_two_runs(w8_out, no_tensorrt, tmp_path, capsys):
    """--polygraphy (a dry run): the onnxruntime reference run, then the TensorRT run compared against its saved
    outputs, with the library that registers its plugins when polygraphy dlopens it."""
    assert main(["build", str(w8_out), "--polygraphy", "--plugins", "build/plugins/libmq_trt_plugins.so",
                 "--opt-shapes", "2,64"]) == 0
    io = capsys.readouterr()
    ref, trt = io.out.strip().splitlines()
    assert ref.startswith(f"polygraphy run {w8_out}/model.portable.onnx --onnxrt --graph-optimization-level "
                          "ORT_ENABLE_BASIC --input-shapes 'input_ids:[2,64]'")  # (the Q/DQ nodes as written)
    assert f"--save-outputs {w8_out}/polygraphy_ort_outputs.json" in ref
    assert trt.startswith(f"polygraphy run {w8_out}/model.onnx --trt --plugins "
                          "build/plugins/libmq_trt_plugins_register.so --trt-min-shapes")
    assert f"--load-outputs {w8_out}/polygraphy_ort_outputs.json" in trt and "--int8" in trt
    assert "build/plugins/libmq_trt_plugins_register.so is not on this machine" in io.err
    assert main(["build", str(w8_out), "--polygraphy"]) == 0  # no library named: a placeholder, and a note
    io = capsys.readouterr()
    assert "--plugins '<libmq_trt_plugins_register.so>'" in io.out
    assert "<libmq_trt_plugins_register.so> stands for the plugin library" in io.err
    # a build tree from before the register library: say how to get it; -o has no polygraphy meaning
    lib = tmp_path / "libmq_trt_plugins.so"
    lib.write_bytes(b"")
    assert main(["build", str(w8_out), "--polygraphy", "--plugins", str(lib), "-o", str(tmp_path / "e")]) == 0
    err = capsys.readouterr().err
    assert f"{tmp_path}/libmq_trt_plugins_register.so is not beside {lib}: rebuild the plugins" in err
    assert "-o is not used by the polygraphy check" in err
    assert main(["build", str(w8_out), "--polygraphy", "--plugins", ""]) == 2
    assert "--plugins: an empty path" in capsys.readouterr().err


def _trt(impl, major: int = 10):
    """`impl` (a fake of TensorRT 10) behind the real API surface of TensorRT `major` where its bindings are at hand
    (tests/trt_api.py: a wrong name, argument or type then fails as TensorRT would), else `impl` as it is (made to
    look like TensorRT 11 for major 11)."""
    return trt_api.checked(impl if major == 10 else _as11(impl), trt_api.spec_for(major))


def _as11(fake):
    """`fake` as TensorRT 11 is where its bindings are not at hand: no precision builder flags."""
    fake.__version__ = "11.1.0-fake"
    del fake.BuilderFlag.INT8, fake.BuilderFlag.FP16, fake.BuilderFlag.PREFER_PRECISION_CONSTRAINTS
    return fake


def _n(member) -> str:
    """An enum member's name (checked fakes pass TensorRT's members; unchecked ones pass the names)."""
    return getattr(member, "name", member)


class _FakeTRT(types.ModuleType):
    """Just enough of the TensorRT Python API for build_engine; records what it was asked. Enum members are
    written as their names (trt_api's conventions)."""

    def __init__(self, log):
        super().__init__("tensorrt")
        self.__version__ = "10.3.0-fake"
        self.log = log
        self.drop_tensors = set()  # tensors the fake parser leaves out
        self.parse_errors, self.build_fails, self.no_cache = [], False, False  # failures to stage
        # the build's progress callbacks (TensorRT 10's IProgressMonitor): (phase, parent, steps) in start order,
        # each child run between two steps of its parent; `interrupt` = (phase, step): Ctrl-C arrives while the
        # monitor handles that step (the name it is given raises KeyboardInterrupt when read)
        self.phases = [("Building engine", None, 3), ("Tactic selection", "Building engine", 5)]
        self.interrupt, self.interrupts, self.signal = None, 1, signal.SIGINT
        self.IProgressMonitor = type("IProgressMonitor", (), {"__init__": lambda s: None})  # unchecked runs
        ns = types.SimpleNamespace
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, sev=None: None})
        self.BuilderFlag = ns(INT8="INT8", FP16="FP16", PREFER_PRECISION_CONSTRAINTS="PREFER_PRECISION_CONSTRAINTS")
        self.float32 = "FLOAT"
        self.NetworkDefinitionCreationFlag = ns(STRONGLY_TYPED=1)  # TensorRT 10's value: create_network(1 << 1)
        self.MemoryPoolType = ns(WORKSPACE="WORKSPACE")
        fake = self

        class Registry:
            def __init__(self):
                self.creators = set()

            def get_creator(self, name, version, namespace):
                return (name, version, namespace) if (name, version, namespace) in self.creators else None

            def load_library(self, path):  # like IPluginRegistry::loadLibrary: nullptr if a plugin is registered
                fake.log["plugins"] = path
                fake.log["load_library_calls"] = fake.log.get("load_library_calls", 0) + 1
                if ("SelectiveScan", "1", "mq_deploy") in self.creators:
                    return None
                self.creators = {("SelectiveScan", "1", "mq_deploy")}
                return object()

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                fake.log["profile"] = (name, tuple(lo), tuple(opt), tuple(hi))  # the last input's
                fake.log.setdefault("profiles", {})[name] = (tuple(lo), tuple(opt), tuple(hi))

        class Cache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return self.data or b"cache"

        class Config:
            def set_memory_pool_limit(self, pool, size):
                fake.log.setdefault("memory_pools", []).append((_n(pool), size))

            def set_flag(self, f):
                fake.log.setdefault("flags", []).append(_n(f))

            def add_optimization_profile(self, p):
                fake.log["profiles_added"] = fake.log.get("profiles_added", 0) + 1

            def create_timing_cache(self, data):  # None for a file TensorRT cannot read
                return None if data == b"corrupt" or fake.no_cache else Cache(data)

            def set_timing_cache(self, c, ignore_mismatch):  # False for a cache from another device, unless ignored
                assert c is not None
                self.cache = c
                return bool(ignore_mismatch) or c.data != b"foreign"

            def get_timing_cache(self):
                return self.cache

            progress_monitor = None

        class Tensor:
            def __init__(self, name):
                self.name = name

        class Layer:
            def __init__(self, outputs):
                self.outputs = [Tensor(o) for o in outputs]
                self.num_outputs = len(outputs)
                self.precision = None

            def get_output(self, j):
                return self.outputs[j]

            def set_output_type(self, j, dtype):
                assert _n(self.precision) == _n(dtype) == "FLOAT"  # fp32 compute, then fp32 output
                fake.log.setdefault("fp32", []).append(self.outputs[j].name)

        class Network:  # a layer per ONNX node, its outputs named as the node's (what TensorRT's parser does)
            def __init__(self):
                self.layers = []

            @property
            def num_layers(self):
                return len(self.layers)

            def get_layer(self, i):
                return self.layers[i]

            def mark_output(self, t):
                fake.log.setdefault("marked", []).append(t.name)

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.log["network_flags"] = flags
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                if config.progress_monitor is None and fake.interrupt:  # no monitor: Ctrl-C during the build
                    for _ in range(fake.interrupts):
                        signal.raise_signal(signal.SIGINT)
                        time.sleep(4 * trt_progress.WAIT_S)
                if config.progress_monitor is not None and not fake.report(config.progress_monitor):
                    fake.log["cancelled"] = True
                    return None  # TensorRT: the build was cancelled
                return None if fake.build_fails else b"ENGINE"

        class ParserError:
            def __init__(self, desc):
                self.desc = desc

            def __str__(self):
                return f"In node 7 (parseGraph): INVALID_NODE: {self.desc}"

        class Parser:
            def __init__(self, network, logger):
                self.network = network

            @property
            def num_errors(self):
                return len(fake.parse_errors)

            def get_error(self, i):
                return ParserError(fake.parse_errors[i])

            def parse_from_file(self, path):
                fake.log["onnx"] = path
                if fake.parse_errors:
                    return False
                if isinstance(self.network, Network):
                    import onnx

                    fake.log["parsed"] = onnx.load(path, load_external_data=False)
                    self.network.layers = [Layer([o for o in n.output if o not in fake.drop_tensors])
                                           for n in fake.log["parsed"].graph.node]
                return True

        self._registry = Registry()
        self.Builder, self.OnnxParser = Builder, Parser

    def init_libnvinfer_plugins(self, logger, ns):
        self.log["nvinfer_plugins"] = ns  # TensorRT's own plugins registered (before the ONNX parser needs them)

    def report(self, monitor) -> bool:
        """The progress callbacks of a build as TensorRT makes them (here from run_build's worker thread): steps
        counted from 0, phase_finish for every phase also after a cancel, and an exception out of a callback printed
        and dropped as TensorRT's bindings do (from step_complete it also cancels). `interrupt` = (phase, step): Ctrl-C
        (SIGINT to the process) while TensorRT works on that step, `interrupts` times. False: cancelled."""
        def call(fn, *args):
            try:
                return fn(*args)
            except Exception as e:  # noqa: BLE001
                print(f"[ERROR] Exception caught in {fn.__name__}(): {e!r}", file=sys.stderr)
                self.log.setdefault("callback_errors", []).append(repr(e))
                return False

        def run(name, parent, n):
            call(monitor.phase_start, name, parent, n)
            try:
                for step in range(n):
                    for sub, m in ((c, m) for c, p, m in self.phases if p == name and step == 0):
                        if not run(sub, name, m):
                            return False
                    if self.interrupt == (name, step):
                        for _ in range(self.interrupts):
                            signal.raise_signal(self.signal)
                            time.sleep(4 * trt_progress.WAIT_S)  # the main thread looks every WAIT_S
                    if not call(monitor.step_complete, name, step):
                        return False
                return True
            finally:
                call(monitor.phase_finish, name)

        return all(run(name, None, n) for name, p, n in self.phases if p is None)

    def get_plugin_registry(self):
        return self._registry


def test_int4_weights_are_said_to_be_weight_only_in_tensorrt(w4_out, w8_out, tmp_path, monkeypatch, capsys):
    """TensorRT documents INT4 as weight-only: a W4A8 OUTDIR's MatMuls are not int8 GEMMs there. build (dry run and
    real), and lint say so with the counts; a W8A8 OUTDIR gets no such note."""
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    expect = "24 MatMul weights are INT4 (24 in blocks of 64) with int8 inputs"  # dt_proj (12 rows): int8
    assert main(["build", str(w4_out), "--dry-run"]) == 0
    io = capsys.readouterr()
    assert "--int8" in io.out and f"note: {expect}" in io.err and "not as int8 GEMMs" in io.err
    assert "refuses per-channel INT4" not in io.err  # a -b64 recipe has no per-channel INT4 weight
    q = json.loads((w4_out / "manifest.json").read_text())["quantization"]
    assert q["weight_bits"] == 4 and q["int8_weights"] == sorted(f"layers.{i}.dt_proj" for i in range(8))
    assert main(["build", str(w8_out), "--dry-run"]) == 0
    assert "INT4" not in capsys.readouterr().err
    assert main(["lint", str(w4_out)]) == 0  # a note, not a placement violation
    err = capsys.readouterr().err
    assert err.count(f"note: {expect}") == 1 and "model.onnx: 0 violation(s)" in err  # once for the OUTDIR's graphs
    assert main(["lint", str(w4_out / "model.onnx"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["notes"][0].startswith(expect)
    assert main(["lint", str(w4_out), "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert len(j["notes"]) == 1 and j["notes"][0].startswith(expect) and all(f["notes"] == j["notes"] for f in j["files"])
    assert main(["lint", str(w8_out), "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["notes"] == [] and all(f["notes"] == [] for f in j["files"])
    log = {}
    monkeypatch.setitem(sys.modules, "tensorrt", _trt(_FakeTRT(log)))
    lib = tmp_path / "libmq_trt_plugins.so"
    lib.write_bytes(b"")
    assert main(["build", str(w4_out), "-q", "--plugins", str(lib), "-o", str(tmp_path / "m.engine")]) == 0
    err = capsys.readouterr().err
    assert f"warning: {expect}" in err and log["flags"] == ["INT8"]  # a warning even with -q; the build goes on


def test_build_with_fake_tensorrt(w8_out, tmp_path, monkeypatch, capsys):
    log = {}
    monkeypatch.setitem(sys.modules, "tensorrt", _trt(_FakeTRT(log)))
    monkeypatch.delenv("MQ_DEPLOY_PLUGINS", raising=False)
    assert main(["build", str(w8_out)]) == 2  # plugin nodes in the graph and no library named
    assert "--plugins LIB" in capsys.readouterr().err
    lib = tmp_path / "libmq_trt_plugins.so"
    lib.write_bytes(b"")
    engine, cache = tmp_path / "e" / "m.engine", tmp_path / "timing.cache"
    rc = main(["build", str(w8_out), "--plugins", str(lib), "--fp16", "--min-shapes", "1,4", "--opt-shapes", "2,64",
               "--max-shapes", "4,256", "--timing-cache", str(cache), "-o", str(engine)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert cap.out.strip() == str(engine) and engine.read_bytes() == b"ENGINE" and cache.read_bytes() == b"cache"
    assert "equivalent: trtexec" in cap.err and "--int8 --fp16" in cap.err
    # TensorRT's build phases as they start and end (a quick build: no running line in a log)
    assert "\nTensorRT: Building engine\n" in cap.err and "\nTensorRT: Building engine: done in " in cap.err
    assert "Tactic selection" not in cap.err
    assert log["plugins"] == str(lib.resolve()) and log["onnx"] == str(w8_out / "model.onnx")
    assert log["profile"] == ("input_ids", (1, 4), (2, 64), (4, 256))
    assert log["flags"] == ["INT8", "FP16", "PREFER_PRECISION_CONSTRAINTS"]
    norms = [n.output[0] for n in rms_norm_nodes(onnx.load(str(w8_out / "model.onnx"), load_external_data=False))]
    assert log["fp32"] == norms and len(norms) == 5 * 9  # every RMSNorm layer (8 layers + the head) kept fp32
    assert "--layerPrecisions=" in cap.err and "head/sq:fp32" in cap.err
    assert sorted(os.listdir(engine.parent)) == ["m.engine"]  # written atomically: no temporary left
    # a second build in the same process: the library's plugins are registered already, not loaded again
    assert main(["build", str(w8_out), "-q", "--plugins", str(lib), "-o", str(engine)]) == 0
    assert "TensorRT" not in capsys.readouterr().err  # -q: no progress
    assert log["load_library_calls"] == 1
    # an engine or timing cache that cannot be written: one line before the build, not a traceback after it
    log.clear()
    for bad in (["-o", str(lib / "m.engine")], ["--timing-cache", str(lib / "t.cache")]):
        assert main(["build", str(w8_out), "--plugins", str(lib), *bad]) == 2
        assert "mq-deploy: error: cannot write the " in capsys.readouterr().err and "onnx" not in log


def test_build_progress_and_ctrl_c(w8_out, tmp_path, monkeypatch, capsys,
                                   signals_as_a_terminal_gives_them):
    """Without -q, build shows TensorRT's build phases (in a log the running one every LOG_INTERVAL_S, here every
    step; TensorRT counts steps from 0). Ctrl-C during the build (SIGINT while TensorRT works in run_build's worker
    thread) cancels it at TensorRT's next step, also with -q: exit 130, neither engine nor timing cache written. A
    second Ctrl-C, or the first where TensorRT has no IProgressMonitor, exits at once."""
    import threading

    fake = _FakeTRT(log := {})
    monkeypatch.setitem(sys.modules, "tensorrt", _trt(fake))
    monkeypatch.setattr(trt_progress, "LOG_INTERVAL_S", 0.0)
    lib = tmp_path / "libmq_trt_plugins.so"
    lib.write_bytes(b"")
    engine, cache = tmp_path / "e" / "m.engine", tmp_path / "timing.cache"
    args = ["build", str(w8_out), "--plugins", str(lib), "--timing-cache", str(cache), "-o", str(engine)]
    assert main(args) == 0
    err = capsys.readouterr().err
    for k in range(1, 6):
        assert f"\nTensorRT: Building engine > Tactic selection {k}/5 (" in err
    assert "\nTensorRT: Building engine 3/3 (" in err and err.index("Tactic selection 5/5") < err.index("done in")
    assert "0/5" not in err.replace("Tactic selection 0/5 (0.0 s)", "") and "6/5" not in err
    engine.unlink()
    cache.unlink()

    def nothing_written():
        return not cache.exists() and os.listdir(engine.parent) == []  # no engine, no temporary file

    fake.interrupt = ("Tactic selection", 2)  # Ctrl-C while TensorRT works on the third step
    for quiet in ([], ["-q"]):
        log.clear()
        assert main(args + quiet) == 130
        err = capsys.readouterr().err
        assert "\nmq-deploy: cancelling the TensorRT build at its next step (Ctrl-C again to quit at once)\n" in err
        assert err.rstrip().endswith("\nmq-deploy: interrupted") and log["cancelled"] and nothing_written()
        assert "callback_errors" not in log  # the monitor raised nothing into TensorRT
        if not quiet:
            assert "Tactic selection 2/5" in err and "Tactic selection 4/5" not in err
            assert "\nTensorRT: Building engine: cancelled after " in err and "done in" not in err
        else:
            assert "TensorRT: " not in err
    fake.signal = signal.SIGTERM  # `docker stop`, `timeout`: the same cancel, said as terminated (143)
    assert main(args + ["-q"]) == 143
    assert capsys.readouterr().err.rstrip().endswith("\nmq-deploy: terminated") and nothing_written()
    fake.signal = signal.SIGINT

    exits = []

    def hard_exit(code):
        exits.append(code)
        raise SystemExit(code)

    def second_ctrl_c(trt_module, interrupts):
        fake_ = trt_module
        fake_.interrupt, fake_.interrupts = ("Tactic selection", 2), interrupts
        with pytest.raises(SystemExit):
            main(args)
        for t in threading.enumerate():  # the abandoned build ends by itself (the fake's does)
            if t.name == "tensorrt-build":
                t.join(10)
        err = capsys.readouterr().err
        assert "mq-deploy: interrupted (the TensorRT build did not stop; nothing was written)" in err
        assert nothing_written()

    monkeypatch.setattr(trt_progress, "_hard_exit", hard_exit)
    second_ctrl_c(fake, 2)
    assert exits == [130]
    bare = _FakeTRT({})
    del bare.IProgressMonitor  # unchecked: a TensorRT without the class
    monkeypatch.setitem(sys.modules, "tensorrt", bare)
    assert main(args) == 0 and engine.read_bytes() == b"ENGINE"
    assert "TensorRT: " not in capsys.readouterr().err
    engine.unlink()
    cache.unlink()
    second_ctrl_c(bare, 1)  # no monitor to cancel through: the first Ctrl-C exits
    assert exits == [130, 130]


def test_build_prefill_and_decode_graphs(w8_out, tmp_path, monkeypatch, capsys):
    """--graph prefill / decode parse the stateful graphs with a profile for every input: prefill input_ids and
    attention_mask [B, L], the decode step input_ids [B, 1] and each layer's states [B, d_inner, ...] (the batch of
    the shapes only); the default engine is named after the graph, and the trtexec line sets every input."""
    man = json.loads((w8_out / "manifest.json").read_text())
    c = man["model"]["config"]
    di, layers = c["d_model"] * c.get("expand", 2), c["n_layer"]
    lib = tmp_path / "libmq_trt_plugins.so"
    lib.write_bytes(b"")
    for graph, want in (("prefill", {"input_ids": ((1, 4), (2, 64), (4, 256)),
                                     "attention_mask": ((1, 4), (2, 64), (4, 256))}),
                        ("decode", {"input_ids": ((1, 1), (2, 1), (4, 1)),
                                    **{f"{k}.{i}": tuple((b, di, n) for b in (1, 2, 4))
                                       for i in range(layers) for k, n in (("conv_state", c["d_conv"] - 1),
                                                                            ("ssm_state", c["d_state"]))}})):
        monkeypatch.setitem(sys.modules, "tensorrt", _trt(_FakeTRT(log := {})))
        engine = tmp_path / f"{graph}.engine"
        rc = main(["build", str(w8_out), "--graph", graph, "--plugins", str(lib), "--min-shapes", "1,4",
                   "--opt-shapes", "2,64", "--max-shapes", "4,256", "-o", str(engine)])
        cap = capsys.readouterr()
        assert rc == 0, cap.err
        assert log["onnx"] == str(w8_out / f"model.{graph}.onnx") and engine.read_bytes() == b"ENGINE"
        assert log["profiles"] == want and log["flags"] == ["INT8"]
        line = next(ln for ln in cap.err.splitlines() if "equivalent: trtexec" in ln)
        for k, j in (("min", 0), ("opt", 1), ("max", 2)):
            assert f"--{k}Shapes=" + ",".join(f"{n}:" + "x".join(map(str, s[j])) for n, s in want.items()) in line
        plan = mtrt.plan_build(w8_out, plugin_lib=str(lib), graph=graph)
        assert plan.engine == str(w8_out / f"model.{graph}.engine") and plan.plugin_nodes == layers  # no Hadamard
        # its validation engine: the tensors before the graph's QuantizeLinear nodes marked too, a name of its own
        log.clear()
        engine = w8_out / f"model.{graph}.validate.engine"
        try:
            assert main(["build", str(w8_out), "-q", "--graph", graph, "--validation-engine", "--plugins", str(lib),
                         "--opt-shapes", "2,64"]) == 0, capsys.readouterr().err
            assert engine.read_bytes() == b"ENGINE" and log["onnx"] == str(w8_out / f"model.{graph}.onnx")
            marked = quantized_tensors(onnx.load(str(w8_out / f"model.{graph}.onnx"), load_external_data=False))
            assert log["marked"] == marked and len(marked) >= layers * 4
            assert set(log["profiles"]) == set(want) and log["profiles"]["input_ids"][1] == (2, 64 if graph ==
                                                                                          "prefill" else 1)
        finally:
            engine.unlink(missing_ok=True)


def test_build_graph_errors(w8_out, tmp_path, no_tensorrt, capsys):
    assert main(["build", str(w8_out), "--graph", "decode", "--validation-engine", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "--validation-engine has no trtexec equivalent" in err and "build OUTDIR --graph decode --validation" in err
    assert main(["build", str(w8_out), "--graph", "prefill", "--opt-shapes", "2", "--dry-run"]) == 2
    assert "BATCH,SEQUENCE" in capsys.readouterr().err
    assert main(["build", str(w8_out), "--graph", "decode", "--opt-shapes", "2", "--dry-run"]) == 0  # batch alone
    assert "--optShapes=input_ids:2x1,conv_state.0:2x" in capsys.readouterr().out
    old = tmp_path / "old"  # an OUTDIR copied without its stateful graphs: its manifest lists them
    old.mkdir()
    for f in ("model.onnx", "manifest.json"):
        (old / f).write_bytes((w8_out / f).read_bytes())
    assert main(["build", str(old), "--graph", "prefill", "--dry-run"]) == 2
    assert (f"{old} has no model.prefill.onnx (the prefill graph), which its manifest.json lists: copy it from the "
            "directory `mq-deploy compile` wrote") in capsys.readouterr().err
    man = json.loads((old / "manifest.json").read_text())  # a compile that did not write them (an older version)
    man["files"] = {k: v for k, v in man["files"].items() if "prefill" not in k and "decode" not in k}
    (old / "manifest.json").write_text(json.dumps(man))
    assert main(["build", str(old), "--graph", "prefill", "--dry-run"]) == 2
    assert (f"{old} has no model.prefill.onnx (the prefill graph), and its manifest.json does not list it: compile "
            "the checkpoint again with this mq-deploy") in capsys.readouterr().err
    (old / "manifest.json").unlink()  # without a manifest, build cannot tell INT8 from float: refused
    assert main(["build", str(old), "--dry-run"]) == 2
    assert f"{old} has no manifest.json: copy it with the graphs" in capsys.readouterr().err
    with pytest.raises(UserError, match="--graph must be one of model, prefill, decode"):
        mtrt.plan_build(w8_out, graph="step", require_plugin_lib=False)


@pytest.mark.parametrize("major", [10, 11])
def test_build_validation_engine_marks_the_tensors_before_quantization(w8_out, fp32_out, tmp_path, monkeypatch,
                                                                     capsys, major):
    fake = _FakeTRT(log := {})
    monkeypatch.setitem(sys.modules, "tensorrt", _trt(fake, major))
    lib = tmp_path / "libmq_trt_plugins.so"
    lib.write_bytes(b"")
    want = quantized_tensors(onnx.load(str(w8_out / "model.onnx"), load_external_data=False))
    assert len(want) >= 8 * 4  # per layer at least the scan's u, delta, B, C
    engine = w8_out / "model.validate.engine"  # the default name
    try:
        rc = main(["build", str(w8_out), "--validation-engine", "--plugins", str(lib)])
        cap = capsys.readouterr()
        assert rc == 0, cap.err
        assert cap.out.strip() == str(engine) and engine.read_bytes() == b"ENGINE"
        assert log["marked"] == want and f"the {len(want)} tensors before its QuantizeLinear" in cap.err
    finally:
        engine.unlink(missing_ok=True)
    log.clear()
    assert main(["build", str(w8_out), "-q", "--plugins", str(lib), "-o", str(tmp_path / "m.engine")]) == 0
    assert "marked" not in log and "fp32" not in log  # only its graph's outputs; no FP16, nothing pinned
    fake.drop_tensors = {want[3]}  # a tensor the parser does not have: one error, no engine
    assert main(["build", str(w8_out), "-q", "--validation-engine", "--plugins", str(lib), "-o",
                 str(tmp_path / "v.engine")]) == 2
    (line,) = _errors(capsys.readouterr().err)
    assert f"no tensor {want[3]} to mark" in line and not (tmp_path / "v.engine").exists()
    assert main(["build", str(fp32_out), "--validation-engine", "--plugins", str(lib)]) == 2
    assert "is not quantized" in capsys.readouterr().err
    assert main(["build", str(w8_out), "--validation-engine", "--dry-run"]) == 2
    assert "no trtexec equivalent" in capsys.readouterr().err
    assert main(["build", str(w8_out), "--validation-engine", "--polygraphy"]) == 2
    assert "no polygraphy equivalent" in capsys.readouterr().err


def test_validation_engine_of_fused_hadamards_marks_their_dequantized_codes(mq_out, tmp_path, monkeypatch, capsys):
    """A MambaQuant OUTDIR's Hadamards write int8 (their QuantizeLinear fused, graph/fuse_scan_quant.py): the
    deployment engine parses model.onnx as it is; the validation engine a temporary copy beside it (its weights
    resolve) in which each Hadamard still writes int8, as deployed, and a DequantizeLinear of its codes makes the
    tensor named as the node, which is marked with the other quantizer inputs; the copy is gone afterwards."""
    out = mq_out
    fake = _FakeTRT(log := {})
    monkeypatch.setitem(sys.modules, "tensorrt", _trt(fake))
    lib = tmp_path / "libmq_trt_plugins.so"
    lib.write_bytes(b"")
    for graph, file in (("model", "model.onnx"), ("prefill", "model.prefill.onnx"), ("decode", "model.decode.onnx")):
        g = onnx.load(str(out / file), load_external_data=False)
        fused = {n.name: list(n.output) for n in g.graph.node if n.op_type == "Hadamard" and any(
            a.name == "out_scale" and a.f for a in n.attribute)}
        want = sorted(validation_marks(g))  # each quantized tensor, and each fused Hadamard's float twin
        assert len(fused) == 8 and set(fused) <= set(want) and {f"{t}::float" for t in fused} <= set(want)
        assert len(want) == len(quantized_tensors(g)) + 8
        log.clear()
        assert main(["build", str(out), "-q", "--graph", graph, "--plugins", str(lib), "-o",
                     str(tmp_path / "m.engine")]) == 0
        assert log["onnx"] == str(out / file) and "marked" not in log
        log.clear()
        rc = main(["build", str(out), "--graph", graph, "--validation-engine", "--plugins", str(lib), "-o",
                   str(tmp_path / f"{graph}.engine")])
        cap = capsys.readouterr()
        assert rc == 0, cap.err
        assert log["marked"] == want and "its 8 Hadamard layers write int8 as deployed" in cap.err
        assert f"the {len(quantized_tensors(g))} tensors before its QuantizeLinear nodes are outputs" in cap.err
        if graph != "model":
            assert f"validate --graph {graph} --engine {tmp_path / f'{graph}.engine'}" in cap.err
        parsed = Path(log["onnx"])
        assert parsed.parent == out and parsed.name.startswith(f".{Path(file).stem}.codes-") and not parsed.exists()
        nodes = log["parsed"].graph.node
        for name, codes in fused.items():  # still fused, its codes dequantized under the node's name, and a twin
            (h,) = [n for n in nodes if n.name == name]
            assert list(h.output) == codes and any(a.name == "out_scale" and a.f for a in h.attribute)
            (dq,) = [n for n in nodes if list(n.output) == [name]]
            assert dq.op_type == "DequantizeLinear" and dq.input[0] == codes[0]
            (twin,) = [n for n in nodes if list(n.output) == [f"{name}::float"]]
            assert twin.op_type == "Hadamard" and list(twin.input) == list(h.input)
            assert not any(a.name == "out_scale" and a.f for a in twin.attribute)
        assert len(nodes) == len(g.graph.node) + 16
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary left in OUTDIR
    fake.parse_errors = ["broken"]  # a failed parse removes the copy too
    assert main(["build", str(out), "-q", "--validation-engine", "--plugins", str(lib), "-o",
                 str(tmp_path / "w.engine")]) == 2
    assert "could not parse" in capsys.readouterr().err and not Path(log["onnx"]).exists()


@pytest.mark.parametrize("old, why", [(b"corrupt", "could not read"), (b"foreign", "another device")])
@pytest.mark.parametrize("major", [10, 11])
def test_build_replaces_an_unusable_timing_cache(w8_out, tmp_path, monkeypatch, capsys, old, why, major):
    monkeypatch.setitem(sys.modules, "tensorrt", _trt(_FakeTRT({}), major))
    lib, cache = tmp_path / "libmq_trt_plugins.so", tmp_path / "timing.cache"
    lib.write_bytes(b"")
    cache.write_bytes(old)
    rc = main(["build", str(w8_out), "-q", "--plugins", str(lib), "--timing-cache", str(cache),
               "-o", str(tmp_path / "m.engine")])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    (line,) = _errors(cap.err)  # the warning shows even with -q
    assert line.startswith("warning: ") and why in line and str(cache) in line
    assert cache.read_bytes() == b"cache"  # the build started from an empty cache and saved that


@pytest.mark.parametrize("major", [10, 11])
def test_build_failures_in_tensorrt_are_one_error_and_write_nothing(w8_out, tmp_path, monkeypatch, capsys, major):
    fake = _FakeTRT({})
    monkeypatch.setitem(sys.modules, "tensorrt", _trt(fake, major))
    lib, engine, cache = tmp_path / "libmq_trt_plugins.so", tmp_path / "e" / "m.engine", tmp_path / "timing.cache"
    lib.write_bytes(b"")
    args = ["build", str(w8_out), "-q", "--plugins", str(lib), "--timing-cache", str(cache), "-o", str(engine)]
    fake.parse_errors = ["Plugin not found", "no importer for SelectiveScan"]
    assert main(args) == 2
    (line,) = _errors(capsys.readouterr().err)
    node = "In node 7 (parseGraph): INVALID_NODE:"
    assert line == (f"mq-deploy: error: TensorRT could not parse {w8_out / 'model.onnx'}: {node} Plugin not found; "
                    f"{node} no importer for SelectiveScan")
    fake.parse_errors, fake.build_fails = [], True
    assert main(args) == 2
    (line,) = _errors(capsys.readouterr().err)
    assert line.startswith("mq-deploy: error: TensorRT failed to build an engine") and "see the log above" in line
    fake.build_fails, fake.no_cache = False, True
    assert main(args) == 2
    (line,) = _errors(capsys.readouterr().err)
    assert line == "mq-deploy: error: TensorRT could not create an empty timing cache (see the log above)"
    assert not engine.exists() and not cache.exists()


def test_build_command_lines_follow_the_tensorrt_version(w8_out, tmp_path, monkeypatch, capsys):
    log = {}
    monkeypatch.setitem(sys.modules, "tensorrt", _trt(_FakeTRT(log)))
    lib = tmp_path / "libmq_trt_plugins.so"
    lib.write_bytes(b"")
    assert main(["build", str(w8_out), "--dry-run", "--plugins", str(lib)]) == 0
    assert "--int8" in capsys.readouterr().out  # TensorRT 10: INT8 is a builder flag
    monkeypatch.setitem(sys.modules, "tensorrt", _trt(_FakeTRT(log), 11))
    assert main(["build", str(w8_out), "--dry-run", "--plugins", str(lib)]) == 0
    assert "--int8" not in capsys.readouterr().out  # TensorRT 11's trtexec has no --int8: the Q/DQ nodes decide
    rc = main(["build", str(w8_out), "--plugins", str(lib), "-o", str(tmp_path / "m.engine")])
    cap = capsys.readouterr()
    assert rc == 0 and "equivalent: trtexec" in cap.err and "--int8" not in cap.err
    assert "flags" not in log and log["network_flags"] == 0  # no INT8 flag: the Q/DQ nodes decide
    assert main(["build", str(w8_out), "--dry-run", "--plugins", str(lib), "--fp16"]) == 2
    assert "TensorRT 11 has no FP16 builder flag" in capsys.readouterr().err


def test_polygraphy_reference_of_a_quantized_outdir_runs_its_qdq_nodes_as_written(w8_out, fp32_out, tmp_path, capsys):
    """At onnxruntime's default level the reference would run fused int8 kernels (MatMulIntegerToFloat), which saturate
    at int16 on x86-64 CPUs without VNNI: the printed line asks for the basic level, which keeps the Q/DQ nodes."""
    import argparse
    import shlex

    import onnxruntime as ort

    run = pytest.importorskip("polygraphy.tools.run.run")
    ap = argparse.ArgumentParser()
    run.Run().setup_parser(ap.add_subparsers())
    lines = {}
    for name, out in (("w8", w8_out), ("fp32", fp32_out)):
        assert main(["build", str(out), "--polygraphy", "--plugins", "/x/libmq_trt_plugins.so"]) == 0
        (ref,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("polygraphy run")
                  and "--onnxrt" in ln]
        lines[name] = ap.parse_args(shlex.split(ref)[1:])
    assert lines["w8"].graph_optimization_level == "ORT_ENABLE_BASIC"
    assert lines["fp32"].graph_optimization_level is None  # a float graph: onnxruntime's default
    kinds = {}
    for level in ("ORT_ENABLE_ALL", lines["w8"].graph_optimization_level):
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        so.optimized_model_filepath = str(tmp_path / f"{level}.onnx")
        ort.InferenceSession(lines["w8"].model_file, so, providers=["CPUExecutionProvider"])
        kinds[level] = {n.op_type for n in onnx.load(so.optimized_model_filepath, load_external_data=False).graph.node}
    assert "MatMulIntegerToFloat" in kinds["ORT_ENABLE_ALL"]  # what the line avoids (the premise of this test)
    assert "MatMulIntegerToFloat" not in kinds["ORT_ENABLE_BASIC"] and "DequantizeLinear" in kinds["ORT_ENABLE_BASIC"]


def test_build_strongly_typed_with_fake_tensorrt(w8_out, tmp_path, monkeypatch, capsys):
    log = {}
    monkeypatch.setitem(sys.modules, "tensorrt", _trt(_FakeTRT(log)))
    lib, engine = tmp_path / "libmq_trt_plugins.so", tmp_path / "m.engine"
    lib.write_bytes(b"")
    rc = main(["build", str(w8_out), "--plugins", str(lib), "-o", str(engine)])
    assert rc == 0, capsys.readouterr().err
    assert log["network_flags"] == 0 and log["flags"] == ["INT8"]  # the default: weakly typed, INT8 for Q/DQ
    log.clear()
    capsys.readouterr()
    rc = main(["build", str(w8_out), "--plugins", str(lib), "--strongly-typed", "-o", str(engine)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert cap.out.strip() == str(engine) and engine.read_bytes() == b"ENGINE"
    assert log["network_flags"] == 1 << 1 and "flags" not in log  # STRONGLY_TYPED, and no INT8 / FP16 flag
    building = next(ln for ln in cap.err.splitlines() if ln.startswith("building "))
    assert "strongly typed" in building and "INT8" not in building.replace("Q/DQ", "")
    (equivalent,) = [ln for ln in cap.err.splitlines() if ln.startswith("equivalent: trtexec")]
    assert equivalent.endswith(" --stronglyTyped") and "--int8" not in equivalent and "--fp16" not in equivalent


@pytest.mark.parametrize("member", [True, False])
def test_build_strongly_typed_on_tensorrt_11(w8_out, tmp_path, monkeypatch, capsys, member):
    log = {}
    fake = _FakeTRT(log)
    if not member:  # a later TensorRT may drop the flag: its networks are strongly typed whatever create_network gets
        del fake.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    trt = _trt(fake, 11) if member else _as11(fake)  # 11.0-11.4 keep the member (deprecated, ignored; value 0 there)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    lib = tmp_path / "libmq_trt_plugins.so"
    lib.write_bytes(b"")
    rc = main(["build", str(w8_out), "--plugins", str(lib), "--strongly-typed", "-o", str(tmp_path / "m.engine")])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert log["network_flags"] == (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if member else 0)
    assert "flags" not in log
    assert "equivalent: trtexec" in cap.err and "--stronglyTyped" not in cap.err  # the 11 line needs no option


def _tiny_onnx(path: Path, node: str = "copy", op: str = "Identity", out: str = "ids") -> Path:
    """A one-node graph of input_ids [batch, sequence] (what build_engine parses; no plugin nodes)."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input_ids", TensorProto.FLOAT, ["batch", "sequence"])
    y = helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", "sequence"])
    ins = ["input_ids"] * (2 if op == "Mul" else 1)
    graph = helper.make_graph([helper.make_node(op, ins, [out], name=node)], "g", [x], [y])
    onnx.save(helper.make_model(graph), str(path))
    return path


@pytest.mark.parametrize("major", [10, 11])
def test_build_engine_asks_tensorrt_for_its_plugins_workspace_and_one_profile(tmp_path, monkeypatch, major):
    """TensorRT's own plugins registered, the workspace asked (in bytes), the optimization profile of min / opt / max
    added to the builder config (a profile that is set but not added is no profile at all)."""
    fake = _FakeTRT(log := {})
    monkeypatch.setitem(sys.modules, "tensorrt", _trt(fake, major))
    model = _tiny_onnx(tmp_path / "model.onnx")
    engine = tmp_path / "m.engine"
    assert mtrt.build_engine(str(model), str(engine), shapes=mtrt.Shapes((1, 2), (3, 64), (4, 512))) == str(engine)
    assert engine.read_bytes() == b"ENGINE" and "nvinfer_plugins" in log
    assert log["memory_pools"] == [("WORKSPACE", 4 << 30)]  # the default 4 GiB
    assert log["profiles_added"] == 1 and log["profile"] == ("input_ids", (1, 2), (3, 64), (4, 512))
    log.clear()
    mtrt.build_engine(str(model), str(engine), workspace_gib=0.5)
    assert log["memory_pools"] == [("WORKSPACE", 1 << 29)] and log["profiles_added"] == 1
    assert log["profile"] == ("input_ids", (1, 1), (1, 512), (8, 4096))  # Shapes()' defaults


def test_build_engine_fp16_on_a_tensorrt_without_the_flag(tmp_path, monkeypatch):
    """--fp16 where TensorRT has no FP16 builder flag (11: strongly typed only): one error before the builder is made
    (the CLI refuses it earlier, with the command lines; build_engine on its own as well)."""
    fake = _FakeTRT(log := {})
    monkeypatch.setitem(sys.modules, "tensorrt", _trt(fake, 11))
    model = _tiny_onnx(tmp_path / "model.onnx")
    with pytest.raises(UserError, match="TensorRT 11.* has no FP16 builder flag"):
        mtrt.build_engine(str(model), str(tmp_path / "m.engine"), fp16=True)
    assert "network_flags" not in log and not (tmp_path / "m.engine").exists()


def test_build_engine_replaces_the_engine_and_timing_cache_it_does_not_overwrite_them(tmp_path, monkeypatch):
    """The engine and the timing cache are written beside and renamed over the old files: a process still reading the
    old engine (generate, validate) or cache (a concurrent build) keeps the old bytes, never a half-written file."""
    monkeypatch.setitem(sys.modules, "tensorrt", _trt(_FakeTRT({})))
    model = _tiny_onnx(tmp_path / "model.onnx")
    engine, cache = tmp_path / "m.engine", tmp_path / "timing.cache"
    engine.write_bytes(b"OLD ENGINE")
    cache.write_bytes(b"OLD CACHE")
    for f in (engine, cache):  # (the old files' inodes, as an open reader holds them)
        os.link(f, tmp_path / f"held-{f.name}")
    mtrt.build_engine(str(model), str(engine), timing_cache=str(cache))
    assert engine.read_bytes() == b"ENGINE" and (tmp_path / "held-m.engine").read_bytes() == b"OLD ENGINE"
    for f in (engine, cache):
        assert f.stat().st_ino != (tmp_path / f"held-{f.name}").stat().st_ino, f  # a new file, not the old rewritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["held-m.engine", "held-timing.cache", "m.engine",
                                                          "model.onnx", "timing.cache"]  # no temporary left


def test_build_outdir_keeps_the_rms_norm_tensors_in_fp32_by_tensor_name(tmp_path, monkeypatch, capsys):
    """plan.fp32 holds (layer, tensor) pairs; TensorRT's network is searched by tensor name (the parser names a layer's
    outputs as the ONNX node's outputs), which need not be the node's name."""
    monkeypatch.setitem(sys.modules, "tensorrt", _trt(_FakeTRT(log := {})))
    model = _tiny_onnx(tmp_path / "model.onnx", node="norm/sq", op="Mul", out="norm/sq_out")
    plan = mtrt.BuildPlan(onnx=str(model), engine=str(tmp_path / "m.engine"), plugin_lib=None, int8=False, fp16=True,
                          shapes=mtrt.Shapes(), timing_cache=None, vocab=None, fp32=(("norm/sq", "norm/sq_out"),))
    said = []
    assert mtrt.build_outdir(plan, log=said.append) == str(tmp_path / "m.engine")
    assert log["fp32"] == ["norm/sq_out"] and log["flags"] == ["FP16", "PREFER_PRECISION_CONSTRAINTS"]
    assert "FP16: the 1 RMSNorm layers stay fp32 (their squares overflow fp16)" in said


def test_rms_norm_layers_are_pinned_to_fp32_only_under_fp16(w8_out, tmp_path, monkeypatch, capsys):
    """Without --fp16 no layer is constrained (TensorRT runs them in fp32 anyway) and the build says nothing of it;
    with --fp16 every RMSNorm layer is kept fp32."""
    plain, half = (mtrt.plan_build(w8_out, require_plugin_lib=False, fp16=f) for f in (False, True))
    norms = rms_norm_nodes(onnx.load(str(w8_out / "model.onnx"), load_external_data=False))
    assert plain.fp32 == () and half.fp32 == tuple((n.name, n.output[0]) for n in norms) and len(norms) == 5 * 9
    monkeypatch.setitem(sys.modules, "tensorrt", _trt(_FakeTRT(log := {})))
    lib = tmp_path / "libmq_trt_plugins.so"
    lib.write_bytes(b"")
    rc = main(["build", str(w8_out), "--plugins", str(lib), "-o", str(tmp_path / "m.engine")])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "RMSNorm" not in cap.err and "fp32" not in log and "--layerPrecisions" not in cap.err


def test_build_strongly_typed_needs_the_creation_flag():
    from mq_deploy.trt import _network_flags

    fake = _FakeTRT({})
    fake.__version__ = "9.0.0-fake"  # precision flags, and no NetworkDefinitionCreationFlag.STRONGLY_TYPED
    del fake.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    from mq_deploy.errors import UserError

    with pytest.raises(UserError, match="TensorRT 9.0.0-fake cannot build strongly typed networks"):
        _network_flags(fake, True)
    assert _network_flags(fake, False) == 0


@pytest.mark.parametrize("command", ["build", "generate", "validate"])
def test_tensorrt_before_10_is_named(w8_out, tmp_path, monkeypatch, capsys, command):
    """JetPack 6.0's TensorRT 8.6 (the plugins are TensorRT 10's IPluginV3): one error naming the version found and
    JetPack 6.1 / 6.2, before anything is built or loaded."""
    log = {}
    fake = _FakeTRT(log)
    fake.__version__ = "8.6.2.3"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    lib, engine = tmp_path / "libmq_trt_plugins.so", tmp_path / "m.engine"
    lib.write_bytes(b"")
    args = {"build": ["build", str(w8_out), "-q", "--plugins", str(lib), "-o", str(engine)],
            "generate": ["generate", str(w8_out), "--prompt", "hi", "--flavour", "tensorrt", "--plugins", str(lib)],
            "validate": ["validate", str(w8_out), "--engine", str(engine), "--plugins", str(lib)]}[command]
    engine.write_bytes(b"ENGINE") if command == "validate" else None
    assert main(args) == 2
    (line,) = _errors(capsys.readouterr().err)
    assert "TensorRT 8.6.2.3 is installed; mq-deploy's plugins are TensorRT 10 plugins (IPluginV3)" in line, line
    assert "JetPack 6.1 or 6.2 (TensorRT 10.3; JetPack 6.0 has TensorRT 8.6)" in line
    assert not log and (command == "validate" or not engine.exists())
    if command == "build":  # --dry-run prints TensorRT 10's line, and says the installed one is refused
        assert main(args + ["--dry-run"]) == 0
        cap = capsys.readouterr()
        assert cap.out.startswith("trtexec --onnx=") and "note: TensorRT 8.6.2.3 is installed; mq-deploy's plugins" in \
            cap.err


@pytest.mark.parametrize("given", [["--int8"], ["--fp16"], ["--int8", "--fp16"]])
@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_build_strongly_typed_excludes_precision_flags(w8_out, tmp_path, monkeypatch, capsys, given, dry_run):
    log = {}
    monkeypatch.setitem(sys.modules, "tensorrt", _trt(_FakeTRT(log)))
    lib, engine = tmp_path / "libmq_trt_plugins.so", tmp_path / "e" / "m.engine"
    lib.write_bytes(b"")
    before = sorted(os.listdir(w8_out))
    assert main(["build", str(w8_out), "--plugins", str(lib), "--strongly-typed", *given, *dry_run,
                 "-o", str(engine)]) == 2
    cap = capsys.readouterr()
    (line,) = _errors(cap.err)
    assert line.startswith(f"mq-deploy: error: --strongly-typed cannot be combined with {' / '.join(given)}")
    assert cap.out == "" and log == {} and not engine.parent.exists() and sorted(os.listdir(w8_out)) == before


def test_build_dry_run_strongly_typed(w8_out, no_tensorrt, capsys):
    assert main(["build", str(w8_out), "--dry-run", "--strongly-typed", "--plugins", sys.executable]) == 0
    io = capsys.readouterr()
    cmd = io.out.strip()
    assert cmd.startswith(f"trtexec --onnx={w8_out}/model.onnx") and cmd.endswith(" --stronglyTyped")
    assert "--int8" not in cmd and "--fp16" not in cmd  # quantized OUTDIR: the Q/DQ nodes decide, no INT8 flag
    assert "TensorRT 11 needs no --stronglyTyped" in io.err


# -- validate -------------------------------------------------------------------------------------
def _pairs(rep: dict) -> dict:
    return {(p["reference"], p["test"]): p for p in rep["pairs"]}


def test_error_stats():
    ref = np.zeros((1, 2, 4), np.float32)
    ref[0, :, 1] = 2.0
    x = ref.copy()
    x[0, 1, 3] = 3.0  # argmax flips at one of two positions
    s = mval.error_stats(ref, x)
    assert s["max_abs"] == 3.0 and s["max_rel"] == 1.5 and s["mean_abs"] == 3.0 / 8 and s["top1"] == 0.5
    x[0, 0, :] = np.nan  # a row of NaN: no agreement (its argmax, 0, would be counted as one)
    ref[0, 0, :] = 0.0
    assert mval.error_stats(ref, x)["top1"] == 0.0


def test_validate_fp32(fp32_out, no_tensorrt, capsys):
    assert main(["validate", str(fp32_out), "-q"]) == 0
    out = capsys.readouterr().out
    assert "portable vs plugin" in out and "validate: OK" in out
    skipped = [ln for ln in out.splitlines() if ln.startswith("engine comparison skipped")]
    assert len(skipped) == 1 and "pip install \"tensorrt-cu12==10.3.*\"" in skipped[0]
    assert main(["validate", str(fp32_out), "-q", "--json", "--batch", "2", "--seq", "24"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["ok"] and rep["input_ids"] == [2, 24]
    assert [r["name"] for r in rep["references"]] == ["portable", "plugin"]
    p = _pairs(rep)[("portable", "plugin")]
    assert p["output"] == "logits" and p["max_rel"] < 1e-4 and p["top1"] == 1.0 and p["limit"] == 1e-4
    assert rep["skipped"][0]["name"] == "tensorrt"


def test_validate_fp32_torch_reference(fp32_out, w8_out, tmp_path, capsys):
    """The torch reference is transformers' own from_pretrained of the checkpoint (not mq-deploy's loader again), and
    against an fp32 recipe's graphs it is gated at fp32 rounding: a checkpoint whose weights changed since the
    compile fails. Against a quantized OUTDIR's graphs it is reported (what quantization changes)."""
    from safetensors.torch import load_file, save_file

    from mq_deploy.loaders import BUNDLED_DIR
    from mq_deploy.outdir import sha256_file

    assert main(["validate", str(fp32_out), "-q", "--json", "--torch"]) == 0
    rep = json.loads(capsys.readouterr().out)
    p = _pairs(rep)
    assert p[("torch-fp32", "portable")]["max_rel"] < 1e-5 and p[("torch-fp32", "plugin")]["max_rel"] < 1e-5
    assert p[("torch-fp32", "portable")]["limit"] == mval.FP32_TOL and p[("torch-fp32", "portable")]["ok"]
    assert "transformers' MambaForCausalLM.from_pretrained" in rep["references"][0]["what"]
    changed = tmp_path / "changed"
    shutil.copytree(BUNDLED_DIR, changed)
    t = load_file(str(changed / "model.safetensors"))
    t["backbone.layers.0.mixer.D"] = t["backbone.layers.0.mixer.D"] * 2
    save_file(t, str(changed / "model.safetensors"))
    man = json.loads((fp32_out / "manifest.json").read_text())
    assert man["model"]["weights"] == {"model.safetensors": sha256_file(BUNDLED_DIR / "model.safetensors")}
    # the manifest's sha256 of the checkpoint's weights: a changed file is named before anything runs
    assert main(["validate", str(fp32_out), "-q", "--model", str(changed)]) == 2
    assert (f"the checkpoint {changed} is not the one {fp32_out} was compiled from: model.safetensors differs from "
            "the file compiled (sha256); pass --model DIR") in capsys.readouterr().err
    assert main(["validate", str(fp32_out), "-q", "--simulate", "--model", str(changed)]) == 2
    capsys.readouterr()
    # an OUTDIR of an older compile (no sha256 listed): the gated torch rows catch it
    older = tmp_path / "older"
    shutil.copytree(fp32_out, older)
    del man["model"]["weights"]
    (older / "manifest.json").write_text(json.dumps(man))
    assert main(["validate", str(older), "-q", "--json", "--model", str(changed)]) == 1
    p = _pairs(json.loads(capsys.readouterr().out))
    assert not p[("torch-fp32", "portable")]["ok"] and p[("torch-fp32", "portable")]["max_rel"] > 1e-2
    assert main(["validate", str(w8_out), "-q", "--json", "--torch"]) == 0
    p = _pairs(json.loads(capsys.readouterr().out))
    assert p[("torch-fp32", "portable")]["limit"] is None and p[("torch-fp32", "portable")]["ok"] is None


def test_validate_quantized_with_simulation(w8_out, no_tensorrt, capsys):
    assert main(["validate", str(w8_out), "-q", "--json", "--simulate"]) == 0
    rep = json.loads(capsys.readouterr().out)
    p = _pairs(rep)
    # direct rows: 0 where no value sits on a rounding boundary, up to quantization's own effect where one does
    # (CPU- and input-dependent), so reported, not gated; the gates are on the rows that follow the roundings
    assert rep["ok"]
    for pair in (("portable", "plugin"), ("simulation", "portable"), ("simulation", "plugin")):
        assert p[pair]["limit"] is None and p[pair]["ok"] is None and p[pair]["top1"] >= 0.95
    assert [r["name"] for r in rep["references"]] == ["simulation", "portable", "plugin", "plugin~", "simulation~"]
    f = p[("portable", "plugin~")]  # the plugin graph taking portable's side on boundary roundings
    assert f["max_rel"] < 1e-5 and f["limit"] == mval.FP32_TOL and f["ok"]
    for graph in ("portable", "plugin"):  # following each graph's boundary roundings: fp32 rounding apart
        f = p[("simulation~", graph)]
        assert f["max_rel"] < 1e-5 and f["limit"] == mval.FP32_TOL and f["ok"] and f["roundings_taken_from_graph"] <= 10
    assert "engine comparison skipped" in rep["skipped"][0]["reason"]


def test_validate_simulate_of_a_w4_b64_outdir_and_one_from_before_the_int8_rule(w4_out, no_tensorrt, tmp_path, capsys):
    """The blocked W4A8 OUTDIR simulates to fp32 rounding (its dt_proj int8); one compiled before dt_proj became
    int8 (a manifest without int8_weights) is refused by --simulate, naming why, not reported as a mismatch."""
    assert main(["validate", str(w4_out), "-q", "--json", "--simulate"]) == 0
    f = _pairs(json.loads(capsys.readouterr().out))[("simulation~", "portable")]
    assert f["max_rel"] < 1e-5 and f["ok"]
    old = tmp_path / "old"
    shutil.copytree(w4_out, old)
    man = json.loads((old / "manifest.json").read_text())
    del man["quantization"]["int8_weights"]
    (old / "manifest.json").write_text(json.dumps(man))
    assert main(["validate", str(old), "-q", "--simulate"]) == 2
    err = capsys.readouterr().err
    assert "quantizes layers.0.dt_proj, layers.1.dt_proj ... to int8 where" in err and "has none" in err
    assert "compiled by an older mq-deploy" in err


def test_weight_only_outdir_validates_and_builds_as_float_activations(w16_out, w4_out, no_tensorrt, capsys):
    """W4A16: no QuantizeLinear, so validate holds its graphs and simulation to fp32 rounding (as a float recipe;
    a W4A8 OUTDIR's direct rows are reported only), the engine to ENGINE_TOL, a validation engine is refused, and
    build keeps INT8 on for the weights' Q/DQ with the weight-only note."""
    man = json.loads((w16_out / "manifest.json").read_text())
    q = man["quantization"]
    assert man["calibration"] is None and q["act_bits"] is None and q["act_scales"] == {}
    assert q["int8_weights"] == [f"layers.{i}.dt_proj" for i in range(8)]
    assert mtrt.manifest_quantized(man) and not mtrt.manifest_act_quantized(man)
    assert mtrt.manifest_act_quantized(json.loads((w4_out / "manifest.json").read_text()))
    assert main(["validate", str(w16_out), "-q", "--json", "--simulate"]) == 0
    rows = _pairs(json.loads(capsys.readouterr().out))
    for pair in (("portable", "plugin"), ("simulation", "portable"), ("simulation", "plugin")):
        assert rows[pair]["limit"] == mval.FP32_TOL and rows[pair]["ok"] and rows[pair]["max_rel"] < 1e-5, pair
    assert main(["validate", str(w4_out), "-q", "--json"]) == 0
    assert _pairs(json.loads(capsys.readouterr().out))[("portable", "plugin")]["limit"] is None
    assert mval._limit("portable", "tensorrt", False, None, None) == mval.ENGINE_TOL
    plan = mtrt.plan_build(w16_out, require_plugin_lib=False)
    assert plan.int8 and not plan.fp16 and plan.quantized and plan.mark == ()
    (note,) = plan.notes
    assert "with float inputs (weight-only, a W4A16 recipe)" in note and "build with --fp16" in note
    with pytest.raises(UserError, match="is weight-only \\(no QuantizeLinear\\): a validation engine is for OUTDIRs "
                                        "with int8 activations"):
        mtrt.plan_build(w16_out, require_plugin_lib=False, validation=True)
    assert main(["lint", str(w16_out)]) == 0
    err = capsys.readouterr().err
    assert "model.onnx: 0 violation(s) (weight-only: dequantized weights, float activations" in err


@pytest.mark.parametrize("graph", ["prefill", "decode"])
def test_weight_only_stateful_graphs_validate_as_float_activations(w16_out, no_tensorrt, capsys, graph):
    """validate --graph of a weight-only OUTDIR holds its two flavours to fp32 rounding directly, with no plugin~
    (rounding-following) row, and --simulate adds no simulation~ rows: no int8 rounding to follow (mutants: the
    stateful validate still reading manifest_quantized; the simulation given a follower for any quantized plan)."""
    assert main(["validate", str(w16_out), "--graph", graph, "-q", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    rows = _pairs(rep)
    assert rows[("portable", "plugin")]["limit"] == mval.FP32_TOL and rows[("portable", "plugin")]["ok"]
    assert set(rows) == {("portable", "plugin")} and [r["name"] for r in rep["references"]] == ["portable", "plugin"]
    if graph == "prefill":
        assert main(["validate", str(w16_out), "-q", "--json", "--simulate"]) == 0
        rows = _pairs(json.loads(capsys.readouterr().out))
        assert set(rows) == {("simulation", "portable"), ("simulation", "plugin"), ("portable", "plugin")}


def test_validate_without_polygraphy_gives_the_same_numbers(w8_out, monkeypatch):
    a = mval.validate(w8_out, use_polygraphy=False)
    assert a.runner == "numpy"
    if not mval.have_polygraphy():
        pytest.skip("polygraphy is not installed: only the numpy path runs here")
    b = mval.validate(w8_out, use_polygraphy=True)
    assert b.runner == "polygraphy"
    assert [(p["reference"], p["test"], p["max_abs"]) for p in a.pairs] == \
           [(p["reference"], p["test"], p["max_abs"]) for p in b.pairs]


def test_validate_without_tensorrt_ignores_the_plugin_library(fp32_out, no_tensorrt, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MQ_DEPLOY_PLUGINS", str(tmp_path / "nowhere" / "libmq_trt_plugins.so"))
    assert main(["validate", str(fp32_out), "-q"]) == 0  # the engine comparison is skipped: no library needed
    assert "engine comparison skipped" in capsys.readouterr().out
    engine = tmp_path / "model.engine"  # but an engine asked for by name that cannot run is no OK
    engine.write_bytes(b"ENGINE")
    for graph in ("model", "decode"):
        assert main(["validate", str(fp32_out), "-q", "--graph", graph, "--engine", str(engine)]) == 2
        cap = capsys.readouterr()
        (line,) = _errors(cap.err)
        assert f"--engine {engine} cannot be run here: TensorRT's Python package is not installed" in line
        assert cap.out == ""


def test_validate_plugin_library_only_checked_for_an_engine(fp32_out, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MQ_DEPLOY_PLUGINS", str(tmp_path / "nowhere" / "libmq_trt_plugins.so"))
    monkeypatch.setitem(sys.modules, "tensorrt", _trt(_FakeTRT({})))
    assert main(["validate", str(fp32_out), "-q"]) == 0  # TensorRT but no engine: skipped
    assert "no engine at" in capsys.readouterr().out
    (tmp_path / "m.engine").write_bytes(b"ENGINE")  # with an engine the library is needed, and checked
    assert main(["validate", str(fp32_out), "-q", "--engine", str(tmp_path / "m.engine")]) == 2
    assert "libmq_trt_plugins.so' not found" in capsys.readouterr().err


class _FakeRuntimeTRT(_FakeTRT):
    """_FakeTRT plus a runtime whose engine maps input_ids (B, L) to logits (B, L, 8) = input_ids + 0.5·j, read
    from and written to the addresses it is given: enough for validate's direct engine run."""

    def __init__(self, log):
        super().__init__(log)
        self.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
        self.nptype = {"INT64": np.int64, "FLOAT": np.float32}.__getitem__
        fake = self

        class Context:
            def __init__(self):
                self.shape, self.addresses = None, {}

            def set_input_shape(self, name, shape):
                self.shape = tuple(shape)
                return name == "input_ids" and len(self.shape) == 2 and self.shape[1] <= 64

            def get_tensor_shape(self, name):
                return self.shape if name == "input_ids" else (*self.shape, 8)

            def set_tensor_address(self, name, address):
                self.addresses[name] = address
                return True

            def execute_async_v3(self, stream):
                fake.log["stream"] = stream
                n = int(np.prod(self.shape))
                ids = np.ctypeslib.as_array(ctypes.cast(self.addresses["input_ids"], ctypes.POINTER(ctypes.c_int64)),
                                            (n,))
                out = np.ctypeslib.as_array(ctypes.cast(self.addresses["logits"], ctypes.POINTER(ctypes.c_float)),
                                            (n * 8,))
                out[:] = (ids[:, None] + 0.5 * np.arange(8)).ravel()
                return True

        class Engine:
            num_io_tensors = 2

            def get_tensor_name(self, i):
                return ("input_ids", "logits")[i]

            def get_tensor_mode(self, n):
                return "INPUT" if n == "input_ids" else "OUTPUT"

            def get_tensor_dtype(self, n):
                return "INT64" if n == "input_ids" else "FLOAT"

            def get_tensor_profile_shape(self, n, profile):
                return [(1, 1), (1, 16), (8, 64)]

            def create_execution_context(self):
                return Context()

        self.Runtime = type("Runtime", (), {"__init__": lambda s, logger: None,
                                            "deserialize_cuda_engine": lambda s, data: Engine() if data == b"ENGINE"
                                            else None})


def _stand_in_engine(monkeypatch, tmp_path, outdir, c_scale=1.0, marked=True, noise=0.0, kernel_scale=1.0):
    """An engine for validate where TensorRT is absent: model.onnx with fp16 storage of its float tensors
    (fp16_stand_in) on the CPU kernels, `c_scale` times the C scale in one scan node, and (`marked`) the
    tensors before its QuantizeLinear nodes as outputs, as a validation engine has them (a fused Hadamard's: its
    codes, dequantized); `noise`: fp16_stand_in's; `kernel_scale`: the second fused Hadamard's kernel rounds with that
    times its out_scale (its codes still read with out_scale)."""
    monkeypatch.setitem(sys.modules, "tensorrt", _trt(_FakeTRT({})))
    lib, engine = tmp_path / "libmq_trt_plugins.so", tmp_path / "m.engine"
    lib.write_bytes(b"")
    engine.write_bytes(b"ENGINE")
    plugin = onnx.load(str(outdir / "model.onnx"))
    fused = [n.name for n in plugin.graph.node if hadamard_out_scale(n)]
    g = fp16_stand_in(plugin, noise=noise, kernel_scale={fused[1]: kernel_scale} if kernel_scale != 1.0 else None)
    next(a for a in [n for n in g.graph.node if n.op_type == "SelectiveScan"][1].attribute
         if a.name == "C_scale").f *= c_scale
    runner = OrtRunner(g, extra_outputs=validation_marks(plugin) if marked else ())
    monkeypatch.setattr(mval, "_trt_direct", lambda path, lib, feed: runner.run(dict(feed)))
    return dict(engine=str(engine), plugin_lib=str(lib), use_polygraphy=False)


def test_validate_follows_a_validation_engine_and_a_scale_error_fails(w8_out, tmp_path, monkeypatch):
    rep = mval.validate(w8_out, seq=64, **_stand_in_engine(monkeypatch, tmp_path, w8_out))
    p = {(r["reference"], r["test"]): r for r in rep.pairs}
    assert rep.ok, mval.format_report(rep)
    for graph in ("portable", "plugin"):  # direct: fp16 layers round boundary values otherwise; reported only
        assert p[(graph, "tensorrt")]["limit"] is None and p[(graph, "tensorrt")]["max_rel"] > 1e-3
    f = p[("portable=", "tensorrt")]  # the portable graph on the engine's int8 codes: fp16 apart
    assert f["limit"] == mval.ENGINE_FOLLOW_TOL and f["ok"] and f["max_rel"] < 1e-3
    f = p[("portable~", "tensorrt")]  # taking the engine's roundings within 0.1 step: reported only
    assert f["limit"] is None and f["ok"] is None and f["max_rel"] < 2e-3
    assert 0 < f["roundings_taken_from_graph"] and "roundings taken from tensorrt" in mval.format_report(rep)
    assert "portable~" in [r["name"] for r in rep.references] and not any("tensorrt~" in s["name"] for s in rep.skipped)
    st = rep.steps  # each quantizer input from the engine's int8 codes: fp16 rounding apart
    assert st["ok"] and st["first_over"] is None and st["tensors"] >= 8 * 4
    assert st["limits"] == {"mean_steps": mval.ENGINE_STEP_TOL, "gain": mval.ENGINE_GAIN_TOL}
    assert 0 < st["worst_mean"]["mean_steps"] < 0.05 and 0 < abs(st["worst_gain"]["gain"]) < 3e-4
    assert list(st["per_tensor"]) == [t for t in quantizer_params(onnx.load(str(w8_out / "model.portable.onnx")))
                                      if t in st["per_tensor"]]
    text = mval.format_report(rep)
    assert "quantizer inputs from the engine's int8 codes: worst mean" in text and "validate: OK" in text
    assert json.loads(json.dumps(rep.to_dict()))["steps"]["per_tensor"] == st["per_tensor"]
    bad = mval.validate(w8_out, seq=64, **_stand_in_engine(monkeypatch, tmp_path, w8_out, c_scale=1.01))
    f = {(r["reference"], r["test"]): r for r in bad.pairs}[("portable~", "tensorrt")]
    assert not bad.ok and f["max_rel"] > 1e-2  # reported: the error carried through the later scans
    st = bad.steps  # and where: the output of the scan with the wrong scale, 1 % too large
    assert not st["ok"] and st["first_over"]["tensor"] == st["worst_gain"]["tensor"] == "layers.1/gate"
    assert 2e-3 < st["first_over"]["gain"] < 1e-2 and "the engine computes layers.1/gate differently" in (
        mval.format_report(bad))
    assert mval.validate(w8_out, seq=64, engine_gain_tol=1, engine_tol=1,
                         **_stand_in_engine(monkeypatch, tmp_path, w8_out, c_scale=1.01)).ok
    small = mval.validate(w8_out, seq=64, **_stand_in_engine(monkeypatch, tmp_path, w8_out, c_scale=0.99)).steps
    assert not small["ok"] and small["first_over"]["tensor"] == "layers.1/gate"  # 1 % too small fails alike
    assert -1e-2 < small["first_over"]["gain"] < -2e-3
    # a correct engine whose float layers round twice as coarsely: every layer matches on its int8 codes, while the
    # rounding differences the followed row cannot take carry through the scan state (reported only)
    rough = mval.validate(w8_out, seq=64, **_stand_in_engine(monkeypatch, tmp_path, w8_out, noise=5e-4))
    p = {(r["reference"], r["test"]): r for r in rough.pairs}
    assert rough.ok and p[("portable~", "tensorrt")]["max_rel"] > 1e-2 and p[("portable~", "tensorrt")]["ok"] is None
    assert rough.steps["worst_mean"]["mean_steps"] < 0.05 and abs(rough.steps["worst_gain"]["gain"]) < 3e-4
    tight = mval.validate(w8_out, seq=64, engine_tol=1e-9, **_stand_in_engine(monkeypatch, tmp_path, w8_out))
    assert {(r["reference"], r["test"]): r for r in tight.pairs}[("portable=", "tensorrt")]["limit"] == 1e-9
    assert not tight.ok and tight.steps["ok"]  # the logits row fails, and the report says no quantizer input is off
    assert "every quantizer input matches: the logits differ in the layers after" in mval.format_report(tight)


def test_validate_checks_a_fused_hadamards_codes_against_its_float_twin(mq_out, tmp_path, monkeypatch):
    """A MambaQuant OUTDIR's validation engine marks each fused Hadamard's int8 codes (dequantized) and a float twin's
    output: validate follows the codes (`portable=`), checks the layer on the twin as before (a scan's C_scale 1 % off
    still fails at its out_hadamard) and the kernel's codes against the twin's (a kernel rounding with a 0.3 % wrong
    scale fails there, naming the kernel, which an unfused Hadamard's float output could not show at all)."""
    from mq_deploy.graph.fuse_scan_quant import float_twin

    had = [f"layers.{i}/out_hadamard" for i in range(8)]
    rep = mval.validate(mq_out, seq=64, **_stand_in_engine(monkeypatch, tmp_path, mq_out))
    assert rep.ok, mval.format_report(rep)
    f = {(r["reference"], r["test"]): r for r in rep.pairs}[("portable=", "tensorrt")]
    assert f["ok"] and f["max_rel"] < 2e-3
    per = rep.steps["per_tensor"]
    assert set(had) <= set(per) and not any(float_twin(t) in per for t in had)  # a twin stands for its point
    for t in had:  # the twin's float value: fp16 rounding apart, as any quantizer input
        assert 0 < per[t][0] < 0.05 and per[t][1] < 0.5 and abs(per[t][2]) < 2e-4, (t, per[t])
    fu = rep.fused
    assert fu["ok"] and fu["tensors"] == 8 and list(fu["per_tensor"]) == had and fu["window_steps"] == 0.1
    assert fu["twin_rel"] == 2.0 ** -9
    assert all(v[0] == 0 and v[2] == 0 and v[1] <= 1 for v in fu["per_tensor"].values())
    assert any(v[1] == 1 for v in fu["per_tensor"].values())  # a few near-boundary codes do differ: let through
    text = mval.format_report(rep)
    assert "fused Hadamard codes      8 kernels against their float twins: worst 0% of codes differ clear" in text
    assert json.loads(json.dumps(rep.to_dict()))["fused"] == fu
    bad = mval.validate(mq_out, seq=64, **_stand_in_engine(monkeypatch, tmp_path, mq_out, kernel_scale=1.003))
    assert not bad.ok and bad.steps["ok"]  # every layer right on the twin: only the kernel's rounding is off
    fu = bad.fused
    assert not fu["ok"] and fu["worst"]["tensor"] == had[1] and fu["worst"]["share"] > 2e-3
    assert all(v[2] == 0 for t, v in fu["per_tensor"].items() if t != had[1])
    text = mval.format_report(bad)
    assert "FAIL" in text.splitlines()[-3] and f"the fused Hadamard {had[1]} rounds otherwise than its float twin" in text
    loose = mval.validate(mq_out, seq=64, engine_codes_tol=0.5,  # --engine-codes-tol: the limit on that share
                          **_stand_in_engine(monkeypatch, tmp_path, mq_out, kernel_scale=1.003))
    assert loose.ok and loose.fused["limits"]["share"] == 0.5
    for v in (0.0, 1.0, float("nan")):
        with pytest.raises(UserError, match="--engine-codes-tol"):
            mval.validate(mq_out, engine_codes_tol=v)
    scan = mval.validate(mq_out, seq=64, **_stand_in_engine(monkeypatch, tmp_path, mq_out, c_scale=1.01))
    st = scan.steps  # a scan's error: the layer after it fails on the twin, the kernel agrees with its twin
    assert not scan.ok and scan.fused["ok"] and st["first_over"]["tensor"] == had[1] and st["first_over"]["gain"] > 2e-3
    # a validation engine of an earlier version (its Hadamards unfused: the float value under the point's name, no
    # twins) is still checked on those float values, with no fused line
    kw = _stand_in_engine(monkeypatch, tmp_path, mq_out)
    new = mval._trt_direct
    monkeypatch.setattr(mval, "_trt_direct", lambda path, lib, feed: {
        k: (v if k not in had else got[float_twin(k)]) for got in [new(path, lib, feed)] for k, v in got.items()
        if not k.endswith("::float")})
    old = mval.validate(mq_out, seq=64, **kw)
    assert old.ok and old.fused is None and "fused Hadamard codes" not in mval.format_report(old)
    kw = _stand_in_engine(monkeypatch, tmp_path, mq_out)  # twins of some fused Hadamards only: refused, not misjudged
    full = mval._trt_direct
    monkeypatch.setattr(mval, "_trt_direct", lambda path, lib, feed: {
        k: v for k, v in full(path, lib, feed).items() if k != float_twin(had[3])})
    with pytest.raises(UserError, match=f"but not of {had[3]}: build the validation engine again"):
        mval.validate(mq_out, seq=64, **kw)
    assert set(old.steps["per_tensor"]) == set(rep.steps["per_tensor"])
    assert all(abs(old.steps["per_tensor"][t][2] - rep.steps["per_tensor"][t][2]) < 1e-4 for t in had)


def test_validate_quantized_deployment_engine_is_gated_directly_and_told_of_the_validation_engine(
        w8_out, tmp_path, monkeypatch, capsys):
    kw = _stand_in_engine(monkeypatch, tmp_path, w8_out, marked=False)
    rep = mval.validate(w8_out, seq=64, **kw)
    p = {(r["reference"], r["test"]): r for r in rep.pairs}
    assert p[("portable", "tensorrt")]["limit"] == mval.ENGINE_TOL and ("portable~", "tensorrt") not in p
    (hint,) = [s["reason"] for s in rep.skipped if s["name"] == "tensorrt~"]
    assert f"mq-deploy build {w8_out} --validation-engine" in hint and "model.validate.engine" in hint
    assert hint in mval.format_report(rep)


@pytest.mark.parametrize("graph", ["prefill", "decode"])
def test_validate_a_stateful_graph_and_its_engine(fp32_out, w8_out, tmp_path, monkeypatch, capsys, graph):
    """validate --graph prefill / decode: the graph's two flavours on random prompts with left-padded rows (the decode
    step: one token from the states the portable prefill leaves), a row for the logits and one for the state furthest
    apart; a quantized OUTDIR's direct rows reported and its plugin~ rows (logits and states) gated. An engine
    (stand-in: the graph with fp16 storage on the CPU kernels): a float OUTDIR's held to 5e-2 on logits and states, so
    10 % off logits or a NaN in one state fails; a quantized OUTDIR's held to 0.5 only (its correct stand-in is a few
    1e-2 away directly), with a note on model.onnx's validation engine; all-zero logits fail that."""
    man = json.loads((fp32_out / "manifest.json").read_text())
    states = {f"{k}.{i}" for i in range(man["model"]["config"]["n_layer"]) for k in ("conv_state", "ssm_state")}
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # no TensorRT: the engine pair is skipped
    feeds = []
    run_refs = mval.run_references
    monkeypatch.setattr(mval, "run_references", lambda refs, feed, poly: feeds.append(feed) or run_refs(refs, feed, poly))
    fp = mval.validate(fp32_out, graph=graph, batch=3, seq=20)
    p = {(r["reference"], r["test"], r["output"]): r for r in fp.pairs}
    assert fp.ok and set(p) == {("portable", "plugin", "logits"), ("portable", "plugin", "states")}
    assert p[("portable", "plugin", "logits")]["limit"] == mval.FP32_TOL
    assert 0 < p[("portable", "plugin", "logits")]["max_rel"] < 1e-5
    st = p[("portable", "plugin", "states")]
    assert st["states"] == len(states) and st["worst_state"].replace("_out.", ".") in states
    assert st["limit"] == mval.FP32_TOL and 0 < st["max_rel"] < 1e-5 and "top1" not in st
    assert any("engine comparison skipped" in s["reason"] for s in fp.skipped)
    (feed,) = feeds  # what the graphs were given: a prompt with padded rows, or a token and the prompt's states
    prompt = {"input_ids": np.random.default_rng(0).integers(0, 8192, size=(3, 20), dtype=np.int64),
              "attention_mask": np.ones((3, 20), np.int64)}
    prompt["attention_mask"][1, :3] = prompt["attention_mask"][2, :6] = 0
    if graph == "prefill":
        assert set(feed) == set(prompt) and all(np.array_equal(feed[k], prompt[k]) for k in prompt)
    else:
        pre = OrtRunner(fp32_out / "model.prefill.portable.onnx").run(prompt)
        assert feed["input_ids"].shape == (3, 1) and set(feed) == {"input_ids", *states}
        assert all(np.array_equal(feed[k], pre[k]) for k in states)
    assert "2 row(s) left-padded" in fp.input_what and ("decode step" in fp.input_what) == (graph == "decode")
    assert main(["validate", str(fp32_out), "--graph", graph, "--batch", "1", "--seq", "1", "--json", "-q"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["graph"] == graph and rep["ok"] and "left-padded" not in rep["input"]
    q = mval.validate(w8_out, graph=graph, batch=3, seq=20)
    p = {(r["reference"], r["test"], r["output"]): r for r in q.pairs}
    assert p[("portable", "plugin", "logits")]["limit"] is None and p[("portable", "plugin", "states")]["limit"] is None
    for o in ("logits", "states"):
        assert p[("portable", "plugin~", o)]["limit"] == mval.FP32_TOL and p[("portable", "plugin~", o)]["ok"]
    assert f"model.{graph}.onnx again, taking model.{graph}.portable.onnx's side" in mval.format_report(q)
    # engines
    monkeypatch.setitem(sys.modules, "tensorrt", _trt(_FakeTRT({})))
    lib = tmp_path / "libmq_trt_plugins.so"
    lib.write_bytes(b"")
    nan_state = sorted(states)[-1].replace(".", "_out.") if graph == "decode" else sorted(states)[-1]

    def engine_report(out, change):
        engine = out / f"model.{graph}.engine"
        engine.write_bytes(b"ENGINE")
        runner = OrtRunner(fp16_stand_in(onnx.load(str(out / f"model.{graph}.onnx"))))

        def run(path, lib_, feed):
            assert path == str(engine)  # the default engine of the graph
            return change(runner.run(dict(feed)))

        monkeypatch.setattr(mval, "_trt_direct", run)
        try:
            rep = mval.validate(out, graph=graph, batch=3, seq=20, plugin_lib=str(lib), use_polygraphy=False)
        finally:
            engine.unlink()
        return rep, {(r["reference"], r["test"], r["output"]): r for r in rep.pairs}

    rep, p = engine_report(fp32_out, lambda o: o)
    e, s_ = p[("portable", "tensorrt", "logits")], p[("portable", "tensorrt", "states")]
    assert rep.ok and e["limit"] == s_["limit"] == mval.ENGINE_TOL and e["max_rel"] < 1e-2 and s_["max_rel"] < 1e-2
    rep, p = engine_report(fp32_out, lambda o: {**o, "logits": o["logits"] * 1.1})
    assert not rep.ok and not p[("portable", "tensorrt", "logits")]["ok"] and p[("portable", "tensorrt", "states")]["ok"]
    rep, p = engine_report(fp32_out, lambda o: {**o, nan_state: o[nan_state] * np.nan})
    s_ = p[("portable", "tensorrt", "states")]
    assert not rep.ok and not s_["ok"] and s_["worst_state"] == nan_state and p[("portable", "tensorrt", "logits")]["ok"]
    rep, p = engine_report(w8_out, lambda o: o)  # quantized: a loose bound only, and a note on the validation engine
    e = p[("portable", "tensorrt", "logits")]
    assert rep.ok and e["limit"] == mval.QUANTIZED_STATEFUL_ENGINE_TOL and 2e-2 < e["max_rel"] < 0.15
    assert f"mq-deploy build {w8_out} --graph {graph} --validation-engine" in mval.format_report(rep)
    assert f"--engine {w8_out}/model.{graph}.validate.engine" in mval.format_report(rep)
    rep, p = engine_report(w8_out, lambda o: {**o, "logits": o["logits"] * 0})
    assert not rep.ok and not p[("portable", "tensorrt", "logits")]["ok"]
    # the quantized bound is 0.5, not looser: logits 1.6x (an error of ~0.6) fail it (mutant: the bound at 0.9)
    rep, p = engine_report(w8_out, lambda o: {**o, "logits": o["logits"] * 1.6})
    e = p[("portable", "tensorrt", "logits")]
    assert not rep.ok and not e["ok"] and 0.5 < e["max_rel"] < 0.9, e


def _scale_attribute(g, op, name, f):
    """Layer 1's `op` node with its float attribute `name` times f."""
    a = next(a for a in [n for n in g.graph.node if n.op_type == op][1].attribute if a.name == name)
    a.f *= f


def _scale_initializer(g, name, f):
    t = next(t for t in g.graph.initializer if t.name == name)
    t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) * f, name))


@pytest.mark.parametrize("graph", ["prefill", "decode"])
def test_validate_a_stateful_validation_engine_checks_its_fused_hadamards(mq_out, tmp_path, monkeypatch, graph):
    """The prefill / decode graphs of a MambaQuant OUTDIR fuse out_proj's QuantizeLinear into the Hadamard too: their
    validation engine's kernel codes are followed and held to the float twins' rounding, so a kernel rounding with a
    1 % wrong scale fails on that line alone (every layer right on its twin), in the decode step's one token a row."""
    from mq_deploy.graph.fuse_scan_quant import float_twin

    monkeypatch.setitem(sys.modules, "tensorrt", _trt(_FakeTRT({})))
    lib, engine = tmp_path / "libmq_trt_plugins.so", tmp_path / f"model.{graph}.validate.engine"
    lib.write_bytes(b"")
    engine.write_bytes(b"ENGINE")
    plain = onnx.load(str(mq_out / f"model.{graph}.onnx"))

    def report(kernel_scale=1.0):
        g = fp16_stand_in(plain, kernel_scale={"layers.1/out_hadamard": kernel_scale})
        runner = OrtRunner(g, extra_outputs=validation_marks(plain))
        monkeypatch.setattr(mval, "_trt_direct", lambda path, lib_, feed: runner.run(dict(feed)))
        return mval.validate(mq_out, graph=graph, batch=3, seq=20, engine=str(engine), plugin_lib=str(lib),
                             use_polygraphy=False)

    assert {float_twin(f"layers.{i}/out_hadamard") for i in range(8)} <= set(validation_marks(plain))
    rep = report()
    assert rep.ok and rep.steps["ok"] and rep.fused["ok"], mval.format_report(rep)
    assert rep.fused["tensors"] == 8 and rep.fused["worst"]["count"] == 0
    bad = report(1.01)
    assert not bad.ok and bad.steps["ok"] and not bad.fused["ok"], mval.format_report(bad)
    assert bad.fused["worst"]["tensor"] == "layers.1/out_hadamard" and bad.fused["worst"]["share"] > 1e-2
    assert "the fused Hadamard layers.1/out_hadamard rounds otherwise than its float twin" in mval.format_report(bad)


@pytest.mark.parametrize("graph", ["prefill", "decode"])
def test_validate_a_stateful_validation_engine_layer_by_layer(w8_out, tmp_path, monkeypatch, capsys, graph):
    """A quantized OUTDIR's validation engine of the prefill / decode graph (`build --graph G --validation-engine`:
    the tensors before its QuantizeLinear nodes as outputs too) is checked as model.onnx's is: the portable graph on
    the engine's int8 codes (portable=, logits and worst state at ENGINE_FOLLOW_TOL) and the per-layer line, whose
    gain limit is ENGINE_GAIN_TOL_DECODE for the decode step; its direct rows are then reported only. Stand-in
    validation engines: correct (fp16 storage) passes; one wrong layer is named — the prefill's scan C_scale 1 % off,
    the decode step's state-update D and its conv taps 1 % off (the layers model.onnx's engine does not have); a NaN
    in one output state fails the states row."""
    monkeypatch.setitem(sys.modules, "tensorrt", _trt(_FakeTRT({})))
    lib = tmp_path / "libmq_trt_plugins.so"
    lib.write_bytes(b"")
    engine = tmp_path / f"model.{graph}.validate.engine"
    engine.write_bytes(b"ENGINE")
    states = [o.name for o in onnx.load(str(w8_out / f"model.{graph}.onnx"), load_external_data=False).graph.output
              if o.name != "logits"]

    def report(change=None, after=lambda o: o, **kw):
        plain = onnx.load(str(w8_out / f"model.{graph}.onnx"))
        g = fp16_stand_in(plain)
        if change is not None:
            change(g)
        runner = OrtRunner(g, extra_outputs=validation_marks(plain))

        def run(path, lib_, feed):
            assert path == str(engine)
            return after(runner.run(dict(feed)))

        monkeypatch.setattr(mval, "_trt_direct", run)
        rep = mval.validate(w8_out, graph=graph, batch=3, seq=20, engine=str(engine), plugin_lib=str(lib),
                            use_polygraphy=False, **kw)
        return rep, {(r["reference"], r["test"], r["output"]): r for r in rep.pairs}

    rep, p = report()
    assert rep.ok, mval.format_report(rep)
    for o in ("logits", "states"):
        for a in ("portable", "plugin"):  # direct: reported only (the stand-in is a few 1e-2 away)
            assert p[(a, "tensorrt", o)]["limit"] is None and p[(a, "tensorrt", o)]["max_rel"] > 1e-3
        f = p[("portable=", "tensorrt", o)]  # on the engine's own int8 codes: fp16 apart
        assert f["limit"] == mval.ENGINE_FOLLOW_TOL and f["ok"] and 0 < f["max_rel"] < 3e-3
        assert p[("portable~", "tensorrt", o)]["limit"] is None and p[("portable~", "tensorrt", o)]["ok"] is None
    assert p[("portable=", "tensorrt", "states")]["worst_state"] in states
    assert not any(s["name"] == "tensorrt gate" for s in rep.skipped)  # no note on the loose bound: checked layer by layer
    st = rep.steps
    gain = mval.ENGINE_GAIN_TOL_DECODE if graph == "decode" else mval.ENGINE_GAIN_TOL
    assert st["ok"] and st["limits"] == {"mean_steps": mval.ENGINE_STEP_TOL, "gain": gain}
    assert st["tensors"] == len(quantized_tensors(onnx.load(str(w8_out / f"model.{graph}.onnx"))))
    assert 0 < st["worst_mean"]["mean_steps"] < 0.05 and 0 < abs(st["worst_gain"]["gain"]) < gain / 2
    portable = quantizer_params(onnx.load(str(w8_out / f"model.{graph}.portable.onnx")))
    assert list(st["per_tensor"]) == [t for t in portable if t in st["per_tensor"]]
    assert f"model.{graph}.portable.onnx quantizing the engine's value" in mval.format_report(rep)
    # the CLI passes the per-layer limits on (a correct engine fails a gain limit of 1e-9)
    monkeypatch.setattr(mval, "have_polygraphy", lambda: False)  # the stand-in runs through _trt_direct
    rc = main(["validate", str(w8_out), "--graph", graph, "--engine", str(engine), "--plugins", str(lib), "--batch",
               "3", "--seq", "20", "--engine-gain-tol", "1e-9", "--engine-step-tol", "0.2", "--json", "-q"])
    cap = capsys.readouterr()
    assert rc == 1, cap.err
    out = json.loads(cap.out)
    assert out["steps"]["limits"] == {"mean_steps": 0.2, "gain": 1e-9} and not out["steps"]["ok"]
    assert all(r["ok"] is not False for r in out["pairs"])
    tight, p = report(engine_tol=1e-9)  # --engine-tol sets the portable= rows' limit
    assert not tight.ok and tight.steps["ok"] and p[("portable=", "tensorrt", "logits")]["limit"] == 1e-9
    assert p[("portable=", "tensorrt", "states")]["limit"] == 1e-9
    errors = ({"layers.1/gate": lambda g: _scale_attribute(g, "SelectiveScan", "C_scale", 1.01)} if graph == "prefill"
              else {"layers.1/gate": lambda g: _scale_initializer(g, "layers.1.D", 1.01),
                    "layers.1/to_tokens": lambda g: _scale_initializer(g, "layers.1.conv1d.weight", 1.01)})
    for tensor, change in errors.items():
        bad, _ = report(change)
        assert not bad.ok and not bad.steps["ok"] and bad.steps["first_over"]["tensor"] == tensor, (
            mval.format_report(bad))
        assert f"the engine computes {tensor} differently" in mval.format_report(bad)
        assert report(change, engine_step_tol=1, engine_gain_tol=1)[0].ok  # the limits are the caller's to set
    bad, p = report(after=lambda o: {**o, states[-1]: o[states[-1]] * np.nan})
    f = p[("portable=", "tensorrt", "states")]
    assert not bad.ok and not f["ok"] and f["worst_state"] == states[-1] and bad.steps["ok"]
    text = mval.format_report(bad)  # the hint names the state, not the head
    assert f"every quantizer input matches: the state {states[-1]} differs" in text and "(the head)" not in text
    # an engine output that is neither the graph's nor a quantizer input: an engine of another graph or build
    with pytest.raises(UserError, match=r"the engine has the output\(s\) stray, which model\.\w+\.onnx neither"):
        report(after=lambda o: {**o, "stray": o["logits"]})
    if graph == "prefill":  # marked tensors the portable graph does not quantize (an engine of an older compile)
        import mq_deploy.graph.follow as follow

        params = follow.quantizer_params
        first = next(iter(params(onnx.load(str(w8_out / "model.prefill.portable.onnx")))))
        monkeypatch.setattr(follow, "quantizer_params", lambda m: {k: v for k, v in params(m).items() if k != first})
        part, _ = report()
        assert part.ok and part.steps["tensors"] == st["tensors"] - 1 and first not in part.steps["per_tensor"]
        assert any("1 of the engine's" in x["reason"] and "not compared" in x["reason"] for x in part.skipped)
        monkeypatch.setattr(follow, "quantizer_params", lambda m: {})  # none: the deployment engine's checks
        none, p = report()
        assert none.steps is None and ("portable=", "tensorrt", "logits") not in p
        assert p[("portable", "tensorrt", "logits")]["limit"] == mval.QUANTIZED_STATEFUL_ENGINE_TOL
        assert any(x["name"] == "tensorrt gate" for x in none.skipped)


def test_validate_graph_errors(fp32_out, tmp_path, capsys):
    for extra, msg in ((["--simulate"], "--simulate is for model.onnx"), (["--torch"], "--torch is for model.onnx"),
                       (["--model", str(tmp_path)], "--model is for model.onnx")):
        assert main(["validate", str(fp32_out), "--graph", "decode", *extra]) == 2
        assert msg in capsys.readouterr().err
    old = tmp_path / "old"
    old.mkdir()
    for f in ("model.onnx", "model.portable.onnx", "manifest.json"):
        (old / f).write_bytes((fp32_out / f).read_bytes())
    assert main(["validate", str(old), "--graph", "prefill"]) == 2
    assert "has no model.prefill.portable.onnx (a stateful graph), which its manifest.json lists: copy it" in (
        capsys.readouterr().err)
    (old / "model.portable.onnx").unlink()
    assert main(["validate", str(old)]) == 2
    assert "has no model.portable.onnx, which its manifest.json lists: copy it" in capsys.readouterr().err


def test_validate_engine_without_polygraphy_or_cuda_is_a_user_error(fp32_out, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setitem(sys.modules, "tensorrt", _trt(_FakeRuntimeTRT({})))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # CPU-only torch, as in the docker images
    lib, engine = tmp_path / "libmq_trt_plugins.so", tmp_path / "m.engine"
    lib.write_bytes(b"")
    engine.write_bytes(b"ENGINE")
    with pytest.raises(UserError, match="pip install polygraphy, or install a CUDA build of torch"):
        mval.validate(fp32_out, engine=str(engine), plugin_lib=str(lib), use_polygraphy=False)


@pytest.mark.parametrize("major", [10, 11])
def test_validate_runs_the_engine_without_polygraphy(tmp_path, monkeypatch, major):
    """validate's own engine run (_trt_direct) through TensorRT's runtime API, buffers at the addresses given,
    with torch's CUDA calls kept on the CPU (the fake engine reads and writes host memory)."""
    torch = pytest.importorskip("torch")
    fake = _FakeRuntimeTRT(log := {})
    monkeypatch.setitem(sys.modules, "tensorrt", _trt(fake, major))
    seen = cuda_on_cpu(monkeypatch, torch, stream_id=1234)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"ENGINE")
    ids = np.arange(2 * 5).reshape(2, 5) * 3
    out = mval._trt_direct(str(engine), None, {"input_ids": ids})
    assert list(out) == ["logits"] and out["logits"].dtype == np.float32 and log["stream"] == 1234
    assert seen["stream"] == 1234 and seen["synchronized"] == 1  # its own stream, synchronized before the copy back
    np.testing.assert_array_equal(out["logits"], ids[..., None] + 0.5 * np.arange(8))
    with pytest.raises(UserError, match=r"outside the engine's optimization profile .*\(1, 1\) to \(8, 64\)\); "
                                        "rebuild with --max-shapes covering it or pass smaller --batch/--seq"):
        mval._trt_direct(str(engine), None, {"input_ids": np.zeros((1, 65), np.int64)})
    with pytest.raises(UserError, match="is not pixel_values"):
        mval._trt_direct(str(engine), None, {"pixel_values": np.zeros((1, 3), np.float32)})
    engine.write_bytes(b"PLAN OF ANOTHER TENSORRT")
    with pytest.raises(UserError, match="TensorRT could not deserialize .*m.engine"):
        mval._trt_direct(str(engine), None, {"input_ids": ids})


def test_validate_errors(fp32_out, tmp_path, capsys):
    assert main(["validate", str(tmp_path)]) == 2
    assert "has no model.onnx" in capsys.readouterr().err
    assert main(["validate", str(fp32_out), "--engine", str(tmp_path / "none.engine")]) == 2  # with or without TensorRT
    assert "none.engine not found" in capsys.readouterr().err
    assert main(["validate", str(fp32_out), "--seq", "0"]) == 2
    assert "--batch and --seq" in capsys.readouterr().err
    assert main(["validate", str(fp32_out), "--seq", "10000000"]) == 2  # one line, not the out-of-memory killer
    assert "--batch 2 x --seq 10000000 tokens of a 8192-token vocabulary need about 3662 GiB" in (
        capsys.readouterr().err)
    assert main(["validate", str(fp32_out), "--graph", "decode", "--seq", "10000000"]) == 2  # its prompt's prefill
    assert "need about 3662 GiB" in capsys.readouterr().err
    other = write_hf_checkpoint(random_model(MambaConfig(d_model=32, n_layer=2, vocab_size=8192)), tmp_path / "other")
    assert main(["validate", str(fp32_out), "--model", str(other)]) == 2  # another checkpoint: said before it runs
    assert f"the checkpoint {other} is not the one {fp32_out} was compiled from (d_model 32 here, 192 there, " in (
        capsys.readouterr().err)
    vim = BUNDLED_DIR.parent / "vim-fmnist"
    assert main(["validate", str(fp32_out), "--model", str(vim)]) == 2
    assert (f"{vim} is a Vision Mamba (Vim) checkpoint, but {fp32_out} was compiled from a language model"
            in capsys.readouterr().err)
    for flag, v in (("--engine-step-tol", "0"), ("--engine-gain-tol", "0"), ("--engine-tol", "-1"), ("--tol", "nan")):
        assert main(["validate", str(fp32_out), flag, v]) == 2
        assert f"mq-deploy: error: {flag} must be a number above 0" in capsys.readouterr().err


def test_a_damaged_copy_of_an_outdir_is_named(fp32_out, tmp_path, capsys, monkeypatch):
    """A copy to the device that stopped, or corrupted bytes: the two graphs share weights.bin, so they would agree
    on wrong weights. Sizes are checked by every command that reads the OUTDIR, the sha256 by validate, eval and lint
    (eval scored a same-size changed copy); a missing weights.bin is named with what to do, not onnx's message."""
    import shutil

    from mq_deploy.generate import outdir_graphs

    cp = tmp_path / "copy"
    shutil.copytree(fp32_out, cp)
    weights = cp / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[4096:8192] = bytes(4096)  # same size, other bytes
    weights.write_bytes(bytes(data))
    (tmp_path / "t.txt").write_text("some words to score " * 20)
    for args in (["validate", str(cp)], ["eval", str(cp), "--task", "text", "--data", str(tmp_path / "t.txt")],
                 ["lint", str(cp)]):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert f"{weights} differs from the file `mq-deploy compile` wrote (its sha256 is not the one manifest.json " \
               "lists): a corrupted or changed copy; copy it again" in err, args
    weights.write_bytes(bytes(data[:1000]))  # a copy that stopped
    size = len(data)
    for args in (["validate", str(cp)], ["build", str(cp), "--dry-run", "--plugins", str(tmp_path / "lib.so")],
                 ["eval", str(cp), "--task", "text", "--data", str(tmp_path / "t.txt")]):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert f"{weights} has 1000 bytes, its manifest.json {size}: a partial or changed copy" in err
    with pytest.raises(UserError, match="has 1000 bytes"):
        outdir_graphs(cp)  # generate's first step
    weights.unlink()
    lib = tmp_path / "libmq_trt_plugins.so"
    lib.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "tensorrt", _trt(_FakeTRT({})))
    for args in (["validate", str(cp)], ["lint", str(cp / "model.onnx")],
                 ["build", str(cp), "--plugins", str(lib), "-o", str(tmp_path / "m.engine")]):
        assert main(args) == 2, args
        assert (f"{cp / 'model.portable.onnx' if args[0] == 'validate' else cp / 'model.onnx'} keeps its weights in "
                "weights.bin beside it, which is missing: copy it from the directory `mq-deploy compile` wrote (with "
                "the other files its manifest.json lists)") in capsys.readouterr().err
    assert not (tmp_path / "m.engine").exists()
    lone = tmp_path / "lone"  # a graph copied without anything: no compile directory to point at
    lone.mkdir()
    shutil.copyfile(cp / "model.onnx", lone / "model.onnx")
    assert main(["lint", str(lone / "model.onnx")]) == 2
    assert (f"{lone / 'model.onnx'} keeps its weights in weights.bin beside it, which is missing: copy it next to the "
            "graph") in capsys.readouterr().err
    assert main(["build", str(cp), "--dry-run", "--plugins", str(lib)]) == 0  # the command lines need no weights
    assert "trtexec --onnx=" in capsys.readouterr().out
    shutil.copyfile(fp32_out / "weights.bin", weights)  # the file restored: the copy validates
    # a device copy without one of the files a command reads: named, with what to do
    (cp / "model.onnx").rename(cp / "aside.onnx")
    assert main(["validate", str(cp)]) == 2
    assert f"{cp} has no model.onnx (the plugin graph), which its manifest.json lists: copy it" in (
        capsys.readouterr().err)
    (cp / "aside.onnx").rename(cp / "model.onnx")
    (cp / "model.portable.onnx").rename(cp / "aside.onnx")
    assert main(["eval", str(cp), "--task", "text", "--data", str(tmp_path / "t.txt")]) == 2
    assert f"{cp} has no model.portable.onnx (the graph eval runs), which its manifest.json lists: copy it" in (
        capsys.readouterr().err)
    (cp / "aside.onnx").rename(cp / "model.portable.onnx")
    (cp / "tokenizer.json").rename(cp / "aside.json")
    assert main(["generate", str(cp), "--prompt", "hi"]) == 2
    assert (f"{cp} has no tokenizer.json, which its manifest.json lists: copy it from the directory `mq-deploy "
            "compile` wrote, or pass --tokenizer PATH/tokenizer.json") in capsys.readouterr().err
    (cp / "aside.json").rename(cp / "tokenizer.json")
    manifest = json.loads((cp / "manifest.json").read_text())  # compiled from a checkpoint this machine lacks
    manifest["model"].update(bundled=False, path=str(tmp_path / "elsewhere" / "ckpt"))
    (cp / "manifest.json").write_text(json.dumps(manifest))
    assert main(["validate", str(cp), "--torch"]) == 2
    assert (f"--torch needs the checkpoint {cp} was compiled from, {tmp_path / 'elsewhere' / 'ckpt'} (its "
            "manifest.json), which is not on this machine: pass --model DIR (a copy of it), or leave out --torch") in (
        capsys.readouterr().err)
    # weights.bin as a symbolic link (onnx refuses to read through one): said plainly, before any hashing
    (cp / "weights.bin").rename(tmp_path / "w.bin")
    (cp / "weights.bin").symlink_to(tmp_path / "w.bin")
    for args in (["validate", str(cp)], ["eval", str(cp), "--task", "text", "--data", str(tmp_path / "t.txt")],
                 ["generate", str(cp), "--prompt", "hi"]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"{cp / 'weights.bin'} is a symbolic link (to {tmp_path / 'w.bin'}), which onnx does not read " in err
        assert "sha256" not in err and "cp --remove-destination" in err
    (cp / "weights.bin").unlink()
    (tmp_path / "w.bin").rename(cp / "weights.bin")
    (cp / "report.html").unlink(missing_ok=True)  # files no graph reads may be missing or changed
    (cp / "tokenizer.json").write_text(" " + (fp32_out / "tokenizer.json").read_text())
    assert main(["validate", str(cp), "-q"]) == 0


def test_a_row_is_gated_on_its_max_rel():
    """One logit off in an 8×100 block: max_rel 5e-4 is over the fp32 limit while the mean difference (6e-5) is not."""
    ref = np.full((1, 8, 100), 10.0, np.float32)
    ref[0, 0, 0] = 100.0
    x = ref.copy()
    x[0, 3, 5] += 0.05
    rep = mval.Report("o", "r", 1, 8, 0)
    mval._row(rep, "portable", "plugin", "logits", ref, x, mval.FP32_TOL)
    assert rep.pairs[0]["max_rel"] == pytest.approx(5e-4, rel=1e-3)
    assert rep.pairs[0]["ok"] is False and not rep.ok


@pytest.mark.parametrize("gain", [3e-3, -3e-3])
def test_a_quantizer_input_off_in_scale_either_way_fails(gain):
    st = mval._steps({"layers.0/a": (0.01, 0.05, 1e-5), "layers.1/gate": (0.02, 0.1, gain)}, 0.1, 5e-4)
    assert not st["ok"] and st["first_over"]["tensor"] == "layers.1/gate"
    assert mval._steps({"layers.0/a": (0.01, 0.05, 1e-5), "layers.1/gate": (0.02, 0.1, gain / 10)}, 0.1, 5e-4)["ok"]


def test_validate_tolerance_failure_exits_1(fp32_out, capsys):
    assert main(["validate", str(fp32_out), "-q", "--tol", "1e-12"]) == 1
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed: the engine comparison runs instead")
def test_validate_engine_skipped_line_names_what_to_install(fp32_out, capsys):
    rep = mval.validate(fp32_out)
    (s,) = rep.skipped
    assert s["reason"].startswith("engine comparison skipped:") and "python3-libnvinfer" in s["reason"]
