"""mq_deploy.trt without TensorRT: the one clear error, plugin loading and the timing of writes against fakes,
and the documented command lines (polygraphy's shapes checked with polygraphy's own parser where installed)."""
import argparse
import builtins
import os
import shlex
import types

import pytest

from mq_deploy import trt as mtrt
from mq_deploy.errors import UserError

from . import trt_api


def test_missing_tensorrt_names_what_to_install(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "tensorrt":
            raise ImportError("No module named 'tensorrt'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"")
    with pytest.raises(UserError, match=r"pip install \"tensorrt-cu12==10\.3\.\*\""):
        mtrt.build_engine(str(onnx), str(tmp_path / "model.engine"))


def test_missing_plugin_library_is_a_user_error(tmp_path):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"")
    with pytest.raises(UserError, match="libmq_trt_plugins.so"):
        mtrt.build_engine(str(onnx), str(tmp_path / "e"), plugin_lib=str(tmp_path / "nope.so"))


def test_missing_onnx_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        mtrt.build_engine(str(tmp_path / "none.onnx"), str(tmp_path / "e"))


def test_bad_shapes_rejected():
    with pytest.raises(UserError):
        mtrt.Shapes(min=(2, 1), opt=(1, 8), max=(8, 64))


def test_command_lines():
    c = mtrt.command_lines("out/model.onnx", "out/model.engine", "build/plugins/libmq_trt_plugins.so", int8=True,
                           fp16=True, shapes=mtrt.Shapes((1, 1), (1, 128), (4, 2048)))
    assert c["trtexec"].startswith("trtexec --onnx=out/model.onnx --saveEngine=out/model.engine")
    assert "--dynamicPlugins=build/plugins/libmq_trt_plugins.so" in c["trtexec"]
    assert "--minShapes=input_ids:1x1 --optShapes=input_ids:1x128 --maxShapes=input_ids:4x2048" in c["trtexec"]
    assert "--int8" in c["trtexec"] and "--fp16" in c["trtexec"]
    # polygraphy's onnxrt runner cannot run the plugin nodes: reference run on the portable graph, then TensorRT
    assert c["polygraphy_reference"].startswith("polygraphy run out/model.portable.onnx --onnxrt")
    # polygraphy's --plugins only dlopens: the library that registers its plugins when loaded, beside the other
    assert c["polygraphy"].startswith("polygraphy run out/model.onnx --trt --plugins "
                                      "build/plugins/libmq_trt_plugins_register.so ")
    assert "--load-outputs out/polygraphy_ort_outputs.json" in c["polygraphy"]
    assert "--trt-max-shapes 'input_ids:[4,2048]'" in c["polygraphy"]
    assert "--input-shapes 'input_ids:[1,128]'" in c["polygraphy_reference"]
    assert "--int8" in c["polygraphy"] and "--fp16" in c["polygraphy"]


def _polygraphy_shapes(cmd: str) -> dict:
    """{option: (name, shape)} as polygraphy's own argument parser reads the command's shape options."""
    util = pytest.importorskip("polygraphy.tools.args.util.util")
    argv, got = shlex.split(cmd), {}
    for opt in ("--input-shapes", "--trt-min-shapes", "--trt-opt-shapes", "--trt-max-shapes"):
        if opt in argv:
            ((name, meta),) = util.parse_meta([argv[argv.index(opt) + 1]], includes_dtype=False).items()
            got[opt] = (name, tuple(meta.shape))
    return got


def test_polygraphy_shapes_are_what_polygraphy_reads():
    # polygraphy reads `input_ids:1x128` as the shape ('1', 'x', '1', '2', '8'), i.e. dynamic: it warns and runs [1, 1]
    c = mtrt.command_lines("out/model.onnx", "out/model.engine", "lib.so", shapes=mtrt.Shapes((1, 1), (2, 128), (4, 2048)))
    assert _polygraphy_shapes(c["polygraphy_reference"]) == {"--input-shapes": ("input_ids", (2, 128))}
    assert _polygraphy_shapes(c["polygraphy"]) == {"--trt-min-shapes": ("input_ids", (1, 1)),
                                                   "--trt-opt-shapes": ("input_ids", (2, 128)),
                                                   "--trt-max-shapes": ("input_ids", (4, 2048))}
    vim = mtrt.command_lines("o/model.onnx", "o/e", "lib.so", shapes=mtrt.Shapes((1, 0), (4, 0), (32, 0)),
                             input_name="pixel_values", fixed_dims=(1, 28, 28))
    assert _polygraphy_shapes(vim["polygraphy"])["--trt-max-shapes"] == ("pixel_values", (32, 1, 28, 28))
    assert "--maxShapes=pixel_values:32x1x28x28" in vim["trtexec"]  # trtexec keeps its own syntax


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # polygraphy 0.53.6's entry_points().get
def test_command_lines_of_a_graph_with_several_inputs_are_what_polygraphy_reads():
    """The prefill graph's profile (`profile`): every input in trtexec's comma list and polygraphy's shape lists, the
    reference run on model.prefill.portable.onnx with token ids in the vocabulary and an all-ones mask, into files
    named after the graph (beside model.onnx's)."""
    run = pytest.importorskip("polygraphy.tools.run.run")
    util = pytest.importorskip("polygraphy.tools.args.util.util")
    ap = argparse.ArgumentParser()
    run.Run().setup_parser(ap.add_subparsers())
    prof = (("input_ids", (1, 1), (2, 64), (4, 256)), ("attention_mask", (1, 1), (2, 64), (4, 256)))
    c = mtrt.command_lines("o/model.prefill.onnx", "o/model.prefill.engine", "lib.so", vocab=100, profile=prof)
    assert ("--minShapes=input_ids:1x1,attention_mask:1x1 --optShapes=input_ids:2x64,attention_mask:2x64 "
            "--maxShapes=input_ids:4x256,attention_mask:4x256") in c["trtexec"]
    ref = ap.parse_args(shlex.split(c["polygraphy_reference"])[1:])
    assert ref.model_file == "o/model.prefill.portable.onnx"
    assert ref.save_outputs_path == "o/polygraphy_prefill_ort_outputs.json"
    assert {k: tuple(v.shape) for k, v in util.parse_meta(ref.input_shapes, includes_dtype=False).items()} == {
        "input_ids": (2, 64), "attention_mask": (2, 64)}
    assert util.parse_arglist_to_dict(ref.val_range) == {"input_ids": [0, 99], "attention_mask": [1, 1]}
    trt = ap.parse_args(shlex.split(c["polygraphy"])[1:])
    assert trt.model_file == "o/model.prefill.onnx"
    assert trt.load_outputs_paths == ["o/polygraphy_prefill_ort_outputs.json"]
    for opt, j in (("trt_min_shapes", 1), ("trt_opt_shapes", 2), ("trt_max_shapes", 3)):
        (one,) = getattr(trt, opt)  # one optimization profile
        assert {k: tuple(v.shape) for k, v in util.parse_meta(one, includes_dtype=False).items()} == {
            p[0]: p[j] for p in prof}
    # model.onnx's lines are unchanged by the profile form
    single = mtrt.command_lines("o/model.onnx", "o/model.engine", "lib.so", vocab=100)
    assert single == mtrt.command_lines("o/model.onnx", "o/model.engine", "lib.so", vocab=100,
                                        profile=(("input_ids", (1, 1), (1, 512), (8, 4096)),))
    assert "o/polygraphy_ort_outputs.json" in single["polygraphy"]


def test_command_lines_follow_the_tensorrt_major_version():
    args = ("out/model.onnx", "out/model.engine", "lib.so")
    assert mtrt.command_lines(*args, int8=True) == mtrt.command_lines(*args, int8=True, trt_major=10)
    c = mtrt.command_lines(*args, int8=True, trt_major=11)  # always strongly typed: no precision flags
    assert "--int8" not in c["trtexec"] and "--int8" not in c["polygraphy"]
    assert c["trtexec"].startswith("trtexec --onnx=out/model.onnx")
    with pytest.raises(UserError, match="TensorRT 11 has no FP16 builder flag"):
        mtrt.command_lines(*args, fp16=True, trt_major=11)


def test_command_lines_strongly_typed():
    args = ("out/model.onnx", "out/model.engine", "lib.so")
    c, weak = mtrt.command_lines(*args, strongly_typed=True), mtrt.command_lines(*args)
    assert c["trtexec"] == weak["trtexec"] + " --stronglyTyped"
    assert " --strongly-typed " in c["polygraphy"] and c["polygraphy_reference"] == weak["polygraphy_reference"]
    for line in (c["trtexec"], c["polygraphy"]):
        assert "--int8" not in line and "--fp16" not in line
    assert mtrt.command_lines(*args, strongly_typed=True, trt_major=11) == mtrt.command_lines(*args, trt_major=11)
    for kw in ({"int8": True}, {"fp16": True}):
        with pytest.raises(UserError, match="--strongly-typed cannot be combined with"):
            mtrt.command_lines(*args, strongly_typed=True, **kw)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # polygraphy 0.53.6's entry_points().get
def test_polygraphy_reads_the_strongly_typed_line():
    run = pytest.importorskip("polygraphy.tools.run.run")
    ap = argparse.ArgumentParser()
    run.Run().setup_parser(ap.add_subparsers())
    c = mtrt.command_lines("out/model.onnx", "out/model.engine", "lib.so", strongly_typed=True)
    got = ap.parse_args(shlex.split(c["polygraphy"])[1:])
    assert got.strongly_typed and not got.int8 and not got.fp16


def test_build_engine_strongly_typed_excludes_precision_flags(tmp_path):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"")
    with pytest.raises(UserError, match="--strongly-typed cannot be combined with --int8"):
        mtrt.build_engine(str(onnx), str(tmp_path / "e"), int8=True, strongly_typed=True)  # before TensorRT
    assert not (tmp_path / "e").exists()


