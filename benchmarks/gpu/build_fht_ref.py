"""Build Dao-AILab's fast-hadamard-transform (measurement only) from .carry/fht/csrc.

The sources are the public repository's csrc/ (exported with `git archive HEAD csrc LICENSE`) and are never
committed. Built with torch.utils.cpp_extension.load for the GPU this runs on (TORCH_CUDA_ARCH_LIST).
"""
import os
import sys

from torch.utils.cpp_extension import load

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
src = os.path.join(root, ".carry", "fht", "csrc")
build = os.path.join(root, "build", "fht")
os.makedirs(build, exist_ok=True)
if not os.path.isdir(src):
    sys.exit(f"fast-hadamard-transform sources not found at {src}")
load(name="fast_hadamard_transform_cuda",
     sources=[os.path.join(src, "fast_hadamard_transform.cpp"), os.path.join(src, "fast_hadamard_transform_cuda.cu")],
     extra_include_paths=[src], build_directory=build, verbose=False,
     extra_cflags=["-O3", "-std=c++17"],
     extra_cuda_cflags=["-O3", "-std=c++17", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                        "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
                        "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
                        "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math", "--split-compile=0"])
print("built fast_hadamard_transform_cuda into", build)
