"""Native CPU kernels for SelectiveScan and Hadamard, compiled on first use; numpy otherwise.

The C source (`native/scan.c`) is built with the system C compiler (`$CC`, else cc/gcc) into
`$MQ_DEPLOY_CACHE` (default `~/.cache/mq_deploy`), keyed by the source, flags and machine, and loaded
with ctypes. On 2 cores (B 8, L 512, D 1536) the scan takes 80 ms vs 177 ms for the numpy kernel and 400 ms
for the reference; the Hadamard ([2, 512, 1536]) 2.5 ms vs 46 ms (`benchmarks/cpu_kernels.py`). Set
`MQ_DEPLOY_NATIVE=0` to use numpy only. Results agree with the reference to ~3e-7 (vectorized expf).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Optional

import numpy as np

from .selective_scan import selective_scan_cpu, step_sizes

_SRC = Path(__file__).with_name("native") / "scan.c"
_LOCK = threading.Lock()
_LIB: Optional[ctypes.CDLL] = None
_TRIED = False
_WHY = ""


def _flags() -> list[str]:
    # -ffast-math (with finite-math) is what lets glibc vectorize expf (libmvec); the inputs are finite
    flags = ["-O3", "-ffast-math", "-fopenmp", "-shared", "-fPIC", "-std=c99"]
    if platform.machine() in ("x86_64", "AMD64"):
        try:
            cpu = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpu = ""
        if " avx2" in cpu and " fma" in cpu:
            flags.append("-march=x86-64-v3")
    return flags


def _build() -> Optional[ctypes.CDLL]:
    global _WHY
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        _WHY = "no C compiler (set CC)"
        return None
    flags = _flags()
    key = hashlib.sha256(_SRC.read_bytes() + " ".join([cc] + flags + [platform.machine(), sys.platform]).encode())
    cache = Path(os.environ.get("MQ_DEPLOY_CACHE", Path.home() / ".cache" / "mq_deploy"))
    if "MQ_DEPLOY_CACHE" not in os.environ and not os.access(cache if cache.exists() else Path.home(), os.W_OK):
        cache = Path(tempfile.gettempdir()) / f"mq_deploy-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    lib = cache / f"mq_native_{key.hexdigest()[:16]}.so"
    if not lib.is_file():
        try:
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:  # build beside, then rename: no half-written .so
                out = Path(tmp) / lib.name
                r = subprocess.run([cc, *flags, str(_SRC), "-o", str(out), "-lm"], capture_output=True, text=True,
                                   timeout=120)
                if r.returncode != 0:
                    _WHY = f"{cc} failed: {r.stderr.strip()[-300:]}"
                    return None
                os.replace(out, lib)
        except (OSError, subprocess.SubprocessError) as e:
            _WHY = f"could not build {lib}: {e}"
            return None
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # do not spin against onnxruntime's threads
    try:
        dll = ctypes.CDLL(str(lib))
    except OSError as e:
        _WHY = f"could not load {lib}: {e}"
        return None
    P, I = ctypes.c_void_p, ctypes.c_int64
    dll.mq_selective_scan_f32.argtypes = [P] * 7 + [I] * 4
    dll.mq_selective_scan_f32.restype = ctypes.c_int
    dll.mq_hadamard_f32.argtypes = [P, P, I, I, I, P, ctypes.c_float]
    dll.mq_hadamard_f32.restype = ctypes.c_int
    return dll


def library() -> Optional[ctypes.CDLL]:
    """The loaded kernel library, or None (numpy fallback); `status()` says why."""
    global _LIB, _TRIED, _WHY
    with _LOCK:
        if not _TRIED:
            _TRIED = True
            if os.environ.get("MQ_DEPLOY_NATIVE", "1") == "0":
                _WHY = "disabled by MQ_DEPLOY_NATIVE=0"
            else:
                _LIB = _build()
    return _LIB


def status() -> str:
    return "native" if library() is not None else f"numpy ({_WHY})"


def selective_scan_fast(u, delta, A, Bm, Cm, Dskip, delta_bias=None, delta_softplus=True,
                        initial_state=None) -> tuple[np.ndarray, np.ndarray]:
    """`selective_scan` semantics on the native kernel (numpy fallback); returns (y, last_state)."""
    lib = library()
    A = np.ascontiguousarray(A, np.float32)
    if lib is None or A.shape[1] > 256:
        return selective_scan_cpu(u, delta, A, Bm, Cm, Dskip, delta_bias, delta_softplus, initial_state)
    u = np.ascontiguousarray(u, np.float32)
    Bsz, L, D = u.shape
    N = A.shape[1]
    dt = np.ascontiguousarray(step_sizes(delta, delta_bias, delta_softplus), np.float32)
    Bm, Cm = np.ascontiguousarray(Bm, np.float32), np.ascontiguousarray(Cm, np.float32)
    h = (np.zeros((Bsz, D, N), np.float32) if initial_state is None
         else np.array(initial_state, np.float32, order="C", copy=True))
    y = np.empty((Bsz, L, D), np.float32)
    if Bsz * L * D:
        rc = lib.mq_selective_scan_f32(u.ctypes.data, dt.ctypes.data, A.ctypes.data, Bm.ctypes.data, Cm.ctypes.data,
                                       h.ctypes.data, y.ctypes.data, Bsz, L, D, N)
        if rc != 0:
            return selective_scan_cpu(u, delta, A, Bm, Cm, Dskip, delta_bias, delta_softplus, initial_state)
    y += np.asarray(Dskip, np.float32) * u
    return y, h


def hadamard_fast(x: np.ndarray) -> np.ndarray:
    """x·H_n along the last axis in fp32 (`quant.hadamard.hadamard_transform` semantics) on the native kernel:
    n log n butterflies + the m×m base; numpy fallback `hadamard_transform_fp32`."""
    from ..quant.hadamard import _split, base_matrix, hadamard_transform_fp32

    lib = library()
    x = np.ascontiguousarray(x, np.float32)
    if lib is None or x.size == 0:
        return hadamard_transform_fp32(x)
    n = x.shape[-1]
    m, k = _split(n)
    base = np.ascontiguousarray(base_matrix(m), np.float32)
    y = np.empty_like(x)
    if lib.mq_hadamard_f32(x.ctypes.data, y.ctypes.data, x.size // n, m, 1 << k, base.ctypes.data,
                           float(1.0 / np.sqrt(n))) != 0:
        return hadamard_transform_fp32(x)
    return y