# -- plugin loading and writes, against a fake TensorRT ----------------------------------------------
class _Registry:
    """IPluginRegistry as TensorRT 10.3 documents it: loadLibrary returns nullptr "if any of the plugins are
    already registered"."""

    def __init__(self):
        self.creators, self.loads = set(), []

    def get_creator(self, name, version, namespace):
        return object() if (name, version, namespace) in self.creators else None

    def load_library(self, path):
        self.loads.append(path)
        if ("SelectiveScan", "1", "mq_deploy") in self.creators:
            return None
        self.creators.add(("SelectiveScan", "1", "mq_deploy"))
        return object()


def _fake_trt(major: int = 10):
    """(a fake TensorRT module, its registry): the module behind TensorRT's real API surface where its bindings are
    at hand (tests/trt_api.py)."""
    reg = _Registry()
    impl = types.SimpleNamespace(init_libnvinfer_plugins=lambda logger, ns: None, get_plugin_registry=lambda: reg,
                                 Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda s, sev=None: None}))
    return trt_api.checked(impl, trt_api.spec_for(major)), reg


@pytest.fixture
def no_loaded_libs(monkeypatch):
    monkeypatch.setattr(mtrt, "_LOADED_PLUGIN_LIBS", set(), raising=False)


@pytest.mark.parametrize("major", [10, 11])
def test_plugin_library_loaded_once_per_process(no_loaded_libs, major):
    trt, reg = _fake_trt(major)
    for _ in range(2):  # build, then validate, in one process
        mtrt.load_plugins(trt, trt.Logger(), "/x/libmq_trt_plugins.so")
    assert reg.loads == ["/x/libmq_trt_plugins.so"]
    # registered already (another path to the same library, or loaded by other code): not loaded again
    mtrt.load_plugins(trt, trt.Logger(), "/y/libmq_trt_plugins.so")
    assert reg.loads == ["/x/libmq_trt_plugins.so"]


