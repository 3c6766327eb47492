"""GPU tests and benchmarks of the mq-deploy kernels through their C API (ctypes over libmq_kernels.so).

    python harness.py test      # correctness vs float64 references across shapes and dtypes
    python harness.py sanitize  # small cases of every kernel (run under compute-sanitizer)
    python harness.py bench     # speed vs copy bandwidth, mamba-ssm (when its build is present)
    python harness.py hquant    # the int8-out Hadamard (quantized graphs) against Hadamard fp16 + a quantize kernel

References: float64 torch ports of src/mq_deploy/ops/selective_scan.py, ops/state_update.py and
quant/hadamard.py (the ports are checked against those numpy functions on small cases).
"""
from __future__ import annotations

import ctypes
import functools
import json
import math
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "src"))
F32, F16, I8 = 0, 1, 2
TDT = {F32: torch.float32, F16: torch.float16, I8: torch.int8}
vp, fp, i, f, sz = ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_size_t


def bind(lib):
    """Declares the C API's signatures on a loaded libmq_kernels (ctypes.CDLL); returns it."""
    lib.mq_selective_scan.argtypes = [i] * 7 + [f] * 4 + [vp] * 11 + [i, i, vp, sz, vp]
    lib.mq_selective_scan_workspace.argtypes = [i] * 6
    lib.mq_selective_scan_workspace.restype = sz
    lib.mq_selective_scan_max_workspace.argtypes = [i] * 4
    lib.mq_selective_scan_max_workspace.restype = sz
    lib.mq_selective_scan_chunks.argtypes = [i] * 6
    lib.mq_selective_scan_plan.argtypes = [i] * 6 + [ctypes.POINTER(i)]
    lib.mq_selective_scan_plan.restype = None
    lib.mq_selective_scan_set_tuning.argtypes = [i, i, i]
    lib.mq_selective_scan_set_tuning.restype = None
    lib.mq_selective_scan_segmented_available.argtypes = [i, i, i]
    lib.mq_state_update.argtypes = [i] * 5 + [vp] * 11 + [vp]
    lib.mq_hadamard_split.argtypes = [i, ctypes.POINTER(i), ctypes.POINTER(i)]
    lib.mq_hadamard_base_matrix.argtypes = [i, ctypes.c_void_p]
    lib.mq_hadamard.argtypes = [ctypes.c_longlong, i, i, i, i, f, vp, vp, vp, vp]
    lib.mq_hadamard_set_tuning.argtypes = [i, i]
    lib.mq_hadamard_set_tuning.restype = None
    return lib


LIB = bind(ctypes.CDLL(os.environ.get("MQ_KERNELS_LIB", os.path.join(ROOT, "build", "libmq_kernels.so"))))
# the experimental segment-parallel (schedule, lanes, groups) configurations (selectiveScanSeg.cuh: schedule 2, lanes x
# state groups; selectiveScanSeg2.cuh: schedule 3, lanes a channel x warps a block), where the library was built with
# them (-DMQ_SCAN_SEGMENTED=1, e.g. NVCC_DEFINES=MQ_SCAN_SEGMENTED=1 bash run_all.sh); tested and swept only then
SEG_CONFIGS = tuple(c for c in ((2, 8, 1), (2, 16, 1), (2, 16, 2), (2, 16, 4), (2, 32, 2), (2, 32, 4),
                                (3, 4, 4), (3, 4, 8), (3, 8, 4), (3, 8, 8)) if LIB.mq_selective_scan_segmented_available(*c))
# the experimental wide token-serial scan (selectiveScanWide.cuh: schedule 4, threads a channel x threads a block), where
# the library was built with it (-DMQ_SCAN_WIDE=1); tested and swept only then
WIDE_CONFIGS = tuple(c for c in ((4, 16, 128), (4, 16, 64), (4, 8, 128), (4, 8, 64)) if LIB.mq_selective_scan_segmented_available(*c))
# fp16 register path schedules (hadamardKernel.h setHadamardTuning): (row groups a block, 0 = resident grid walking all
# groups; flags: 1 = cp.async prefetch into shared memory, else registers; 2 = evict-first output stores; 4 = the last
# partial round of groups spread over all blocks in pieces; default 2)
TUNING_SWEEP = ((0, 0), (0, 1), (0, 2), (0, 3), (2, 1), (0, 4), (0, 6), (0, 7))
DEV = "cuda"


def ptr(t):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def check(rc, what):
    if rc != 0:
        raise RuntimeError(f"{what}: cudaError {rc}")


# ---------------------------------------------------------------- references (float64)
def softplus64(x):
    return torch.where(x > 20, x, torch.log1p(torch.exp(torch.clamp(x, max=20))))


def scan_ref(u, delta, A, Bm, Cm, Dskip, bias, z=None, h0=None, softplus=True):
    u, delta, A, Bm, Cm = (t.double() for t in (u, delta, A, Bm, Cm))
    dt = delta + bias.double()
    if softplus:
        dt = softplus64(dt)
    Bsz, L, D = u.shape
    h = torch.zeros(Bsz, D, A.shape[1], dtype=torch.float64, device=u.device) if h0 is None else h0.double().clone()
    y = torch.empty(Bsz, L, D, dtype=torch.float64, device=u.device)
    for t in range(L):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * u[:, t])[..., None] * Bm[:, t, None, :]
        y[:, t] = torch.einsum("bdn,bn->bd", h, Cm[:, t])
    y = y + Dskip.double() * u
    if z is not None:
        zz = z.double()
        y = y * zz * torch.sigmoid(zz)
    return y, h


def hadamard_ref(x64, n):
    from mq_deploy.quant.hadamard import hadamard_transform
    return torch.from_numpy(hadamard_transform(x64.cpu().numpy().astype(np.float64))).to(x64.device)


def rel_err(got, ref):
    got, ref = got.double(), ref.double()
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def sqnr_db(got, ref):
    got, ref = got.double(), ref.double()
    return float(10 * torch.log10(ref.pow(2).sum() / (got - ref).pow(2).sum().clamp_min(1e-300)))


# ---------------------------------------------------------------- kernel calls
def quant(x):
    s = float(x.abs().max()) / 127.0
    return torch.clamp(torch.round(x / s), -128, 127).to(torch.int8), s


def make_scan_inputs(Bsz, L, D, N, seed=0, gate=True, init=False):
    g = torch.Generator(device=DEV).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device=DEV)
    A = -torch.exp(torch.rand(D, N, generator=g, device=DEV) * math.log(16.0))
    return dict(u=r(Bsz, L, D), delta=r(Bsz, L, D) * 0.5 - 1.0, A=A, Bm=r(Bsz, L, N), Cm=r(Bsz, L, N), Dskip=r(D),
                bias=r(D) * 0.1, z=r(Bsz, L, D) if gate else None, h0=r(Bsz, D, N) if init else None)


def scan_plan(Bsz, L, D, N, chunks=0, out_t=F16):
    """What the library runs for that output type (under the current tuning override): 'serial C=k T=t', 'seg LxG'
    (schedule 2), 'seg2 QxS' (3) or 'wide LxG' (4)."""
    out = (i * 6)()
    LIB.mq_selective_scan_plan(Bsz, L, D, N, chunks, out_t, out)
    if out[0] == 4:
        return f"wide {out[2]}x{out[3]}"
    return f"serial C={out[1]} T={out[2]}" if out[0] == 1 else f"seg{'' if out[0] == 2 else out[0] - 1} {out[2]}x{out[3]}"


def run_scan(x, in_type, out_type, chunks=0, poly=-1, softplus=True, want_state=True, sched=(0, 0, 0), profile_max=None):
    """One scan call; `sched` = (schedule, lanes, groups) of mq_selective_scan_set_tuning (0 = automatic);
    `profile_max` = (max batch, max L): give it exactly the workspace the TensorRT plugin reserves for that profile."""
    u, delta, Bm, Cm = x["u"], x["delta"], x["Bm"], x["Cm"]
    Bsz, L, D = u.shape
    N = x["A"].shape[1]
    scales = [1.0] * 4
    if in_type == I8:
        (u, su), (delta, sd), (Bm, sb), (Cm, sc) = quant(u), quant(delta), quant(Bm), quant(Cm)
        scales = [su, sd, sb, sc]
    else:
        u, delta, Bm, Cm = (t.to(TDT[in_type]).contiguous() for t in (u, delta, Bm, Cm))
    z = None if x["z"] is None else x["z"].to(TDT[out_type]).contiguous()
    y = torch.empty(Bsz, L, D, dtype=TDT[out_type], device=DEV)
    st = torch.empty(Bsz, D, N, device=DEV) if want_state else None
    LIB.mq_selective_scan_set_tuning(*sched)
    ws_size = (LIB.mq_selective_scan_workspace(Bsz, L, D, N, chunks, out_type) if profile_max is None
               else LIB.mq_selective_scan_max_workspace(profile_max[0], profile_max[1], D, N))
    ws = torch.empty(max(ws_size, 1), dtype=torch.uint8, device=DEV)
    args = (Bsz, L, D, N, int(softplus), in_type, out_type, *scales, ptr(u), ptr(delta), ptr(x["A"]), ptr(Bm), ptr(Cm),
            ptr(x["Dskip"]), ptr(x["bias"]), ptr(z), ptr(x["h0"]), ptr(y), ptr(st), chunks, poly, ptr(ws), ws_size, None)

    keep = (u, delta, Bm, Cm, z, y, st, ws)  # the call's buffers live as long as the call can be made again

    def call(stream=None):
        assert keep  # (referenced so the closure holds them: re-running a call whose inputs were freed reads
        #              whatever the allocator put there since, e.g. the next call's tensors)
        LIB.mq_selective_scan_set_tuning(*sched)
        rc = LIB.mq_selective_scan(*args[:-1], stream)
        LIB.mq_selective_scan_set_tuning(0, 0, 0)
        return rc

    call.workspace = ws
    check(call(), "mq_selective_scan")
    # dequantized / rounded inputs the kernel actually saw, for the reference
    seen = dict(x)
    if in_type == I8:
        seen.update(u=u.float() * scales[0], delta=delta.float() * scales[1], Bm=Bm.float() * scales[2], Cm=Cm.float() * scales[3])
    else:
        seen.update(u=u.float(), delta=delta.float(), Bm=Bm.float(), Cm=Cm.float())
    seen["z"] = None if z is None else z.float()
    return y, st, seen, call


