#!/usr/bin/env bash
set -uo pipefail
ARCH=90
mkdir -p build/p/tanh build/p/nosp build/p/both
cc() { nvcc -std=c++17 -O3 --split-compile 4 "$@" -Xcompiler -fPIC -gencode arch=compute_${ARCH},code=sm_${ARCH} -Iplugins/kernels; }
if [ ! -f build/p/lib_both.so ]; then
  pids=()
  for f in hadamardKernel mqKernelsCApi selectiveScanKernel stateUpdateKernel; do cc -c plugins/kernels/$f.cu -o build/p/$f.o & pids+=($!); done
  cc -DMQ_SCAN_PROBE_TANH=1 -c plugins/kernels/selectiveScanKernel.cu -o build/p/tanh/selectiveScanKernel.o & pids+=($!)
  cc -DMQ_SCAN_PROBE_P3_NOSP=1 -c plugins/kernels/selectiveScanKernel.cu -o build/p/nosp/selectiveScanKernel.o & pids+=($!)
  cc -DMQ_SCAN_PROBE_P3_NOSP=1 -DMQ_SCAN_PROBE_TANH=1 -c plugins/kernels/selectiveScanKernel.cu -o build/p/both/selectiveScanKernel.o & pids+=($!)
  for p in "${pids[@]}"; do wait "$p" || { echo "build failed"; exit 1; }; done
  nvcc -shared build/p/hadamardKernel.o build/p/mqKernelsCApi.o build/p/selectiveScanKernel.o build/p/stateUpdateKernel.o -o build/p/lib_default.so
  for v in tanh nosp both; do nvcc -shared build/p/hadamardKernel.o build/p/mqKernelsCApi.o build/p/$v/selectiveScanKernel.o build/p/stateUpdateKernel.o -o build/p/lib_$v.so; done
fi
export OUT_DIR="$OUT" PYTHONUNBUFFERED=1 MQ_KERNELS_LIB=build/p/lib_default.so
AB_SHAPES="${AB_SHAPES:-1x4096x1536 1x4096x5120 8x2048x1536 2x4096x1536}" AB_DTYPES="fp16 int8->fp32" ROUNDS=7 timeout 400 \
  python3 benchmarks/gpu/harness.py abscan default=build/p/lib_default.so tanh=build/p/lib_tanh.so nosp=build/p/lib_nosp.so both=build/p/lib_both.so > "$OUT"/abscan.log 2>&1
echo "abscan rc=$?"
grep abscan "$OUT"/abscan.log | sed 's/(.*//'
tail -3 "$OUT"/abscan.log
