"""`mq-deploy compile` as a user runs it: outputs, manifest, state-spaces ≡ HF, and clean failures."""

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mq_deploy.backends.ort import OrtRunner
from mq_deploy.model import MambaConfig, random_model

from .helpers import write_hf_checkpoint, write_state_spaces_checkpoint


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mq_deploy", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random-init model (d_model 80, vocab 264) in both checkpoint families."""
    root = tmp_path_factory.mktemp("ckpt")
    m = random_model(MambaConfig(d_model=80, n_layer=2, vocab_size=264), seed=3)
    return m, write_hf_checkpoint(m, root / "hf"), write_state_spaces_checkpoint(m, root / "ss")


def test_compile_writes_both_graphs_and_manifest(tiny, tmp_path):
    _, hf_dir, _ = tiny
    out = tmp_path / "out"
    r = run_cli("compile", hf_dir, "--recipe", "fp32", "-o", out)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.decode.onnx", "model.decode.portable.onnx",
                                                     "model.onnx", "model.portable.onnx", "model.prefill.onnx",
                                                     "model.prefill.portable.onnx", "weights.bin"]
    man = json.loads((out / "manifest.json").read_text())
    assert man["recipe"]["name"] == "fp32"
    assert man["model"]["format"] == "hf" and man["model"]["config"]["d_model"] == 80
    assert man["plugins"][0]["name"] == "SelectiveScan" and man["plugins"][0]["count"] == 2
    assert man["io"]["inputs"][0]["shape"] == ["batch", "sequence"]
    import hashlib

    for name in ("model.onnx", "model.portable.onnx", "weights.bin"):
        assert man["files"][name]["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    # six graphs, one copy of the weights: weights.bin holds each tensor once (+ the portable Hadamard-free
    # graph adds nothing here), the graphs themselves are small
    params = man["model"]["parameters"]
    assert 4 * params * 0.9 < man["files"]["weights.bin"]["bytes"] < 4 * params * 1.1
    assert all(man["files"][f]["bytes"] < 0.1 * 4 * params for f in man["files"] if f.endswith(".onnx"))
    assert man["self_check"]["max_rel_error_plugin_vs_portable"] < 1e-5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind
    # recompiling into an mq-deploy OUTDIR replaces it
    assert run_cli("compile", hf_dir, "-o", out).returncode == 0


def test_state_spaces_and_hf_compile_to_same_logits(tiny, tmp_path):
    _, hf_dir, ss_dir = tiny
    assert run_cli("compile", hf_dir, "-o", tmp_path / "a").returncode == 0
    r = run_cli("compile", ss_dir, "-o", tmp_path / "b")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["model"]["format"] == "state-spaces"
    ids = np.random.default_rng(0).integers(0, 264, size=(2, 33))
    for name in ("model.onnx", "model.portable.onnx"):
        a = OrtRunner(tmp_path / "a" / name)(ids)
        b = OrtRunner(tmp_path / "b" / name)(ids)
        np.testing.assert_array_equal(a, b)


def test_sharded_fp16_checkpoint(tmp_path):
    """Sharded safetensors in fp16 (like the reference models) load as the fp32 values of the fp16 weights."""
    import torch

    from mq_deploy.backends.torch_hf import build_hf_model
    from mq_deploy.loaders import load_model

    m = random_model(MambaConfig(d_model=64, n_layer=2, vocab_size=200), seed=5)
    build_hf_model(m).half().save_pretrained(tmp_path, safe_serialization=True, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    loaded = load_model(tmp_path)
    np.testing.assert_array_equal(loaded.layers[1].in_proj, m.layers[1].in_proj.astype(np.float16).astype(np.float32))


def _bad_inputs(tmp_path: Path, hf_dir: Path):
    missing_weights = tmp_path / "no_weights"
    missing_weights.mkdir()
    (missing_weights / "config.json").write_text((hf_dir / "config.json").read_text())
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((hf_dir / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes(b"\x00\x01garbage" * 100)
    not_mamba = tmp_path / "llama"
    not_mamba.mkdir()
    (not_mamba / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    bad_json = tmp_path / "bad_json"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{not json")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    bad_yaml = tmp_path / "bad_recipe.yaml"
    bad_yaml.write_text("name: x\nprecision: [fp32\n  passes: {\n")
    outdir = tmp_path / "an_outdir"  # (what compile writes: manifest.json and the graphs, no config.json)
    outdir.mkdir()
    (outdir / "manifest.json").write_text("{}")
    (outdir / "model.onnx").write_bytes(b"")
    ranged = {}  # recipe values of the right type but outside what they mean: refused when the recipe is read
    for label, body in (("percentile as a fraction", "activations: {method: percentile, percentile: 0.9999}"),
                        ("alpha past 1", "passes:\n  - {name: smoothquant, alpha: 7}"),
                        ("no calibration windows", "calibration: {samples: 0}"),
                        ("klt not a bool", "passes:\n  - {name: rotate_dt, klt: yes-please}")):
        ranged[label] = tmp_path / f"{label.replace(' ', '_')}.yaml"
        ranged[label].write_text(f"name: x\nprecision: w8a8\n{body}\n")
    return [
        ("missing directory", [tmp_path / "nope"], "model directory not found"),
        ("missing weights", [missing_weights], "no weight file"),
        ("corrupt weights", [corrupt], "could not read weights file"),
        ("not mamba", [not_mamba], "not a Mamba-1 model"),
        ("an outdir", [outdir], f"{outdir} is an output directory of `mq-deploy compile`, not a checkpoint"),
        ("bad json", [bad_json], "could not read"),
        ("unknown recipe", [hf_dir, "--recipe", "int3-magic"], "unknown recipe 'int3-magic'"),
        ("invalid recipe yaml", [hf_dir, "--recipe", bad_yaml],
         "is not valid YAML: expected ',' or ']', but got ':' (line 3, column 9)"),
        ("percentile as a fraction", [hf_dir, "--recipe", ranged["percentile as a fraction"]],
         "activations.percentile must be in [50.0, 100.0], got 0.9999 (a percent, e.g. 99.99"),
        ("alpha past 1", [hf_dir, "--recipe", ranged["alpha past 1"]], "pass 'smoothquant' alpha must be in [0.0, 1.0]"),
        ("no calibration windows", [hf_dir, "--recipe", ranged["no calibration windows"]],
         "calibration.samples must be >= 1, got 0"),
        ("klt not a bool", [hf_dir, "--recipe", ranged["klt not a bool"]], "pass 'rotate_dt' klt must be bool"),
        ("unwritable output", [hf_dir],  # a parent is a file: say so, not the OS's "File exists"
         f"cannot write output directory {blocker / 'sub' / 'out'}: {blocker} is a file, not a directory",
         blocker / "sub" / "out"),
    ]


def test_bad_input_one_clear_line_and_no_partial_outdir(tiny, tmp_path):
    _, hf_dir, _ = tiny
    for case in _bad_inputs(tmp_path, hf_dir):
        label, args, expect = case[:3]
        out = case[3] if len(case) > 3 else tmp_path / f"out_{label.replace(' ', '_')}"
        before = set(os.listdir(tmp_path))
        r = run_cli("compile", *args, "-o", out)
        assert r.returncode == 2, (label, r.stderr)
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("mq-deploy: error: ")]
        assert len(errors) == 1 and "Traceback" not in r.stderr, (label, r.stderr)
        assert expect in errors[0], (label, errors[0])
        if label in ("missing directory", "unknown recipe", "percentile as a fraction", "alpha past 1",
                     "no calibration windows", "klt not a bool"):  # refused before any progress line
            assert r.stderr.strip() == errors[0], (label, r.stderr)
        assert not out.exists(), label
        assert set(os.listdir(tmp_path)) == before, label  # no temp dirs left


def test_refuses_to_replace_foreign_directory(tiny, tmp_path):
    _, hf_dir, _ = tiny
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    r = run_cli("compile", hf_dir, "-o", out)
    assert r.returncode == 2 and "--force" in r.stderr
    assert (out / "precious.txt").read_text() == "keep me"


def test_a_manifest_json_of_something_else_is_not_an_outdir(tiny, tmp_path):
    """Only a manifest.json of mq-deploy compile ("format": "mq-deploy/…", any version) makes a folder one the compile
    replaces without --force; a folder holding some other manifest.json was deleted with a warning."""
    _, hf_dir, _ = tiny
    out = tmp_path / "w"
    out.mkdir()
    (out / "manifest.json").write_text('{"name": "ext"}')
    (out / "thesis.tex").write_text("keep me")
    r = run_cli("compile", hf_dir, "-o", out)
    assert r.returncode == 2 and "not written by mq-deploy (its manifest.json is not one of mq-deploy compile, or " \
        "cannot be read)" in r.stderr and "--force" in r.stderr, r.stderr
    assert (out / "thesis.tex").read_text() == "keep me"
    (out / "manifest.json").write_text('{"format": "mq-deploy/0"}')  # an older mq-deploy's OUTDIR: replaced
    r = run_cli("compile", hf_dir, "-o", out)
    assert r.returncode == 0, r.stderr
    assert not (out / "thesis.tex").exists() and "removes thesis.tex" in r.stderr


def test_a_read_only_outdir_is_refused_before_any_work(tmp_path, monkeypatch):
    """A read-only OUTDIR with files (which the swap could not remove: it was replaced, and its files left beside it
    as .out.old-*) is refused up front; an empty one is replaced as before. (os.access is stood in for: the tests may
    run as root, which may write anywhere.)"""
    import mq_deploy.outdir as od
    from mq_deploy.errors import UserError

    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(od.os, "access", lambda p, mode: Path(p) != out)
    od.check_target(out, False)  # empty: nothing to leave behind
    (out / "manifest.json").write_text('{"format": "mq-deploy/1"}')
    for force in (False, True):
        with pytest.raises(UserError) as e:
            od.check_target(out, force)
        assert str(e.value) == (f"output directory {out} is read-only, and the compile replaces it: make it writable "
                                f"(chmod u+w {out}) or choose another -o")
    monkeypatch.setattr(od.os, "access", lambda p, mode: True)
    od.check_target(out, False)


def test_refuses_to_replace_the_bundled_model_or_the_default_data(tmp_path, monkeypatch):
    """Without a MODEL or --calib the compile reads the bundled model and the default calibration data; -o naming
    them (or a folder holding them) is refused, --force or not. (The bundled model is a copy here.)"""
    import shutil

    import mq_deploy.loaders as loaders
    from mq_deploy.compile import compile_model
    from mq_deploy.errors import UserError

    bundled = tmp_path / "assets" / "mamba-tiny"
    shutil.copytree(loaders.bundled_model_dir(), bundled)
    monkeypatch.setattr(loaders, "bundled_model_dir", lambda: bundled)
    data = tmp_path / "data"
    (data / "text").mkdir(parents=True)
    (data / "text" / "wikitext2_val_sample.jsonl").write_text('{"text": "some text"}\n')
    monkeypatch.setenv("MQ_DEPLOY_DATA_DIR", str(data))
    for out, recipe, what in ((bundled, "fp32", f"is the bundled model ({bundled})"),
                              (bundled.parent, "fp32", f"holds the bundled model ({bundled})"),
                              (data / "text", "rtn-w8a8", "holds the default calibration text"),
                              (data, "fp32", "holds the default calibration text")):
        with pytest.raises(UserError) as e:
            compile_model(None, recipe, out, force=True, progress=False)
        assert str(e.value).startswith(f"output directory {out} {what}"), str(e.value)
    assert sorted(p.name for p in bundled.iterdir()) == sorted(p.name for p in loaders.bundled_model_dir().iterdir())
    assert (data / "text" / "wikitext2_val_sample.jsonl").is_file()


def test_an_unreadable_tokenizer_of_the_checkpoint_is_not_copied(tiny, tmp_path):
    """A broken tokenizer.json beside the weights: the compile says so and leaves it out of OUTDIR (it was copied, and
    eval / generate of the OUTDIR then failed on it, where one without a tokenizer asks for --tokenizer)."""
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny[1], ckpt)
    (ckpt / "tokenizer.json").write_text("{not json")
    out = tmp_path / "out"
    r = run_cli("compile", ckpt, "-o", out)
    assert r.returncode == 0, r.stderr
    assert "not copied into OUTDIR (eval and generate of it will need --tokenizer" in r.stderr
    assert not (out / "tokenizer.json").exists()
    assert "tokenizer.json" not in json.loads((out / "manifest.json").read_text())["files"]


def test_refuses_an_output_that_is_or_holds_an_input(tiny, tmp_path):
    """-o naming the checkpoint, or a folder holding it or the calibration text, is refused even with --force:
    replacing it would delete what the compile reads."""
    import shutil

    ckpt = tmp_path / "parent" / "ckpt"
    shutil.copytree(tiny[1], ckpt)
    before = sorted(p.name for p in ckpt.iterdir())
    for out, verb in ((ckpt, "is"), (ckpt.parent, "holds")):
        r = run_cli("compile", ckpt, "-o", out, "--force")
        assert r.returncode == 2, r.stderr
        assert f"output directory {out} {verb} the checkpoint ({ckpt}), which writing it would delete" in r.stderr
        assert sorted(p.name for p in ckpt.iterdir()) == before
    calib = tmp_path / "data" / "calib.txt"
    calib.parent.mkdir()
    calib.write_text("some text " * 100)
    r = run_cli("compile", ckpt, "--recipe", "rtn-w8a8", "--calib", calib, "-o", calib.parent, "--force")
    assert r.returncode == 2 and f"holds the calibration data ({calib})" in r.stderr and calib.is_file()
    # its own tokenizer.json: copied into the new OUTDIR before the swap, so recompiling with it is allowed
    out = tmp_path / "out"
    assert run_cli("compile", ckpt, "-o", out).returncode == 0
    tok = Path(__file__).resolve().parents[1] / "src" / "mq_deploy" / "assets" / "mamba-tiny" / "tokenizer.json"
    shutil.copyfile(tok, out / "tokenizer.json")  # (tiny has none of its own)
    r = run_cli("compile", ckpt, "--tokenizer", out / "tokenizer.json", "-o", out)
    assert r.returncode == 0, r.stderr
    assert (out / "tokenizer.json").read_bytes() == tok.read_bytes()


def test_output_through_a_link_and_the_current_directory(tiny, tmp_path):
    """-o a symbolic link to a folder writes the OUTDIR where it points (the link then names it; it used to fail at
    the final swap, after the work, leaving an empty .old folder); -o the current directory, or one holding it, is
    refused before any work; no `.old` placeholder is left behind."""
    _, hf_dir, _ = tiny
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    for _ in range(2):  # into the empty folder, then over the OUTDIR it holds
        r = run_cli("compile", hf_dir, "-o", tmp_path / "link", "-q")
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "manifest.json").is_file()
    work = tmp_path / "work"
    work.mkdir()
    for out, said in ((".", "is the current directory, which the compile cannot replace"),
                      ("..", "is the current directory (or holds it), which the compile cannot replace"),
                      ("", "-o needs a directory path (it is empty)")):
        r = run_cli("compile", hf_dir, "-o", out, cwd=work)
        assert r.returncode == 2 and said in r.stderr, r.stderr
    (tmp_path / "loop1").symlink_to("loop2")
    (tmp_path / "loop2").symlink_to("loop1")
    r = run_cli("compile", hf_dir, "-o", tmp_path / "loop1")
    assert r.returncode == 2 and f"cannot use output directory {tmp_path / 'loop1'}: " in r.stderr, r.stderr
    assert os.listdir(work) == [] and not [p for p in os.listdir(tmp_path) if ".old-" in p or ".tmp-" in p]


def test_output_paths_the_swap_could_not_reach_are_refused_first(tmp_path, monkeypatch):
    """`-o nosuch/../out` (no folder nosuch) ran the whole compile and then failed at the swap's rename (ENOENT,
    exit 1); a loop of links behind `..` or as the OUTDIR itself (which Python 3.13's resolve() no longer reports) is
    refused the same way, before any work, on every Python. An output under a link to nothing (compare's -o, build's
    engine) failed on its mkdir after the work (EEXIST)."""
    from mq_deploy.errors import UserError
    from mq_deploy.outdir import check_writable, output_dir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "loop1").symlink_to("loop2")
    (tmp_path / "loop2").symlink_to("loop1")
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    (tmp_path / "afile").write_text("x")
    for out, said in (("nosuch/../out", "nosuch is not a directory (the path goes back out of it with ..)"),
                      ("afile/../out", "afile is not a directory"),
                      ("loop1/../out", "loop1 is not a directory"),
                      ("loop1", f"cannot use output directory loop1: {os.strerror(errno.ELOOP)}")):
        with pytest.raises(UserError, match=re.escape(said)):
            output_dir(out)
    assert output_dir("dangling") == tmp_path / "missing"  # (a link to a folder to be made: the link names it)
    (tmp_path / "sub").mkdir()
    assert output_dir("sub/../out") == Path("sub/../out")
    for out in ("loop1/compare.json", "dangling/compare.json", "dangling/a/b/compare.json"):
        with pytest.raises(UserError, match="is a symbolic link to nothing"):
            check_writable(out, "compare's results")
    check_writable("sub/new/compare.json", "compare's results")  # (a folder still to be made is fine)
    assert sorted(os.listdir(tmp_path)) == ["afile", "dangling", "loop1", "loop2", "sub"]


def test_tokenizer_checks_before_the_work(tiny, tmp_path):
    """A --tokenizer that is no tokenizer is refused before the checkpoint is loaded, a calibration without any before
    the calibration;
    an OUTDIR without a tokenizer is said to be one; a tokenizer of far fewer ids than the vocabulary is warned of."""
    _, hf_dir, ss_dir = tiny
    bundled_tok = Path(__file__).resolve().parents[1] / "src" / "mq_deploy" / "assets" / "mamba-tiny" / "tokenizer.json"
    calib = tmp_path / "calib.txt"
    calib.write_text("words and more words " * 200)
    notes = tmp_path / "README.md"
    notes.write_text("# not a tokenizer")
    for args, message, before in (
            (["--tokenizer", notes], f"{notes} is not a Hugging Face `tokenizers` JSON file", "loading"),
            (["--recipe", "rtn-w8a8", "--calib", calib], f"calibration needs the model's tokenizer, and {ss_dir} has "
                                                        "no tokenizer.json (state-spaces checkpoints have none)",
             "calibration:")):
        r = run_cli("compile", ss_dir, *args, "-o", tmp_path / "o")
        assert r.returncode == 2 and message in r.stderr, r.stderr
        assert before not in r.stderr and not (tmp_path / "o").exists()  # refused before that step
    r = run_cli("compile", hf_dir, "-o", tmp_path / "notok")
    assert r.returncode == 0 and "no tokenizer.json (the model directory has none): eval and generate of OUTDIR will " \
        "need --tokenizer" in r.stderr
    big = write_hf_checkpoint(random_model(MambaConfig(d_model=16, n_layer=1, vocab_size=9600), seed=1), tmp_path / "b")
    r = run_cli("compile", big, "--tokenizer", bundled_tok.parent, "-o", tmp_path / "big")  # (a folder holding one)
    assert r.returncode == 0 and f"tokenizer {bundled_tok} has 8192 ids, the model's vocabulary 9600: is it this " \
        "model's tokenizer?" in r.stderr
    assert (tmp_path / "big" / "tokenizer.json").read_bytes() == bundled_tok.read_bytes()
    r = run_cli("compile", big, "--tokenizer", tmp_path, "-o", tmp_path / "big2")  # a folder without one
    assert r.returncode == 2 and f"tokenizer file not found: {tmp_path / 'tokenizer.json'}; pass a Hugging Face " \
        "tokenizer.json (or the folder that holds one)" in r.stderr


def test_recompiling_says_what_the_old_outdir_loses(tiny, tmp_path):
    """Compiling into an OUTDIR of an earlier compile replaces it whole: engines built from it go too (they would be
    stale), and one warning line names them, even with -q; a recompile that drops nothing says nothing."""
    _, hf_dir, _ = tiny
    out = tmp_path / "out"
    assert run_cli("compile", hf_dir, "-o", out, "-q").returncode == 0
    r = run_cli("compile", hf_dir, "-o", out, "-q")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    for name in ("model.engine", "model.decode.engine", "validate.txt"):
        (out / name).write_bytes(b"built on the device")
    r = run_cli("compile", hf_dir, "-o", out, "-q")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [f"warning: replacing {out} removes model.decode.engine, model.engine, "
                                     "validate.txt, which this compile did not write (engines and files made from "
                                     "the old graphs: build them again)"]
    assert not (out / "model.engine").exists() and (out / "manifest.json").is_file()


def test_help_on_every_command():
    for args in (["--help"], ["compile", "--help"], ["eval", "--help"]):
        r = run_cli(*args)
        assert r.returncode == 0 and "usage: mq-deploy" in r.stdout


@pytest.mark.parametrize("args, usage, error", [
    (["eval", "--limt", "3", "--task", "text"], "usage: mq-deploy eval", "mq-deploy eval: error: unrecognized arguments: --limt"),
    (["compile", "--bogus", "-o", "x"], "usage: mq-deploy compile", "mq-deploy compile: error: unrecognized arguments: --bogus"),
    (["--bogus"], "usage: mq-deploy [-h]", "mq-deploy: error: unrecognized arguments: --bogus"),
    (["--quiet", "compile", "-o", "x"], "usage: mq-deploy [-h]",  # (compile takes --quiet, after its name)
     "mq-deploy: error: unrecognized arguments: --quiet (a command's options go after its name: mq-deploy compile ... "
     "--quiet)"),
])
def test_a_misspelled_flag_gets_its_commands_usage(args, usage, error):
    """An unknown flag is the subcommand's error, with its usage lines, as a bad value is (README, exit 2)."""
    r = run_cli(*args)
    assert r.returncode == 2 and r.stderr.startswith(usage) and r.stderr.strip().splitlines()[-1] == error, r.stderr


def test_percentile_range_applies_to_the_percentile_method(tmp_path):
    """activations.percentile is range-checked where it is read (method percentile), its type only elsewhere."""
    from mq_deploy.errors import UserError
    from mq_deploy.recipes import load_recipe

    f = tmp_path / "r.yaml"
    f.write_text("name: r\nprecision: w8a8\nactivations: {method: max, percentile: 0.9999}\n")
    assert load_recipe(str(f)).activations["method"] == "max"
    f.write_text("name: r\nprecision: w8a8\nactivations: {percentile: 0.9999}\n")  # (percentile is the default)
    with pytest.raises(UserError, match=r"activations.percentile must be in \[50.0, 100.0\]"):
        load_recipe(str(f))
