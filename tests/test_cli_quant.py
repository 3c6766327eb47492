"""Quantized compile, lint and compare through the CLI, as a user runs them (bundled model)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mq_deploy.backends.ort import OrtRunner

from .conftest import DATA_DIR, need


def run_cli(*args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "mq_deploy", *map(str, args)], capture_output=True, text=True,
                          timeout=900, env=e)


@pytest.fixture(scope="module")
def w8(tmp_path_factory):
    calib = need(DATA_DIR / "text" / "wikitext2_val_sample.jsonl")
    out = tmp_path_factory.mktemp("q") / "w8"
    r = run_cli("compile", "--recipe", "mambaquant-w8a8", "--calib", calib, "--calib-samples", "8", "-o", out)
    assert r.returncode == 0, r.stderr
    return out


def test_quantized_outdir(w8):
    names = {p.name for p in w8.iterdir()}
    assert {"model.onnx", "model.portable.onnx", "manifest.json", "calib.npz", "calib.json", "report.html"} <= names
    man = json.loads((w8 / "manifest.json").read_text())
    assert man["recipe"]["name"] == "mambaquant-w8a8"
    assert man["calibration"]["samples"] == 8 and man["calibration"]["seq_len"] == 512
    q = man["quantization"]
    assert q["weight_bits"] == 8 and len(q["weights"]) == 4 * 8
    assert all(v > 0 for v in q["act_scales"].values())
    assert man["self_check"]["median_rel_error_portable_vs_simulation"] < 1e-5
    assert man["self_check"]["max_rel_error_portable_vs_simulation"] < 1e-5
    calib = json.loads((w8 / "calib.json").read_text())
    assert "layers.0.out_proj.input" in calib["points"]
    # each stateful pair was checked against the full graph with its own kernels (the portable prefill against the
    # portable full graph: the plugin graph's FWHT and scan round differently), the prefill to fp32 rounding
    st = man["stateful"]["self_check"]
    assert st["tensorrt"]["reference_plugin_nodes"] > 0 and st["portable"]["reference_plugin_nodes"] == 0
    for flavour in ("tensorrt", "portable"):
        assert st[flavour]["prefill_max_rel_error_vs_full_graph"][flavour] <= 1e-4


def test_lint_clean_and_both_flavours_run(w8):
    for f in ("model.onnx", "model.portable.onnx"):
        r = run_cli("lint", w8 / f, "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["violations"] == []
    ids = np.random.default_rng(0).integers(0, 8192, size=(2, 17))
    a = OrtRunner(w8 / "model.onnx")(ids)
    b = OrtRunner(w8 / "model.portable.onnx")(ids)
    assert np.abs(a - b).max() / np.abs(a).max() < 2e-2


def test_calibration_is_deterministic(w8, tmp_path):
    calib = DATA_DIR / "text" / "wikitext2_val_sample.jsonl"
    out = tmp_path / "again"
    r = run_cli("compile", "--recipe", "mambaquant-w8a8", "--calib", calib, "--calib-samples", "8", "-o", out)
    assert r.returncode == 0, r.stderr
    a = json.loads((w8 / "manifest.json").read_text())["quantization"]["act_scales"]
    b = json.loads((out / "manifest.json").read_text())["quantization"]["act_scales"]
    assert a == b


def test_quantized_recipe_without_calibration_data_is_a_clear_error(tmp_path):
    env = {"MQ_DEPLOY_DATA_DIR": str(tmp_path / "nothing")}
    r = run_cli("compile", "--recipe", "rtn-w8a8", "-o", tmp_path / "out", env=env)
    assert r.returncode == 2 and "--calib" in r.stderr and not (tmp_path / "out").exists()
    r = run_cli("compile", "--recipe", "rtn-w8a8", "--calib", tmp_path / "missing.txt", "-o", tmp_path / "out")
    assert r.returncode == 2 and "calibration file not found" in r.stderr
    calib = need(DATA_DIR / "text" / "wikitext2_val_sample.jsonl")
    for flag in ("--calib-samples", "--calib-seq-len"):  # 0 is refused, not taken as "the recipe's default"
        r = run_cli("compile", "--recipe", "rtn-w8a8", "--calib", calib, flag, "0", "-o", tmp_path / "out")
        assert r.returncode == 2 and "--calib-samples must be >= 1" in r.stderr and not (tmp_path / "out").exists()


def test_compare_table(tmp_path):
    calib = need(DATA_DIR / "text" / "wikitext2_val_sample.jsonl")
    heldout = need(DATA_DIR / "text" / "ref_corpus_heldout.txt")
    r = run_cli("compare", "--recipes", "rtn-w8a8,mambaquant-w8a8", "--tasks", "text", "--data", f"text={heldout}",
                "--calib", calib, "--calib-samples", "4", "--limit", "2", "-o", tmp_path, "-q")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("| recipe | text perplexity") and len(lines) == 5  # header, rule, fp32 + 2 recipes
    rows = json.loads((tmp_path / "compare.json").read_text())["rows"]
    assert [x["recipe"] for x in rows] == ["fp32", "rtn-w8a8", "mambaquant-w8a8"]
    assert rows[0]["text"]["kl"] == 0.0 and rows[1]["text"]["kl"] > 0
    assert (tmp_path / "compare.md").read_text().startswith("| recipe |")