def run_state_update(st, x, dt, A, Bm, Cm, Dskip, bias, z, typ, inplace=False, softplus=True):
    Bsz, D, N = st.shape
    out = st if inplace else torch.empty_like(st)
    y = torch.empty(Bsz, D, dtype=TDT[typ], device=DEV)
    cv = lambda t: None if t is None else t.to(TDT[typ]).contiguous()
    xs, dts, Bs, Cs, zs = cv(x), cv(dt), cv(Bm), cv(Cm), cv(z)
    args = (Bsz, D, N, int(softplus), typ, ptr(st), ptr(out), ptr(xs), ptr(dts), ptr(A), ptr(Bs), ptr(Cs), ptr(Dskip),
            ptr(bias), ptr(zs), ptr(y), None)
    check(LIB.mq_state_update(*args), "mq_state_update")
    return y, out, (xs, dts, Bs, Cs, zs), (lambda: LIB.mq_state_update(*args))


_BASE = {}


def base_matrix_dev(m):
    if m not in _BASE:
        buf = np.zeros(m * m, np.float32)
        check(LIB.mq_hadamard_base_matrix(m, buf.ctypes.data), "base matrix")
        _BASE[m] = torch.from_numpy(buf).to(DEV)
    return _BASE[m]


def run_hadamard(x, out_type, scale=1.0):
    n = x.shape[-1]
    m, k = ctypes.c_int(), ctypes.c_int()
    check(LIB.mq_hadamard_split(n, ctypes.byref(m), ctypes.byref(k)), f"split {n}")
    y = torch.empty(x.shape, dtype=TDT[out_type], device=DEV)
    in_type = F16 if x.dtype == torch.float16 else F32
    args = (x.numel() // n, n, m.value, in_type, out_type, scale, ptr(x), ptr(y), ptr(base_matrix_dev(m.value)), None)
    check(LIB.mq_hadamard(*args), "mq_hadamard")
    return y, m.value, (lambda: LIB.mq_hadamard(*args))


# ---------------------------------------------------------------- tests
def state_update_checks(record, np_su=None):
    """SelectiveStateUpdate against the float64 scan reference (fp32 / fp16, gate, in place, N 16 and 7; B·D below
    8192 rows takes 4 lanes a row, from 8192 on 2: B3 D5120 and B3 D3000 N7 are the 2-lane vector / strided paths)."""
    for (Bsz, D, N) in ((1, 768, 16), (8, 1000, 16), (3, 5120, 16), (2, 100, 7), (3, 3000, 7)):
        g = torch.Generator(device=DEV).manual_seed(D)
        r = lambda *s: torch.randn(*s, generator=g, device=DEV)
        A = -torch.exp(torch.rand(D, N, generator=g, device=DEV) * math.log(16.0))
        st0, xx, dt, Bm, Cm, Dk, bias, z = r(Bsz, D, N), r(Bsz, D), r(Bsz, D) * 0.5 - 1, r(Bsz, N), r(Bsz, N), r(D), r(D) * 0.1, r(Bsz, D)
        for typ, lim in ((F32, 1e-5), (F16, 2e-3)):
            for gate in (True, False):
                for inplace in (False, True):
                    st = st0.clone()
                    y, out, (xs, dts, Bs, Cs, zs), _ = run_state_update(st, xx, dt, A, Bm, Cm, Dk, bias, z if gate else None, typ, inplace)
                    yr, hr = scan_ref(xs.float()[:, None], dts.float()[:, None], A, Bs.float()[:, None], Cs.float()[:, None], Dk, bias,
                                      None if zs is None else zs.float()[:, None], st0)
                    case = f"B{Bsz} D{D} N{N} {'fp32' if typ == F32 else 'fp16'} z={int(gate)} inplace={int(inplace)}"
                    record("state_update", case + " y", "rel", rel_err(y, yr[:, 0]), lim)
                    record("state_update", case + " state", "rel", rel_err(out, hr), 1e-5)
    if np_su is not None:  # the numpy reference of ops/state_update.py on one case
        yn, hn = np_su(st0.cpu().numpy(), xx.cpu().numpy()[:, None], dt.cpu().numpy()[:, None], A.cpu().numpy(), Bm.cpu().numpy()[:, None],
                       Cm.cpu().numpy()[:, None], Dk.cpu().numpy(), bias.cpu().numpy())
        y, out, *_ = run_state_update(st0.clone(), xx, dt, A, Bm, Cm, Dk, bias, None, F32)
        record("state_update", "vs ops/state_update.py numpy", "rel", rel_err(y, torch.from_numpy(yn[:, 0]).to(DEV)), 1e-5)


def graph_checks(record):
    """A chunked scan captured in a CUDA graph (as TensorRT's --useCudaGraph and serving stacks run it): pass 3 is a
    programmatic dependent launch of pass 1 (sm_90+), which the capture turns into a programmatic graph edge. Output,
    state and workspace are poisoned (NaN) before the replay, so a pass 3 that read the chunk states before pass 1 wrote
    them would not pass; the replay must give the eager call's bits. Pass 3 is a dependent launch only where pass 1 has
    at least 4 blocks an SM (selectiveScanKernel.cu, pass1FillsSMs): the last case is sized from the GPU's SM count to have
    exactly that many (2 threads a channel at 5 chunks: 4 blocks a chunk for D 256, so B = SMs / 4), and its eager
    output is also checked against the reference; the first two run without the dependent launch."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for (Bsz, L, D, chunks) in ((1, 1500, 256, 5), (2, 700, 96, 3), (-(-sms // 4), 600, 256, 5)):
        x = make_scan_inputs(Bsz, L, D, 16, seed=L + chunks, gate=True, init=True)
        y, st, seen, call = run_scan(x, F16, F16, chunks=chunks)
        y_eager, st_eager = y.clone(), st.clone()
        pdl = 4 * (-(-D // 64)) * Bsz * (chunks - 1) >= 4 * sms  # pass1FillsSMs at 2 threads, kMinBlocks 5
        if pdl:
            yr, hr = scan_ref(seen["u"], seen["delta"], x["A"], seen["Bm"], seen["Cm"], x["Dskip"], x["bias"], seen["z"], x["h0"], True)
            case = f"B{Bsz} L{L} D{D} N16 fp16->fp16 {scan_plan(Bsz, L, D, 16, chunks)} pass 3 dependent launch"
            record("scan", case + " y", "rel", rel_err(y, yr), 2e-3)
            record("scan", case + " state", "rel", rel_err(st, hr), 1e-4)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            rc = call(ctypes.c_void_p(torch.cuda.current_stream().cuda_stream))
        check(rc, "mq_selective_scan (captured)")
        y.fill_(float("nan")), st.fill_(float("nan")), call.workspace.fill_(0xFF)  # 0xFFFFFFFF is a NaN
        graph.replay()
        torch.cuda.synchronize()
        diff = max(float((y.float() - y_eager.float()).abs().max()), float((st - st_eager).abs().max()))
        record("scan", f"B{Bsz} L{L} D{D} N16 fp16->fp16 {scan_plan(Bsz, L, D, 16, chunks)} CUDA graph replay vs eager"
               + (" (dependent launch)" if pdl else ""), "equal", diff if diff == diff else float("inf"), 0.0)


class Recorder:
    """`record(kernel, case, metric, value, limit, ok=None)`: one PASS / FAIL row (ok defaults to value <= limit),
    printed and kept in `rows`; `failures` counts the FAIL rows. HARNESS_FAIL_FAST=1: exit 1 at the first FAIL
    (mutants.py: a mutant is killed as soon as one check fails)."""

    def __init__(self, widths=(13, 58)):
        self.rows, self.failures, self.widths = [], 0, widths
        self.fail_fast = os.environ.get("HARNESS_FAIL_FAST") == "1"

    def __call__(self, kernel, case, metric, value, limit, ok=None):
        ok = (value <= limit) if ok is None else ok
        self.failures += not ok
        self.rows.append(dict(kernel=kernel, case=case, metric=metric, value=value, limit=limit, ok=bool(ok)))
        wk, wc = self.widths
        print(f"{'PASS' if ok else 'FAIL'} {kernel:{wk}s} {case:{wc}s} {metric}={value:.3g} (limit {limit:.3g})", flush=True)
        if self.fail_fast and not ok:
            sys.exit(1)


def tests():
    record = Recorder()

    # the float64 ports agree with the repository's numpy references
    from mq_deploy.ops.selective_scan import selective_scan as np_scan
    x = make_scan_inputs(2, 9, 40, 16, seed=1, gate=False, init=True)
    yr, hr = scan_ref(x["u"], x["delta"], x["A"], x["Bm"], x["Cm"], x["Dskip"], x["bias"], h0=x["h0"])
    yn, hn = np_scan(*(x[k].cpu().numpy() for k in ("u", "delta", "A", "Bm", "Cm", "Dskip", "bias")), initial_state=x["h0"].cpu().numpy())
    record("reference", "torch float64 port vs ops/selective_scan.py", "rel", rel_err(torch.from_numpy(yn).to(DEV), yr), 1e-4)
    try:
        from mq_deploy.ops.state_update import selective_state_update as np_su
    except ImportError:
        np_su = None
    base_ok = all(np.array_equal(base_matrix_dev(m).cpu().numpy().reshape(m, m), __import__("mq_deploy.quant.hadamard", fromlist=["x"]).base_matrix(m).astype(np.float32))
                  for m in (12, 20, 28, 36, 44, 60, 104))
    record("hadamard", "C++ base_matrix port == quant/hadamard.py (m=12..104)", "equal", 0.0 if base_ok else 1.0, 0.0)

    scan_cases = [  # (B, L, D, N, gate, init, chunks, softplus)
        (1, 1, 768, 16, True, False, 0, True), (2, 7, 1000, 16, True, True, 0, True), (3, 300, 1536, 16, False, False, 0, True),
        (1, 4096, 768, 16, True, False, 0, True), (1, 4096, 1000, 16, True, True, 5, True), (8, 300, 5120, 16, True, False, 0, True),
        (2, 1024, 2560, 16, True, True, 1, True), (4, 333, 1000, 16, True, True, 7, False), (1, 33, 100, 8, True, True, 3, True),
        (8, 64, 2048, 16, True, False, 0, True),
        # 2-threads-per-channel kernel: C = 2 (pass 1 = chunk 0 with outputs, pass 3 = chunk 1), C = 3/4 with h0,
        # odd D (synchronous-load fallback for every dtype), N = 12 (second thread's states half padded)
        (2, 200, 1536, 16, True, True, 2, True), (3, 517, 99, 12, True, True, 4, True), (1, 290, 2560, 12, False, True, 3, True),
        (5, 129, 1000, 16, True, False, 2, True),
        # D % 16 == 0 but not a whole block (cp.async tiles with channels past D in the last block, for 2 and 4 threads);
        # int8 -> fp32 with 2 threads copies each z tile row in two 16-byte chunks a thread (16-token fp32 tiles)
        (2, 77, 1040, 16, True, True, 3, True),
    ]
    for (Bsz, L, D, N, gate, init, chunks, sp) in scan_cases:
        x = make_scan_inputs(Bsz, L, D, N, seed=L + D, gate=gate, init=init)
        if not sp:  # without softplus Δ = δ + b must stay positive, else exp(Δ·A) overflows (the 2026 run had NaN refs here)
            x["delta"] = x["delta"].abs() * 0.1
            x["bias"] = x["bias"].abs()
        for in_t, out_t, lim in ((F32, F32, 1e-4), (F16, F16, 2e-3), (I8, F16, 2e-3), (I8, F32, 1e-4)):
            # int8 -> fp32 at every length: what the TensorRT plugin runs for the quantized graphs (y fp32)
            # the case's own schedule (automatic or explicit chunks), then every experimental configuration built
            runs = [(poly, (0, 0, 0)) for poly in ((-1, 0) if in_t != F32 and L >= 300 else (-1,))]
            runs += [(-1, (1, 2, 0)), (-1, (1, 4, 0))]  # token-serial with 2 / 4 threads a channel, whatever auto picks
            runs += [(-1, cfg) for cfg in SEG_CONFIGS + WIDE_CONFIGS]
            yr = hr = None
            for poly, sched in runs:
                y, st, seen, _ = run_scan(x, in_t, out_t, chunks=chunks, poly=poly, softplus=sp, sched=sched)
                if yr is None:
                    yr, hr = scan_ref(seen["u"], seen["delta"], x["A"], seen["Bm"], seen["Cm"], x["Dskip"], x["bias"], seen["z"], x["h0"], sp)
                nm = {F32: "fp32", F16: "fp16", I8: "int8"}
                LIB.mq_selective_scan_set_tuning(*sched)
                plan = scan_plan(Bsz, L, D, N, chunks, out_t)
                LIB.mq_selective_scan_set_tuning(0, 0, 0)
                case = (f"B{Bsz} L{L} D{D} N{N} {nm[in_t]}->{nm[out_t]} z={int(gate)} h0={int(init)} "
                        f"{plan} poly={poly} sp={int(sp)}")
                record("scan", case + " y", "rel", rel_err(y, yr), lim)
                record("scan", case + " state", "rel", rel_err(st, hr), 1e-4)

    # the TensorRT plugin's workspace: a shape below the profile's largest gets exactly what getWorkspaceSize reserves
    # (selectiveScanMaxWorkspaceSize); these shapes take more chunks than the largest shape's own plan (the sizing
    # before 2026-11-28 failed them with cudaErrorInvalidValue)
    for (Bsz, L, D, pmax) in ((1, 4096, 384, (1, 4100)), (1, 1920, 64, (1, 2000)), (2, 3968, 64, (3, 4100))):
        x = make_scan_inputs(Bsz, L, D, 16, seed=L + D, gate=True)
        y, st, seen, _ = run_scan(x, F16, F16, profile_max=pmax)
        yr, hr = scan_ref(seen["u"], seen["delta"], x["A"], seen["Bm"], seen["Cm"], x["Dskip"], x["bias"], seen["z"], x["h0"], True)
        case = f"B{Bsz} L{L} D{D} N16 fp16->fp16 {scan_plan(Bsz, L, D, 16)}, plugin workspace of profile max B{pmax[0]} L{pmax[1]}"
        record("scan", case + " y", "rel", rel_err(y, yr), 2e-3)
        record("scan", case + " state", "rel", rel_err(st, hr), 1e-4)

    graph_checks(record)
    state_update_checks(record, np_su)

    # fp16 input takes the register path (hadamardFast.cuh) for m = 1, 12, 20, 28 with 2^k >= 64 (1280, 3584, 7168: m = 20 / 28
    # at 2^k = 64 / 128 / 256; 128 / 256 / 512: m = 1 with one pass; 1024: m = 1 with the split [0, 3) + [3, 4) pass), fp32
    # input and the other sizes the older kernels
    for n in (768, 1536, 2560, 5120, 384, 192, 1024, 64, 1792, 1152, 704, 3840, 832, 4, 4096, 8192, 6144, 3072, 2048,
              1280, 3584, 7168, 128, 256, 512):
        for rws in ((1, 37, 3001) if n in (768, 1536, 2560, 4096, 5120, 6144, 3584) else (1, 37)):  # 3001 rows: several groups a block
            g = torch.Generator(device=DEV).manual_seed(n + rws)
            x = torch.randn(rws, n, generator=g, device=DEV)
            ref = hadamard_ref(x.double(), n)
            for in_dt in (torch.float32, torch.float16):
                xi = x.to(in_dt)
                ref_i = ref if in_dt == torch.float32 else hadamard_ref(xi.double(), n)
                for out_t, lim in ((F32, 1e-5), (F16, 2e-3)):
                    if in_dt == torch.float16 and out_t == F32:
                        continue
                    y, m, _ = run_hadamard(xi, out_t)
                    record("hadamard", f"n{n} (m={m}) rows{rws} {str(in_dt)[6:]}->{'fp32' if out_t == F32 else 'fp16'}", "rel", rel_err(y, ref_i), lim)
                scale = float(ref_i.abs().max()) / 100.0
                q, m, _ = run_hadamard(xi, I8, scale)
                qr = torch.clamp(torch.round(ref_i / scale), -128, 127)  # torch.round = half to even
                diff = (q.double() - qr).abs()
                frac = float((diff > 0).double().mean())
                record("hadamard", f"n{n} (m={m}) rows{rws} {str(in_dt)[6:]}->int8 (|dq|<=1, mismatches)", "frac", frac, 0.01,
                       ok=float(diff.max()) <= 1 and frac <= 0.01)
                if rws * n >= 2048:  # saturation: values past both ends of the int8 range must be -128 / 127 exactly (the
                    sat = float(ref_i.abs().max()) / 300.0  # |dq| <= 1 slack above would pass a kernel stopping at -127)
                    q, m, _ = run_hadamard(xi, I8, sat)
                    lo, hi = ref_i / sat < -129.0, ref_i / sat > 128.0
                    wrong = float((q[lo] != -128).sum() + (q[hi] != 127).sum())
                    record("hadamard", f"n{n} (m={m}) rows{rws} {str(in_dt)[6:]}->int8 saturating (codes off the ends)",
                           "count", wrong, 0, ok=wrong == 0 and bool(lo.any()) and bool(hi.any()))
    # the register path's other schedules (the default ran above)
    for gpb, flags in TUNING_SWEEP + ((1, 1), (3, 0), (3, 3)):
        LIB.mq_hadamard_set_tuning(gpb, flags)
        for n in (1536, 5120, 4096, 768, 64, 2560, 3584):
            g = torch.Generator(device=DEV).manual_seed(n + gpb + 7 * flags)
            x = torch.randn(3001, n, generator=g, device=DEV).half()
            ref = hadamard_ref(x.double(), n)
            y, m, _ = run_hadamard(x, F16)
            case = f"n{n} (m={m}) rows3001 float16->fp16 groups/block={gpb} flags={flags}"
            record("hadamard", case, "rel", rel_err(y, ref), 2e-3)
            scale = float(ref.abs().max()) / 100.0
            q, m, _ = run_hadamard(x, I8, scale)
            diff = (q.double() - torch.clamp(torch.round(ref / scale), -128, 127)).abs()
            frac = float((diff > 0).double().mean())
            record("hadamard", case.replace("->fp16", "->int8 (|dq|<=1, mismatches)"), "frac", frac, 0.01,
                   ok=float(diff.max()) <= 1 and frac <= 0.01)
    LIB.mq_hadamard_set_tuning(-1, -1)

    # empty tensors (a profile's zero batch or length), for which TensorRT may pass null pointers: success, no launch;
    # a non-empty call with a null pointer is still refused (cudaErrorInvalidValue = 1)
    null = None
    empty = {
        "scan B0": LIB.mq_selective_scan(0, 10, 64, 16, 1, F32, F32, 0, 0, 0, 0, *[null] * 11, 0, -1, null, 0, null),
        "scan L0 without a state": LIB.mq_selective_scan(2, 0, 64, 16, 1, F32, F32, 0, 0, 0, 0, *[null] * 11, 0, -1, null, 0, null),
        "state update B0": LIB.mq_state_update(0, 64, 16, 1, F32, *[null] * 11, null),
        "hadamard rows 0": LIB.mq_hadamard(0, 768, 12, F16, F16, 1.0, null, null, null, null),
    }
    refused = {
        "scan B1 null u": LIB.mq_selective_scan(1, 10, 64, 16, 1, F32, F32, 0, 0, 0, 0, *[null] * 11, 0, -1, null, 0, null),
        "state update B1 null": LIB.mq_state_update(1, 64, 16, 1, F32, *[null] * 11, null),
        "hadamard rows 3 null": LIB.mq_hadamard(3, 768, 12, F16, F16, 1.0, null, null, null, null),
    }
    for case, rc in empty.items():
        record("empty", case + " with null pointers: cudaSuccess", "rc", float(rc), 0.0, ok=rc == 0)
    for case, rc in refused.items():
        record("empty", case + ": cudaErrorInvalidValue", "rc", float(rc), 1.0, ok=rc == 1)
    torch.cuda.synchronize()
    return record.rows, record.failures


def sanitize_wide():
    """Every built configuration of the wide scan on small odd shapes (memcheck in sanitize(); run_all.sh also runs this
    alone under racecheck and synccheck: its shared rows are double-buffered and its y sums warp-private)."""
    for (Bsz, L, D, N) in ((2, 61, 99, 12), (1, 300, 130, 16), (3, 17, 5, 7)):
        x = make_scan_inputs(Bsz, L, D, N, seed=5, gate=True, init=True)
        for in_t, out_t in ((F32, F32), (F16, F16), (I8, F16), (I8, F32)):
            for cfg in WIDE_CONFIGS:
                run_scan(x, in_t, out_t, sched=cfg)
    torch.cuda.synchronize()


def sanitize():
    x = make_scan_inputs(2, 45, 130, 16, seed=3, gate=True, init=True)
    for in_t, out_t in ((F32, F32), (F16, F16), (I8, F16), (I8, F32)):
        for chunks in (1, 3):
            run_scan(x, in_t, out_t, chunks=chunks)
    st = torch.randn(3, 130, 16, device=DEV)
    run_state_update(st, torch.randn(3, 130, device=DEV), torch.randn(3, 130, device=DEV), -torch.rand(130, 16, device=DEV),
                     torch.randn(3, 16, device=DEV), torch.randn(3, 16, device=DEV), torch.randn(130, device=DEV),
                     torch.randn(130, device=DEV), torch.randn(3, 130, device=DEV), F16, inplace=True)
    st = torch.randn(3, 3000, 16, device=DEV)  # B·D ≥ 8192: 2 lanes a row
    run_state_update(st, torch.randn(3, 3000, device=DEV), torch.randn(3, 3000, device=DEV), -torch.rand(3000, 16, device=DEV),
                     torch.randn(3, 16, device=DEV), torch.randn(3, 16, device=DEV), torch.randn(3000, device=DEV),
                     torch.randn(3000, device=DEV), torch.randn(3, 3000, device=DEV), F16, inplace=True)
    x = make_scan_inputs(2, 61, 99, 12, seed=4, gate=True, init=True)
    for in_t, out_t in ((F32, F32), (F16, F16), (I8, F16)):
        for chunks in (2, 4):
            run_scan(x, in_t, out_t, chunks=chunks)
            run_scan(x, in_t, out_t, chunks=chunks, sched=(1, 4, 0))  # 4 threads a channel (odd D: synchronous loads)
    x = make_scan_inputs(3, 45, 160, 16, seed=5, gate=True, init=True)
    for in_t, out_t in ((F32, F32), (F16, F16), (I8, F16), (I8, F32)):
        for chunks in (1, 3):
            run_scan(x, in_t, out_t, chunks=chunks, sched=(1, 4, 0))  # 4 threads a channel, cp.async tiles
            run_scan(x, in_t, out_t, chunks=chunks, sched=(1, 2, 0))  # 2: cp.async tiles, channels past D (160 % 64)
    run_scan(make_scan_inputs(1, 1920, 64, 16, seed=6, gate=True), F16, F16, profile_max=(1, 2000))  # plugin workspace
    sanitize_wide()
    for (Bsz, L, D, N) in ((2, 61, 99, 12), (1, 300, 130, 16), (3, 17, 5, 7)):  # segment-parallel, every built configuration
        x = make_scan_inputs(Bsz, L, D, N, seed=5, gate=True, init=True)
        for in_t, out_t in ((F32, F32), (F16, F16), (I8, F16)):
            for cfg in SEG_CONFIGS:
                run_scan(x, in_t, out_t, sched=cfg)
    for n, rws in ((768, 5), (2560, 5), (832, 5), (64, 5), (4096, 5), (6144, 3), (8192, 3), (768, 2003), (1536, 7), (5120, 3),
                   (1280, 9), (3584, 5), (7168, 3), (128, 67), (1024, 9), (5120, 1001)):
        for dt in (torch.float32, torch.float16):
            run_hadamard(torch.randn(rws, n, device=DEV, dtype=dt), I8, 0.05)
            run_hadamard(torch.randn(rws, n, device=DEV, dtype=dt), F16)
    for gpb, flags in ((0, 0), (0, 3), (1, 1), (3, 0), (0, 5)):
        LIB.mq_hadamard_set_tuning(gpb, flags)
        run_hadamard(torch.randn(1001, 5120, device=DEV, dtype=torch.float16), F16)
        run_hadamard(torch.randn(2003, 1536, device=DEV, dtype=torch.float16), I8, 0.05)
        run_hadamard(torch.randn(131, 64, device=DEV, dtype=torch.float16), F16)
    LIB.mq_hadamard_set_tuning(-1, -1)
    torch.cuda.synchronize()
    print("sanitize cases ran")


# ---------------------------------------------------------------- benchmarks
def timeit(fn, iters=20, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(3):
        e0.record()
        for _ in range(iters):
            fn()
        e1.record()
        torch.cuda.synchronize()
        times.append(e0.elapsed_time(e1) / iters * 1e-3)
    return min(times)


def graph_replay_time(stream, step, reps, iters):
    """Seconds a call of `step` (launches on `stream`) as CUDA-graph replays: `reps` calls captured in one graph, its
    replays timed as timeit does (host launch overhead excluded)."""
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.synchronize()
    gr = torch.cuda.CUDAGraph()
    with torch.cuda.graph(gr, stream=stream):
        for _ in range(reps):
            step()
    return timeit(gr.replay, iters=iters) / reps


def copy_bandwidth():
    a = torch.empty(1 << 30, dtype=torch.uint8, device=DEV)
    b = torch.empty_like(a)
    t = timeit(lambda: b.copy_(a), iters=10)
    return 2 * a.numel() / t


def load_mamba():
    out = {}
    try:
        import selective_scan_cuda  # noqa: F401 built by run_all.sh
        out["scan"] = selective_scan_cuda
    except Exception as e:  # noqa: BLE001
        out["scan_error"] = repr(e)[:300]
    try:
        sys.path.insert(0, os.path.join(ROOT, ".carry", "mamba"))
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
        out["ssu"] = selective_state_update
    except Exception as e:  # noqa: BLE001
        out["ssu_error"] = repr(e)[:300]
    try:
        import fast_hadamard_transform_cuda  # noqa: F401 built by run_all.sh from .carry/fht
        out["fht"] = fast_hadamard_transform_cuda
    except Exception as e:  # noqa: BLE001
        out["fht_error"] = repr(e)[:300]
    return out


# (name, input type, output type) of the scan's supported type pairs, as the sweep and abscan name them
SCAN_DTYPES = (("fp32", F32, F32), ("fp16", F16, F16), ("int8->fp16", I8, F16), ("int8->fp32", I8, F32))
SCAN_SHAPES = ((1, 4096, 1536), (1, 4096, 5120), (8, 2048, 1536), (8, 4096, 2560), (8, 4096, 5120))
CHUNK_SWEEP = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
CHUNKFIT_SHAPES = tuple((1, 4096, d) for d in (768, 1024, 1536, 2048, 2560, 3072, 4096, 5120)) + tuple(
    (2, 4096, d) for d in (768, 1536, 2560, 5120)) + tuple((4, 2048, d) for d in (768, 1536, 2560, 4096)) + (
    (1, 1024, 1536), (1, 1024, 5120), (1, 16384, 1536), (1, 16384, 5120), (2, 8192, 2560))


def gpu_clock_mhz():
    try:
        import subprocess
        q = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"], capture_output=True, text=True)
        return float(q.stdout.split()[0])
    except Exception:  # noqa: BLE001
        return float("nan")


def scan_sweep(bw=None, variants_all=False, chunk_sweep=True):
    """fp16 sweep of the scan's schedules: automatic, token-serial (automatic chunks and, with chunk_sweep, the chunk
    sweep) and every segment-parallel configuration; with variants_all also fp32 / int8 (automatic, token-serial,
    polynomial-exp variants)."""
    rows = []
    props = torch.cuda.get_device_properties(0)
    mufu_rate = props.multi_processor_count * 16 * gpu_clock_mhz() * 1e6  # MUFU ops / s (16 per SM per clock)
    for (Bsz, L, D) in SCAN_SHAPES:
        N = 16
        x = make_scan_inputs(Bsz, L, D, N, seed=0, gate=True)
        for nm, in_t, out_t in SCAN_DTYPES:
            if not variants_all and in_t != F16:
                continue
            isz, osz = {F32: 4, F16: 2, I8: 1}[in_t], {F32: 4, F16: 2}[out_t]
            nbytes = Bsz * L * D * (2 * isz + 2 * osz) + Bsz * L * N * 2 * isz + Bsz * D * N * 4 + D * (N + 2) * 4
            roof = nbytes / bw if bw else float("nan")
            mufu = Bsz * L * D * (16 + 2 + 2) / mufu_rate  # 16 exps + softplus (ex2, rcp) + SiLU (ex2, rcp), one pass
            LIB.mq_selective_scan_set_tuning(1, 0, 0)
            serial_auto = LIB.mq_selective_scan_chunks(Bsz, L, D, N, 0, out_t)
            LIB.mq_selective_scan_set_tuning(0, 0, 0)
            variants = [(0, -1, (0, 0, 0)), (0, -1, (1, 0, 0))]  # (chunks, poly, (schedule, lanes, groups))
            if variants_all:
                variants += [(0, 2, (1, 0, 0)), (0, 4, (1, 0, 0))]
            if in_t == F16 or variants_all:
                variants += [(0, -1, (1, 2, 0)), (0, -1, (1, 4, 0))]  # 2 / 4 threads a channel, automatic chunks
            if in_t == F16:
                if os.environ.get("SCAN_SPLIT_SWEEP", "1") == "1":  # chunk sweep of the 4-threads kernel
                    split_chunks = [int(c) for c in os.environ.get("SCAN_SPLIT_CHUNKS", "1 2 3 4 5 6 8 10 12 13 14 16").split()]
                    variants += [(c, -1, (1, 4, 0)) for c in split_chunks if c <= max(1, L // 128)]
                if chunk_sweep:
                    variants += [(c, -1, (0, 0, 0)) for c in CHUNK_SWEEP if c != serial_auto and c <= max(1, L // 128)]
                variants += [(0, -1, cfg) for cfg in SEG_CONFIGS]
            variants += [(0, -1, cfg) for cfg in WIDE_CONFIGS]
            for chunks, poly, sched in variants:
                _, _, _, fn = run_scan(x, in_t, out_t, chunks=chunks, poly=poly, sched=sched)
                t = timeit(fn, iters=5)
                LIB.mq_selective_scan_set_tuning(*sched)
                plan = scan_plan(Bsz, L, D, N, chunks, out_t)
                n_chunks = LIB.mq_selective_scan_chunks(Bsz, L, D, N, chunks, out_t)
                LIB.mq_selective_scan_set_tuning(0, 0, 0)
                auto = chunks == 0 and sched[0] == 0
                row = dict(B=Bsz, L=L, D=D, N=N, dtype=nm, chunks_arg=chunks, chunks=n_chunks,
                           plan=plan + (" (auto)" if auto else ""), poly=poly, ms=t * 1e3, roofline_ms=roof * 1e3,
                           frac_roofline=roof / t, mufu_ms=mufu * 1e3, frac_mufu=mufu / t, GBps=nbytes / t / 1e9)
                rows.append(row)
                print(f"scan B{Bsz} L{L} D{D} {nm:10s} {row['plan']:20s} poly={poly:2d}: "
                      f"{t * 1e3:.3f} ms, {roof / t * 100:.0f}% of byte roofline, {mufu / t * 100:.0f}% of MUFU floor", flush=True)
    return rows


def decode_bench(mamba, bw):
    """One decode step = the state update of every layer (fp16 x/dt/z/B/C/y, fp32 state, N 16, z gate), timed as
    CUDA-graph replays (host launch overhead excluded); mamba-ssm's Triton selective_state_update the same way."""
    rows = []
    stream = torch.cuda.Stream()
    reps, iters = 4, 50
    for name, dm, layers in (("130m", 768, 24), ("370m", 1024, 48), ("790m", 1536, 48), ("1.4b", 2048, 48), ("2.8b", 2560, 64)):
        D, N = 2 * dm, 16
        for Bsz in (1, 8):
            g = torch.Generator(device=DEV).manual_seed(dm + Bsz)
            r = lambda *s: torch.randn(*s, generator=g, device=DEV)
            st = r(layers, Bsz, D, N)
            A = -torch.exp(torch.rand(layers, D, N, generator=g, device=DEV) * math.log(16.0))
            Dk, bias = r(layers, D), r(layers, D) * 0.1
            xs, dts, zs = r(layers, Bsz, D).half(), (r(layers, Bsz, D) * 0.5 - 1).half(), r(layers, Bsz, D).half()
            Bs, Cs = r(layers, Bsz, N).half(), r(layers, Bsz, N).half()
            y = torch.empty(layers, Bsz, D, dtype=torch.float16, device=DEV)
            sp = ctypes.c_void_p(stream.cuda_stream)
            args = [(Bsz, D, N, 1, F16, ptr(st[l]), ptr(st[l]), ptr(xs[l]), ptr(dts[l]), ptr(A[l]), ptr(Bs[l]), ptr(Cs[l]),
                     ptr(Dk[l]), ptr(bias[l]), ptr(zs[l]), ptr(y[l]), sp) for l in range(layers)]

            def step_mq():
                for a in args:
                    LIB.mq_state_update(*a)

            def step_mamba():
                for l in range(layers):
                    mamba["ssu"](st[l], xs[l], dts[l], A[l], Bs[l], Cs[l], D=Dk[l], z=zs[l], dt_bias=bias[l], dt_softplus=True)

            def graph_time(step):
                return graph_replay_time(stream, step, reps, iters)

            nbytes = layers * (2 * Bsz * D * N * 4 + D * N * 4 + 2 * D * 4 + 4 * Bsz * D * 2 + 2 * Bsz * N * 2)
            row = dict(model=name, d_model=dm, layers=layers, D=D, B=Bsz, bytes=nbytes, roofline_us=nbytes / bw * 1e6,
                       state_MB=layers * Bsz * D * N * 4 / 1e6)
            try:
                row["mq_us"] = graph_time(step_mq) * 1e6
            except Exception as e:  # noqa: BLE001
                row["mq_error"] = repr(e)[:200]
            if "ssu" in mamba:
                try:
                    row["mamba_triton_us"] = graph_time(step_mamba) * 1e6
                except Exception as e:  # noqa: BLE001
                    row["mamba_error"] = repr(e)[:200]
            rows.append(row)
            print(f"decode {name} B{Bsz} ({layers} layers, D {D}): mq {row.get('mq_us', float('nan')):.1f} us/token, "
                  f"mamba-ssm triton {row.get('mamba_triton_us', float('nan')):.1f} us, bytes/bw {row['roofline_us']:.1f} us", flush=True)
    return rows


