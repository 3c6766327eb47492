#!/usr/bin/env bash
# Compile-check the plugins without a GPU:
#   (a) every kernels/*.cu with nvcc -c for each arch in CUDA_ARCHS (default "80 86 87 89 90"), and the scan once more
#       with its experimental schedules compiled in (-DMQ_SCAN_SEGMENTED=1 -DMQ_SCAN_WIDE=1, last arch only), the
#       Hadamard once more with the full-width L phase for m = 20 / 28 (-DMQ_HAD_HALF_L=0, last arch only), and
#       benchmarks/gpu/copy_floor.cu (last arch only);
#   (b) if TRT_INCLUDE names a TensorRT include dir, the plugin *.cpp files against it (-fsyntax-only), then
#       tests/plugin_host_check.cpp linked with them: the plugins' build-phase interfaces on the CPU (no GPU, no
#       TensorRT library: output types, format combinations, shape checks, workspace size, fields); then both plugin
#       libraries linked against a stand-in libnvinfer (tests/fake_nvinfer.cpp) and loaded by
#       tests/plugin_register_check.cpp: libmq_trt_plugins_register.so registers its creators when dlopened (and
#       through polygraphy's LoadPlugins where polygraphy is installed); the same check on the two libraries that
#       plugins/CMakeLists.txt builds against the headers and the stand-in (unless CMAKE_CHECK=0; last arch only);
#   (c) unless HOST_SIM=0, builds and runs tests/hadamard_host_sim.cu (as built, with -DMQ_HAD_HALF_L=0 and with
#       -DMQ_HAD_HALF_SWIZZLE=0 -DMQ_HAD_NARROW_LAST=0): the Hadamard register path's phase functions run thread by
#       thread on the CPU against a float64 reference (index/layout logic, base products, the groups' row order,
#       shared-memory banks; no GPU), and tests/scan_plan_host.cu: the scan's automatic plan on the benchmark shapes
#       (host code only).
# Env: NVCC (default: nvcc on PATH), CUDA_ARCHS, TRT_INCLUDE, CXX (default g++), JOBS (default nproc), HOST_SIM,
#      PYTHON (default python3: with polygraphy installed, (b) also loads the register library with its LoadPlugins),
#      CMAKE_CHECK.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NVCC="${NVCC:-nvcc}"
CUDA_ARCHS="${CUDA_ARCHS:-80 86 87 89 90}"
JOBS="${JOBS:-$(nproc)}"
command -v "$NVCC" >/dev/null || { echo "check_build: nvcc not found (set NVCC)" >&2; exit 2; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
gencode=()
for a in $CUDA_ARCHS; do gencode+=("-gencode=arch=compute_${a},code=sm_${a}"); done

pids=()
for cu in "$here"/kernels/*.cu; do
  name="$(basename "$cu" .cu)"
  echo "nvcc [$CUDA_ARCHS] kernels/$name.cu"
  "$NVCC" -std=c++17 -O3 --threads 0 -Werror all-warnings -Xcompiler -fPIC "${gencode[@]}" -I"$here/kernels" -c "$cu" -o "$out/$name.o" \
    >"$out/$name.log" 2>&1 &
  pids+=("$!:$name:kernels/$name.cu")
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 0.2; done
done
sim_arch="${CUDA_ARCHS##* }"
echo "nvcc [$sim_arch] kernels/selectiveScanKernel.cu -DMQ_SCAN_SEGMENTED=1 -DMQ_SCAN_WIDE=1"
"$NVCC" -std=c++17 -O3 --threads 0 -Werror all-warnings -DMQ_SCAN_SEGMENTED=1 -DMQ_SCAN_WIDE=1 "-gencode=arch=compute_${sim_arch},code=sm_${sim_arch}" \
  -I"$here/kernels" -c "$here/kernels/selectiveScanKernel.cu" -o "$out/selectiveScanSeg.o" >"$out/selectiveScanSeg.log" 2>&1 &
pids+=("$!:selectiveScanSeg:kernels/selectiveScanKernel.cu with -DMQ_SCAN_SEGMENTED=1 -DMQ_SCAN_WIDE=1")
echo "nvcc [$sim_arch] kernels/hadamardKernel.cu -DMQ_HAD_HALF_L=0"
"$NVCC" -std=c++17 -O3 --threads 0 -Werror all-warnings -DMQ_HAD_HALF_L=0 "-gencode=arch=compute_${sim_arch},code=sm_${sim_arch}" \
  -I"$here/kernels" -c "$here/kernels/hadamardKernel.cu" -o "$out/hadamardFull.o" >"$out/hadamardFull.log" 2>&1 &
pids+=("$!:hadamardFull:kernels/hadamardKernel.cu with -DMQ_HAD_HALF_L=0")
echo "nvcc [$sim_arch] benchmarks/gpu/copy_floor.cu"  # the GPU benchmark's copy-floor probe (run_all.sh builds it)
"$NVCC" -std=c++17 -O3 --threads 0 -Werror all-warnings "-gencode=arch=compute_${sim_arch},code=sm_${sim_arch}" \
  -c "$here/../benchmarks/gpu/copy_floor.cu" -o "$out/copy_floor.o" >"$out/copy_floor.log" 2>&1 &
pids+=("$!:copy_floor:benchmarks/gpu/copy_floor.cu")
fail=0
for entry in "${pids[@]}"; do
  pid="${entry%%:*}"; rest="${entry#*:}"; name="${rest%%:*}"
  if ! wait "$pid"; then echo "FAILED: ${rest#*:}" >&2; cat "$out/$name.log" >&2; fail=1; fi
done
[ "$fail" = 0 ] || exit 1

if [ -n "${TRT_INCLUDE:-}" ]; then
  cuda_inc=""
  for c in "${CUDA_HOME:-}/include" "$(dirname "$(readlink -f "$(command -v "$NVCC")")")/../include" \
           "$(dirname "$(dirname "$(command -v "$NVCC")")")/include" /usr/local/cuda/include; do
    if [ -f "$c/cuda_runtime_api.h" ]; then cuda_inc="$c"; break; fi
  done
  [ -n "$cuda_inc" ] || { echo "check_build: cuda_runtime_api.h not found (set CUDA_HOME)" >&2; exit 2; }
  for cpp in "$here"/*.cpp "$here/tests/plugin_runtime.cpp"; do  # the last: TensorRT's calls, run on a GPU by run_all.sh
    echo "${CXX:-g++} -fsyntax-only $(basename "$cpp") against $TRT_INCLUDE"
    "${CXX:-g++}" -std=c++17 -fsyntax-only -Wall -Wextra -Werror -Wno-deprecated-declarations \
      -isystem "$TRT_INCLUDE" -isystem "$cuda_inc" -I"$here" -I"$here/kernels" "$cpp"
  done
  echo "nvcc plugin host check tests/plugin_host_check.cpp against $TRT_INCLUDE"
  "$NVCC" -std=c++17 -Xcompiler -Wno-deprecated-declarations -isystem "$TRT_INCLUDE" -I"$here" -I"$here/kernels" \
    "$here/tests/plugin_host_check.cpp" "$here"/*.cpp "$out"/{selectiveScanKernel,stateUpdateKernel,hadamardKernel,mqKernelsCApi}.o \
    -o "$out/plugin_host_check"
  "$out/plugin_host_check" > "$out/plugin.log" 2>&1 || { cat "$out/plugin.log" >&2; echo "FAILED: plugin host check" >&2; exit 1; }
  tail -n 1 "$out/plugin.log"
  # the two plugin libraries (pluginLib.cpp) linked against a stand-in libnvinfer: libmq_trt_plugins.so registers
  # nothing when dlopened, libmq_trt_plugins_register.so registers its creators (polygraphy --plugins)
  echo "plugin libraries: registration on load (tests/plugin_register_check.cpp, stand-in tests/fake_nvinfer.cpp)"
  mkdir -p "$out/fake"
  "${CXX:-g++}" -std=c++17 -shared -fPIC -Wall -Wextra -Werror -Wno-deprecated-declarations -isystem "$TRT_INCLUDE" \
    -isystem "$cuda_inc" "$here/tests/fake_nvinfer.cpp" -ldl -o "$out/fake/libnvinfer.so"
  kobjs=("$out"/{selectiveScanKernel,stateUpdateKernel,hadamardKernel,mqKernelsCApi}.o)
  for lib in libmq_trt_plugins libmq_trt_plugins_register; do
    extra=()
    # shellcheck disable=SC2054  # "-z,nodelete" is one linker argument (-Xlinker passes it on whole)
    [ "$lib" = libmq_trt_plugins ] || extra=(-DMQ_PLUGINS_REGISTER_ON_LOAD=1 -Xlinker -z,nodelete)
    "$NVCC" -std=c++17 -shared -Xcompiler -fPIC,-fvisibility=hidden,-Wall,-Wextra,-Werror,-Wno-deprecated-declarations "${extra[@]}" \
      -isystem "$TRT_INCLUDE" -I"$here" -I"$here/kernels" "$here"/*.cpp "${kobjs[@]}" -L"$out/fake" -lnvinfer \
      -Xlinker -rpath,"$out/fake" -o "$out/$lib.so"
  done
  "${CXX:-g++}" -std=c++17 -Wall -Wextra -Werror -Wno-deprecated-declarations -isystem "$TRT_INCLUDE" -isystem "$cuda_inc" \
    "$here/tests/plugin_register_check.cpp" -L"$out/fake" -lnvinfer -ldl -Wl,-rpath,"$out/fake" -o "$out/plugin_register_check"
  for mode in dlopen both; do
    "$out/plugin_register_check" "$mode" "$out/libmq_trt_plugins_register.so" "$out/libmq_trt_plugins.so" > "$out/register.log" 2>&1 \
      || { cat "$out/register.log" >&2; echo "FAILED: plugin registration check ($mode)" >&2; exit 1; }
    tail -n 1 "$out/register.log"
  done
  # the same with the libraries plugins/CMakeLists.txt builds (TENSORRT_ROOT: the headers and the stand-in)
  if [ "${CMAKE_CHECK:-1}" != 0 ] && command -v cmake >/dev/null; then
    echo "cmake [$sim_arch] both plugin libraries against the stand-in libnvinfer"
    mkdir -p "$out/trtroot/lib"; ln -s "$TRT_INCLUDE" "$out/trtroot/include"; ln -s "$out/fake/libnvinfer.so" "$out/trtroot/lib/"
    { cmake -S "$here" -B "$out/cmake" -DTENSORRT_ROOT="$out/trtroot" -DCMAKE_CUDA_ARCHITECTURES="$sim_arch" \
        -DCMAKE_CUDA_COMPILER="$(command -v "$NVCC")" && cmake --build "$out/cmake" -j"$JOBS"; } > "$out/cmake.log" 2>&1 \
      || { cat "$out/cmake.log" >&2; echo "FAILED: cmake build of the plugin libraries" >&2; exit 1; }
    readelf -d "$out/cmake/libmq_trt_plugins_register.so" | grep -q NODELETE \
      || { echo "FAILED: cmake's libmq_trt_plugins_register.so is not linked -z nodelete" >&2; exit 1; }
    for mode in dlopen both; do
      "$out/plugin_register_check" "$mode" "$out/cmake/libmq_trt_plugins_register.so" "$out/cmake/libmq_trt_plugins.so" \
        > "$out/register.log" 2>&1 || { cat "$out/register.log" >&2; echo "FAILED: registration check of cmake's libraries ($mode)" >&2; exit 1; }
      echo "cmake's libraries: $(tail -n 1 "$out/register.log")"
    done
  fi
  # polygraphy's own loader (`--plugins` → LoadPlugins → ctypes.CDLL), where polygraphy is installed
  if "${PYTHON:-python3}" -c "import polygraphy.backend.trt" 2>/dev/null; then
    "${PYTHON:-python3}" - "$out/libmq_trt_plugins_register.so" "$out/fake/libnvinfer.so" <<'PY' || { echo "FAILED: polygraphy LoadPlugins" >&2; exit 1; }
import ctypes, sys
from polygraphy.backend.trt import LoadPlugins
LoadPlugins(plugins=[sys.argv[1]])()
nvinfer = ctypes.CDLL(sys.argv[2])  # the stand-in libnvinfer the library loaded (its rpath)
have = {n: nvinfer.fakeNvinferHas(n.encode(), b"1", b"mq_deploy") for n in ("SelectiveScan", "SelectiveStateUpdate", "Hadamard")}
assert all(have.values()), have
print("polygraphy LoadPlugins: SelectiveScan, SelectiveStateUpdate, Hadamard registered in namespace mq_deploy")
PY
  else
    echo "polygraphy LoadPlugins: skipped (polygraphy not installed)"
  fi
fi
if [ "${HOST_SIM:-1}" != 0 ]; then
  # as built, full-width m = 20 / 28, and the layout before the swizzle and the narrow last pass
  for defs in "" "-DMQ_HAD_HALF_L=0" "-DMQ_HAD_HALF_SWIZZLE=0 -DMQ_HAD_NARROW_LAST=0"; do
    echo "nvcc host simulation tests/hadamard_host_sim.cu${defs:+ $defs}"
    "$NVCC" -std=c++17 -O2 $defs -gencode "arch=compute_${sim_arch},code=sm_${sim_arch}" -I"$here/kernels" \
      "$here/tests/hadamard_host_sim.cu" "$here/kernels/hadamardKernel.cu" -o "$out/hadamard_host_sim"
    "$out/hadamard_host_sim" > "$out/sim.log" || { cat "$out/sim.log" >&2; echo "FAILED: hadamard host simulation${defs:+ ($defs)}" >&2; exit 1; }
    tail -n 1 "$out/sim.log"
  done
  echo "nvcc scan plan check tests/scan_plan_host.cu"
  "$NVCC" -std=c++17 -O2 -I"$here/kernels" "$here/tests/scan_plan_host.cu" "$out/selectiveScanKernel.o" \
    -o "$out/scan_plan_host"
  "$out/scan_plan_host" > "$out/plan.log" || { cat "$out/plan.log" >&2; echo "FAILED: scan plan check" >&2; exit 1; }
  tail -n 1 "$out/plan.log"
fi
echo "check_build: OK"
