#!/usr/bin/env bash
# GPU tests + benchmarks of the mq-deploy kernels. Run from the repository root on a CUDA machine:
#   OUT=/some/dir bash benchmarks/gpu/run_all.sh
# Builds build/libmq_kernels.so with nvcc (ARCH, default 90) and, with SCAN_ALT_DEFINES="NAME=VALUE ...", the same
# library once per NAME=VALUE with -DNAME=VALUE on selectiveScanKernel.cu (its tuning macros, e.g. MQ_SCAN_MIN_BLOCKS,
# MQ_SCAN_SEG_MIN_BLOCKS; ALT_MIN_BLOCKS=k is short for MQ_SCAN_MIN_BLOCKS=k), each timed by an fp16 schedule sweep
# (harness.py sweep, folded into bench.json as scan_alt); builds mamba-ssm's fp16
# forward scan (.carry/mamba) and Dao-AILab's fast-hadamard-transform (.carry/fht) in the background when
# their sources are there (never committed), then: tests, compute-sanitizer memcheck, benchmarks, ncu.
# Writes tests.json, bench.json, results.md, sanitizer.log, builds.log, ncu.txt (and log.txt via tee) under $OUT; with
# BENCH=hadamard or all also copy_floor.log (copy_floor.cu: plain copy kernels against cudaMemcpy, 64 and 256 MiB) and
# hadamard_sizes.log / .json (harness.py hsizes: the Hadamard at 64 and 256 MiB) and hadamard_quant.log / .json
# (harness.py hquant: the int8-out Hadamard, out_proj's QuantizeLinear fused, against Hadamard + quantize kernel).
# BENCH=hadamard: the tests and the sanitizer run in full, the benchmarks only time the Hadamard kernel (no scan sweep,
# no decode, no mamba-ssm build), and ncu.txt profiles Hadamard launches instead of the scan (one per n of NCU_HAD_N,
# default "5120 1536"). BENCH=scan: the benchmarks time only the scan (schedules, mamba-ssm; no chunk sweep, Hadamard
# or decode). BENCH=decode: only the
# decode benchmark (state update of every layer vs mamba-ssm's Triton selective_state_update from .carry/mamba).
# SCAN_ALT_SRC="old=path/to/selectiveScanKernel.cu": also builds the scan from that file (e.g. `git show
# HEAD~1:plugins/kernels/selectiveScanKernel.cu` saved outside plugins/) and sweeps it like a SCAN_ALT_DEFINES build,
# named src_old, for an A/B of two versions in one process. ABSCAN=1: also times the default build and every such
# alternative interleaved in one process (harness.py abscan; AB_SHAPES, AB_DTYPES, AB_SPLITS, ROUNDS as it reads them).
# The fp16 scan sweep also times 4 threads a channel at each chunk count of SCAN_SPLIT_CHUNKS (default "1 2 3 4 5 6 8
# 10 12 13 14 16"; SCAN_SPLIT_SWEEP=0 skips it).
# NVCC_DEFINES="NAME=VALUE ...": -D flags for every kernel build (e.g. MQ_SCAN_SEGMENTED=1 / MQ_SCAN_WIDE=1 compile the
# experimental segment-parallel / wide scans, which the tests, the sanitizer and the sweeps then cover); the alternative
# builds below add theirs on top.
# HAD_ALT_DEFINES="MQ_HAD_MIN_BLOCKS=3 MQ_HAD_MIN_BLOCKS=5": also builds hadamardKernel.cu once per NAME=VALUE with
# -DNAME=VALUE (hadamardKernel.cu's tuning macros) and times each build (harness.py hbench, folded into bench.json as
# hadamard_alt). HAD_ALT_SRC="old=path/to/hadamardKernel.cu": also builds the Hadamard from that file (with the headers
# of its version beside it) and times it the same way, named src_old.
# SU_ALT_DEFINES="MQ_SU_THREADS=128 MQ_SU_LANES=8,MQ_SU_THREADS=128": also builds stateUpdateKernel.cu once per entry
# (comma-separated NAME=VALUE flags: its block-shape macros) and runs the state-update checks and the decode benchmark
# on each build (harness.py dbench, folded into bench.json as decode_alt). With BENCH=decode, ncu.txt profiles the
# state update of the 130m shape by mq and by mamba-ssm's Triton kernel.
# TRT_INCLUDE=<TensorRT include dir>: also builds build/libmq_plugin_runtime.so (the plugins/*.cpp TensorRT plugins and
# plugins/tests/plugin_runtime.cpp, which makes TensorRT's calls into them; TensorRT's headers only, no library) and
# runs plugin_check.py: each plugin's enqueue against the C API (bit for bit) and the references, its errors, CUDA graph
# replays, and with PLUGIN_NODES="a.npz b.npz" (plugin_nodes.py, written on a CPU machine) the plugin nodes of compiled
# OUTDIRs against onnxruntime; its small cases also run under compute-sanitizer. BENCH=plugins: tests, plugin checks
# and sanitizer only (no benchmarks, no ncu).
set -uo pipefail
OUT="${OUT:-benchmarks/gpu/results}"
ARCH="${ARCH:-90}"
mkdir -p build/alt "$OUT"
export OUT_DIR="$OUT" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
arch_list="${ARCH:0:1}.${ARCH:1}"
defs=()
for d in ${NVCC_DEFINES:-}; do defs+=("-D$d"); done
BENCH="${BENCH:-all}"
if [ -d .carry/mamba/csrc ] && [ "$BENCH" != hadamard ] && [ "$BENCH" != decode ]; then
  (TORCH_CUDA_ARCH_LIST="$arch_list" MAX_JOBS=6 timeout "${MAMBA_BUILD_TIMEOUT:-300}" python3 benchmarks/gpu/build_mamba_ref.py > build/mamba_build.log 2>&1; echo "rc=$?" >> build/mamba_build.log) &
  mamba_pid=$!