HADAMARD_SIZES = (768, 1536, 2560, 5120, 4096, 3584)


def hadamard_bench(mamba, with_ref=True, mib=64, sizes=HADAMARD_SIZES):
    """fp16 -> fp16 / int8 Hadamard on `mib` MiB of fp16 input for each n of `sizes`, against a memcpy of the same tensor
    (and Dao-AILab's fast-hadamard-transform, fp16 -> fp16, when its build is present)."""
    out = []
    for n in sizes:
        rows = (mib << 20) // (2 * n)  # mib MiB of fp16 input
        x = torch.randn(rows, n, device=DEV, dtype=torch.float16)
        dst = torch.empty_like(x)
        tcopy = timeit(functools.partial(dst.copy_, x))
        for out_t, nm in ((F16, "fp16->fp16"), (I8, "fp16->int8")):
            _, m, fn = run_hadamard(x, out_t, 0.05)
            t = timeit(fn)
            out.append(dict(n=n, m=m, rows=rows, mib=mib, dtype=nm, impl="mq", ms=t * 1e3, memcpy_ms=tcopy * 1e3,
                            ratio_vs_memcpy=t / tcopy))
            print(f"hadamard n{n} (m={m}) rows{rows} {nm}: {t * 1e3:.3f} ms, memcpy {tcopy * 1e3:.3f} ms, ratio {t / tcopy:.2f}", flush=True)
        if with_ref and "fht" in mamba:
            fname = {1: "fast_hadamard_transform", 12: "fast_hadamard_transform_12N", 20: "fast_hadamard_transform_20N",
                     28: "fast_hadamard_transform_28N"}.get(m)
            if fname is not None:
                f = getattr(mamba["fht"], fname)
                scale = 1.0 / math.sqrt(n)
                try:
                    t = timeit(lambda: f(x, scale))
                    out.append(dict(n=n, m=m, rows=rows, dtype="fp16->fp16", impl=f"Dao-AILab fast-hadamard-transform {fname}",
                                    ms=t * 1e3, memcpy_ms=tcopy * 1e3, ratio_vs_memcpy=t / tcopy))
                    print(f"hadamard n{n} fht {fname}: {t * 1e3:.3f} ms, ratio {t / tcopy:.2f}", flush=True)
                except Exception as e:  # noqa: BLE001
                    out.append(dict(n=n, m=m, impl=f"Dao-AILab fast-hadamard-transform {fname}", error=repr(e)[:200]))
        del x, dst
    return out


