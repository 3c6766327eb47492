"""mq_deploy.trt without TensorRT: the one clear error, and the documented command lines."""
import builtins

import pytest

from mq_deploy import trt as mtrt
from mq_deploy.errors import UserError


def test_missing_tensorrt_names_what_to_install(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "tensorrt":
            raise ImportError("No module named 'tensorrt'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"")
    with pytest.raises(UserError, match="pip install tensorrt"):
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
    assert c["polygraphy"].startswith("polygraphy run out/model.onnx --trt --plugins build/plugins/libmq_trt_plugins.so")
    assert "--load-outputs out/polygraphy_ort_outputs.json" in c["polygraphy"]
    assert "--trt-max-shapes input_ids:4x2048" in c["polygraphy"]
