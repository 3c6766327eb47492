"""The TensorRT plugins' build and runtime calls on the GPU, without TensorRT's library: each plugin is created from
fields, configured, serialized, deserialized, attached to a context, enqueued and replayed in a CUDA graph by
plugins/tests/plugin_runtime.cpp (build/libmq_plugin_runtime.so, built by run_all.sh when TRT_INCLUDE names
TensorRT's include directory), and what its enqueue writes is compared

  * bit for bit with the kernels' own C API on the same inputs (the plugin must pass the launcher what the C API does),
  * with the float64 references of harness.py (the C API's own checks' limits),
  * for `nodes FILE.npz`: with onnxruntime's outputs of the same plugin nodes of compiled OUTDIRs on real text
    (benchmarks/gpu/plugin_nodes.py writes FILE on the CPU), as the ONNX parser would hand them to the plugins: the
    node's attributes as fields, its inputs as the node receives them (int8 straight from QuantizeLinear in quantized
    graphs), in fp32 (strongly typed) and with the float inputs in fp16 (a weakly typed --fp16 build).

    python plugin_check.py test [--nodes FILE.npz ...]   # writes $OUT_DIR/plugin_tests.json
    python plugin_check.py sanitize                     # small cases, for compute-sanitizer
    python plugin_check.py capture_first                # (test starts it) first enqueues captured in a fresh process
    python plugin_check.py threads_first                # (test starts it) first enqueues in 8 threads at once, likewise
"""
from __future__ import annotations

import ctypes
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402  (the kernels' C API, references and input makers)

PR = ctypes.CDLL(os.environ.get("MQ_PLUGIN_RUNTIME_LIB", os.path.join(H.ROOT, "build", "libmq_plugin_runtime.so")))
_cp, _ip, _lp, _vp = ctypes.c_char_p, ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_int64), ctypes.c_void_p
PR.mqpr_run.argtypes = [_cp, ctypes.c_int32, ctypes.POINTER(_cp), _ip, ctypes.POINTER(ctypes.c_double), ctypes.c_int32, _ip,
                        _ip, _lp, _lp, ctypes.POINTER(_vp), ctypes.c_int32, _ip, _ip, _lp, ctypes.POINTER(_vp),
                        ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, ctypes.POINTER(ctypes.c_uint64), ctypes.c_char_p,
                        ctypes.c_int32]
PR.mqpr_run.restype = ctypes.c_int
TRT_TYPE = {torch.float32: 0, torch.float16: 1, torch.int8: 2}  # nvinfer1::DataType kFLOAT, kHALF, kINT8
NAME = {torch.float32: "fp32", torch.float16: "fp16", torch.int8: "int8"}
DEV = H.DEV


class PluginError(RuntimeError):
    pass


def _dims(tensors):
    flat = []
    for t in tensors:
        flat += list(t.shape) + [0] * (8 - t.dim())
    return (ctypes.c_int64 * max(len(flat), 1))(*flat)