fi
if [ -d .carry/fht/csrc ] && [ "$BENCH" != scan ] && [ "$BENCH" != decode ]; then
  (TORCH_CUDA_ARCH_LIST="$arch_list" MAX_JOBS=2 timeout "${MAMBA_BUILD_TIMEOUT:-300}" python3 benchmarks/gpu/build_fht_ref.py > build/fht_build.log 2>&1; echo "rc=$?" >> build/fht_build.log) &
  fht_pid=$!
fi
t0=$(date +%s)
pids=()
for f in plugins/kernels/*.cu; do  # one nvcc per source, in parallel (the scan's kernels split over threads)
  nvcc -std=c++17 -O3 --split-compile 4 ${defs[@]+"${defs[@]}"} -Xcompiler -fPIC -gencode "arch=compute_${ARCH},code=sm_${ARCH}" \
    -Iplugins/kernels -c "$f" -o "build/$(basename "$f" .cu).o" & pids+=($!)
done
scan_alt=()
for d in ${SCAN_ALT_DEFINES:-} ${ALT_MIN_BLOCKS:+MQ_SCAN_MIN_BLOCKS=$ALT_MIN_BLOCKS}; do
  k="${d//=/_}"
  mkdir -p "build/scan_$k"
  nvcc -std=c++17 -O3 --split-compile 4 ${defs[@]+"${defs[@]}"} "-D$d" -Xcompiler -fPIC -gencode "arch=compute_${ARCH},code=sm_${ARCH}" \
    -Iplugins/kernels -c plugins/kernels/selectiveScanKernel.cu -o "build/scan_$k/selectiveScanKernel.o" & scan_alt+=("$k:$!")
done
for d in ${SCAN_ALT_SRC:-}; do  # name=path: the scan built from another source file (A/B against an older version)
  k="src_${d%%=*}"
  mkdir -p "build/scan_$k"
  nvcc -std=c++17 -O3 --split-compile 4 ${defs[@]+"${defs[@]}"} -Xcompiler -fPIC -gencode "arch=compute_${ARCH},code=sm_${ARCH}" \
    -Iplugins/kernels -c "${d#*=}" -o "build/scan_$k/selectiveScanKernel.o" & scan_alt+=("$k:$!")
done
had_alt=()
had_build() {  # KEY SOURCE [NVCC FLAG...]: an alternative Hadamard object in build/had_KEY, built in the background
  local k="$1" src="$2"; shift 2
  mkdir -p "build/had_$k"
  nvcc -std=c++17 -O3 ${defs[@]+"${defs[@]}"} "$@" -Xcompiler -fPIC -gencode "arch=compute_${ARCH},code=sm_${ARCH}" -Iplugins/kernels \
    -c "$src" -o "build/had_$k/hadamardKernel.o" & had_alt+=("$k:$!")
}
for d in ${HAD_ALT_DEFINES:-}; do had_build "${d//=/_}" plugins/kernels/hadamardKernel.cu "-D$d"; done
# name=path: hadamardKernel.cu of another version (its own headers beside it, e.g. hadamardFast.cuh, are found first)
for d in ${HAD_ALT_SRC:-}; do had_build "src_${d%%=*}" "${d#*=}"; done
su_alt=()
for d in ${SU_ALT_DEFINES:-}; do
  k="${d//=/_}"; k="${k//,/_}"
  mkdir -p "build/su_$k"
  sdefs=(); IFS=, read -ra parts <<< "$d"; for q in "${parts[@]}"; do sdefs+=("-D$q"); done
  nvcc -std=c++17 -O3 ${defs[@]+"${defs[@]}"} "${sdefs[@]}" -Xcompiler -fPIC -gencode "arch=compute_${ARCH},code=sm_${ARCH}" -Iplugins/kernels \
    -c plugins/kernels/stateUpdateKernel.cu -o "build/su_$k/stateUpdateKernel.o" & su_alt+=("$k:$!")
done
for p in "${pids[@]}"; do wait "$p" || exit 1; done
nvcc -shared build/hadamardKernel.o build/mqKernelsCApi.o build/selectiveScanKernel.o build/stateUpdateKernel.o \
  -o build/libmq_kernels.so || exit 1
echo "built libmq_kernels.so in $(( $(date +%s) - t0 )) s"
if [ -n "${TRT_INCLUDE:-}" ]; then
  nvcc -std=c++17 -O2 -shared -Xcompiler -fPIC -Xcompiler -Wno-deprecated-declarations -isystem "$TRT_INCLUDE" -Iplugins \
    -Iplugins/kernels plugins/*.cpp plugins/tests/plugin_runtime.cpp -Lbuild -lmq_kernels -Xlinker -rpath,"$PWD/build" \
    -o build/libmq_plugin_runtime.so || exit 1
fi
rc=0
python3 benchmarks/gpu/harness.py test || rc=1
if [ -n "${TRT_INCLUDE:-}" ]; then
  # shellcheck disable=SC2086  # PLUGIN_NODES is a list of files
  python3 benchmarks/gpu/plugin_check.py test ${PLUGIN_NODES:+--nodes $PLUGIN_NODES} || rc=1
fi
compute-sanitizer --tool memcheck --error-exitcode 3 python3 benchmarks/gpu/harness.py sanitize \
  > "$OUT/sanitizer.log" 2>&1; echo "compute-sanitizer rc=$?" | tee -a "$OUT/sanitizer.log"
if [ -n "${TRT_INCLUDE:-}" ]; then
  compute-sanitizer --tool memcheck --error-exitcode 3 python3 benchmarks/gpu/plugin_check.py sanitize \
    >> "$OUT/sanitizer.log" 2>&1; echo "compute-sanitizer (plugins) rc=$?" | tee -a "$OUT/sanitizer.log"
fi
if [[ " ${NVCC_DEFINES:-} " == *" MQ_SCAN_WIDE=1 "* ]]; then
  for tool in racecheck synccheck; do  # the experimental wide scan's shared-memory protocol (built with MQ_SCAN_WIDE=1)
    compute-sanitizer --tool "$tool" --error-exitcode 3 python3 benchmarks/gpu/harness.py sanitize_wide \
      >> "$OUT/sanitizer.log" 2>&1; echo "compute-sanitizer $tool (wide scan) rc=$?" | tee -a "$OUT/sanitizer.log"
  done
fi
tail -n 5 "$OUT/sanitizer.log"
[ "$BENCH" = plugins ] && exit $rc
ab_libs=("default=build/libmq_kernels.so")
for e in ${scan_alt[@]+"${scan_alt[@]}"}; do
  k="${e%%:*}"
  if wait "${e#*:}" && nvcc -shared build/hadamardKernel.o build/mqKernelsCApi.o "build/scan_$k/selectiveScanKernel.o" \
      build/stateUpdateKernel.o -o "build/libmq_kernels_scan_$k.so"; then
    MQ_KERNELS_LIB="build/libmq_kernels_scan_$k.so" python3 benchmarks/gpu/harness.py sweep "$k" || echo "scan sweep $k failed"
    ab_libs+=("$k=build/libmq_kernels_scan_$k.so")
  fi
done
if [ "${ABSCAN:-0}" = 1 ]; then  # the default and every alternative scan build timed interleaved in one process
  python3 benchmarks/gpu/harness.py abscan "${ab_libs[@]}" 2>&1 | tee "$OUT/abscan.log" || echo "abscan failed"
fi
: > "$OUT/builds.log"
if [ -n "${mamba_pid:-}" ]; then wait "$mamba_pid"; tail -n 3 build/mamba_build.log; { echo "== mamba-ssm"; cat build/mamba_build.log; } >> "$OUT/builds.log"; fi
if [ -n "${fht_pid:-}" ]; then wait "$fht_pid"; tail -n 3 build/fht_build.log; { echo "== fast-hadamard-transform"; cat build/fht_build.log; } >> "$OUT/builds.log"; fi
for e in ${had_alt[@]+"${had_alt[@]}"}; do
  k="${e%%:*}"
  if wait "${e#*:}" && nvcc -shared "build/had_$k/hadamardKernel.o" build/mqKernelsCApi.o build/selectiveScanKernel.o \
      build/stateUpdateKernel.o -o "build/libmq_kernels_had_$k.so"; then
    MQ_KERNELS_LIB="build/libmq_kernels_had_$k.so" python3 benchmarks/gpu/harness.py hbench "$k" || echo "hbench $k failed"
  fi
done
for e in ${su_alt[@]+"${su_alt[@]}"}; do
  k="${e%%:*}"
  if wait "${e#*:}" && nvcc -shared build/hadamardKernel.o build/mqKernelsCApi.o build/selectiveScanKernel.o \
      "build/su_$k/stateUpdateKernel.o" -o "build/libmq_kernels_su_$k.so"; then
    MQ_KERNELS_LIB="build/libmq_kernels_su_$k.so" python3 benchmarks/gpu/harness.py dbench "$k" || echo "dbench $k failed"
  fi
done
PYTHONPATH="build/mamba:build/fht:${PYTHONPATH:-}" python3 benchmarks/gpu/harness.py bench "$BENCH" || rc=1
if [ "$BENCH" = hadamard ] || [ "$BENCH" = all ]; then  # the copy floor of the Hadamard target, and its larger input
  { nvcc -std=c++17 -O3 -gencode "arch=compute_${ARCH},code=sm_${ARCH}" -o build/copy_floor benchmarks/gpu/copy_floor.cu \
    && build/copy_floor 64 256; } > "$OUT/copy_floor.log" 2>&1 || { echo "copy_floor failed"; rc=1; }
  grep "best kernel copy" "$OUT/copy_floor.log"
  python3 benchmarks/gpu/harness.py hsizes > "$OUT/hadamard_sizes.log" 2>&1 || { echo "hsizes failed"; rc=1; }
  # the quantized graphs' Hadamard (int8 out, out_proj's QuantizeLinear fused) against Hadamard + a quantize kernel
  python3 benchmarks/gpu/harness.py hquant > "$OUT/hadamard_quant.log" 2>&1 || { echo "hquant failed"; rc=1; }
fi
python3 benchmarks/gpu/summarize.py "$OUT" "OUT=\$OUT bash benchmarks/gpu/run_all.sh (ARCH=$ARCH BENCH=$BENCH${NVCC_DEFINES:+ NVCC_DEFINES=$NVCC_DEFINES}${HAD_ALT_DEFINES:+ HAD_ALT_DEFINES=$HAD_ALT_DEFINES}${SCAN_ALT_DEFINES:+ SCAN_ALT_DEFINES=$SCAN_ALT_DEFINES}${SCAN_ALT_SRC:+ SCAN_ALT_SRC=$SCAN_ALT_SRC}${HAD_ALT_SRC:+ HAD_ALT_SRC=$HAD_ALT_SRC}${SU_ALT_DEFINES:+ SU_ALT_DEFINES=$SU_ALT_DEFINES})" > /dev/null
if [ "${NCU:-1}" = 1 ] && [ "$BENCH" = hadamard ] && command -v ncu > /dev/null; then  # fp16 -> fp16, 64 MiB, each n of NCU_HAD_N
  timeout 150 ncu --clock-control none --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section SchedulerStats --section MemoryWorkloadAnalysis -k regex:hadamardRegKernel python3 benchmarks/gpu/harness.py ncu_had \
    > "$OUT/ncu.txt" 2>&1
  echo "ncu rc=$?"; grep -E "hadamardRegKernel|Duration|Throughput|Registers|Achieved Occupancy|Issue Slots Busy|No Eligible" "$OUT/ncu.txt" | head -40
elif [ "${NCU:-1}" = 1 ] && [ "$BENCH" = decode ] && command -v ncu > /dev/null; then  # state update, 130m B1: mq vs Triton
  timeout 150 ncu --clock-control none --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section SchedulerStats -k regex:"stateUpdateKernel|selective_scan_update" -c 6 python3 benchmarks/gpu/harness.py ncu_decode \
    > "$OUT/ncu.txt" 2>&1
  echo "ncu rc=$?"; grep -E "stateUpdateKernel|selective_scan_update|Duration|Registers|Achieved Occupancy|Block Size|Grid Size" "$OUT/ncu.txt" | head -60
elif [ "${NCU:-1}" = 1 ] && command -v ncu > /dev/null; then  # fp16 scan: B8 L4096 D5120 single pass, B1 L4096 D1536 pass 1 + pass 3
  timeout 150 ncu --clock-control none --set basic --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis \
    --section InstructionStats -k regex:"scanPass1|scanPass3|scanSegKernel" -c 3 \
    python3 benchmarks/gpu/harness.py ncu > "$OUT/ncu.txt" 2>&1
  echo "ncu rc=$?"; grep -E "Duration|Throughput|Registers|Achieved Occupancy|Theoretical Occupancy|Executed Ipc" "$OUT/ncu.txt" | head -20
fi
exit $rc
