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


@pytest.mark.skipif(shutil.which("nvcc") is None or shutil.which("cmake") is None, reason="nvcc or cmake not installed")
def test_cmake_refuses_a_tensorrt_root_without_tensorrt(tmp_path):
    """-DTENSORRT_ROOT naming a directory without TensorRT is a configure error (it was a kernels-only build, and the
    plugin library the next step names did not exist); without TENSORRT_ROOT the kernels-only build is still fine."""
    cuda = ["-DCMAKE_CUDA_ARCHITECTURES=90", f"-DCMAKE_CUDA_COMPILER={shutil.which('nvcc')}"]
    r = subprocess.run(["cmake", "-S", os.path.join(ROOT, "plugins"), "-B", str(tmp_path / "bad"),
                        f"-DTENSORRT_ROOT={tmp_path / 'no-tensorrt'}", *cuda], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0 and "no TensorRT there" in r.stderr, r.stdout + r.stderr
    r = subprocess.run(["cmake", "-S", os.path.join(ROOT, "plugins"), "-B", str(tmp_path / "kernels"), *cuda],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr  # (a machine with TensorRT in its system paths builds the plugins)
    assert "building the kernels library only" in r.stdout or "building mq_trt_plugins" in r.stdout, r.stdout