def run_plugin(name, fields, inputs, outputs, strongly=True, replays=2, in_max=None, build_dims=False,
               attach_during_capture=True, per_thread=()):
    """Plugin `name` with `fields` ({field: int | float}: kINT32 / kFLOAT32, as the ONNX parser converts INT / FLOAT
    attributes) on device tensors `inputs`, writing the preallocated `outputs`; `in_max`: the profile's largest input
    shapes (default: the inputs'). The build phase sees every dimension as dynamic (-1, its range in the profile), or
    with `build_dims` the shapes themselves; the builder's instance is enqueued too, and must write what the context's
    does; with `attach_during_capture` the first attachToContext, and the destruction of another context's instance,
    run while another thread captures a CUDA graph in global mode, which must survive both. `per_thread`:
    [(inputs, outputs)] of threads 1, 2, ... (the same shapes and types): instead, the instances of that many contexts
    plus one enqueue at once in as many threads, thread 0 on `inputs` / `outputs`. Returns getWorkspaceSize; raises
    PluginError with the plugin's own message."""
    torch.cuda.synchronize()  # the plugin runs on its own non-blocking stream, not ordered after torch's
    names = list(fields)
    kinds = [0 if isinstance(fields[k], (int, np.integer)) else 1 for k in names]
    ins = [t.contiguous() for t in inputs]
    assert all(t.is_contiguous() for t in outputs)
    more = [([t.contiguous() for t in i], o) for i, o in per_thread]
    assert all(t.is_contiguous() for _, o in more for t in o)
    assert all([(t.shape, t.dtype) for t in i] == [(t.shape, t.dtype) for t in ins]
               and [(t.shape, t.dtype) for t in o] == [(t.shape, t.dtype) for t in outputs] for i, o in more)
    err = ctypes.create_string_buffer(1024)
    ws = ctypes.c_uint64(0)
    maxd = None if in_max is None else (ctypes.c_int64 * (8 * len(in_max)))(
        *[d for s in in_max for d in list(s) + [0] * (8 - len(s))])
    rc = PR.mqpr_run(name.encode(), len(names), (_cp * max(len(names), 1))(*[k.encode() for k in names]),
                     (ctypes.c_int32 * max(len(names), 1))(*kinds),
                     (ctypes.c_double * max(len(names), 1))(*[float(fields[k]) for k in names]),
                     len(ins), (ctypes.c_int32 * len(ins))(*[TRT_TYPE[t.dtype] for t in ins]),
                     (ctypes.c_int32 * len(ins))(*[t.dim() for t in ins]), _dims(ins), maxd,
                     (_vp * (len(ins) * (1 + len(more))))(*[t.data_ptr() for t in ins + [t for i, _ in more for t in i]]),
                     len(outputs), (ctypes.c_int32 * len(outputs))(*[TRT_TYPE[t.dtype] for t in outputs]),
                     (ctypes.c_int32 * len(outputs))(*[t.dim() for t in outputs]), _dims(outputs),
                     (_vp * (len(outputs) * (1 + len(more))))(*[t.data_ptr() for t in list(outputs) + [t for _, o in more for t in o]]),
                     int(strongly) | int(build_dims) << 1 | int(attach_during_capture) << 2, replays, 1 + len(more), ctypes.byref(ws),
                     err, len(err))
    if rc != 0:
        raise PluginError(err.value.decode())
    return ws.value


def ran(record, kernel, case, *args, **kw):
    """run_plugin(*args, **kw); a failure is a FAIL row with the plugin's message (and None), not the end of the run."""
    try:
        return run_plugin(*args, **kw)
    except PluginError as e:
        record(kernel, f"{case}: {e}", "ran", 1.0, 0.0)
        return None


def bits_equal(a, b):
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[a.element_size()]
    return bool(torch.equal(a.contiguous().view(view), b.contiguous().view(view)))


# ---------------------------------------------------------------- the plugins against the C API and the references
SCAN_CASES = [  # (B, L, D, N, z, h0, softplus, profile max (B, L) or None)
    (1, 1, 768, 16, True, False, True, None), (2, 7, 1000, 16, True, True, True, (4, 64)),
    (3, 300, 1536, 16, False, False, True, None), (1, 4096, 768, 16, True, False, True, None),
    (1, 4096, 1536, 16, False, False, True, None), (2, 1024, 2560, 16, True, True, True, (8, 2048)),
    (4, 333, 1000, 16, True, True, False, None), (1, 33, 100, 8, True, True, True, None),
    (3, 517, 99, 12, False, True, True, None), (8, 300, 5120, 16, False, False, True, None),
    (1, 1920, 64, 16, True, False, True, (1, 2000)),
]
# (input type, y type, strongly typed, limit of y against the reference): int8 -> fp16 is the weakly typed choice
SCAN_TYPES = ((torch.float32, torch.float32, True, 1e-4), (torch.float16, torch.float16, True, 2e-3),
              (torch.int8, torch.float32, True, 1e-4), (torch.int8, torch.float16, False, 2e-3))
H_TYPE = {torch.float32: H.F32, torch.float16: H.F16, torch.int8: H.I8}


def scan_fields(z, h0, softplus, scales=(1.0, 1.0, 1.0, 1.0)):
    return {"delta_softplus": int(softplus), "has_z": int(z), "has_initial_state": int(h0), "u_scale": scales[0],
            "delta_scale": scales[1], "B_scale": scales[2], "C_scale": scales[3]}


