#!/usr/bin/env bash
# GPU tests + benchmarks of the mq-deploy kernels. Run from the repository root on a CUDA machine:
#   OUT=/some/dir bash benchmarks/gpu/run_all.sh
# Builds build/libmq_kernels.so with nvcc (ARCH, default 90), builds mamba-ssm's fp16 forward scan in
# the background when .carry/mamba holds its sources, then: tests, compute-sanitizer memcheck, benchmarks.
# Writes tests.json, bench.json, results.md, sanitizer.log, log.txt under $OUT.
set -uo pipefail
OUT="${OUT:-benchmarks/gpu/results}"
ARCH="${ARCH:-90}"
mkdir -p build "$OUT"
export OUT_DIR="$OUT" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
if [ -d .carry/mamba/csrc ]; then
  (TORCH_CUDA_ARCH_LIST="${ARCH:0:1}.${ARCH:1}" MAX_JOBS=8 timeout "${MAMBA_BUILD_TIMEOUT:-300}" python3 benchmarks/gpu/build_mamba_ref.py > build/mamba_build.log 2>&1; echo "rc=$?" >> build/mamba_build.log) &
  mamba_pid=$!
fi
t0=$(date +%s)
pids=()
for f in plugins/kernels/*.cu; do  # one nvcc per source, in parallel
  nvcc -std=c++17 -O3 -Xcompiler -fPIC -gencode "arch=compute_${ARCH},code=sm_${ARCH}" -Iplugins/kernels \
    -c "$f" -o "build/$(basename "$f" .cu).o" & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || exit 1; done
nvcc -shared build/hadamardKernel.o build/mqKernelsCApi.o build/selectiveScanKernel.o build/stateUpdateKernel.o \
  -o build/libmq_kernels.so || exit 1
echo "built libmq_kernels.so in $(( $(date +%s) - t0 )) s"
rc=0
python3 benchmarks/gpu/harness.py test || rc=1
compute-sanitizer --tool memcheck --error-exitcode 3 python3 benchmarks/gpu/harness.py sanitize \
  > "$OUT/sanitizer.log" 2>&1; echo "compute-sanitizer rc=$?" | tee -a "$OUT/sanitizer.log"
tail -n 5 "$OUT/sanitizer.log"
if [ -n "${mamba_pid:-}" ]; then wait "$mamba_pid"; tail -n 3 build/mamba_build.log; cp build/mamba_build.log "$OUT/" ; fi
PYTHONPATH="build/mamba:${PYTHONPATH:-}" python3 benchmarks/gpu/harness.py bench || rc=1
python3 benchmarks/gpu/summarize.py "$OUT" "OUT=\$OUT bash benchmarks/gpu/run_all.sh (ARCH=$ARCH)" > /dev/null
if [ "${NCU:-1}" = 1 ] && command -v ncu > /dev/null; then  # one pass-3 scan launch, fp16, B8 L4096 D5120
  timeout 120 ncu --set basic -k regex:scanKernel -c 1 python3 benchmarks/gpu/harness.py ncu > "$OUT/ncu.txt" 2>&1
  echo "ncu rc=$?"; grep -E "Duration|Throughput|Registers|Achieved Occupancy|Theoretical Occupancy|Executed Ipc" "$OUT/ncu.txt" | head -20
fi
python3 benchmarks/gpu/summarize.py "$OUT" "OUT=\$OUT bash benchmarks/gpu/run_all.sh (ARCH=$ARCH)" > /dev/null
exit $rc
