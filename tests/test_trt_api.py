"""The checked fake TensorRT of tests/trt_api.py: TensorRT's real Python API surface (its bindings imported
against stand-in libraries) refuses what the real TensorRT would refuse (and an enum member where TensorRT wants
an int, which TensorRT takes by its value), so that the fakes of test_build_validate.py, test_plugins_trt_py.py
and test_vim_deploy.py check mq_deploy.trt's and validate's calls against TensorRT 10.3 and 11."""

import types

import numpy as np
import pytest

from . import trt_api


def _spec(major):
    spec = trt_api.spec_for(major)
    if spec is None:
        pytest.skip(f"no TensorRT {major} bindings: set {trt_api.ENV} to a directory holding them (`pip install "
                    "--no-deps --target DIR tensorrt-cu12-bindings==10.3.0`, or tensorrt-cu13-bindings==11.4.0.106; "
                    ".ci/run installs both)")
    return spec


class _Impl:
    """A minimal fake: a builder whose network has one layer with one output, a config that records."""

    def __init__(self):
        self.calls = []
        impl = self

        class Tensor:
            name = "t0"

        class Layer:
            num_outputs = 1
            precision = None

            def get_output(self, j):
                return Tensor()

        class Config:
            def set_flag(self, f):
                impl.calls.append(("set_flag", f.name))

            def set_timing_cache(self, cache, ignore_mismatch):
                return True

            def create_timing_cache(self, data):
                return object()

        class Network:
            num_layers = 1

            def get_layer(self, i):
                return Layer()

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags=0):
                impl.calls.append(("create_network", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def build_serialized_network(self, network, config):
                return b"ENGINE"

        class Parser:
            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                return "yes"  # TensorRT returns a bool

        class Registry:
            def get_creator(self, name, version, namespace):
                return None

        self.Builder, self.OnnxParser = Builder, Parser
        self.init_libnvinfer_plugins = lambda logger, ns: True
        self.get_plugin_registry = Registry
        self.Logger = type("Logger", (), {"__init__": lambda s, v=0: None})


@pytest.mark.parametrize("major", [10, 11])
def test_checked_module_refuses_what_tensorrt_would(major):
    spec = _spec(major)
    impl = _Impl()
    trt = trt_api.checked(impl, spec)
    assert trt.__version__.startswith(f"{major}.")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    config = builder.create_builder_config()
    assert impl.calls == [("create_network", 0)]
    with pytest.raises(AttributeError, match="'Builder' object has no attribute 'create_netwrk'"):
        builder.create_netwrk(0)
    with pytest.raises(TypeError, match="incompatible function arguments"):
        builder.create_network("0")  # a str for an int
    with pytest.raises(TypeError, match="incompatible function arguments"):
        builder.create_network(None)
    with pytest.raises(TypeError, match="pass 1 << int"):  # TensorRT would take int(member): the wrong bit
        builder.create_network(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    with pytest.raises(TypeError, match="incompatible function arguments"):
        builder.build_serialized_network(config, network)  # swapped
    with pytest.raises(TypeError, match="incompatible function arguments"):
        trt.Builder()
    cache = config.create_timing_cache(b"")
    assert config.set_timing_cache(cache, ignore_mismatch=False) is True
    with pytest.raises(TypeError, match="incompatible function arguments"):
        config.set_timing_cache(cache, ignore_mismatched=False)
    assert config.set_timing_cache(cache, 0) is True  # pybind11 takes 0 / 1 / None for a bool
    with pytest.raises(TypeError, match="incompatible function arguments"):
        config.set_timing_cache(cache, "no")
    with pytest.raises(TypeError, match="incompatible function arguments"):
        config.set_flag("INT8")
    layer = network.get_layer(0)
    assert layer.get_output(0).name == "t0" and isinstance(layer.num_outputs, int)
    with pytest.raises(AttributeError, match="read-only"):
        layer.num_outputs = 2
    with pytest.raises(trt_api.ApiError, match="OnnxParser.parse_from_file returns bool"):
        trt.OnnxParser(network, logger).parse_from_file("m.onnx")
    plan = builder.build_serialized_network(network, config)
    assert bytes(memoryview(plan)) == b"ENGINE" and plan.nbytes == 6  # IHostMemory: a buffer, with no len()
    with pytest.raises(TypeError, match="has no len"):
        len(plan)
    with pytest.raises(AttributeError):
        plan.decode()
    with pytest.raises(TypeError, match="incompatible function arguments"):
        trt.init_libnvinfer_plugins("logger", "")  # a logger (or a capsule)
    reg = trt.get_plugin_registry()  # 11.4 declares no class for it; it is checked as the IPluginRegistry it is
    assert reg.get_creator("SelectiveScan", "1", "mq_deploy") is None
    with pytest.raises(TypeError, match="incompatible function arguments"):
        reg.get_creator("SelectiveScan", 1, "mq_deploy")
    with pytest.raises(TypeError, match="incompatible function arguments"):
        config.set_flag(None)
    assert trt.nptype(trt.int64) is np.int64 and trt.nptype(trt.float32) is np.float32
    assert trt.float32 is trt.DataType.FLOAT and trt.Logger.WARNING is trt.ILogger.Severity.WARNING
    with pytest.raises(AttributeError, match="module 'tensorrt' has no attribute 'BuilderFlags'"):
        trt.BuilderFlags
    assert trt_api.checked(impl, None) is impl  # no bindings: the fake unchecked


def test_tensorrt_10_and_11_differ_where_mq_deploy_branches():
    """What mq_deploy.trt's version branches rest on, read from the real bindings."""
    t10 = trt_api.checked(types.SimpleNamespace(), _spec(10))
    assert {"INT8", "FP16", "PREFER_PRECISION_CONSTRAINTS"} <= set(t10.BuilderFlag.__members__)
    assert int(t10.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 1
    assert trt_api.spec_for(10)["classes"]["ILayer"]["properties"]["precision"]["set"] == "DataType"
    t11 = trt_api.checked(types.SimpleNamespace(), _spec(11))
    assert not {"INT8", "FP16", "PREFER_PRECISION_CONSTRAINTS"} & set(t11.BuilderFlag.__members__)
    assert getattr(t11.BuilderFlag, "INT8", None) is None  # mq_deploy.trt._flag's test for TensorRT 11
    assert int(t11.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 0  # deprecated and ignored: always strongly typed
    assert "precision" not in trt_api.spec_for(11)["classes"]["ILayer"]["properties"]


@pytest.mark.parametrize("major", [10, 11])
def test_checked_overrides_of_tensorrt_callbacks(major):
    """A Python subclass of a TensorRT callback class (IProgressMonitor, which `mq-deploy build` sets on the builder
    config) is checked as pybind11 and TensorRT would take it: the base __init__ must run, each override must take
    TensorRT's arguments and return its declared type, and a method left out is a pure virtual call."""
    from mq_deploy.trt_progress import BuildProgress, monitor_class

    trt = trt_api.checked(_Impl(), _spec(major))
    config = trt.Builder(trt.Logger(trt.Logger.WARNING)).create_builder_config()
    shown = BuildProgress(__import__("io").StringIO())
    monitor = monitor_class(trt)(shown)  # mq-deploy's monitor
    config.progress_monitor = monitor
    assert monitor.step_complete("Building engine", 1) is True
    with pytest.raises(TypeError, match="takes IProgressMonitor"):
        config.progress_monitor = shown  # not a TensorRT IProgressMonitor

    class NoInit(trt.IProgressMonitor):
        def __init__(self):
            pass

    with pytest.raises(TypeError, match=r"IProgressMonitor.__init__\(\) must be called"):
        NoInit()
    with pytest.raises(TypeError, match="cannot take the arguments"):
        class Arity(trt.IProgressMonitor):
            def phase_start(self, phase_name, num_steps):  # parent_phase missing
                pass

    class NoBool(trt.IProgressMonitor):
        def step_complete(self, phase_name, step):
            pass  # None for TensorRT's bool

    m = NoBool()
    with pytest.raises(TypeError, match="must return bool"):
        m.step_complete("p", 1)
    with pytest.raises(RuntimeError, match="pure virtual function"):
        m.phase_finish("p")


@pytest.mark.parametrize("major", [10, 11])
def test_tensorrt_messages_go_to_stderr(major, capsys, monkeypatch):
    """mq-deploy's TensorRT logger is a Python ILogger (TensorRT's trt.Logger prints on stdout, where the engine path
    and --json rows go): TensorRT's classes take it, and it prints WARNING and worse on stderr only."""
    from mq_deploy import trt as mtrt

    impl = _Impl()
    impl.Runtime = lambda logger: object()
    impl.init_libnvinfer_plugins = lambda logger, ns: True
    trt = trt_api.checked(impl, _spec(major))
    monkeypatch.setattr(mtrt, "_LOGGER", [])
    monkeypatch.setattr(mtrt.trt_progress, "_ACTIVE", [])  # no build running
    logger = mtrt.trt_logger(trt)
    assert mtrt.trt_logger(trt) is logger  # one a process
    trt.Builder(logger)
    trt.Runtime(logger)
    trt.init_libnvinfer_plugins(logger, "")
    sev = trt.ILogger.Severity
    for level in ("VERBOSE", "INFO", "WARNING", "ERROR", "INTERNAL_ERROR"):
        logger.log(getattr(sev, level), f"a {level.lower()} message")
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == ("[TensorRT] WARNING: a warning message\n[TensorRT] ERROR: a error message\n"
                                         "[TensorRT] INTERNAL_ERROR: a internal_error message\n")