def test_dlopen_plugin_lib_names_the_register_library():
    assert mtrt.dlopen_plugin_lib("/opt/p/libmq_trt_plugins.so") == "/opt/p/libmq_trt_plugins_register.so"
    assert mtrt.dlopen_plugin_lib("libmq_trt_plugins.so") == "libmq_trt_plugins_register.so"
    assert mtrt.dlopen_plugin_lib("/opt/p/libmq_trt_plugins_register.so") == "/opt/p/libmq_trt_plugins_register.so"
    assert mtrt.dlopen_plugin_lib("<libmq_trt_plugins.so>") == "<libmq_trt_plugins_register.so>"
    assert mtrt.dlopen_plugin_lib(".") == "libmq_trt_plugins_register.so"  # no ValueError from an empty name
    plan_lines = mtrt.command_lines("o/model.onnx", "o/model.engine", "<libmq_trt_plugins.so>")
    assert "--dynamicPlugins='<libmq_trt_plugins.so>'" in plan_lines["trtexec"]
    assert "--plugins '<libmq_trt_plugins_register.so>'" in plan_lines["polygraphy"]
    # given the register library, trtexec's loadLibrary still gets the library that has getCreators
    assert mtrt.loadlibrary_plugin_lib("/p/libmq_trt_plugins_register.so") == "/p/libmq_trt_plugins.so"
    assert mtrt.loadlibrary_plugin_lib("/p/libmine.so") == "/p/libmine.so"
    c = mtrt.command_lines("o/model.onnx", "o/model.engine", "/p/libmq_trt_plugins_register.so", timing_cache="t.cache")
    assert "--dynamicPlugins=/p/libmq_trt_plugins.so " in c["trtexec"] and "--timingCacheFile=t.cache" in c["trtexec"]
    assert "--plugins /p/libmq_trt_plugins_register.so " in c["polygraphy"]
    assert "--load-timing-cache t.cache --save-timing-cache t.cache" in c["polygraphy"]


def test_renamed_register_library_through_load_library_is_accepted(no_loaded_libs):
    """A register library under another name goes to load_library: TensorRT's dlopen registers its plugins, then
    loadLibrary returns null (no getCreators); the plugins are registered, so that is not an error."""
    trt, reg = _fake_trt()

    def load_library(path):
        reg.creators.add(("SelectiveScan", "1", "mq_deploy"))
        return None

    reg.load_library = load_library
    mtrt.load_plugins(trt, trt.Logger(), "/x/libmq_plugins_v2.so")
    assert ("SelectiveScan", "1", "mq_deploy") in reg.creators