def scan_checks(record):
    for (Bsz, L, D, N, gate, init, sp, pmax) in SCAN_CASES:
        x = H.make_scan_inputs(Bsz, L, D, N, seed=L + D + 1, gate=gate, init=init)
        if not sp:  # Δ = δ + b must stay positive without softplus
            x["delta"], x["bias"] = x["delta"].abs() * 0.1, x["bias"].abs()
        for in_dt, out_dt, strongly, lim in SCAN_TYPES:
            if (pmax is not None) and in_dt != torch.float16:
                continue  # the profile-max cases: fp16 only (the workspace bound does not depend on the type)
            # the C API call (harness.run_scan quantizes int8 inputs itself: the same quant() gives the same bytes)
            y_c, st_c, seen, _ = H.run_scan(x, H_TYPE[in_dt], H_TYPE[out_dt], softplus=sp, profile_max=pmax)
            if in_dt == torch.int8:
                (u, su), (dl, sd), (bm, sb), (cm, sc) = (H.quant(x[k]) for k in ("u", "delta", "Bm", "Cm"))
                scales = (su, sd, sb, sc)
            else:
                u, dl, bm, cm = (x[k].to(in_dt) for k in ("u", "delta", "Bm", "Cm"))
                scales = (1.0,) * 4
            ins = [u, dl, x["A"], bm, cm, x["Dskip"], x["bias"]]
            if gate:
                ins.append(x["z"].to(out_dt))
            if init:
                ins.append(x["h0"])
            y = torch.full((Bsz, L, D), float("nan"), dtype=out_dt, device=DEV)
            st = torch.full((Bsz, D, N), float("nan"), device=DEV)
            in_max = None
            if pmax is not None:  # per-token inputs (u, delta, Bm, Cm, z) to (max B, max L), h0 to max B
                per_token = {0, 1, 3, 4} | ({7} if gate else set())
                in_max = [(pmax[0], pmax[1], t.shape[2]) if j in per_token else
                          ((pmax[0],) + tuple(t.shape[1:]) if t.dim() == 3 else tuple(t.shape)) for j, t in enumerate(ins)]
            case = (f"B{Bsz} L{L} D{D} N{N} {NAME[in_dt]}->{NAME[out_dt]} z={int(gate)} h0={int(init)} sp={int(sp)} "
                    f"{H.scan_plan(Bsz, L, D, N, 0, H_TYPE[out_dt])}" + (f" profile max B{pmax[0]} L{pmax[1]}" if pmax else "")
                    + ("" if strongly else " (weakly typed)"))
            ws = ran(record, "scan plugin", case, "SelectiveScan", scan_fields(gate, init, sp, scales), ins, [y, st],
                     strongly=strongly, in_max=in_max)
            if ws is None:
                continue
            yr, hr = H.scan_ref(seen["u"], seen["delta"], x["A"], seen["Bm"], seen["Cm"], x["Dskip"], x["bias"], seen["z"],
                                x["h0"], sp)
            record("scan plugin", case + f" ws {ws} B", "== C API", 0.0 if bits_equal(y, y_c) and bits_equal(st, st_c) else 1.0, 0.0)
            want_ws = H.LIB.mq_selective_scan_max_workspace(*(pmax or (Bsz, L)), D, N)  # selectiveScanMaxWorkspaceSize
            record("scan plugin", case + f" getWorkspaceSize {ws} B", "== max workspace", 0.0 if ws == want_ws else 1.0, 0.0)
            record("scan plugin", case + " y", "rel", H.rel_err(y, yr), lim)
            record("scan plugin", case + " state", "rel", H.rel_err(st, hr), 1e-4)


