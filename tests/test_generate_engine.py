"""`mq-deploy generate --flavour tensorrt`: the prefill and decode-step engines (`mq-deploy build --graph`) through
TensorRT's runtime API, with the states kept on the device between steps. TensorRT cannot run here, so its runtime is
a stand-in whose engines are the OUTDIR's own ONNX graphs run by onnxruntime on the buffers at the addresses given
(torch's CUDA calls kept on the CPU, so those are host addresses), behind TensorRT's real API surface where its
bindings are at hand (tests/trt_api.py)."""

from __future__ import annotations

import ctypes
import sys
import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from mq_deploy.backends.ort import OrtRunner
from mq_deploy.cli import main
from mq_deploy.errors import UserError
from mq_deploy.eval.tokenizer import TextTokenizer
from mq_deploy.generate import EngineSession, Sampling, StatefulSession, generate, outdir_graphs

from .helpers import compile_small_w8, cuda_on_cpu
from .test_build_validate import _FakeTRT, _trt

torch = pytest.importorskip("torch")
_CTYPES = {np.int64: ctypes.c_int64, np.float32: ctypes.c_float}


class _OnnxEngineTRT(_FakeTRT):
    """_FakeTRT plus a runtime whose engine file holds b"ONNX:" and the path of a graph: the engine runs that graph in
    onnxruntime, reading its inputs from and writing its outputs to the addresses it is given; batches over
    `max_batch` are outside its profile."""

    def __init__(self, log, min_batch: int = 1, max_batch: int = 4):
        super().__init__(log)
        self.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
        self.nptype = {"INT64": np.int64, "FLOAT": np.float32}.__getitem__
        fake = self

        class Context:
            def __init__(self, engine):
                self.engine, self.shapes, self.addresses = engine, {}, {}

            def set_input_shape(self, name, shape):
                self.shapes[name] = tuple(shape)
                return min_batch <= shape[0] <= max_batch and len(shape) == len(self.engine.io[name][1])

            def get_tensor_shape(self, name):
                batch = self.shapes["input_ids"][0]
                return tuple(batch if d == -1 else d for d in self.engine.io[name][1])

            def set_tensor_address(self, name, address):
                self.addresses[name] = address
                return True

            def _view(self, name, shape):
                dt = fake.nptype(self.engine.io[name][0])
                ptr = ctypes.cast(self.addresses[name], ctypes.POINTER(_CTYPES[dt]))
                return np.ctypeslib.as_array(ptr, (int(np.prod(shape)),)).reshape(shape)

            def execute_async_v3(self, stream):
                e = self.engine
                feeds = {n: self._view(n, self.shapes[n]).copy() for n in e.inputs}
                fake.log.setdefault("runs", []).append(e.path.rsplit("/", 1)[-1])
                fake.log.setdefault("addresses", []).append(dict(self.addresses))
                fake.log.setdefault("streams", []).append(stream)
                for n, v in e.runner.run(feeds).items():
                    self._view(n, self.get_tensor_shape(n))[...] = v
                return True

        class Engine:
            def __init__(self, path):
                m = onnx.load(path, load_external_data=False)
                def kind_and_dims(v):
                    t = v.type.tensor_type
                    return ("INT64" if t.elem_type == TensorProto.INT64 else "FLOAT",
                            tuple(-1 if d.dim_param else d.dim_value for d in t.shape.dim))

                self.path, self.inputs = path, [v.name for v in m.graph.input]
                self.io = {v.name: kind_and_dims(v) for v in list(m.graph.input) + list(m.graph.output)}
                self.names = list(self.io)
                self.runner = OrtRunner(path)

            @property
            def num_io_tensors(self):
                return len(self.names)

            def get_tensor_name(self, i):
                return self.names[i]

            def get_tensor_mode(self, n):
                return "INPUT" if n in self.inputs else "OUTPUT"

            def get_tensor_dtype(self, n):
                return self.io[n][0]

            def get_tensor_shape(self, n):
                return self.io[n][1]

            def get_tensor_profile_shape(self, n, profile):
                return [tuple(b if d == -1 else d for d in self.io[n][1]) for b in (min_batch, 2, max_batch)]

            def create_execution_context(self):
                return Context(self)

        def deserialize(runtime, data):
            return Engine(data[5:].decode()) if data.startswith(b"ONNX:") else None

        self.Runtime = type("Runtime", (), {"__init__": lambda s, logger: None, "deserialize_cuda_engine": deserialize})


@pytest.fixture(scope="module")
def w8(tmp_path_factory):
    return compile_small_w8(tmp_path_factory.mktemp("gen_trt"))


@pytest.fixture
def engines(w8, tmp_path, monkeypatch):
    """The stand-in TensorRT and torch's CUDA calls kept on the CPU; the two engine files in the OUTDIR (removed
    after)."""
    monkeypatch.setitem(sys.modules, "tensorrt", _trt(fake := _OnnxEngineTRT({})))
    fake.seen = cuda_on_cpu(monkeypatch, torch)
    lib = tmp_path / "libmq_trt_plugins.so"
    lib.write_bytes(b"")
    paths = []
    for graph in ("prefill", "decode"):
        p = w8 / f"model.{graph}.engine"
        p.write_bytes(b"ONNX:" + str(w8 / f"model.{graph}.onnx").encode())
        paths.append(p)
    yield fake, lib
    for p in paths:
        p.unlink()


