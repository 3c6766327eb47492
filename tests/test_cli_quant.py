"""Quantized compile, lint and compare through the CLI, as a user runs them (bundled model)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from mq_deploy.loaders import BUNDLED_DIR

from .conftest import DATA_DIR, need
from .helpers import StopAt, as_compiled

VIM_DIR = Path(__file__).resolve().parents[1] / "src" / "mq_deploy" / "assets" / "vim-fmnist"


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
    # the plugin graph (int8 straight into the scan kernel) is held to the simulation as tightly
    assert man["self_check"]["max_rel_error_plugin_vs_simulation"] < 1e-5
    assert set(q["points"]) == set(q["act_scales"]) and q["points"]["layers.0.scan.u"] == q["points"]["layers.0.x_proj.input"]
    calib = json.loads((w8 / "calib.json").read_text())
    assert "layers.0.out_proj.input" in calib["points"]
    # each stateful pair was checked against the full graph with its own kernels (the portable prefill against the
    # portable full graph: the plugin graph's FWHT and scan round differently), the prefill to fp32 rounding
    st = man["stateful"]["self_check"]
    assert st["tensorrt"]["reference_plugin_nodes"] > 0 and st["portable"]["reference_plugin_nodes"] == 0
    for flavour in ("tensorrt", "portable"):
        assert st[flavour]["prefill_max_rel_error_vs_full_graph"][flavour] <= 1e-4


def test_lint_clean_and_both_flavours_run(w8, tmp_path):
    for f in ("model.onnx", "model.portable.onnx"):
        r = run_cli("lint", w8 / f, "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["violations"] == []
    # an OUTDIR: every graph TensorRT builds from it, each named; a wrong scale in the decode graph is found there
    r = run_cli("lint", w8, "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["violations"] == [] and [Path(f["file"]).name for f in out["files"]] == [
        "model.onnx", "model.prefill.onnx", "model.decode.onnx"]
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ("model.onnx", "model.prefill.onnx", "weights.bin"):
        (bad / f).write_bytes((w8 / f).read_bytes())
    m = onnx.load(str(w8 / "model.decode.onnx"), load_external_data=False)
    had = next(n for n in m.graph.node if n.op_type == "Hadamard")
    next(a for a in had.attribute if a.name == "out_scale").f *= 1.5  # its DequantizeLinear reads another scale
    onnx.save(m, str(bad / "model.decode.onnx"))
    r = run_cli("lint", bad)
    assert r.returncode == 1 and r.stdout.startswith("model.decode.onnx: layers.0/") and (
        "hadamard-out: DequantizeLinear scale differs from its Hadamard's out_scale" in r.stdout), r.stdout
    assert f"{bad / 'model.onnx'}: 0 violation(s)" in r.stderr and f"{bad / 'model.decode.onnx'}: 1 violation(s)" in (
        r.stderr)
    # Both flavours on the same random ids, each against the simulation taking that graph's side on values within
    # 1/1000 of a step of a rounding boundary (where two summation orders may round apart, and the scan state
    # then carries the int8 step on, so the flavours' direct distance depends on the CPU's kernels: 0 or 3e-2)
    r = run_cli("validate", w8, "--simulate", "--seq", "17", "--json", "-q")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "calibrating" not in r.stderr  # -q: no progress bars (without it, the re-derivation's calibration shows them)
    rep = json.loads(r.stdout)
    pairs = {(p["reference"], p["test"]): p for p in rep["pairs"]}
    for flavour in ("portable", "plugin"):
        p = pairs[("simulation~", flavour)]
        assert p["max_rel"] < 1e-5 and p["limit"] == 1e-4 and p["ok"] and p["top1"] == 1.0, p
        assert 0 <= p["roundings_taken_from_graph"] <= 10, p  # a handful of boundary cases, not a systematic shift
    assert pairs[("portable", "plugin")]["limit"] is None and pairs[("portable", "plugin")]["top1"] >= 0.95
    assert pairs[("portable", "plugin~")]["max_rel"] < 1e-5 and pairs[("portable", "plugin~")]["ok"]
    # --model with --simulate names the checkpoint of the simulation (a device with a copy of it), no torch rows
    # unless --torch is given too; alone, --model implies --torch
    for extra, torch_rows in (([], False), (["--torch"], True)):
        quiet = ["-q"] if torch_rows else []  # (without -q: the re-derivation's calibration shows its progress)
        r = run_cli("validate", w8, "--simulate", "--model", BUNDLED_DIR, *extra, "--seq", "9", "--json", *quiet)
        assert r.returncode == 0, r.stdout + r.stderr
        assert ("re-deriving the transformed model" in r.stderr and "calibrating: 100%" in r.stderr) != bool(quiet)
        names = {n for p in json.loads(r.stdout)["pairs"] for n in (p["reference"], p["test"])}
        assert "simulation~" in names and ("torch-fp32" in names) == torch_rows, names



def test_lint_checks_an_outdir_against_its_manifest(w8, tmp_path):
    """lint OUTDIR first checks the files against manifest.json: a graph it lists missing (was: the others linted,
    "0 violation(s)", exit 0), weights.bin cut short (was: a traceback) or replaced by a same-size file (was: bogus
    "scales must be finite" violations); a graph file's weights cut short is one line too."""
    import shutil

    def copy():
        d = tmp_path / "c"
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(w8, d)
        return d

    def lint(target):
        r = run_cli("lint", target)
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 2 and last.startswith("mq-deploy: error: ") and "Traceback" not in r.stderr, r.stderr
        return last

    d = copy()
    (d / "model.onnx").unlink()
    assert f"{d} has no model.onnx (the graph lint checks), which its manifest.json lists" in lint(d)
    d = copy()  # a copy for `build` alone (docs/deploy.md): no generation graphs, linted as it is, and said
    for g in ("model.prefill.onnx", "model.decode.onnx"):
        (d / g).unlink()
    r = run_cli("lint", d)
    assert r.returncode == 0 and "note: model.prefill.onnx, model.decode.onnx (in manifest.json) are not in " \
        f"{d}: not linted" in r.stderr and f"{d / 'model.onnx'}: 0 violation(s)" in r.stderr, r.stderr
    d = copy()
    data = (d / "weights.bin").read_bytes()
    (d / "weights.bin").write_bytes(data[: len(data) // 2])
    assert f"{d / 'weights.bin'} has {len(data) // 2} bytes, its manifest.json {len(data)}" in lint(d)
    assert "cannot read initializer" in lint(d / "model.onnx") and "weights.bin" not in lint(d / "model.onnx")[:40]
    (d / "weights.bin").write_bytes(bytes(len(data)))  # the right size, other bytes
    assert f"{d / 'weights.bin'} differs from the file `mq-deploy compile` wrote" in lint(d)

def test_validate_catches_a_one_percent_scale_error_in_the_plugin_graph(w8, tmp_path):
    # what the rounding-following rows are for: a 1 % wrong C scale in one scan plugin moves the logits by less
    # than a rounding cascade can (3.4e-2, below the 5e-2 the direct rows were once gated at) but far more
    # than fp32 rounding
    bad = tmp_path / "bad"
    shutil.copytree(w8, bad)
    m = onnx.load(str(bad / "model.onnx"), load_external_data=False)
    scan = [n for n in m.graph.node if n.op_type == "SelectiveScan"][1]
    (attr,) = [a for a in scan.attribute if a.name == "C_scale"]
    attr.f *= 1.01
    onnx.save(m, str(bad / "model.onnx"))
    # as a compile with that bug would list the graph; and as compiled before the manifest named the points:
    man = as_compiled(bad, json.loads((bad / "manifest.json").read_text()), "model.onnx")
    del man["quantization"]["points"]  # validate rebuilds the graph to find them
    (bad / "manifest.json").write_text(json.dumps(man))
    r = run_cli("validate", bad, "--simulate", "--seq", "17", "--json", "-q")
    assert r.returncode == 1, r.stdout + r.stderr
    pairs = {(p["reference"], p["test"]): p for p in json.loads(r.stdout)["pairs"]}
    assert not pairs[("simulation~", "plugin")]["ok"] and pairs[("simulation~", "plugin")]["max_rel"] > 1e-3
    assert not pairs[("portable", "plugin~")]["ok"] and pairs[("portable", "plugin~")]["max_rel"] > 1e-3
    assert pairs[("simulation~", "portable")]["ok"]


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
    # a recipe that reads no calibration text says --calib is ignored, and is not stopped by a file it does not read
    r = run_cli("compile", "--recipe", "rtn-w4a16", "--calib", tmp_path / "missing.txt", "-o", tmp_path / "w16", env=env)
    assert r.returncode == 0 and "warning: --calib is not read: recipe rtn-w4a16" in r.stderr, r.stderr
    assert "not found" not in r.stderr and (tmp_path / "w16" / "manifest.json").is_file()
    # the other family's kind of calibration data: named as such (a Vim's is a folder, a language model's a file)
    r = run_cli("compile", "--recipe", "rtn-w8a8", "--calib", tmp_path, "-o", tmp_path / "out")
    assert r.returncode == 2 and f"calibration file {tmp_path} is a folder" in r.stderr
    assert "Fashion-MNIST files calibrates a Vision Mamba" in r.stderr and not (tmp_path / "out").exists()
    calib = need(DATA_DIR / "text" / "wikitext2_val_sample.jsonl")
    r = run_cli("compile", VIM_DIR, "--recipe", "vim-rtn-w8a8", "--calib", calib, "-o", tmp_path / "out")
    assert r.returncode == 2 and f"{calib} is a file: a Vision Mamba's data is a folder" in r.stderr
    assert not (tmp_path / "out").exists()
    for flag in ("--calib-samples", "--calib-seq-len"):  # 0 is refused, not taken as "the recipe's default"
        r = run_cli("compile", "--recipe", "rtn-w8a8", "--calib", calib, flag, "0", "-o", tmp_path / "out")
        assert r.returncode == 2 and "--calib-samples must be >= 1" in r.stderr and not (tmp_path / "out").exists()
    for model in ([], [str(VIM_DIR)]):  # also where the recipe does not calibrate (not silently ignored)
        r = run_cli("compile", *model, "--recipe", "fp32", "--calib-samples", "0", "-o", tmp_path / "out")
        assert r.returncode == 2 and "--calib-samples must be >= 1" in r.stderr and not (tmp_path / "out").exists()


def test_compare_table(tmp_path):
    calib = need(DATA_DIR / "text" / "wikitext2_val_sample.jsonl")
    heldout = need(DATA_DIR / "text" / "ref_corpus_heldout.txt")
    r = run_cli("compare", "--recipes", "rtn-w8a8,mambaquant-w8a8", "--tasks", "text", "--data", f"text={heldout}",
                "--calib", calib, "--calib-samples", "4", "--limit", "2", "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("| recipe | text perplexity") and len(lines) == 7  # header, rule, fp32 + 2 recipes,
    assert lines[5] == "" and lines[6].startswith("scored: each recipe's TensorRT-flavour graph (model.onnx")  # note
    assert "sequence length 512" in lines[6] and "eval OUTDIR/model.onnx --seq-len 512" in lines[6]
    saved = json.loads((tmp_path / "compare.json").read_text())
    rows = saved["rows"]
    assert [x["recipe"] for x in rows] == ["fp32", "rtn-w8a8", "mambaquant-w8a8"]
    assert rows[0]["text"]["kl"] == 0.0 and rows[1]["text"]["kl"] > 0
    assert saved["meta"]["scored"] == lines[6]
    md = (tmp_path / "compare.md").read_text()
    assert md.startswith("| recipe |") and md.endswith(lines[6] + "\n")
    # the statistics run's log line says how many windows it used (stats_samples 32, but only 4 windows exist)
    assert "calibrating the fp32 graph on 4 windows (statistics shared by the passes of every recipe with " \
        "stats_samples 32: all the calibration windows there are)" in r.stderr


def test_compare_computes_fp32_statistics_only_for_passes_that_read_them(monkeypatch):
    """The fp32 statistics run (a calibration of the whole model) is made only for a recipe whose passes read it (a
    KLT rotation, smoothing): not for QuaRot's random Hadamards nor for a recipe without passes; once for several."""
    import mq_deploy.compare as cmp
    from mq_deploy.eval.tokenizer import TextTokenizer
    from mq_deploy.loaders import load_model

    heldout = need(DATA_DIR / "text" / "ref_corpus_heldout.txt")
    model, tok = load_model(None), TextTokenizer(BUNDLED_DIR / "tokenizer.json")
    ids = np.asarray(tok.encode(Path(heldout).read_text()[:20000]), dtype=np.int64)
    calib = ids[:4 * 64].reshape(4, 64)
    made, real = [], cmp.fp32_stats
    monkeypatch.setattr(cmp, "fp32_stats", lambda *a, **k: made.append(1) or real(*a, **k))
    kw = dict(data={"text": str(heldout)}, seq_len=64, limit=2, progress=False)
    rows = cmp.compare(model, ["quarot-w8a8", "rtn-w8a8"], ["text"], tok, calib, **kw)
    assert [r["recipe"] for r in rows] == ["fp32", "quarot-w8a8", "rtn-w8a8"] and made == []
    rows = cmp.compare(model, ["smoothquant-w8a8", "mambaquant-w8a8"], ["text"], tok, calib, **kw)
    assert len(rows) == 3 and made == [1]  # shared by both
    assert all(r["text"]["kl"] > 0 for r in rows[1:])


def test_compare_reads_calibration_text_only_where_a_recipe_calibrates(tmp_path):
    """A language-model compare of recipes that read no calibration text (fp32, weight-only RTN) runs without any
    (no MQ_DEPLOY_DATA_DIR, no --calib), warns about the calibration flags it was given, and records no calibration;
    with a recipe that calibrates it still asks for the text; 0 windows is refused either way."""
    heldout = need(DATA_DIR / "text" / "ref_corpus_heldout.txt")
    env = {"MQ_DEPLOY_DATA_DIR": str(tmp_path / "nothing")}
    base = ["compare", "--tasks", "text", "--data", f"text={heldout}", "--limit", "2", "--seq-len", "64"]
    r = run_cli(*base, "--recipes", "rtn-w4a16,quarot-w4a16", "--calib-seq-len", "32", "-o", tmp_path / "a", env=env)
    assert r.returncode == 0, r.stderr
    assert "warning: --calib-seq-len is not read: no recipe of --recipes calibrates" in r.stderr
    saved = json.loads((tmp_path / "a" / "compare.json").read_text())
    assert [x["recipe"] for x in saved["rows"]] == ["fp32", "rtn-w4a16", "quarot-w4a16"]
    assert saved["meta"]["calibration"] is None and saved["rows"][1]["text"]["kl"] > 0
    r = run_cli(*base, "--recipes", "rtn-w4a16,gptq-w4a16", "-o", tmp_path / "b", env=env)
    assert r.returncode == 2 and "needs calibration text" in r.stderr and "--calib" in r.stderr
    r = run_cli(*base, "--recipes", "rtn-w4a16", "--calib-samples", "0", "-o", tmp_path / "c", env=env)
    assert r.returncode == 2 and "--calib-samples must be >= 1" in r.stderr


def test_compare_saves_as_it_goes_and_resumes(tmp_path, monkeypatch, capsys):
    """compare.json / compare.md are saved after every recipe, marked partial until the last: a run stopped by Ctrl-C
    keeps its rows, and `--resume` runs only the recipes left, giving the table a run without a stop gives. Other
    settings, a changed recipe, a corrupt file and a recipe named twice are each said."""
    import mq_deploy.compare as cmp
    from mq_deploy.cli import main

    calib = need(DATA_DIR / "text" / "wikitext2_val_sample.jsonl")
    heldout = need(DATA_DIR / "text" / "ref_corpus_heldout.txt")
    args = ["compare", "--recipes", "rtn-w8a8,smoothquant-w8a8", "--tasks", "text", "--data", f"text={heldout}",
            "--calib", str(calib), "--calib-samples", "4", "--limit", "2"]
    stop, out = StopAt(monkeypatch, cmp, "prepare", "smoothquant-w8a8"), tmp_path / "run"
    prepared = stop.prepared
    assert main(args + ["-o", str(out)]) == 130
    err = capsys.readouterr().err
    assert err.rstrip().endswith("mq-deploy: interrupted")
    assert f"compare: 2 of 3 recipes are saved in {out / 'compare.json'}; add --resume to the same command" in err
    saved = json.loads((out / "compare.json").read_text())
    assert [r["recipe"] for r in saved["rows"]] == ["fp32", "rtn-w8a8"] and saved["meta"]["complete"] is False
    md = (out / "compare.md").read_text()
    assert "| rtn-w8a8 |" in md and "partial: 2 of 3 recipes (the run stopped, or is still going; add --resume" in md
    assert sorted(os.listdir(out)) == ["compare.json", "compare.md"]  # written whole: no temporary left
    prepared.clear()
    stop.recipe = None
    assert main(args + ["-o", str(out), "--resume", "--json"]) == 0
    cap = capsys.readouterr()
    assert prepared == ["smoothquant-w8a8"]  # fp32 and rtn-w8a8 from the file (fp32 prepares nothing anyway)
    assert "--resume: 2 of 3 recipes from" in cap.err and "recipe rtn-w8a8: the earlier run's row (--resume)" in cap.err
    rows = json.loads(cap.out)
    again = json.loads((out / "compare.json").read_text())
    assert again["rows"] == rows and again["meta"]["complete"] is True and rows[:2] == saved["rows"]
    assert "partial" not in (out / "compare.md").read_text()
    # the same table as a run that did not stop (the `seconds` aside)
    assert main(args + ["-o", str(tmp_path / "whole"), "--json", "-q"]) == 0
    whole = json.loads(capsys.readouterr().out)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in whole]
    # a finished run resumed: nothing is run again
    prepared.clear()
    assert main(args + ["-o", str(out), "--resume", "-q"]) == 0 and prepared == []
    capsys.readouterr()
    # other settings: refused, naming them; the file is left as it was
    assert main(args + ["-o", str(out), "--resume", "--seq-len", "256"]) == 2
    assert "was made with other settings (seq_len 512 there, 256 now)" in capsys.readouterr().err
    assert json.loads((out / "compare.json").read_text()) == again
    # rows of other code (a `git pull` keeps __version__): refused, naming the stamps
    older = json.loads((out / "compare.json").read_text())
    older["meta"]["settings"]["version"] = "0.1.0"
    (out / "compare.json").write_text(json.dumps(older))
    assert main(args + ["-o", str(out), "--resume"]) == 2
    assert f'version "0.1.0" there, "{cmp.code_stamp()}" now' in capsys.readouterr().err
    (out / "compare.json").write_text(json.dumps(again))
    # a recipe whose definition changed is run again (its fingerprint is the whole recipe)
    edited = json.loads((out / "compare.json").read_text())
    edited["meta"]["recipes"]["rtn-w8a8"] = "0" * 16
    (out / "compare.json").write_text(json.dumps(edited))
    assert main(args + ["-o", str(out), "--resume"]) == 0 and prepared == ["rtn-w8a8"]
    assert "; rtn-w8a8 changed since: run again" in capsys.readouterr().err
    # a resumed run of fewer recipes says which rows it leaves out; a run without --resume says what it replaces
    prepared.clear()
    assert main(args[:2] + ["rtn-w8a8"] + args[3:] + ["-o", str(out), "--resume"]) == 0 and prepared == []
    assert "--resume: 2 of 2 recipes from" in (err := capsys.readouterr().err) and \
        "; smoothquant-w8a8 not in this run: left out of the new table" in err
    assert [r["recipe"] for r in json.loads((out / "compare.json").read_text())["rows"]] == ["fp32", "rtn-w8a8"]
    assert main(args + ["-o", str(out), "-q"]) == 0  # -q: nothing said
    assert capsys.readouterr().err == ""
    assert main(args + ["-o", str(out)]) == 0
    assert f"{out / 'compare.json'} exists (3 rows): this run replaces it as it goes" in capsys.readouterr().err
    # a recipe file elsewhere with the same definition is the same recipe; its description does not count
    from mq_deploy.compare import recipe_fingerprint
    from mq_deploy.recipes import RECIPE_DIR, load_recipe

    moved = tmp_path / "elsewhere.yaml"
    moved.write_text((RECIPE_DIR / "rtn-w8a8.yaml").read_text().replace("description:", "description: moved,"))
    assert recipe_fingerprint(load_recipe(str(moved))) == recipe_fingerprint(load_recipe("rtn-w8a8"))
    (tmp_path / "afile").write_text("")
    prepared.clear()
    assert main(args + ["-o", str(tmp_path / "afile"), "--resume"]) == 2
    assert "is a file, not a folder for compare.md / compare.json" in capsys.readouterr().err
    assert main(args + ["-o", str(tmp_path / "afile" / "sub")]) == 2  # cannot be made: said before any recipe runs
    assert f"cannot write compare's results {tmp_path / 'afile' / 'sub' / 'compare.json'}: " in capsys.readouterr().err
    assert prepared == []
    (out / "compare.json").write_text("{not json")
    assert main(args + ["-o", str(out), "--resume"]) == 2
    assert "is not a compare.json this mq-deploy can continue" in capsys.readouterr().err
    # rows compare does not write (an edited file): refused before any recipe, naming the row (were: a KeyError or a
    # format error after the run, and "add --resume" again); a recipe's row twice (was: the last one taken)
    rows3 = again["rows"]
    for edit, said in (
            (lambda r: r[1].pop("text"), "has no text results in the row of recipe rtn-w8a8"),
            (lambda r: r[1]["text"].update(perplexity="abc"), 'has text perplexity "abc" in the row of recipe '
                                                              "rtn-w8a8, not a number"),
            (lambda r: r[2]["text"].pop("kl"), "has other text metrics in the row of recipe smoothquant-w8a8"),
            (lambda r: r.append(dict(r[1])), "has two rows of recipe rtn-w8a8")):
        bad = json.loads(json.dumps(again))
        edit(bad["rows"])
        (out / "compare.json").write_text(json.dumps(bad))
        prepared.clear()
        assert main(args + ["-o", str(out), "--resume"]) == 2 and prepared == []
        err = capsys.readouterr().err
        assert f"--resume: {out / 'compare.json'} {said}" in err and "drop --resume" in err and "Traceback" not in err
    assert len(rows3) == 3
    # compare.md that cannot be written: said before any recipe (was: after the first, with compare.json half done)
    (tmp_path / "md" / "compare.md").mkdir(parents=True)
    assert main(args + ["-o", str(tmp_path / "md")]) == 2 and prepared == []
    assert f"compare's table {tmp_path / 'md' / 'compare.md'} is a directory" in capsys.readouterr().err
    assert not (tmp_path / "md" / "compare.json").exists()
    assert main(["compare", "--recipes", "rtn-w8a8,rtn-w8a8", "-o", str(tmp_path / "twice")]) == 2
    assert "--recipes names rtn-w8a8 more than once" in capsys.readouterr().err
    assert not (tmp_path / "twice").exists()
    named = tmp_path / "q-fp32.yaml"  # a quantized recipe of one's own named fp32: refused, not taken for the reference
    named.write_text((RECIPE_DIR / "rtn-w8a8.yaml").read_text().replace("name: rtn-w8a8", "name: fp32"))
    assert main(["compare", "--recipes", str(named), "-o", str(tmp_path / "named")]) == 2
    assert f"recipe {named} is named fp32, the name of the reference row" in capsys.readouterr().err
    assert prepared == [] and not (tmp_path / "named").exists()


def test_compare_table_averages_acc():
    """The avg acc column is the mean of each zero-shot task's acc (every task has one), not of acc and acc_norm."""
    from mq_deploy.compare import markdown_table

    rows = [{"recipe": "fp32", "piqa": {"acc": 0.5, "acc_norm": 0.4, "n": 8}, "arc_easy": {"acc": 0.3, "acc_norm": 0.1,
                                                                                            "n": 8}}]
    table = markdown_table(rows, ["piqa", "arc_easy"])
    assert table.splitlines()[0].endswith("| avg acc |") and table.splitlines()[2].endswith("| 0.4000 |"), table


def test_compare_table_shows_lambada_perplexity():
    """A zero-shot task that also has a perplexity (LAMBADA) shows it after its accuracy, with the change against fp32;
    the avg acc column stays the accuracies' mean."""
    from mq_deploy.compare import markdown_table

    rows = [{"recipe": "fp32", "lambada_openai": {"acc": 0.5, "perplexity": 20.0, "n": 8}},
            {"recipe": "q", "lambada_openai": {"acc": 0.25, "perplexity": 25.0, "n": 8}}]
    lines = markdown_table(rows, ["lambada_openai"]).splitlines()
    assert lines[0] == "| recipe | lambada_openai acc | lambada_openai perplexity | avg acc |", lines[0]
    assert lines[2] == "| fp32 | 0.5000 | 20.00 | 0.5000 |" and lines[3] == "| q | 0.2500 | 25.00 (+25.00%) | 0.2500 |"


def test_code_stamp_follows_the_files(tmp_path):
    """compare --resume's code stamp: the version and a digest of the package's code, which any edit of it changes;
    recipes and bundled models are left to their own stamps (an edited recipe reruns its row only)."""
    from mq_deploy import __version__
    from mq_deploy.compare import code_stamp

    pkg = tmp_path / "pkg"
    for f in ("a.py", "ops/native/k.c", "export_configs/r.yaml", "assets/m/config.json"):
        (pkg / f).parent.mkdir(parents=True, exist_ok=True)
        (pkg / f).write_text("x = 1\n")
    first = code_stamp(pkg)
    assert first.startswith(__version__ + "+") and code_stamp(pkg) == first
    for f in ("export_configs/r.yaml", "assets/m/config.json"):  # recipes and models: their own stamps
        (pkg / f).write_text("x = 2\n")
        assert code_stamp(pkg) == first, f
    for f in ("ops/native/k.c", "a.py"):  # code
        (pkg / f).write_text("x = 3\n")
        assert code_stamp(pkg) != first, f
        first = code_stamp(pkg)
    assert code_stamp() == code_stamp() != first


def test_compare_task_errors_name_its_own_flag(tmp_path):
    # compare takes --data TASK=PATH (eval takes --data PATH): its hints must say so, before any recipe runs
    calib = need(DATA_DIR / "text" / "wikitext2_val_sample.jsonl")
    env = {"MQ_DEPLOY_DATA_DIR": ""}  # no data folder (run_cli starts from os.environ)
    for task, want in (("text", "pass --data text=PATH"), ("piqa", "pass --data piqa=PATH, or set MQ_DEPLOY_DATA_DIR"),
                       ("fashion_mnist", "is for a Vision Mamba model directory")):
        r = run_cli("compare", "--recipes", "rtn-w8a8", "--tasks", task, "--calib", calib, "--calib-samples", "2",
                    "-o", tmp_path / task, "-q", env=env)
        assert r.returncode == 2 and want in r.stderr, r.stderr
        assert "copy used here" not in r.stderr and "Traceback" not in r.stderr
        assert not (tmp_path / task / "compare.json").exists()
    r = run_cli("compare", "--recipes", "rtn-w8a8,vim-rtn-w8a8", "--tasks", "text", "-o", tmp_path / "v", "-q",
                env=env)  # (no data folder: the family is checked before calibration would look for its text)
    assert r.returncode == 2 and "recipe vim-rtn-w8a8 is a Vision Mamba (Vim) recipe" in r.stderr, r.stderr
    assert not (tmp_path / "v").exists()


def test_calibration_options_a_recipe_does_not_read_are_said_ignored(tmp_path):
    """A weight-only RTN recipe (and fp32) reads no calibration data: --calib / --calib-samples / --calib-seq-len are
    warned about as ignored, not silently dropped; the compile succeeds without any calibration."""
    calib = need(DATA_DIR / "text" / "wikitext2_val_sample.jsonl")
    r = run_cli("compile", "--recipe", "rtn-w4a16", "--calib", calib, "--calib-samples", "4", "-o", tmp_path / "w16",
                env={"MQ_DEPLOY_DATA_DIR": str(tmp_path / "nothing")})
    assert r.returncode == 0, r.stderr
    assert ("warning: --calib and --calib-samples are not read: recipe rtn-w4a16 calibrates nothing (no activation "
            "scales, no GPTQ, no pass that takes statistics): ignored") in r.stderr
    assert json.loads((tmp_path / "w16" / "manifest.json").read_text())["calibration"] is None
    r = run_cli("compile", "--recipe", "fp32", "--calib-seq-len", "64", "-o", tmp_path / "fp32")
    assert r.returncode == 0 and "warning: --calib-seq-len is not read: recipe fp32 calibrates nothing" in r.stderr
    r = run_cli("compile", "--recipe", "gptq-w4a16", "--calib", calib, "--calib-samples", "2", "--calib-seq-len", "32",
                "-o", tmp_path / "gptq")  # GPTQ's Hessians read it: no warning
    assert r.returncode == 0 and "not read" not in r.stderr, r.stderr
    assert json.loads((tmp_path / "gptq" / "manifest.json").read_text())["calibration"]["samples"] == 2
    own = tmp_path / "vim-w16.yaml"
    own.write_text("name: vim-w16\nprecision: w4a16\nweights: {bits: 4, method: rtn, block_size: 64}\npasses: []\n")
    r = run_cli("compile", VIM_DIR, "--recipe", own, "--calib-samples", "8", "-o", tmp_path / "vim")
    assert r.returncode == 0 and "warning: --calib-samples is not read: recipe vim-w16 calibrates nothing" in r.stderr


def test_calibration_text_is_read_as_eval_reads_it(tmp_path):
    """read_calib_text takes JSON lines as eval does (.jsonl / .json, compressed or not), with eval's one-line errors
    (bad JSON, a row without a string "text") instead of a traceback or "empty"; the row the character limit reaches
    is read whole (a first row longer than the limit is not "no text")."""
    import bz2
    import gzip

    from mq_deploy.calibrate import read_calib_text
    from mq_deploy.errors import UserError

    rows = ['{"text": " = Homarus gammarus =\\n"}', '{"text": "second row"}']
    for name, write in (("a.jsonl.gz", lambda p, t: p.write_bytes(gzip.compress(t.encode()))),
                        ("a.jsonl.bz2", lambda p, t: p.write_bytes(bz2.compress(t.encode()))),
                        ("a.json", lambda p, t: p.write_text(t)), ("a.JSONL", lambda p, t: p.write_text(t))):
        write(tmp_path / name, "\n".join(rows) + "\n")
        assert read_calib_text(tmp_path / name, 10_000) == " = Homarus gammarus =\n\n\nsecond row", name
    # the limit inside the second row / inside the first: the rows it reaches, whole
    assert read_calib_text(tmp_path / "a.json", len(rows[0]) + 8) == " = Homarus gammarus =\n\n\nsecond row"
    assert read_calib_text(tmp_path / "a.jsonl.gz", 5) == " = Homarus gammarus =\n"
    assert read_calib_text(tmp_path / "a.json", len(rows[0]) + 1) == " = Homarus gammarus =\n"  # (at its newline)
    for body, msg in (('{"text": "hello"}\n{"text": null}\n', "line 2: field 'text' should be str, got NoneType"),
                      ("plain line\n", "line 1: not valid JSON"),
                      ("[1, 2, 3]\n", "line 1: expected a JSON object, got list"),
                      ('{"nottext": 1}\n', "line 1: missing field 'text'"),
                      ('{"text": "a"}\n{"text": "b"\n', "line 2: not valid JSON")):  # (whole file read: not cut)
        (tmp_path / "b.jsonl").write_text(body)
        with pytest.raises(UserError, match=re.escape(msg)):
            read_calib_text(tmp_path / "b.jsonl", 10_000)
    (tmp_path / "c.txt").write_text("   \n")
    with pytest.raises(UserError, match="holds no text"):
        read_calib_text(tmp_path / "c.txt", 10_000)


def test_short_calibration_text_is_said(tmp_path):
    """Fewer windows in the text than --calib-samples asks for: calibrated on those, with a warning naming both."""
    from mq_deploy.compile import calibration_data
    from mq_deploy.loaders import load_model
    from mq_deploy.recipes import load_recipe

    text = tmp_path / "short.txt"
    text.write_text(" ".join(["the quick brown fox jumps over the lazy dog"] * 60))
    model = load_model(None)
    warned = []
    windows, info = calibration_data(model, load_recipe("rtn-w8a8"), str(text), None, 64, 128, warn=warned.append)
    assert 1 <= len(windows) < 64 and info["samples"] == len(windows)
    assert len(warned) == 1 and f"{len(windows)} windows of 128: fewer than the 64 asked for" in warned[0]
    calibration_data(model, load_recipe("rtn-w8a8"), str(text), None, len(windows), 128, warn=warned.append)
    assert len(warned) == 1  # as many as there are: nothing to say
