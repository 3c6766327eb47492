#!/usr/bin/env python3
"""CPU kernel timings behind model.onnx's plugin nodes in onnxruntime (calibration, eval, compare).

    python benchmarks/cpu_kernels.py

SelectiveScan: the numpy reference (ops/selective_scan.selective_scan), the numpy fast path
(selective_scan_cpu) and the native C kernel (ops/native.py); Hadamard: the float64 transform, the fp32 numpy
butterflies and the native C kernel. Median of 5 runs each; prints the machine and a markdown table.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import numpy as np

from mq_deploy.ops import native
from mq_deploy.ops.selective_scan import selective_scan, selective_scan_cpu
from mq_deploy.quant.hadamard import hadamard_transform, hadamard_transform_fp32


def median_time(fn, repeat=5):
    fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; native: {native.status()}; "
          f"load average {os.getloadavg()}")
    print("\n| kernel | shape | implementation | ms |\n|---|---|---|---:|")
    for B, L, D, N in ((8, 512, 1536, 16), (1, 512, 1536, 16)):
        u, dl = (rng.standard_normal((B, L, D), dtype=np.float32) for _ in range(2))
        Bm, Cm = (rng.standard_normal((B, L, N), dtype=np.float32) for _ in range(2))
        A = -np.exp(rng.standard_normal((D, N))).astype(np.float32)
        Dk = np.ones(D, np.float32)
        for name, fn in (("numpy reference", selective_scan), ("numpy fast", selective_scan_cpu),
                         ("native C", native.selective_scan_fast)):
            ms = 1e3 * median_time(lambda: fn(u, dl, A, Bm, Cm, Dk, None, True))
            print(f"| SelectiveScan | B{B} L{L} D{D} N{N} | {name} | {ms:.1f} |")
    for n in (1536, 768, 5120):
        x = rng.standard_normal((2, 512, n)).astype(np.float32)
        for name, fn in (("float64 transform", hadamard_transform), ("fp32 numpy butterflies", hadamard_transform_fp32),
                         ("native C", native.hadamard_fast)):
            print(f"| Hadamard | [2, 512, {n}] | {name} | {1e3 * median_time(lambda: fn(x)):.1f} |")


if __name__ == "__main__":
    main()