def state_update_checks(record):
    for (Bsz, D, N, gate) in ((1, 768, 16, True), (8, 1000, 16, False), (3, 5120, 16, True), (2, 100, 7, True), (3, 3000, 7, False)):
        g = torch.Generator(device=DEV).manual_seed(Bsz * D + N)
        r = lambda *s: torch.randn(*s, generator=g, device=DEV)
        st0, xx, dt, bm, cm, zz = r(Bsz, D, N), r(Bsz, D), r(Bsz, D) * 0.5 - 1, r(Bsz, N), r(Bsz, N), r(Bsz, D)
        A, Dskip, bias = -torch.exp(torch.rand(D, N, generator=g, device=DEV) * 2.77), r(D), r(D) * 0.1
        for dt_, lim in ((torch.float32, 1e-5), (torch.float16, 2e-3)):
            y_c, new_c, seen, _ = H.run_state_update(st0, xx, dt, A, bm, cm, Dskip, bias, zz if gate else None, H_TYPE[dt_])
            tok = lambda t: t.to(dt_).reshape(Bsz, 1, -1)
            ins = [st0, tok(xx), tok(dt), A, tok(bm), tok(cm), Dskip, bias] + ([tok(zz)] if gate else [])
            y = torch.full((Bsz, 1, D), float("nan"), dtype=dt_, device=DEV)
            new = torch.full((Bsz, D, N), float("nan"), device=DEV)
            case = f"B{Bsz} D{D} N{N} {NAME[dt_]} z={int(gate)}"
            if ran(record, "state update plugin", case, "SelectiveStateUpdate", {"dt_softplus": 1, "has_z": int(gate)}, ins,
                   [y, new]) is None:
                continue
            xs, dts, Bs, Cs, zs = (None if t is None else t.float() for t in seen)
            yr, hr = H.scan_ref(xs[:, None], dts[:, None], A, Bs[:, None], Cs[:, None], Dskip, bias,
                                None if zs is None else zs[:, None], st0, True)
            record("state update plugin", case, "== C API", 0.0 if bits_equal(y.reshape(Bsz, D), y_c) and bits_equal(new, new_c) else 1.0, 0.0)
            record("state update plugin", case + " y", "rel", H.rel_err(y.reshape(Bsz, D), yr[:, 0]), lim)
            record("state update plugin", case + " state", "rel", H.rel_err(new, hr), 1e-5)


def hadamard_checks(record):
    for n, shape in ((768, (2, 37, 768)), (1536, (3001, 1536)), (2560, (1, 5, 2560)), (5120, (2, 3, 7, 5120)), (4096, (9, 4096)),
                     (3584, (4, 3584)), (384, (2, 300, 384)), (64, (11, 64))):
        g = torch.Generator(device=DEV).manual_seed(n)
        x = torch.randn(*shape, generator=g, device=DEV)
        for in_dt in (torch.float32, torch.float16):
            xi = x.to(in_dt)
            ref = H.hadamard_ref(xi.double().reshape(-1, n), n).reshape(shape)
            scale = float(ref.abs().max()) / 100.0
            for out_dt, out_scale, lim in ((in_dt, 0.0, 1e-5 if in_dt == torch.float32 else 2e-3), (torch.int8, scale, None)):
                y = torch.empty(shape, dtype=out_dt, device=DEV)
                y_c, m, _ = H.run_hadamard(xi.reshape(-1, n), H.I8 if out_dt == torch.int8 else H_TYPE[out_dt], out_scale or 1.0)
                case = f"n{n} (m={m}) {list(shape)} {NAME[in_dt]}->{NAME[out_dt]}"
                if ran(record, "hadamard plugin", case, "Hadamard", {"n": n, "out_scale": out_scale}, [xi], [y]) is None:
                    continue
                record("hadamard plugin", case, "== C API", 0.0 if bits_equal(y.reshape(-1, n), y_c) else 1.0, 0.0)
                if lim is not None:
                    record("hadamard plugin", case, "rel", H.rel_err(y, ref), lim)
                else:
                    diff = (y.double() - torch.clamp(torch.round(ref / scale), -128, 127)).abs()
                    frac = float((diff > 0).double().mean())
                    record("hadamard plugin", case + " (|dq|<=1, mismatches)", "frac", frac, 0.01, ok=float(diff.max()) <= 1 and frac <= 0.01)


def _int8_scan():
    """A SelectiveScan's inputs with int8 u, delta, Bm, Cm (B1 L8 D64 N16; zeros)."""
    return ([torch.zeros(1, 8, 64, dtype=torch.int8, device=DEV)] * 2 + [torch.zeros(64, 16, device=DEV)]
            + [torch.zeros(1, 8, 16, dtype=torch.int8, device=DEV)] * 2 + [torch.zeros(64, device=DEV)] * 2)


