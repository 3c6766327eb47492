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
def test_cmake_looks_for_tensorrt_in_tensorrt_root_only(tmp_path):
    """-DTENSORRT_ROOT naming a directory without TensorRT is a configure error, even when another TensorRT is on the
    search paths (it was a kernels-only build, or one against that other version); with TENSORRT_ROOT the headers and
    libnvinfer come from there; without it the kernels-only build (or the system's TensorRT) is still fine."""
    other = tmp_path / "other-tensorrt"  # what configure sees of a TensorRT: the header it looks for and libnvinfer
    for f in ("include/NvInferRuntime.h", "lib/libnvinfer.so"):
        (other / f).parent.mkdir(parents=True, exist_ok=True)
        (other / f).write_text("")
    plugins = os.path.join(ROOT, "plugins")
    cuda = ["-DCMAKE_CUDA_ARCHITECTURES=90", f"-DCMAKE_CUDA_COMPILER={shutil.which('nvcc')}"]

    def configure(name, *flags):
        return subprocess.run(["cmake", "-S", plugins, "-B", str(tmp_path / name), *cuda, *flags], capture_output=True,
                              text=True, timeout=300)

    r = configure("bad", f"-DTENSORRT_ROOT={tmp_path / 'no-tensorrt'}", f"-DCMAKE_PREFIX_PATH={other}")
    assert r.returncode != 0 and "no TensorRT there" in r.stderr, r.stdout + r.stderr
    r = configure("root", f"-DTENSORRT_ROOT={other}")
    assert r.returncode == 0 and f"TensorRT: {other}/include, {other}/lib/libnvinfer.so" in r.stdout, r.stdout + r.stderr
    r = configure("again", f"-DCMAKE_PREFIX_PATH={other}")  # found on the search paths, then a root without it
    assert r.returncode == 0 and f"TensorRT: {other}/include" in r.stdout, r.stdout + r.stderr
    r = configure("again", f"-DTENSORRT_ROOT={tmp_path / 'no-tensorrt'}")  # the cached result is not kept
    assert r.returncode != 0 and "no TensorRT there" in r.stderr, r.stdout + r.stderr
    r = configure("kernels")
    assert r.returncode == 0, r.stdout + r.stderr  # (a machine with TensorRT in its system paths builds the plugins)
    assert "building the kernels library only" in r.stdout or "building mq_trt_plugins" in r.stdout, r.stdout


@pytest.mark.skipif(shutil.which("nvcc") is None or shutil.which("cmake") is None, reason="nvcc or cmake not installed")
def test_cmake_refuses_tensorrt_before_10(tmp_path):
    """TensorRT 8.6 (JetPack 6.0's) is a configure error naming the version and JetPack 6.1 / 6.2: the plugins are
    IPluginV3. NvInferVersion.h as TensorRT 8 / 10 write it (a number) and as 11 does (through TRT_MAJOR_ENTERPRISE)."""
    headers = {"8": "#define NV_TENSORRT_MAJOR 8 //!< TensorRT major version.\n",
               "10": "#define NV_TENSORRT_MAJOR 10 //!< TensorRT major version.\n",
               "11": "#define TRT_MAJOR_ENTERPRISE 11\n#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE //!< major\n"}
    for major, text in headers.items():
        root = tmp_path / f"trt{major}"
        for f in ("include/NvInferRuntime.h", "lib/libnvinfer.so"):
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            (root / f).write_text("")
        (root / "include" / "NvInferVersion.h").write_text(text)
        r = subprocess.run(["cmake", "-S", os.path.join(ROOT, "plugins"), "-B", str(tmp_path / f"b{major}"),
                            "-DCMAKE_CUDA_ARCHITECTURES=90", f"-DCMAKE_CUDA_COMPILER={shutil.which('nvcc')}",
                            f"-DTENSORRT_ROOT={root}"], capture_output=True, text=True, timeout=300)
        if major == "8":
            err = " ".join(r.stderr.split())
            assert r.returncode != 0 and "TensorRT 8 at" in err and "need TensorRT 10 or later" in err, r.stderr
            assert "JetPack 6.1 or 6.2" in err
            # found on the search paths, not asked for with TENSORRT_ROOT: a warning, and the kernels library only
            r = subprocess.run(["cmake", "-S", os.path.join(ROOT, "plugins"), "-B", str(tmp_path / "b8sys"),
                                "-DCMAKE_CUDA_ARCHITECTURES=90", f"-DCMAKE_CUDA_COMPILER={shutil.which('nvcc')}",
                                f"-DCMAKE_PREFIX_PATH={root}"], capture_output=True, text=True, timeout=300)
            err = " ".join(r.stderr.split())
            assert r.returncode == 0 and "need TensorRT 10 or later" in err, r.stdout + r.stderr
            assert "building the kernels library only" in err and "building mq_trt_plugins" not in r.stdout
        else:
            assert r.returncode == 0 and "building mq_trt_plugins" in r.stdout, r.stdout + r.stderr