def test_register_library_is_dlopened_not_load_library(no_loaded_libs, monkeypatch):
    """--plugins libmq_trt_plugins_register.so: it registers its plugins when loaded and has no loadLibrary entry
    points, so it is dlopened; its plugins must then be registered."""
    (trt, reg), opened = _fake_trt(), []

    def dlopen(path):  # the library's constructor registers the creators
        opened.append(path)
        reg.creators.add(("SelectiveScan", "1", "mq_deploy"))

    monkeypatch.setattr(mtrt, "_dlopen", dlopen)
    mtrt.load_plugins(trt, trt.Logger(), "/x/libmq_trt_plugins_register.so")
    assert opened == ["/x/libmq_trt_plugins_register.so"] and reg.loads == []
    mtrt.load_plugins(trt, trt.Logger(), "/x/libmq_trt_plugins_register.so")
    assert opened == ["/x/libmq_trt_plugins_register.so"]  # once per process


def test_register_library_that_registers_nothing_is_a_user_error(no_loaded_libs, monkeypatch):
    trt, _ = _fake_trt()
    monkeypatch.setattr(mtrt, "_dlopen", lambda path: None)
    with pytest.raises(UserError, match="registered no SelectiveScan plugin"):
        mtrt.load_plugins(trt, trt.Logger(), "/x/libmq_trt_plugins_register.so")

    def fail(path):
        raise OSError("libnvinfer.so.10: cannot open shared object file")

    monkeypatch.setattr(mtrt, "_dlopen", fail)
    with pytest.raises(UserError, match="could not load the plugin library .*libnvinfer.so.10"):
        mtrt.load_plugins(trt, trt.Logger(), "/x/libmq_trt_plugins_register.so")


def test_one_tensorrt_logger_per_process():
    trt, _ = _fake_trt()
    assert mtrt.trt_logger(trt) is mtrt.trt_logger(trt)


def test_plugin_library_tensorrt_cannot_load(no_loaded_libs):
    trt, reg = _fake_trt()
    reg.load_library = lambda path: None
    with pytest.raises(UserError, match="could not load the plugin library"):
        mtrt.load_plugins(trt, trt.Logger(), "/x/libmq_trt_plugins.so")


def test_a_library_is_loaded_once_whatever_it_registers(no_loaded_libs):
    """A library TensorRT loaded that registers no SelectiveScan creator (another plugin library, or another build
    of ours): once per process all the same, since loadLibrary of a library already loaded returns null (its plugins
    are registered): a second build or validate in the process is not refused."""
    trt, reg = _fake_trt()

    def load_library(path):
        reg.loads.append(path)
        if ("Other", "1", "") in reg.creators:
            return None
        reg.creators.add(("Other", "1", ""))
        return object()

    reg.load_library = load_library
    for _ in range(2):
        mtrt.load_plugins(trt, trt.Logger(), "/x/libother_plugins.so")
    assert reg.loads == ["/x/libother_plugins.so"]


def test_atomic_write_syncs_before_the_rename(tmp_path, monkeypatch):
    calls, fsync, replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("replace"), replace(a, b))[1])
    mtrt.atomic_write_bytes(tmp_path / "model.engine", b"ENGINE")
    assert calls == ["fsync", "replace"] and (tmp_path / "model.engine").read_bytes() == b"ENGINE"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # polygraphy 0.53.6's entry_points().get
def test_fp16_lines_keep_the_rms_norm_layers_in_fp32():
    args, keep = ("out/model.onnx", "out/model.engine", "lib.so"), ("layers.0/sq", "head/rms")
    c = mtrt.command_lines(*args, int8=True, fp16=True, fp32_layers=keep)
    assert (" --fp16 --precisionConstraints=prefer --layerPrecisions=layers.0/sq:fp32,head/rms:fp32 "
            "--layerOutputTypes=layers.0/sq:fp32,head/rms:fp32") in c["trtexec"]
    assert " --precision-constraints prefer --layer-precisions layers.0/sq:float32 head/rms:float32 " in c["polygraphy"]
    assert mtrt.command_lines(*args, int8=True, fp32_layers=keep) == mtrt.command_lines(*args, int8=True)  # no FP16
    run = pytest.importorskip("polygraphy.tools.run.run")
    ap = argparse.ArgumentParser()
    run.Run().setup_parser(ap.add_subparsers())
    got = ap.parse_args(shlex.split(c["polygraphy"])[1:])  # polygraphy's own parser takes the options
    assert got.fp16 and got.precision_constraints == "prefer" and got.layer_precisions == [
        "layers.0/sq:float32", "head/rms:float32"]