def refusal_checks(record):
    """The plugins' own errors reach the caller (through the ILogger this runtime hands them) and stop the run."""
    x = torch.randn(4, 1024, device=DEV)
    cases = (("Hadamard", {"n": 1536, "out_scale": 0.0}, [x], [torch.empty_like(x)], "last axis must be n"),  # configurePlugin
             ("Hadamard", {"n": 1536, "out_scale": 0.0}, [x], [torch.empty_like(x)], "last axis must be n"),  # onShapeChange
             ("Hadamard", {"n": 105, "out_scale": 0.0}, [x], [torch.empty_like(x)], "is not m*2^k"),
             # int8 inputs for a node without B_scale, and for a float graph's node (scales 0): not offered at all
             ("SelectiveScan", {"delta_softplus": 1, "u_scale": 0.1, "delta_scale": 0.1, "C_scale": 0.1}, _int8_scan(),
              [torch.empty(1, 8, 64, device=DEV), torch.empty(1, 64, 16, device=DEV)],
              "supportsFormatCombination refuses position 0"),
             ("SelectiveScan", scan_fields(False, False, True, (0.0,) * 4), _int8_scan(),
              [torch.empty(1, 8, 64, device=DEV), torch.empty(1, 64, 16, device=DEV)],
              "supportsFormatCombination refuses position 0"))
    for i, (name, fields, ins, outs, want) in enumerate(cases):
        try:
            run_plugin(name, fields, ins, outs, build_dims=i != 1)  # the second: -1 dims, so onShapeChange refuses
            msg = "(ran)"
        except PluginError as e:
            msg = str(e)
        record("plugin errors", f"{name} {fields}{'' if i != 1 else ' (dynamic dims)'}: {want!r}", "refused",
               0.0 if want in msg and {0: "configurePlugin", 1: "onShapeChange"}.get(i, "") in msg else 1.0, 0.0)
        print("   ", msg)


# ---------------------------------------------------------------- the plugin nodes of compiled OUTDIRs
SCALE_OF = {0: "u_scale", 1: "delta_scale", 3: "B_scale", 4: "C_scale"}  # SelectiveScan's int8 inputs' scale fields


def node_checks(record, path):
    z = np.load(path)
    meta = json.loads(str(z["meta"]))
    for k, m in enumerate(meta):
        fields = {f: (int(v) if m["kinds"][f] == "int" else float(v)) for f, v in m["fields"].items()}
        ins = [torch.from_numpy(z[f"{k}.in{j}"]).to(DEV) for j in range(len(m["inputs"]))]
        refs = [torch.from_numpy(z[f"{k}.out{j}"]).to(DEV) for j in range(len(m["outputs"]))]
        where = f"{m['source']} {m['node']}"
        op = m["op"]
        # inputs that stay fp32 in an fp16 build (the plugins' supportsFormatCombination): A, Dskip, the Δ bias, states
        keep = {"SelectiveScan": {2, 5, 6} | ({7 + fields.get("has_z", 0)} if fields.get("has_initial_state") else set()),
                "SelectiveStateUpdate": {0, 3, 6, 7}}.get(op, set())
        for half in (False, True):  # as exported (fp32 / int8), then the float inputs in fp16 (weakly typed --fp16)
            xin = [t.half() if half and t.dtype == torch.float32 and j not in keep else t for j, t in enumerate(ins)]
            # NaN (int8: 85) where the plugin writes nothing
            outs = [torch.full(r.shape, float("nan") if r.is_floating_point() else 85, device=DEV, dtype=r.dtype) for r in refs]
            if half and outs[0].dtype == torch.float32:  # y in fp16 (states stay fp32)
                outs[0] = outs[0].half()
            tag = f"{where} {'fp16 (weakly typed)' if half else 'as exported'}"
            if ran(record, "onnx node", tag, op, fields, xin, outs, strongly=not half) is None:
                continue
            if not half:  # onnxruntime's outputs: the same node on mq-deploy's CPU kernels
                for j, (o, r) in enumerate(zip(outs, refs)):
                    if o.dtype == torch.int8:  # a fused Hadamard's codes: the two sum in different orders, so a value
                        diff = (o.double() - r.double()).abs()  # on a rounding boundary may land one step apart
                        frac = float((diff > 0).double().mean())
                        record("onnx node", f"{tag} out{j} int8 vs onnxruntime (|dq|<=1, mismatches)", "frac", frac, 1e-3,
                               ok=float(diff.max()) <= 1 and frac <= 1e-3)
                        continue
                    record("onnx node", f"{tag} out{j} vs onnxruntime", "rel", H.rel_err(o, r), 1e-4 if o.is_floating_point() else 0)
                continue
            # fp16: against float64 references of the inputs as the plugin saw them
            seen = [t.double() * (fields[SCALE_OF[j]] if t.dtype == torch.int8 else 1.0) for j, t in enumerate(xin)]
            if op == "SelectiveScan":
                zt = seen[7] if fields.get("has_z") else None
                h0 = seen[-1] if fields.get("has_initial_state") else None
                yr, hr = H.scan_ref(seen[0], seen[1], seen[2], seen[3], seen[4], seen[5], seen[6], zt, h0, bool(fields["delta_softplus"]))
            elif op == "SelectiveStateUpdate":
                s0, xx, dt, A, bm, cm, Dk, bias = seen[:8]
                zt = seen[8] if fields.get("has_z") else None
                yr, hr = H.scan_ref(xx, dt, A, bm, cm, Dk, bias, zt, s0, bool(fields["dt_softplus"]))
            else:
                n = fields["n"]
                yr, hr = H.hadamard_ref(seen[0].reshape(-1, n), n).reshape(seen[0].shape), None
                if fields.get("out_scale", 0.0) > 0:  # int8 output: rounding boundaries may differ by one step
                    diff = (outs[0].double() - torch.clamp(torch.round(yr / fields["out_scale"]), -128, 127)).abs()
                    frac = float((diff > 0).double().mean())
                    record("onnx node", f"{tag} int8 y (|dq|<=1, mismatches)", "frac", frac, 0.01, ok=float(diff.max()) <= 1 and frac <= 0.01)
                    continue
            record("onnx node", f"{tag} y", "rel", H.rel_err(outs[0], yr), 2e-3)
            if hr is not None:
                record("onnx node", f"{tag} state", "rel", H.rel_err(outs[1], hr), 1e-4)


