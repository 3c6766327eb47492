#!/usr/bin/env bash
# The scan's automatic plan on SM partitions of a big GPU (benchmarks/gpu/edge_sms.cu says what it emulates and what
# not). Run from the repository root on a CUDA machine (partitions need CUDA 12.4+; 8-SM ones Hopper or newer):
#   OUT=/some/dir bash benchmarks/gpu/edge_sms.sh [SMS...]      # default SMS: 8 16 (Jetson Orin NX / Nano, AGX Orin)
# SMS are timed with selectiveScanKernel.cu built without the programmatic dependent launch (-DMQ_SCAN_PDL=0: only
# Hopper and newer have it, and their GPUs are whole), the SM counts of EDGE_PDL_SMS (default "0" = the whole GPU)
# with the default build. Builds into build/edge/, writes under $OUT: edge_sms.json (every timing), edge_sms.log (a
# line a shape) and edge_sms.md (benchmarks/gpu/edge_summary.py: the plan's choice against the best one).
# Env: ARCH (default 90), EDGE_PDL_SMS, EDGE_SHAPES, EDGE_ITERS, EDGE_TYPES (edge_sms.cu).
set -euo pipefail
OUT="${OUT:?set OUT to a directory for the results}"
ARCH="${ARCH:-90}"
sms=("$@")
[ ${#sms[@]} -gt 0 ] || sms=(8 16)
mkdir -p build/edge "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/edge_sms.log"
flags=(-std=c++17 -O3 -gencode "arch=compute_${ARCH},code=sm_${ARCH}" -Iplugins/kernels)
pids=()
for pdl in 0 1; do
  (nvcc "${flags[@]}" --split-compile 8 -DMQ_SCAN_PDL=$pdl -c plugins/kernels/selectiveScanKernel.cu -o build/edge/scan_pdl$pdl.o \
    && nvcc "${flags[@]}" -DMQ_SCAN_PDL=$pdl benchmarks/gpu/edge_sms.cu build/edge/scan_pdl$pdl.o -lcuda -o build/edge/edge_sms_pdl$pdl) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
build/edge/edge_sms_pdl0 "${sms[@]}" > build/edge/nopdl.json 2> >(tee -a "$OUT/edge_sms.log" >&2)
build/edge/edge_sms_pdl1 ${EDGE_PDL_SMS:-0} > build/edge/pdl.json 2> >(tee -a "$OUT/edge_sms.log" >&2)
python3 benchmarks/gpu/edge_summary.py build/edge/nopdl.json build/edge/pdl.json --json "$OUT/edge_sms.json" | tee "$OUT/edge_sms.md"