HQUANT_N = (1536, 2048, 3072, 4096, 5120)  # d_inner of mamba-130m ... 2.8b
HQUANT_ROWS = (1, 8, 4096, 16384)  # a decode step at batch 1 / 8, a 4096-token prompt at batch 1 / 4
_QUANT_SRC = r"""
#include <cuda_fp16.h>
// y = clamp(rint(x / s), -128, 127) as int8, 8 fp16 a thread (16-byte loads, 8-byte stores): ONNX QuantizeLinear
// (zero point 0) as one memory-bound elementwise kernel
extern "C" __global__ void mq_quantize_linear(const uint4* __restrict__ x, uint2* __restrict__ y, float s, long long n8)
{
    long long const i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= n8)
        return;
    uint4 const v = x[i];
    __half2 const* h = reinterpret_cast<__half2 const*>(&v);
    unsigned int w[2] = {0u, 0u};
    for (int k = 0; k < 4; ++k)
    {
        float2 const f = __half22float2(h[k]);
        int const a = (int)fminf(fmaxf(rintf(f.x / s), -128.f), 127.f), b = (int)fminf(fmaxf(rintf(f.y / s), -128.f), 127.f);
        w[k >> 1] |= ((unsigned int)(a & 0xff) | ((unsigned int)(b & 0xff) << 8)) << (16 * (k & 1));
    }
    y[i] = make_uint2(w[0], w[1]);
}
"""