def test_engine_session_generates_what_the_graphs_do_with_the_states_left_on_the_device(w8, engines):
    fake, lib = engines
    tok = TextTokenizer(w8 / "tokenizer.json")
    prompts = [tok.encode("The quick brown fox"), tok.encode("Once upon a time there was a")]  # left padding
    sess = EngineSession(*outdir_graphs(w8, "tensorrt"), plugin_lib=str(lib))
    assert sess.vocab_size == 8192 and len(sess.state_shapes) == 2 * 8
    got = generate(sess, prompts, max_new_tokens=6, sampling=Sampling(), eos_id=None)
    want = generate(StatefulSession.from_outdir(w8, "plugin"), prompts, max_new_tokens=6, sampling=Sampling(),
                    eos_id=None)
    assert got.tokens == want.tokens and all(len(t) == 6 for t in got.tokens)
    assert fake.log["runs"] == ["model.prefill.onnx"] + ["model.decode.onnx"] * 5
    assert set(fake.log["streams"]) == {7} and fake.seen["synchronized"] == 6  # one stream, waited for each call
    # each step reads its states at the very addresses the previous call wrote them (no copy on the way), and no
    # call's input shares memory with its outputs
    addr = fake.log["addresses"]
    for prev, cur in zip(addr, addr[1:]):
        written = {k.replace("_out.", "."): v for k, v in prev.items()}
        assert all(cur[n] == written[n] for n in sess.state_shapes), (prev, cur)
    for a, run in zip(addr, fake.log["runs"]):
        ins = {"input_ids", "attention_mask"} if run == "model.prefill.onnx" else {"input_ids", *sess.state_shapes}
        assert not {a[n] for n in ins} & {a[n] for n in a if n not in ins}, a
    logits, states = sess.prefill(*[np.array([p[:3] for p in prompts], np.int64), np.ones((2, 3), np.int64)])
    assert isinstance(logits, np.ndarray) and logits.shape == (2, 8192) and logits.dtype == np.float32
    with pytest.raises(UserError, match="state 'conv_state.0' has shape"):
        sess.step(np.array([1]), states)  # batch 1 against states of batch 2
    with pytest.raises(UserError, match="outside the engine's optimization profile.*--max-shapes covering it or "
                                        "pass fewer prompts"):
        sess.step(np.arange(5), {k: torch.zeros((5, *d)) for k, d in sess.state_shapes.items()})
    host = {k: torch.zeros((2, *d)) for k, d in sess.state_shapes.items()}  # host tensors: moved to the device
    fake.seen["cuda"].clear()
    sess.step(np.arange(2), host)
    assert all(any(t is h for t in fake.seen["cuda"]) for h in host.values())
    with pytest.raises(UserError, match="state 'conv_state.0' has dtype torch.int64, expected float32"):
        sess.step(np.arange(2), {k: torch.zeros((2, *d), dtype=torch.int64) for k, d in sess.state_shapes.items()})
    with pytest.raises(UserError, match="outside the model's vocabulary"):
        sess.prefill(np.array([[8192]]), np.ones((1, 1), np.int64))


def test_engine_session_refuses_engines_of_other_graphs(w8, engines):
    _, lib = engines
    decode = w8 / "model.decode.engine"
    with pytest.raises(UserError, match="are not the prefill and decode-step engines of one OUTDIR"):
        EngineSession(decode, decode, plugin_lib=str(lib))
    (w8 / "model.prefill.engine").write_bytes(b"PLAN OF ANOTHER TENSORRT")
    with pytest.raises(UserError, match="TensorRT could not deserialize .*model.prefill.engine"):
        EngineSession(w8 / "model.prefill.engine", decode, plugin_lib=str(lib))


def test_generate_cli_tensorrt_flavour(w8, engines, capsys, monkeypatch):
    _, lib = engines
    args = ["generate", str(w8), "--prompt", "The quick brown fox", "--max-new-tokens", "5", "--greedy"]
    assert main(args + ["--flavour", "plugin"]) == 0
    want = capsys.readouterr().out
    assert main(args + ["--flavour", "tensorrt", "--plugins", str(lib)]) == 0
    cap = capsys.readouterr()
    assert cap.out == want and "[tensorrt]" in cap.err
    monkeypatch.setenv("MQ_DEPLOY_PLUGINS", str(lib))  # the library from the environment, as `build` takes it
    assert main(args + ["--flavour", "tensorrt"]) == 0
    assert capsys.readouterr().out == want
    monkeypatch.delenv("MQ_DEPLOY_PLUGINS")
    assert main(args + ["--flavour", "tensorrt"]) == 2
    assert "pass --plugins LIB or set MQ_DEPLOY_PLUGINS" in capsys.readouterr().err
    assert main(args + ["--plugins", str(lib)]) == 2
    assert "--plugins is for --flavour tensorrt" in capsys.readouterr().err
    (w8 / "model.decode.engine").unlink()
    assert main(args + ["--flavour", "tensorrt", "--plugins", str(lib)]) == 2
    err = capsys.readouterr().err
    assert f"has no model.decode.engine: build the engines on this machine first, `mq-deploy build {w8} " in err
    (w8 / "model.decode.engine").write_bytes(b"")  # the fixture removes it


def test_generate_cli_tensorrt_flavour_without_cuda_torch(w8, engines, capsys, monkeypatch):
    _, lib = engines
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # CPU-only torch
    assert main(["generate", str(w8), "--prompt", "hi", "--flavour", "tensorrt", "--plugins", str(lib)]) == 2
    err = capsys.readouterr().err
    assert "mq-deploy generate --flavour tensorrt needs torch with CUDA" in err and "install a CUDA build" in err
