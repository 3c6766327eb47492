"""Compile-check the CUDA kernels (one arch, no GPU needed); skipped where nvcc is absent."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_kernels_compile():
    env = dict(os.environ, CUDA_ARCHS=os.environ.get("MQ_TEST_CUDA_ARCH", "90"))
    env.pop("TRT_INCLUDE", None)
    r = subprocess.run(["bash", os.path.join(ROOT, "plugins", "check_build.sh")], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