def hadamard_quant_bench(sizes=HQUANT_N, row_counts=HQUANT_ROWS, scale=0.07, reps=20):
    """What fusing out_proj's QuantizeLinear into the Hadamard saves (graph/fuse_scan_quant.py, fuse_hadamard_quant):
    for each (rows, n), the Hadamard fp16 -> fp16 followed by a separate quantize kernel (_QUANT_SRC, a vectorized
    elementwise kernel rounding as ONNX QuantizeLinear does: what a TensorRT engine runs after the plugin when the
    QuantizeLinear is not fused), against the Hadamard fp16 -> int8 (out_scale). Times are CUDA-graph replays of `reps`
    launches on one stream (host launch overhead excluded; the gaps between kernels in a graph, as an engine run with
    CUDA graphs has them, included), and the memcpy of the fp16 input for scale. Codes (first 1024 rows): each path
    against float64 (the Hadamard of x, then QuantizeLinear): the fused one at most one step apart on <= 1e-4 of the
    values; the separate path rounds y to fp16 first, reported only. x ~ N(0, 2^2), so y too: `scale` 0.07 is about
    a calibrated max / 127 (~1e-5 of the codes saturate). Needs CuPy (for the quantize kernel)."""
    import warnings

    import cupy as cp

    warnings.filterwarnings("ignore", message="ExternalStream is deprecated", category=DeprecationWarning)

    quant = cp.RawKernel(_QUANT_SRC, "mq_quantize_linear")
    stream = torch.cuda.Stream()
    sp = ctypes.c_void_p(stream.cuda_stream)

    def graph_us(step):
        return graph_replay_time(stream, step, reps, 10) * 1e6

    out = []
    for n in sizes:
        m, k = ctypes.c_int(), ctypes.c_int()
        check(LIB.mq_hadamard_split(n, ctypes.byref(m), ctypes.byref(k)), f"split {n}")
        base = ptr(base_matrix_dev(m.value))
        for rows in row_counts:
            x = torch.randn(rows, n, device=DEV, dtype=torch.float16) * 2
            y16 = torch.empty_like(x)
            y8 = torch.empty(rows, n, dtype=torch.int8, device=DEV)
            codes = torch.empty_like(y8)
            dst = torch.empty_like(x)
            n8 = x.numel() // 8
            qargs = ((n8 + 255) // 256,), (256,), (y16.data_ptr(), codes.data_ptr(), cp.float32(scale), cp.int64(n8))

            def had(out_t, y, sc=1.0):
                check(LIB.mq_hadamard(rows, n, m.value, F16, out_t, sc, ptr(x), ptr(y), base, sp), "mq_hadamard")

            def q():
                with cp.cuda.ExternalStream(stream.cuda_stream):
                    quant(*qargs)

            def separate():
                had(F16, y16)
                q()

            fused = functools.partial(had, I8, y8, scale)
            separate()
            fused()
            torch.cuda.synchronize()
            r = min(rows, 1024)  # the reference (numpy, float64) on the first rows
            ref = torch.clamp(torch.round(hadamard_ref(x[:r].double(), n) / scale), -128, 127)
            dsep, dfus = (codes[:r].double() - ref).abs(), (y8[:r].double() - ref).abs()
            t_cp = graph_us(lambda: dst.copy_(x))
            t16, tq, tsep, t8 = graph_us(functools.partial(had, F16, y16)), graph_us(q), graph_us(separate), graph_us(fused)
            row = dict(n=n, m=m.value, rows=rows, memcpy_us=t_cp, hadamard_fp16_us=t16, quantize_us=tq, separate_us=tsep,
                       fused_int8_us=t8, separate_over_fused=tsep / t8,
                       fused_max_code_diff=float(dfus.max()), fused_mismatch_frac=float((dfus > 0).double().mean()),
                       separate_max_code_diff=float(dsep.max()), separate_mismatch_frac=float((dsep > 0).double().mean()))
            row["ok"] = row["fused_max_code_diff"] <= 1 and row["fused_mismatch_frac"] <= 1e-4
            out.append(row)
            print(f"hquant n{n} (m={m.value}) rows {rows}: hadamard fp16 {t16:.2f} + quantize {tq:.2f} -> {tsep:.2f} us; "
                  f"fused int8 {t8:.2f} us ({tsep / t8:.2f}x); memcpy {t_cp:.2f} us; codes vs float64: fused max "
                  f"{row['fused_max_code_diff']:.0f} on {row['fused_mismatch_frac']:.1e}, separate max "
                  f"{row['separate_max_code_diff']:.0f} on {row['separate_mismatch_frac']:.1e}{'' if row['ok'] else '  FAIL'}",
                  flush=True)
    return out


def fold_alt(res, prefix, key):
    """Moves the alternative builds' results (OUT_DIR/<prefix>*.json, written by `sweep` / `hbench`) into res[key]."""
    out = os.environ.get("OUT_DIR", ".")
    for fn_ in sorted(os.listdir(out)):
        if fn_.startswith(prefix) and fn_.endswith(".json"):
            res.setdefault(key, []).append(json.load(open(os.path.join(out, fn_))))
            os.remove(os.path.join(out, fn_))


def bench(parts="all"):
    res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "scan": [], "hadamard": [], "decode": []}
    bw = copy_bandwidth()
    res["copy_bandwidth_GBps"] = bw / 1e9
    res["sm_clock_max_mhz"] = gpu_clock_mhz()
    res["sms"] = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"GPU {res['gpu']}, device copy {bw / 1e9:.0f} GB/s (read+write), {res['sms']} SMs, max SM clock {res['sm_clock_max_mhz']:.0f} MHz", flush=True)
    mamba = load_mamba()
    res["mamba_ssm"] = {k: v for k, v in mamba.items() if k.endswith("error")}
    if parts == "decode":
        res["decode"] = decode_bench(load_mamba(), bw)
        fold_alt(res, "dbench_alt_", "decode_alt")  # SU_ALT_DEFINES builds (run_all.sh)
        return res
    res["scan"] = scan_sweep(bw, variants_all=True, chunk_sweep=parts == "all") if parts in ("all", "scan") else []
    if "scan" in mamba and parts in ("all", "scan"):
        for (Bsz, L, D) in SCAN_SHAPES:
            N = 16
            x = make_scan_inputs(Bsz, L, D, N, seed=0, gate=True)
            nbytes = Bsz * L * D * 8 + Bsz * L * N * 4 + Bsz * D * N * 4 + D * (N + 2) * 4
            u = x["u"].half().transpose(1, 2).contiguous()
            dl = x["delta"].half().transpose(1, 2).contiguous()
            zz = x["z"].half().transpose(1, 2).contiguous()
            Bv = x["Bm"].half().transpose(1, 2).contiguous()[:, None]  # (B, 1, N, L)
            Cv = x["Cm"].half().transpose(1, 2).contiguous()[:, None]
            fwd = lambda: mamba["scan"].fwd(u, dl, x["A"], Bv, Cv, x["Dskip"], zz, x["bias"], True)
            t = timeit(fwd, iters=5)
            ref = next(r for r in res["scan"] if (r["B"], r["L"], r["D"], r["dtype"]) == (Bsz, L, D, "fp16"))
            res["scan"].append(dict(B=Bsz, L=L, D=D, N=N, dtype="fp16", impl="mamba-ssm selective_scan_cuda.fwd (B,D,L)", ms=t * 1e3,
                                    roofline_ms=nbytes / bw * 1e3, frac_roofline=nbytes / bw / t, mufu_ms=ref["mufu_ms"],
                                    frac_mufu=ref["mufu_ms"] / 1e3 / t))
            print(f"scan B{Bsz} L{L} D{D} fp16 mamba-ssm: {t * 1e3:.3f} ms", flush=True)
    fold_alt(res, "sweep_alt_", "scan_alt")  # SCAN_ALT_DEFINES builds (run_all.sh)
    if parts == "scan":
        return res
    res["hadamard"] = hadamard_bench(mamba)
    if os.environ.get("HAD_TUNING_SWEEP", "1") == "1":  # the register path's schedules, fp16 -> fp16 / int8
        for gpb, flags in TUNING_SWEEP:
            LIB.mq_hadamard_set_tuning(gpb, flags)
            res.setdefault("hadamard_alt", []).append(dict(lib="default build", tag=f"groups/block={gpb} flags={flags}",
                                                           rows=hadamard_bench({}, with_ref=False)))
        LIB.mq_hadamard_set_tuning(-1, -1)
    fold_alt(res, "hbench_alt_", "hadamard_alt")  # HAD_ALT_DEFINES builds (run_all.sh)
    if parts == "hadamard":
        return res
    res["decode"] = decode_bench(mamba, bw)
    return res


