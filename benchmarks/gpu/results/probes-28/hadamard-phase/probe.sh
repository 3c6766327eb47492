#!/usr/bin/env bash
# scratch probe (not committed): Hadamard start-phase offsets, scan pass-3 softplus ceiling, tanh SiLU
set -uo pipefail
ARCH=90
mkdir -p build/p
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
cc() { nvcc -std=c++17 -O3 --split-compile 4 "$@" -Xcompiler -fPIC -gencode arch=compute_${ARCH},code=sm_${ARCH} -Iplugins/kernels; }
t0=$(date +%s)
pids=()
for f in hadamardKernel mqKernelsCApi selectiveScanKernel stateUpdateKernel; do cc -c plugins/kernels/$f.cu -o build/p/$f.o & pids+=($!); done
for ns in 400 1000 2500; do mkdir -p build/p/h$ns; cc -DMQ_HAD_PHASE_NS=$ns -c plugins/kernels/hadamardKernel.cu -o build/p/h$ns/hadamardKernel.o & pids+=($!); done
mkdir -p build/p/tanh build/p/nosp build/p/both
cc -DMQ_SCAN_PROBE_TANH=1 -c plugins/kernels/selectiveScanKernel.cu -o build/p/tanh/selectiveScanKernel.o & pids+=($!)
cc -DMQ_SCAN_PROBE_P3_NOSP=1 -c plugins/kernels/selectiveScanKernel.cu -o build/p/nosp/selectiveScanKernel.o & pids+=($!)
cc -DMQ_SCAN_PROBE_P3_NOSP=1 -DMQ_SCAN_PROBE_TANH=1 -c plugins/kernels/selectiveScanKernel.cu -o build/p/both/selectiveScanKernel.o & pids+=($!)
for p in "${pids[@]}"; do wait "$p" || { echo "build failed"; exit 1; }; done
echo "built in $(( $(date +%s) - t0 )) s"
link() { nvcc -shared "$@"; }
link build/p/hadamardKernel.o build/p/mqKernelsCApi.o build/p/selectiveScanKernel.o build/p/stateUpdateKernel.o -o build/p/lib_default.so
for ns in 400 1000 2500; do link build/p/h$ns/hadamardKernel.o build/p/mqKernelsCApi.o build/p/selectiveScanKernel.o build/p/stateUpdateKernel.o -o build/p/lib_h$ns.so; done
for v in tanh nosp both; do link build/p/hadamardKernel.o build/p/mqKernelsCApi.o build/p/$v/selectiveScanKernel.o build/p/stateUpdateKernel.o -o build/p/lib_$v.so; done
export OUT_DIR="$OUT" PYTHONUNBUFFERED=1
# correctness of the phase build and the tanh build (full kernel checks)
for v in h1000 tanh; do MQ_KERNELS_LIB=build/p/lib_$v.so timeout 200 python3 benchmarks/gpu/harness.py test > "$OUT"/test_$v.log 2>&1; echo "test $v rc=$?"; tail -n 3 "$OUT"/test_$v.log; grep -i "fail" "$OUT"/test_$v.log | head -20; done
# Hadamard: builds interleaved, one process each, two rounds
for r in 1 2; do for v in default h400 h1000 h2500; do
  MQ_KERNELS_LIB=build/p/lib_$v.so HADAMARD_N="4096 5120 3584 2560 1536" HADAMARD_MIB="64 256" HADAMARD_TAG="${v}_r$r" \
    timeout 120 python3 benchmarks/gpu/harness.py hsizes > "$OUT"/hsizes_${v}_r$r.log 2>&1; echo "hsizes $v r$r rc=$?"
done; done
# scan: interleaved in one process
AB_SHAPES="1x4096x1536 1x4096x5120 8x2048x1536 2x4096x1536" AB_DTYPES="fp16 int8->fp32" ROUNDS=7 timeout 300 \
  python3 benchmarks/gpu/harness.py abscan default=build/p/lib_default.so tanh=build/p/lib_tanh.so nosp=build/p/lib_nosp.so both=build/p/lib_both.so > "$OUT"/abscan.log 2>&1
echo "abscan rc=$?"
grep abscan "$OUT"/abscan.log | sed 's/(.*//'
