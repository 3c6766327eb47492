"""`mq-deploy generate --flavour tensorrt`'s engine session on a real CUDA device, where TensorRT is absent (the GPU
machine has none): TrtEngine / EngineSession run against a stand-in `tensorrt` module whose two engines are toy
prefill and decode-step functions computed with CuPy on the device buffers at the addresses TrtEngine hands over, on
the stream it names. What this checks that the CPU tests (tests/test_generate_engine.py, host memory) cannot: torch
CUDA tensors as buffers (device pointers, dtypes, shapes, int64 ids), the states staying on the device from one call to
the next (the decode engine reads the very buffers the previous call wrote), and the copies back of the logits only.

    python3 benchmarks/gpu/engine_session_check.py      # needs torch with CUDA and CuPy; prints one line a check

Exit status 0 when every check passes.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

B_MAX, V, D, K, N = 4, 50, 24, 3, 16  # profile's largest batch, vocabulary, channels, conv taps - 1, states


def toy_prefill(ids, mask):
    """logits [B, V] from the last token, conv [B, D, K] and ssm [B, D, N] from the masked token sums (numpy)."""
    s = (ids * mask).sum(1).astype(np.float32)
    logits = np.zeros((len(ids), V), np.float32)
    logits[np.arange(len(ids)), (ids[:, -1] * 7 + 3) % V] = 1.0
    conv = s[:, None, None] + np.arange(D * K, dtype=np.float32).reshape(1, D, K)
    ssm = 0.5 * s[:, None, None] + np.arange(D * N, dtype=np.float32).reshape(1, D, N) / 100
    return logits, conv, ssm


def toy_step(ids, conv, ssm):
    """The decode step: the next token depends on the states, the states on the token."""
    t = ids[:, 0].astype(np.float32)
    conv2 = 0.5 * conv + t[:, None, None]
    ssm2 = ssm * 0.9 + conv2[:, :, :1]
    logits = np.zeros((len(ids), V), np.float32)
    logits[np.arange(len(ids)), (np.floor(ssm2[:, 0, 0]).astype(np.int64) + ids[:, 0]) % V] = 1.0
    return logits, conv2, ssm2


def stand_in_tensorrt(cp, log):
    """A `tensorrt` module with just what TrtEngine calls; its engines compute toy_prefill / toy_step with CuPy."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0-stand-in"
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.nptype = {"INT64": np.int64, "FLOAT": np.float32}.__getitem__
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, sev=None: None})
    trt.init_libnvinfer_plugins = lambda logger, ns: None
    registry = types.SimpleNamespace(get_creator=lambda *a: None, load_library=lambda p: object())
    trt.get_plugin_registry = lambda: registry
    io = {"prefill": {"input_ids": ("INT64", (-1, -1)), "attention_mask": ("INT64", (-1, -1)),
                      "logits": ("FLOAT", (-1, V)), "conv_state.0": ("FLOAT", (-1, D, K)),
                      "ssm_state.0": ("FLOAT", (-1, D, N))},
          "decode": {"input_ids": ("INT64", (-1, 1)), "conv_state.0": ("FLOAT", (-1, D, K)),
                     "ssm_state.0": ("FLOAT", (-1, D, N)), "logits": ("FLOAT", (-1, V)),
                     "conv_state_out.0": ("FLOAT", (-1, D, K)), "ssm_state_out.0": ("FLOAT", (-1, D, N))}}
    n_in = {"prefill": 2, "decode": 3}

    class Context:
        def __init__(self, kind):
            self.kind, self.shapes, self.addr = kind, {}, {}

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)
            return shape[0] <= B_MAX

        def get_tensor_shape(self, name):
            b = self.shapes["input_ids"][0]
            return tuple(b if d == -1 else d for d in io[self.kind][name][1])

        def set_tensor_address(self, name, address):
            self.addr[name] = address
            return True

        def view(self, name, shape):
            dt = trt.nptype(io[self.kind][name][0])
            nbytes = int(np.prod(shape)) * np.dtype(dt).itemsize
            mem = cp.cuda.MemoryPointer(cp.cuda.UnownedMemory(self.addr[name], nbytes, self), 0)
            return cp.ndarray(shape, dt, mem)

        def execute_async_v3(self, stream):
            log.append((self.kind, dict(self.addr), stream))
            with cp.cuda.ExternalStream(stream):
                names = list(io[self.kind])
                ins = [cp.asnumpy(self.view(n, self.shapes[n])) for n in names[:n_in[self.kind]]]
                outs = toy_prefill(*ins) if self.kind == "prefill" else toy_step(*ins)
                for n, v in zip(names[n_in[self.kind]:], outs):
                    self.view(n, v.shape)[...] = cp.asarray(v)
            return True

    class Engine:
        def __init__(self, kind):
            self.kind, self.names = kind, list(io[kind])

        num_io_tensors = property(lambda s: len(s.names))

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, n):
            return "INPUT" if self.names.index(n) < n_in[self.kind] else "OUTPUT"

        def get_tensor_dtype(self, n):
            return io[self.kind][n][0]

        def get_tensor_shape(self, n):
            return io[self.kind][n][1]

        def get_tensor_profile_shape(self, n, profile):
            return [tuple(b if d == -1 else d for d in io[self.kind][n][1]) for b in (1, 2, B_MAX)]

        def create_execution_context(self):
            return Context(self.kind)

    trt.Runtime = type("Runtime", (), {"__init__": lambda s, logger: None,
                                       "deserialize_cuda_engine": lambda s, data: Engine(data.decode())
                                       if data in (b"prefill", b"decode") else None})
    return trt