def ncu_case():
    """Two scan calls (fp16, automatic schedule: B8 L4096 D5120 in one pass, B1 L4096 D1536 chunked) for ncu."""
    x = make_scan_inputs(8, 4096, 5120, 16, seed=0, gate=True)
    run_scan(x, F16, F16)
    x = make_scan_inputs(1, 4096, 1536, 16, seed=0, gate=True)
    run_scan(x, F16, F16)
    torch.cuda.synchronize()
    print("ncu case ran")


def ncu_decode_case():
    """One fp16 state update (130m shape: B1 D1536 N16, gate) by mq and by mamba-ssm's Triton kernel, 3 times each,
    for `ncu -k regex:"stateUpdateKernel|selective_scan_update"`."""
    mamba = load_mamba()
    g = torch.Generator(device=DEV).manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, device=DEV)
    Bsz, D, N = 1, 1536, 16
    st, A = r(Bsz, D, N), -torch.exp(torch.rand(D, N, generator=g, device=DEV) * math.log(16.0))
    xx, dt, z, Bm, Cm = r(Bsz, D).half(), (r(Bsz, D) * 0.5 - 1).half(), r(Bsz, D).half(), r(Bsz, N).half(), r(Bsz, N).half()
    Dk, bias = r(D), r(D) * 0.1
    for _ in range(3):
        run_state_update(st, xx, dt, A, Bm, Cm, Dk, bias, z, F16, inplace=True)
        if "ssu" in mamba:
            mamba["ssu"](st, xx, dt, A, Bm, Cm, D=Dk, z=z, dt_bias=bias, dt_softplus=True)
    torch.cuda.synchronize()
    print("ncu decode cases ran")