def first_runs(mode):
    """Run in a fresh process (tests() starts one for each mode), so that each plugin's first enqueue holds the
    process's first launch of its kernels, with no eager run before it. mode "capture": that enqueue is captured into a
    CUDA graph (global mode) and replayed, what Torch-TensorRT's CUDA graphs do with a newly loaded engine; "threads":
    the instances of 8 contexts of one engine enqueue at once in 8 threads (a server's instances of one model), each
    on inputs of its own (scaled by 1 + t/8, or for int8 inputs rolled along L, which keeps their scales), so that a
    buffer two contexts shared would show. Every output must equal the C API's on the same inputs, computed
    afterwards. Returns the rows [(kernel, case, metric, value, limit)]."""
    nthreads = 1 if mode == "capture" else 8
    what = (" first enqueue captured (fresh process), replayed" if mode == "capture"
            else f" first enqueues in {nthreads} threads at once, each its own inputs (fresh process)")
    rows = []
    g = torch.Generator(device=DEV).manual_seed(13)
    x = H.make_scan_inputs(1, 4096, 1536, 16, seed=11, gate=True)
    x8 = H.make_scan_inputs(2, 300, 768, 16, seed=12, gate=False)
    su = [torch.randn(2, 768, 16, device=DEV), torch.randn(2, 1, 768, device=DEV).half(), torch.randn(2, 1, 768, device=DEV).half() * 0.5 - 1,
          -torch.exp(torch.rand(768, 16, device=DEV) * 2.77), torch.randn(2, 1, 16, device=DEV).half(), torch.randn(2, 1, 16, device=DEV).half(),
          torch.randn(768, device=DEV), torch.randn(768, device=DEV) * 0.1, torch.randn(2, 1, 768, device=DEV).half()]
    grow = lambda t: 1.0 + t / 8.0
    scaled = lambda d, t, keys: {k: (v * grow(t) if k in keys else v) for k, v in d.items()}
    rolled = lambda d, t: {k: (v.roll(37 * t, dims=1) if k in ("u", "delta", "Bm", "Cm") else v) for k, v in d.items()}
    q8 = [H.quant(x8[k])[1] for k in ("u", "delta", "Bm", "Cm")]  # the engine's scale fields: every variant's too
    cases = []  # (kernel, case, plugin, fields, variant(t) -> (inputs, outputs, C API call giving the same outputs))
    for n, shape, in_dt, out_dt, sc in ((5120, (3, 7, 5120), torch.float16, torch.float16, 0.0),
                                        (768, (2, 37, 768), torch.float32, torch.int8, 0.05),
                                        (4096, (5, 4096), torch.float16, torch.int8, 0.05),
                                        (5120, (2, 2048, 5120), torch.float16, torch.float16, 0.0)):  # several groups a block
        x0 = torch.randn(*shape, generator=g, device=DEV)

        def variant(t, x0=x0, n=n, shape=shape, in_dt=in_dt, out_dt=out_dt, sc=sc):
            xi = (x0 * grow(t)).to(in_dt)
            return [xi], [torch.empty(shape, dtype=out_dt, device=DEV)], \
                lambda: [H.run_hadamard(xi.reshape(-1, n), H.I8 if out_dt == torch.int8 else H_TYPE[out_dt], sc or 1.0)[0]]
        cases.append(("hadamard plugin", f"n{n} {list(shape)} {NAME[in_dt]}->{NAME[out_dt]}", "Hadamard", {"n": n, "out_scale": sc}, variant))

    def scan16(t):
        xt = scaled(x, t, ("u", "Bm"))
        return ([xt["u"].half(), xt["delta"].half(), xt["A"], xt["Bm"].half(), xt["Cm"].half(), xt["Dskip"], xt["bias"], xt["z"].half()],
                [torch.empty(1, 4096, 1536, dtype=torch.float16, device=DEV), torch.empty(1, 1536, 16, device=DEV)],
                lambda: list(H.run_scan(xt, H.F16, H.F16)[:2]))

    def scan8(t):
        xt = rolled(x8, t)  # the same values, elsewhere: H.quant gives them the same scales
        q = [H.quant(xt[k]) for k in ("u", "delta", "Bm", "Cm")]
        assert [s for _, s in q] == q8
        return ([q[0][0], q[1][0], xt["A"], q[2][0], q[3][0], xt["Dskip"], xt["bias"]],
                [torch.empty(2, 300, 768, device=DEV), torch.empty(2, 768, 16, device=DEV)],
                lambda: list(H.run_scan(xt, H.I8, H.F32)[:2]))

    def update(t):
        st = [v * grow(t) if j in (0, 1) else v for j, v in enumerate(su)]  # the state and x
        return (st, [torch.empty(2, 1, 768, dtype=torch.float16, device=DEV), torch.empty(2, 768, 16, device=DEV)],
                lambda: list(H.run_state_update(st[0], *(v.reshape(2, -1) if v.dim() == 3 else v for v in st[1:]), H.F16)[:2]))

    cases += [("scan plugin", "B1 L4096 D1536 fp16->fp16 z=1", "SelectiveScan", scan_fields(True, False, True), scan16),
              ("scan plugin", "B2 L300 D768 int8->fp32", "SelectiveScan", scan_fields(False, False, True, q8), scan8),
              ("state update plugin", "B2 D768 fp16 z=1", "SelectiveStateUpdate", {"dt_softplus": 1, "has_z": 1}, update)]
    torch.cuda.synchronize()
    runs = []  # (kernel, case, [(plugin outputs, C API call)] a thread)
    for kernel, case, name, fields, variant in cases:
        per = [variant(t) for t in range(nthreads)]
        torch.cuda.synchronize()
        try:
            if nthreads == 1:
                run_plugin(name, fields, per[0][0], per[0][1], replays=-2)
            else:
                run_plugin(name, fields, per[0][0], per[0][1], replays=0, attach_during_capture=False,
                           per_thread=[(i, o) for i, o, _ in per[1:]])
            runs.append((kernel, case, [(o, c) for _, o, c in per]))
        except PluginError as e:
            rows.append((kernel, f"{case}: {e}", "ran", 1.0, 0.0))
    torch.cuda.synchronize()
    for kernel, case, per in runs:  # the C API only now: the plugin's launches came first
        def same(outs, ref):
            return len(outs) == len(ref) and all(bits_equal(o.reshape(r.shape), r) for o, r in zip(outs, ref))
        bad = [t for t, (outs, c_api) in enumerate(per) if not same(outs, c_api())]
        rows.append((kernel, case + what + (f" (threads {bad} differ)" if bad else ""), "== C API", 1.0 if bad else 0.0, 0.0))
    return rows


