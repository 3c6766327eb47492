#!/usr/bin/env bash
# GPU tests + benchmarks of the mq-deploy kernels. Run from the repository root on a CUDA machine:
#   OUT=/some/dir bash benchmarks/gpu/run_all.sh
# Builds build/libmq_kernels.so with nvcc (ARCH, default 90) and, with ALT_MIN_BLOCKS=k, the same library with
# the scan's __launch_bounds__ minimum blocks set to k (build/libmq_kernels_alt.so, fp16 chunk sweep); builds mamba-ssm's fp16
# forward scan (.carry/mamba) and Dao-AILab's fast-hadamard-transform (.carry/fht) in the background when
# their sources are there (never committed), then: tests, compute-sanitizer memcheck, benchmarks, ncu.
# Writes tests.json, bench.json, results.md, sanitizer.log, builds.log, ncu.txt (and log.txt via tee) under $OUT.
set -uo pipefail
OUT="${OUT:-benchmarks/gpu/results}"
ARCH="${ARCH:-90}"
mkdir -p build/alt "$OUT"
export OUT_DIR="$OUT" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
arch_list="${ARCH:0:1}.${ARCH:1}"
if [ -d .carry/mamba/csrc ]; then
  (TORCH_CUDA_ARCH_LIST="$arch_list" MAX_JOBS=6 timeout "${MAMBA_BUILD_TIMEOUT:-300}" python3 benchmarks/gpu/build_mamba_ref.py > build/mamba_build.log 2>&1; echo "rc=$?" >> build/mamba_build.log) &
  mamba_pid=$!
fi
if [ -d .carry/fht/csrc ]; then
  (TORCH_CUDA_ARCH_LIST="$arch_list" MAX_JOBS=2 timeout "${MAMBA_BUILD_TIMEOUT:-300}" python3 benchmarks/gpu/build_fht_ref.py > build/fht_build.log 2>&1; echo "rc=$?" >> build/fht_build.log) &
  fht_pid=$!
fi
t0=$(date +%s)
pids=()
for f in plugins/kernels/*.cu; do  # one nvcc per source, in parallel (the scan's kernels split over threads)
  nvcc -std=c++17 -O3 --split-compile 4 -Xcompiler -fPIC -gencode "arch=compute_${ARCH},code=sm_${ARCH}" -Iplugins/kernels \
    -c "$f" -o "build/$(basename "$f" .cu).o" & pids+=($!)
done
if [ -n "${ALT_MIN_BLOCKS:-}" ]; then
  nvcc -std=c++17 -O3 --split-compile 4 -DMQ_SCAN_MIN_BLOCKS="$ALT_MIN_BLOCKS" -Xcompiler -fPIC -gencode "arch=compute_${ARCH},code=sm_${ARCH}" \
    -Iplugins/kernels -c plugins/kernels/selectiveScanKernel.cu -o build/alt/selectiveScanKernel.o & alt_pid=$!
fi
for p in "${pids[@]}"; do wait "$p" || exit 1; done
nvcc -shared build/hadamardKernel.o build/mqKernelsCApi.o build/selectiveScanKernel.o build/stateUpdateKernel.o \
  -o build/libmq_kernels.so || exit 1
echo "built libmq_kernels.so in $(( $(date +%s) - t0 )) s"
rc=0
python3 benchmarks/gpu/harness.py test || rc=1
compute-sanitizer --tool memcheck --error-exitcode 3 python3 benchmarks/gpu/harness.py sanitize \
  > "$OUT/sanitizer.log" 2>&1; echo "compute-sanitizer rc=$?" | tee -a "$OUT/sanitizer.log"
tail -n 5 "$OUT/sanitizer.log"
if [ -n "${alt_pid:-}" ] && wait "$alt_pid" && nvcc -shared build/hadamardKernel.o build/mqKernelsCApi.o \
    build/alt/selectiveScanKernel.o build/stateUpdateKernel.o -o build/libmq_kernels_alt.so; then
  MQ_KERNELS_LIB=build/libmq_kernels_alt.so python3 benchmarks/gpu/harness.py sweep || echo "alt sweep failed"
fi
: > "$OUT/builds.log"
if [ -n "${mamba_pid:-}" ]; then wait "$mamba_pid"; tail -n 3 build/mamba_build.log; { echo "== mamba-ssm"; cat build/mamba_build.log; } >> "$OUT/builds.log"; fi
if [ -n "${fht_pid:-}" ]; then wait "$fht_pid"; tail -n 3 build/fht_build.log; { echo "== fast-hadamard-transform"; cat build/fht_build.log; } >> "$OUT/builds.log"; fi
PYTHONPATH="build/mamba:build/fht:${PYTHONPATH:-}" python3 benchmarks/gpu/harness.py bench || rc=1
python3 benchmarks/gpu/summarize.py "$OUT" "OUT=\$OUT bash benchmarks/gpu/run_all.sh (ARCH=$ARCH)" > /dev/null
if [ "${NCU:-1}" = 1 ] && command -v ncu > /dev/null; then  # one pass-3 scan launch, fp16, B8 L4096 D5120
  timeout 120 ncu --clock-control none --set basic -k regex:scanPass3 -c 1 python3 benchmarks/gpu/harness.py ncu > "$OUT/ncu.txt" 2>&1
  echo "ncu rc=$?"; grep -E "Duration|Throughput|Registers|Achieved Occupancy|Theoretical Occupancy|Executed Ipc" "$OUT/ncu.txt" | head -20
fi
exit $rc