def ncu_had_case():
    """One fp16 -> fp16 Hadamard launch on 64 MiB per n of NCU_HAD_N (default "5120 1536"), for
    `ncu -k regex:hadamardRegKernel` (run_all.sh)."""
    for n in [int(v) for v in os.environ.get("NCU_HAD_N", "5120 1536").split()]:
        x = torch.randn((64 << 20) // (2 * n), n, device=DEV, dtype=torch.float16)
        run_hadamard(x, F16)
    torch.cuda.synchronize()
    print("ncu hadamard cases ran")


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "test"
    if cmd == "ncu":
        ncu_case()
        sys.exit(0)
    if cmd == "ncu_had":
        ncu_had_case()
        sys.exit(0)
    if cmd == "ncu_decode":
        ncu_decode_case()
        sys.exit(0)
    out = os.environ.get("OUT_DIR", ".")
    if cmd == "test":
        t0 = time.time()
        rows, failures = tests()
        with open(os.path.join(out, "tests.json"), "w") as fh:
            json.dump(dict(gpu=torch.cuda.get_device_name(), failures=failures, seconds=time.time() - t0, rows=rows), fh, indent=1)
        print(f"{len(rows) - failures}/{len(rows)} checks passed")
        sys.exit(1 if failures else 0)
    elif cmd == "wide":  # the wide schedule (-DMQ_SCAN_WIDE=1) against the automatic plan: error vs float64 and times;
        # WIDE_SHAPES "BxLxD ...", WIDE_DTYPES "fp16 int8->fp32"
        res = []
        shapes = [tuple(int(v) for v in s_.split("x")) for s_ in os.environ.get(
            "WIDE_SHAPES", "1x4096x1536 1x4096x5120 8x2048x1536 1x4096x768 1x2048x2048 1x1024x1536 2x4096x1536 4x1024x1536").split()]
        dtypes = {nm: (in_t, out_t) for nm, in_t, out_t in SCAN_DTYPES}
        for (Bsz, L, D) in shapes:
            x = make_scan_inputs(Bsz, L, D, 16, seed=0, gate=True, init=True)
            for dt in os.environ.get("WIDE_DTYPES", "fp16 int8->fp32").split():
                in_t, out_t = dtypes[dt]
                yr = hr = None
                for sched in ((0, 0, 0),) + WIDE_CONFIGS:
                    y, st, seen, fn = run_scan(x, in_t, out_t, sched=sched)
                    if yr is None:
                        yr, hr = scan_ref(seen["u"], seen["delta"], x["A"], seen["Bm"], seen["Cm"], x["Dskip"], x["bias"], seen["z"], x["h0"], True)
                    LIB.mq_selective_scan_set_tuning(*sched)
                    plan = scan_plan(Bsz, L, D, 16, 0, out_t)
                    LIB.mq_selective_scan_set_tuning(0, 0, 0)
                    ms = sorted(timeit(fn, iters=10) * 1e3 for _ in range(3))
                    row = dict(B=Bsz, L=L, D=D, dtype=dt, plan=plan, ms=ms, rel_y=rel_err(y, yr), rel_state=rel_err(st, hr))
                    res.append(row)
                    print(f"wide B{Bsz} L{L} D{D} {dt:>10} {plan:>20}: {ms[0]:.4f} ms ({ms[1]:.4f} {ms[2]:.4f}) "
                          f"y {row['rel_y']:.2e} state {row['rel_state']:.2e}", flush=True)
            del x
        with open(os.path.join(out, "wide.json"), "w") as fh:
            json.dump(res, fh, indent=1)
    elif cmd == "sanitize_wide":
        sanitize_wide()
        print(f"sanitize_wide: {len(WIDE_CONFIGS)} configurations ran", flush=True)
    elif cmd == "sanitize":
        sanitize()
    elif cmd == "graph":  # only the CUDA-graph replay checks (e.g. against a mutated build: MQ_KERNELS_LIB)
        bad = []

        def report(kernel, case, metric, value, limit):
            print(f"{'PASS' if value <= limit else 'FAIL'} {case} {metric}={value:.3g}", flush=True)
            bad.append(value > limit)

        graph_checks(report)
        sys.exit(1 if any(bad) else 0)
    elif cmd == "sweep":  # fp16 schedule sweep only, of another build (MQ_KERNELS_LIB), tagged by argv[2]
        tag = sys.argv[2] if len(sys.argv) > 2 else "alt"
        with open(os.path.join(out, f"sweep_alt_{tag}.json"), "w") as fh:
            json.dump(dict(lib=os.environ.get("MQ_KERNELS_LIB", ""), tag=tag, rows=scan_sweep(copy_bandwidth())), fh, indent=1)
    elif cmd == "hbench":  # Hadamard timings of another build (MQ_KERNELS_LIB), tagged by argv[2]
        tag = sys.argv[2] if len(sys.argv) > 2 else "alt"
        with open(os.path.join(out, f"hbench_alt_{tag}.json"), "w") as fh:
            json.dump(dict(lib=os.environ.get("MQ_KERNELS_LIB", ""), tag=tag, rows=hadamard_bench({}, with_ref=False)), fh, indent=1)
    elif cmd == "hsizes":  # a build's Hadamard at other input sizes (HADAMARD_MIB, default "64 256") and n (HADAMARD_N,
        # default the benchmark table's); HADAMARD_TAG names the file (hadamard_sizes_<tag>.json), for A/B runs of builds
        sizes = tuple(int(v) for v in os.environ.get("HADAMARD_N", " ".join(map(str, HADAMARD_SIZES))).split())
        rows = [r for mib in (int(v) for v in os.environ.get("HADAMARD_MIB", "64 256").split())
                for r in hadamard_bench({}, with_ref=False, mib=mib, sizes=sizes)]
        tag = os.environ.get("HADAMARD_TAG", "")
        with open(os.path.join(out, f"hadamard_sizes{'_' + tag if tag else ''}.json"), "w") as fh:
            json.dump(rows, fh, indent=1)
    elif cmd == "hquant":  # the Hadamard with out_proj's QuantizeLinear fused (int8 out) against Hadamard + quantize
        import importlib.util

        if importlib.util.find_spec("cupy") is None:
            print("hquant: skipped, it needs CuPy for its quantize kernel (pip install cupy-cuda12x or cupy-cuda13x)")
            sys.exit(0)
        rows = hadamard_quant_bench()
        with open(os.path.join(out, "hadamard_quant.json"), "w") as fh:
            json.dump(rows, fh, indent=1)
        if not all(r["ok"] for r in rows):
            sys.exit(1)
    elif cmd == "scanauto":  # the automatic scan plan on the benchmark shapes: time it, check it against forced 2 threads
        res = []
        for (Bsz, L, D) in SCAN_SHAPES:
            x = make_scan_inputs(Bsz, L, D, 16, seed=0, gate=True)
            y, st, _, fn = run_scan(x, F16, F16)
            y2, st2, _, _ = run_scan(x, F16, F16, sched=(1, 2, 0))
            row = dict(B=Bsz, L=L, D=D, plan=scan_plan(Bsz, L, D, 16), ms=timeit(fn, iters=5) * 1e3,
                       rel_y_vs_2_threads=rel_err(y, y2), rel_state_vs_2_threads=rel_err(st, st2))
            res.append(row)
            print(f"scan auto B{Bsz} L{L} D{D}: {row['plan']} {row['ms']:.3f} ms, vs 2 threads: y {row['rel_y_vs_2_threads']:.2e} "
                  f"state {row['rel_state_vs_2_threads']:.2e}", flush=True)
        with open(os.path.join(out, "scanauto.json"), "w") as fh:
            json.dump(res, fh, indent=1)
        sys.exit(0 if all(r["rel_y_vs_2_threads"] < 2e-3 and r["rel_state_vs_2_threads"] < 1e-4 for r in res) else 1)
    elif cmd == "abscan":  # A/B of scan builds in one process, interleaved: abscan NAME=LIB ... (automatic plan)
        # AB_SHAPES "BxLxD ...", AB_DTYPES "fp16 fp32 int8->fp16 int8->fp32", AB_SPLITS "0 2 4" (0: the automatic plan,
        # 2 / 4: that many threads a channel with automatic chunks), ROUNDS: timings of each (build, split), interleaved
        builds = [(a.split("=", 1)[0], bind(ctypes.CDLL(a.split("=", 1)[1]))) for a in sys.argv[2:]]
        rounds = int(os.environ.get("ROUNDS", "5"))
        shapes = [tuple(int(v) for v in s_.split("x")) for s_ in os.environ.get("AB_SHAPES", "1x4096x1536 1x4096x5120").split()]
        dtypes = {nm: (in_t, out_t) for nm, in_t, out_t in SCAN_DTYPES}
        splits = [int(v) for v in os.environ.get("AB_SPLITS", "0").split()]
        res = []
        for (Bsz, L, D) in shapes:
            x = make_scan_inputs(Bsz, L, D, 16, seed=0, gate=True)
            for dt in os.environ.get("AB_DTYPES", "fp16").split():
                in_t, out_t = dtypes[dt]
                fns = {}
                for name, lib in builds:
                    for sp in splits:
                        LIB = lib  # run_scan and its call resolve the module's LIB when they run
                        sched = (1, sp, 0) if sp else (0, 0, 0)
                        LIB.mq_selective_scan_set_tuning(*sched)
                        plan = scan_plan(Bsz, L, D, 16, 0, out_t)
                        LIB.mq_selective_scan_set_tuning(0, 0, 0)
                        fns[f"{name}" + (f"/T={sp}" if sp else "")] = (lib, run_scan(x, in_t, out_t, sched=sched)[3], plan)
                ms = {k: [] for k in fns}
                for _ in range(rounds):
                    for k, (lib, fn, _) in fns.items():
                        LIB = lib
                        ms[k].append(timeit(fn) * 1e3)
                for k, (_, _, plan) in fns.items():
                    v = sorted(ms[k])
                    res.append(dict(B=Bsz, L=L, D=D, dtype=dt, build=k, plan=plan, ms=ms[k], min_ms=v[0], median_ms=v[len(v) // 2]))
                    print(f"abscan B{Bsz} L{L} D{D} {dt:>10} {k:>12}: {plan} min {v[0]:.4f} median {v[len(v) // 2]:.4f} ms "
                          f"({' '.join(f'{t:.4f}' for t in ms[k])})", flush=True)
                del fns
            del x
        with open(os.path.join(out, "abscan.json"), "w") as fh:
            json.dump(res, fh, indent=1)
    elif cmd == "chunkfit":  # fp16 4-thread chunk sweep over a grid of chunked shapes (data for the plan's chunk rule)
        res = []
        for (Bsz, L, D) in CHUNKFIT_SHAPES:
            x = make_scan_inputs(Bsz, L, D, 16, seed=0, gate=True)
            auto = scan_plan(Bsz, L, D, 16)
            _, _, _, fn = run_scan(x, F16, F16)
            t_auto = timeit(fn, iters=5) * 1e3
            times = {}
            for c in range(1, min(32, max(1, L // 128)) + 1):
                _, _, _, fn = run_scan(x, F16, F16, chunks=c, sched=(1, 4, 0))
                times[c] = timeit(fn, iters=5) * 1e3
            best = min(times, key=times.get)
            res.append(dict(B=Bsz, L=L, D=D, auto=auto, auto_ms=t_auto, best_chunks=best, best_ms=times[best], ms=times))
            print(f"chunkfit B{Bsz} L{L} D{D}: auto {auto} {t_auto:.3f} ms, best 4 threads x {best} chunks "
                  f"{times[best]:.3f} ms; " + " ".join(f"{c}:{t:.3f}" for c, t in times.items()), flush=True)
            del x
        with open(os.path.join(out, "chunkfit.json"), "w") as fh:
            json.dump(res, fh, indent=1)
    elif cmd == "dbench":  # state-update checks + decode timings of another build (MQ_KERNELS_LIB), tagged by argv[2]
        tag = sys.argv[2] if len(sys.argv) > 2 else "alt"
        rows = []
        state_update_checks(lambda kernel, case, metric, value, limit, ok=None: rows.append(
            dict(case=case, value=value, limit=limit, ok=bool(value <= limit if ok is None else ok))))
        bad = [c for c in rows if not c["ok"]]
        print(f"{tag}: {len(rows) - len(bad)}/{len(rows)} state-update checks passed", flush=True)
        res = dict(lib=os.environ.get("MQ_KERNELS_LIB", ""), tag=tag, checks=len(rows), failures=bad,
                   rows=decode_bench(load_mamba(), copy_bandwidth()) if not bad else [])
        with open(os.path.join(out, f"dbench_alt_{tag}.json"), "w") as fh:
            json.dump(res, fh, indent=1)
    elif cmd == "bench":
        res = bench(sys.argv[2] if len(sys.argv) > 2 else "all")
        with open(os.path.join(out, "bench.json"), "w") as fh:
            json.dump(res, fh, indent=1)