def tests(nodes=()):
    record = H.Recorder(widths=(19, 70))

    import subprocess

    for mode in ("capture_first", "threads_first"):
        r = subprocess.run([sys.executable, os.path.abspath(__file__), mode], capture_output=True, text=True)
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("ROWS ")]
        if r.returncode != 0 or not lines:
            record(mode, f"the {mode} process failed (rc {r.returncode}): {r.stderr.strip()[-300:]}", "ran", 1.0, 0.0)
        for row in (json.loads(lines[-1][5:]) if lines else []):
            record(*row)
    refusal_checks(record)
    scan_checks(record)
    state_update_checks(record)
    hadamard_checks(record)
    for path in nodes:
        node_checks(record, path)
    return record.rows, record.failures


def sanitize():
    """Small cases of every plugin (compute-sanitizer): the workspace is exactly getWorkspaceSize bytes."""
    x = H.make_scan_inputs(2, 45, 130, 16, seed=3, gate=True, init=True)
    ins = [x["u"], x["delta"], x["A"], x["Bm"], x["Cm"], x["Dskip"], x["bias"], x["z"], x["h0"]]
    run_plugin("SelectiveScan", scan_fields(True, True, True), ins, [torch.empty(2, 45, 130, device=DEV), torch.empty(2, 130, 16, device=DEV)])
    q = [H.quant(t)[0] for t in (x["u"], x["delta"])]
    ins8 = [q[0], q[1], x["A"], H.quant(x["Bm"])[0], H.quant(x["Cm"])[0], x["Dskip"], x["bias"]]
    run_plugin("SelectiveScan", scan_fields(False, False, True, (0.02,) * 4), ins8,
               [torch.empty(2, 45, 130, device=DEV), torch.empty(2, 130, 16, device=DEV)], in_max=[(4, 600, 130), (4, 600, 130), (130, 16), (4, 600, 16), (4, 600, 16), (130,), (130,)])
    x = H.make_scan_inputs(2, 700, 130, 16, seed=4, gate=True)  # chunked: the workspace in use, sized for max L 1000
    ins = [x["u"].half(), x["delta"].half(), x["A"], x["Bm"].half(), x["Cm"].half(), x["Dskip"], x["bias"], x["z"].half()]
    run_plugin("SelectiveScan", scan_fields(True, False, True), ins,
               [torch.empty(2, 700, 130, device=DEV).half(), torch.empty(2, 130, 16, device=DEV)],
               in_max=[(4, 1000, 130), (4, 1000, 130), (130, 16), (4, 1000, 16), (4, 1000, 16), (130,), (130,), (4, 1000, 130)])
    ins8 = [H.quant(t)[0] for t in (x["u"], x["delta"])]
    ins8 = [ins8[0], ins8[1], x["A"], H.quant(x["Bm"])[0], H.quant(x["Cm"])[0], x["Dskip"], x["bias"]]
    run_plugin("SelectiveScan", scan_fields(False, False, True, (0.02,) * 4), ins8,  # chunked, workspace of exactly this shape
               [torch.empty(2, 700, 130, device=DEV), torch.empty(2, 130, 16, device=DEV)])
    st = torch.randn(3, 130, 16, device=DEV)
    su = [st, torch.randn(3, 1, 130, device=DEV).half(), torch.randn(3, 1, 130, device=DEV).half(), -torch.rand(130, 16, device=DEV),
          torch.randn(3, 1, 16, device=DEV).half(), torch.randn(3, 1, 16, device=DEV).half(), torch.randn(130, device=DEV), torch.randn(130, device=DEV)]
    run_plugin("SelectiveStateUpdate", {"dt_softplus": 1, "has_z": 0}, su, [torch.empty(3, 1, 130, device=DEV).half(), torch.empty_like(st)])
    for n, rows in ((768, 37), (5120, 5), (64, 3)):
        xh = torch.randn(rows, n, device=DEV).half()
        run_plugin("Hadamard", {"n": n, "out_scale": 0.05}, [xh], [torch.empty(rows, n, dtype=torch.int8, device=DEV)])
        run_plugin("Hadamard", {"n": n, "out_scale": 0.0}, [xh], [torch.empty_like(xh)])
    torch.cuda.synchronize()
    print("plugin sanitize cases ran")


def main(argv):
    if argv[:1] == ["sanitize"]:
        sanitize()
        return 0
    if argv[:1] in (["capture_first"], ["threads_first"]):
        print("ROWS " + json.dumps(first_runs(argv[0].split("_")[0])))
        return 0
    if argv[:1] != ["test"]:
        print(__doc__)
        return 2
    nodes = argv[argv.index("--nodes") + 1:] if "--nodes" in argv else []
    rows, failures = tests(nodes)
    out = os.environ.get("OUT_DIR")
    if out:
        with open(os.path.join(out, "plugin_tests.json"), "w") as f:
            json.dump(dict(gpu=torch.cuda.get_device_name(0), rows=rows, failures=failures), f, indent=1)
    print(f"plugin checks: {len(rows) - failures}/{len(rows)} passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
