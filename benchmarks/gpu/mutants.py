"""Mutation check of the GPU tests: each mutant is one plausible bug in a kernel source, and `harness.py test` must
fail on every one (a test suite that passes a wrong kernel cannot be trusted to pass only right ones).

For each mutant: a copy of plugins/kernels with one exact-text replacement (the text must occur once), the objects of
the sources it changes rebuilt there (all four when a header changes), linked with the unchanged objects into
build/mut/<name>/libmq_kernels.so, then `harness.py test` against it with HARNESS_FAIL_FAST=1 (stops at its first
FAIL). "none" is the unmutated build, which must pass. Prints one line a mutant and writes OUT_DIR/mutants.json.

    python3 benchmarks/gpu/mutants.py [NAME ...]      # repository root, on the GPU machine; default: every mutant

Env: ARCH (default 90), PAR (test processes at a time on the one GPU, default 4), OUT_DIR (default .). The unmutated
objects are built first, into build/mut/none/ with the same flags as the mutants' (not taken from run_all.sh's build/,
which may be older or built with other defines).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KERNELS = os.path.join(ROOT, "plugins", "kernels")
SOURCES = ("hadamardKernel", "mqKernelsCApi", "selectiveScanKernel", "stateUpdateKernel")
ARCH = os.environ.get("ARCH", "90")
BASE = os.path.join(ROOT, "build", "mut", "none")  # the unmutated objects and library

# (name, file in plugins/kernels, text, replacement)
MUTANTS = [
    ("scan-chain-skips-chunk-1", "selectiveScanKernel.cu",
     "for (int cc = 1; cc < c; ++cc)", "for (int cc = 2; cc < c; ++cc)"),
    ("scan-B-read-with-C-scale", "selectiveScanKernel.cu",
     "bN[j] = toFloatAs<kCvtAlu>(bT[e], bScale);", "bN[j] = toFloatAs<kCvtAlu>(bT[e], cScale);"),
    ("scan-tail-token-kept", "selectiveScanKernel.cu",
     "v = iOwn < nt ? v : 0.f;", "v = iOwn <= nt ? v : 0.f;"),
    ("scan-h0-states-swapped", "selectiveScanKernel.cu",
     "p.h0[stateOff + n] : 0.f;", "p.h0[stateOff + (n ^ 1)] : 0.f;"),
    ("scan-4-lane-reduce-wrong-half", "selectiveScanKernel.cu",
     "__shfl_xor_sync(0xffffffffu, b0 ? p0 : p1, 1);", "__shfl_xor_sync(0xffffffffu, b0 ? p1 : p0, 1);"),
    ("scan-chunk-sum-delta-not-reduced", "selectiveScanKernel.cu",
     "for (int m = 1; m < kSplit; m *= 2) // each lane", "for (int m = 2; m < kSplit; m *= 2) // each lane"),
    ("scan-delta-bias-twice", "selectiveScanKernel.cu",
     "float v = toFloatAs<kCvtAlu>(sD[buf][iOwn][ch], dScale) + bias;",
     "float v = toFloatAs<kCvtAlu>(sD[buf][iOwn][ch], dScale) + 2.f * bias;"),
    ("scan-last-state-of-chunk-before", "selectiveScanKernel.cu",
     "    if (c == chunks - 1)\n        dst = p.lastState", "    if (c == chunks - 1 && c == 0)\n        dst = p.lastState"),
    ("update-D-skip-sign", "stateUpdateKernel.cu",
     "yv = fmaf(dSkip, xv, yv);", "yv = fmaf(dSkip, -xv, yv);"),
    ("update-vector-softplus-off", "stateUpdateKernel.cu",
     "            dt = softplusTorch(dt);\n        float const dx = dt * xv;\n#pragma unroll",
     "            dt = softplusTorch(dt) + 1e-3f;\n        float const dx = dt * xv;\n#pragma unroll"),
    ("hadamard-int8-saturates-at-127", "hadamardKernel.cu",
     "min(max(__float2int_rn(x * inv), -128), 127)", "min(max(__float2int_rn(x * inv), -127), 127)"),
    ("hadamard-int8-truncates", "hadamardKernel.cu",
     "min(max(__float2int_rn(x * inv), -128), 127)", "min(max(__float2int_rz(x * inv), -128), 127)"),
    ("hadamard-scale-of-n-plus-8", "hadamardKernel.cu",
     "float const s = rsqrtf(static_cast<float>(C::N)) *", "float const s = rsqrtf(static_cast<float>(C::N + 8)) *"),
]


def nvcc(src_dir: str, name: str, obj: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nvcc", "-std=c++17", "-O3", "--split-compile", "4", "-Xcompiler", "-fPIC", "-gencode",
                           f"arch=compute_{ARCH},code=sm_{ARCH}", f"-I{src_dir}", "-c",
                           os.path.join(src_dir, f"{name}.cu"), "-o", obj], capture_output=True, text=True)


def build(m) -> tuple[str, str]:
    """(library path, "") or ("", why it did not build)."""
    name, fname, old, new = m
    d = os.path.join(ROOT, "build", "mut", name)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(KERNELS, os.path.join(d, "src"))
    path = os.path.join(d, "src", fname)
    text = open(path).read()
    if text.count(old) != 1:
        return "", f"the text occurs {text.count(old)} times in {fname}"
    open(path, "w").write(text.replace(old, new))
    changed = [fname[:-3]] if fname.endswith(".cu") else list(SOURCES)
    objs = []
    for s in SOURCES:
        if s in changed:
            r = nvcc(os.path.join(d, "src"), s, os.path.join(d, f"{s}.o"))
            if r.returncode:
                return "", f"nvcc failed: {r.stderr[-300:]}"
            objs.append(os.path.join(d, f"{s}.o"))
        else:
            objs.append(os.path.join(BASE, f"{s}.o"))
    lib = os.path.join(d, "libmq_kernels.so")
    r = subprocess.run(["nvcc", "-shared", *objs, "-o", lib], capture_output=True, text=True)
    return (lib, "") if r.returncode == 0 else ("", f"link failed: {r.stderr[-300:]}")


def test(name: str, lib: str) -> dict:
    out = os.path.join(os.environ.get("OUT_DIR", "."), "mut", name)
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, MQ_KERNELS_LIB=lib, HARNESS_FAIL_FAST="1", OUT_DIR=out)
    t0 = time.time()
    try:
        r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu", "harness.py"), "test"], env=env,
                           capture_output=True, text=True, timeout=900)
        rc, text = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired:
        rc, text = -1, "timed out"
    lines = text.splitlines()
    fail = next((ln for ln in lines if ln.startswith("FAIL ")), "")
    passed = sum(ln.startswith("PASS ") for ln in lines)
    return dict(name=name, rc=rc, seconds=round(time.time() - t0, 1), passed_before=passed, first_fail=fail,
                tail="" if fail else "\n".join(lines[-5:]))


def main() -> int:
    want = sys.argv[1:]
    chosen = [m for m in MUTANTS if not want or m[0] in want]
    unknown = set(want) - {m[0] for m in MUTANTS} - {"none"}
    if unknown:
        print(f"unknown mutants: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    shutil.rmtree(BASE, ignore_errors=True)
    os.makedirs(BASE)
    with ThreadPoolExecutor(max_workers=4) as ex:  # the unmutated objects, from the sources as they are now
        for r in ex.map(lambda s: nvcc(KERNELS, s, os.path.join(BASE, f"{s}.o")), SOURCES):
            if r.returncode:
                print(r.stderr, file=sys.stderr)
                return 1
    base = os.path.join(BASE, "libmq_kernels.so")
    subprocess.run(["nvcc", "-shared", *[os.path.join(BASE, f"{s}.o") for s in SOURCES], "-o", base], check=True)
    t0 = time.time()
    with ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 4) // 2)) as ex:
        libs = dict(zip([m[0] for m in chosen], ex.map(build, chosen)))
    print(f"built {len(libs)} mutants in {time.time() - t0:.0f} s", flush=True)
    runs = ([("none", base)] if not want or "none" in want else []) + [(n, lib) for n, (lib, _) in libs.items() if lib]
    results = [dict(name=n, rc=None, why=why) for n, (lib, why) in libs.items() if not lib]
    bad = 0

    def report(r):
        nonlocal bad
        if r.get("rc") is None:
            verdict = f"NOT BUILT ({r['why']})"
            bad += 1
        elif r["name"] == "none":
            verdict = "passes" if r["rc"] == 0 else f"FAILS (rc {r['rc']}): {r['first_fail'] or r['tail']}"
            bad += r["rc"] != 0
        else:
            verdict = (f"killed after {r['passed_before']} passing checks, {r['seconds']} s: {r['first_fail'][:150]}"
                       if r["rc"] != 0 and r["first_fail"] else
                       f"SURVIVED ({r['passed_before']} checks passed)" if r["rc"] == 0 else
                       f"crashed (rc {r['rc']}), {r['seconds']} s: {r['tail'][-200:]}")
            bad += r["rc"] == 0
        print(f"{r['name']:34s} {verdict}", flush=True)

    for r in results:
        report(r)
    with ThreadPoolExecutor(max_workers=int(os.environ.get("PAR", "4"))) as ex:
        for fut in as_completed([ex.submit(test, *a) for a in runs]):  # each line as its run ends
            results.append(fut.result())
            report(results[-1])
    with open(os.path.join(os.environ.get("OUT_DIR", "."), "mutants.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
