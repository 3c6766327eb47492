"""Build mamba-ssm's fp16 forward selective scan (measurement only) from .carry/mamba/csrc/selective_scan.

The sources come from mamba-ssm's public release and are never committed; mamba_fwd_stub.cu stubs the
backward and the other forward types so selective_scan.cpp links with only selective_scan_fwd_fp16.cu.
"""
import os
import sys

from torch.utils.cpp_extension import load

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
src = os.path.join(root, ".carry", "mamba", "csrc", "selective_scan")
build = os.path.join(root, "build", "mamba")
os.makedirs(build, exist_ok=True)
if not os.path.isdir(src):
    sys.exit(f"mamba-ssm sources not found at {src}")
load(name="selective_scan_cuda",
     sources=[os.path.join(src, "selective_scan.cpp"), os.path.join(src, "selective_scan_fwd_fp16.cu"),
              os.path.join(os.path.dirname(os.path.abspath(__file__)), "mamba_fwd_stub.cu")],
     extra_include_paths=[src], build_directory=build, verbose=False,
     extra_cflags=["-O3", "-std=c++17"],
     extra_cuda_cflags=["-O3", "-std=c++17", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                        "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
                        "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
                        "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math"])
print("built selective_scan_cuda into", build)