def main() -> int:
    import tempfile

    import cupy as cp
    import torch

    try:
        import onnx  # noqa: F401  (generate.py names it in annotations only)
    except ImportError:  # the GPU machine may lack it; nothing here calls it
        sys.modules["onnx"] = types.ModuleType("onnx")
    from mq_deploy.errors import UserError
    from mq_deploy.generate import EngineSession, Sampling, generate

    log = []
    sys.modules["tensorrt"] = stand_in_tensorrt(cp, log)
    ok = True

    def check(name, cond, detail=""):
        nonlocal ok
        ok &= bool(cond)
        print(f"{'PASS' if cond else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)

    with tempfile.TemporaryDirectory() as d:
        pre, dec, lib = Path(d, "model.prefill.engine"), Path(d, "model.decode.engine"), Path(d, "lib.so")
        pre.write_bytes(b"prefill")
        dec.write_bytes(b"decode")
        lib.write_bytes(b"")
        sess = EngineSession(pre, dec, plugin_lib=str(lib))
        check("engine session opened", sess.vocab_size == V and sess.state_shapes == {"conv_state.0": (D, K),
                                                                                        "ssm_state.0": (D, N)})
        prompts = [[5, 9, 11], [2, 4, 6, 8, 10, 12, 14], [1]]
        got = generate(sess, prompts, max_new_tokens=8, sampling=Sampling(), eos_id=None)
        # the same with numpy, left-padded as generate pads
        L = max(map(len, prompts))
        ids = np.zeros((len(prompts), L), np.int64)
        mask = np.zeros_like(ids)
        for r, p in enumerate(prompts):
            ids[r, L - len(p):], mask[r, L - len(p):] = p, 1
        logits, conv, ssm = toy_prefill(ids, mask)
        want = [[] for _ in prompts]
        nxt = logits.argmax(-1)
        for n in range(8):
            if n:
                logits, conv, ssm = toy_step(nxt[:, None], conv, ssm)
                nxt = logits.argmax(-1)
            for r in range(len(prompts)):
                want[r].append(int(nxt[r]))
        check("tokens equal the numpy run of the same engines", got.tokens == want, f"{got.tokens[0]} vs {want[0]}")
        kinds = [k for k, _, _ in log]
        check("one prefill, then 7 decode steps", kinds == ["prefill"] + ["decode"] * 7, str(kinds))
        streams = {s for _, _, s in log}
        check("every engine call on the session's own stream (not the legacy default stream)",
              streams == {sess.prefill_engine.stream.cuda_stream} and 0 not in streams, str(streams))
        chained = all(log[i + 1][1]["conv_state.0"] == log[i][1]["conv_state.0" if log[i][0] == "prefill"
                                                                     else "conv_state_out.0"]
                      and log[i + 1][1]["ssm_state.0"] == log[i][1]["ssm_state.0" if log[i][0] == "prefill"
                                                                    else "ssm_state_out.0"]
                      for i in range(len(log) - 1))
        check("each step reads the states where the previous call wrote them (device pointers, no copies)", chained)
        lo, st = sess.prefill(ids, mask)
        check("prefill: numpy logits, CUDA states", isinstance(lo, np.ndarray) and lo.dtype == np.float32
              and all(isinstance(v, torch.Tensor) and v.is_cuda and v.dtype == torch.float32 for v in st.values()))
        lo2, st2 = sess.step(np.array(ids[:, -1]), {k: v.cpu().numpy() for k, v in st.items()})
        ref = toy_step(ids[:, -1:], *toy_prefill(ids, mask)[1:])
        check("a step from numpy states (copied to the device)", np.array_equal(lo2, ref[0]) and
              np.allclose(st2["ssm_state.0"].cpu().numpy(), ref[2]))
        try:
            sess.step(np.arange(5), {k: torch.zeros((5, *s), device="cuda") for k, s in sess.state_shapes.items()})
            check("a batch over the profile is refused", False)
        except UserError as e:
            check("a batch over the profile is refused", "outside the engine's optimization profile" in str(e), str(e))
    print(f"engine session checks: {'all passed' if ok else 'FAILED'} ({torch.cuda.get_device_name()})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
