"""`mq-deploy generate` as a user runs it: streaming output, timings on stderr, and clean failures."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from mq_deploy.loaders import BUNDLED_DIR

from .conftest import need


def run_cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "mq_deploy", *map(str, args)], capture_output=True, text=True,
                          timeout=300, input=stdin)


@pytest.fixture(scope="module")
def outdir(tmp_path_factory):
    need(BUNDLED_DIR / "model.safetensors")
    out = tmp_path_factory.mktemp("gen") / "out"
    from mq_deploy.compile import compile_model

    compile_model(None, "fp32", out)
    return out


def assert_user_error(r, *fragments):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("mq-deploy: error: "), r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    assert r.stdout == ""


def test_generate_greedy_matches_library_and_reports_speed(outdir):
    from mq_deploy.eval.tokenizer import TextTokenizer
    from mq_deploy.generate import Sampling, StatefulSession, generate

    r = run_cli("generate", outdir, "--prompt", "Once upon a time", "--max-new-tokens", "12", "--greedy")
    assert r.returncode == 0, r.stderr
    tok = TextTokenizer(outdir / "tokenizer.json")
    ids = generate(StatefulSession.from_outdir(outdir), [tok.encode("Once upon a time")], 12, Sampling()).tokens[0]
    assert r.stdout == "Once upon a time" + tok.decode([t for t in ids if t != tok.eot_id]) + "\n"
    assert "prefill:" in r.stderr and "tokens/s" in r.stderr


def test_generate_batch_and_plugin_flavour(outdir):
    r = run_cli("generate", outdir, "--prompt", "The cat", "--prompt", "In the beginning there was",
                "--max-new-tokens", "6", "--temperature", "0.7", "--top-p", "0.9", "--seed", "1", "--flavour", "plugin")
    assert r.returncode == 0, r.stderr
    assert "[1] The cat" in r.stdout and "[2] In the beginning there was" in r.stdout
    assert "2 prompt(s)" in r.stderr


@pytest.mark.parametrize("args,fragments", [
    (["--prompt", ""], ["prompt 1 is empty"]),
    (["--prompt", "fine", "--prompt", ""], ["prompt 2 is empty"]),
    (["--prompt", "-", "--prompt", "-"], ["--prompt - (read the prompt from stdin) can be given once"]),
    (["--prompt", "one two three four five six", "--max-prompt-tokens", "3"], ["prompt 1 has", "maximum of 3"]),
    (["--prompt", "hi", "--max-new-tokens", "0"], ["max-new-tokens must be at least 1"]),
    (["--prompt", "hi", "--greedy", "--temperature", "0.5"], ["--greedy cannot be combined"]),
    (["--prompt", "hi", "--top-p", "1.5"], ["top-p must be in (0, 1]"]),
])
def test_generate_bad_input(outdir, args, fragments):
    assert_user_error(run_cli("generate", outdir, *args), *fragments)


def test_generate_prompt_from_stdin_whitespace_and_unused_seed(outdir):
    """`--prompt -` reads the prompt from stdin (its final newline dropped) and generates what `--prompt TEXT` does;
    empty stdin is refused; a prompt of spaces is text like any other; --seed with greedy decoding is said unused."""
    text = "Once upon a time"
    ref = run_cli("generate", outdir, "--prompt", text, "--max-new-tokens", "5")
    assert ref.returncode == 0, ref.stderr
    r = run_cli("generate", outdir, "--prompt", "-", "--max-new-tokens", "5", stdin=text + "\n")
    assert r.returncode == 0 and r.stdout == ref.stdout, (r.stdout, ref.stdout, r.stderr)
    assert "unused" not in r.stderr
    assert_user_error(run_cli("generate", outdir, "--prompt", "-", stdin=""), "prompt 1 (stdin) is empty")
    closed = subprocess.run(f'"{sys.executable}" -m mq_deploy generate "{outdir}" --prompt - <&-', shell=True,
                            capture_output=True, text=True, timeout=300)
    assert closed.returncode == 2 and "--prompt - reads the prompt from stdin, which is closed" in closed.stderr, \
        closed.stderr
    for utf8_mode in ("0", "1"):  # stdin strict / surrogateescape
        bad = subprocess.run([sys.executable, "-m", "mq_deploy", "generate", str(outdir), "--prompt", "-"],
                             input=b"caf\xe9\n", capture_output=True, timeout=300,
                             env={**os.environ, "PYTHONUTF8": utf8_mode, "LC_ALL": "C.UTF-8"})
        assert bad.returncode == 2 and b"the prompt on stdin is not text of its encoding, utf-8" in bad.stderr, \
            bad.stderr
    two = run_cli("generate", outdir, "--prompt", "A line.", "--prompt", "-", "--max-new-tokens", "3",
                  stdin="Two\nlines\n")
    assert two.returncode == 0 and "\n[2] Two\n    lines" in "\n" + two.stdout, two.stdout
    r = run_cli("generate", outdir, "--prompt", "   ", "--max-new-tokens", "3", "--seed", "7")
    assert r.returncode == 0 and r.stdout.startswith("   ") and len(r.stdout) > 4, (r.stdout, r.stderr)
    assert "warning: --seed is unused: decoding is greedy" in r.stderr


def test_generate_batch_rows_and_decode_count():
    """A batch row's further lines are indented under `[k] `; the decode count is the tokens the steps produced (each
    row's first comes from the prefill, a finished row's idle steps produce none)."""
    from mq_deploy.cli import _row
    from mq_deploy.generate import Generation

    assert _row(0, "one") == "[1] one"
    assert _row(11, "a\nb\n") == "[12] a\n     b\n     "
    res = Generation([[5, 6, 0], [7, 8, 9, 10, 11, 12]], [3, 4], decode_seconds=2.0, decode_steps=5)
    assert res.decode_tokens == 2 + 5 and res.decode_tokens_per_second == 3.5
    assert Generation([[], [1]], [1, 1]).decode_tokens == 0


def test_generate_refuses_ids_outside_the_vocabulary_before_printing(outdir, tmp_path):
    """A tokenizer that gives an id past the model's vocabulary (here the model's own with one token added): one
    error line, and the prompt is not echoed first."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(outdir / "tokenizer.json"))
    tok.add_tokens(["zqxjv"])  # id 8192, the vocabulary's size
    tok.save(str(tmp_path / "tokenizer.json"))
    assert_user_error(run_cli("generate", outdir, "--prompt", "a zqxjv b", "--tokenizer", tmp_path / "tokenizer.json"),
                      "gives token id 8192 ('zqxjv'), outside the model's vocabulary of 8192 ids")


def test_generate_outdir_without_decode_graphs(outdir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(outdir, old)
    (old / "model.decode.portable.onnx").unlink()
    assert_user_error(run_cli("generate", old, "--prompt", "hi"), "no model.decode.portable.onnx",
                      "which its manifest.json lists: copy it")
    assert_user_error(run_cli("generate", tmp_path / "missing", "--prompt", "hi"), "is not a directory")
    lean = tmp_path / "lean"  # what generation needs, and nothing else (no model.onnx): it generates
    lean.mkdir()
    for f in ("manifest.json", "tokenizer.json", "weights.bin", "model.prefill.portable.onnx",
              "model.decode.portable.onnx"):
        shutil.copy(outdir / f, lean / f)
    r = run_cli("generate", lean, "--prompt", "hi", "--max-new-tokens", "2")
    assert r.returncode == 0 and r.stdout.startswith("hi"), r.stderr


def test_generate_api_refuses_text_prompts():
    """The Python API takes token ids; text (what the CLI takes) is one clear error, not a ValueError from int()."""
    from mq_deploy.errors import UserError
    from mq_deploy.generate import check_request

    for prompts in ("Once upon a time", ["Once upon a time"], [[1, 2], "x"]):
        with pytest.raises(UserError, match="encode text first"):
            check_request(prompts, 4)
    check_request([[1, 2, 3], [4]], 4)  # token ids pass


def test_generate_tensorrt_flavour_names_tensorrt_first(outdir):
    """Without TensorRT the tensorrt flavour says what to install before anything else (not "build the engines",
    which needs TensorRT too)."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    assert_user_error(run_cli("generate", outdir, "--prompt", "hi", "--flavour", "tensorrt"),
                      "TensorRT's Python package is not installed", "pip install \"tensorrt-cu12==10.3")


def test_generate_and_eval_say_what_a_graph_or_outdir_is_for(outdir, tmp_path):
    """A Vim OUTDIR has nothing to generate and takes --task fashion_mnist; a prefill / decode graph is not a
    whole-sequence model for eval: one line each, not a traceback or a wrong hint."""
    from mq_deploy.compile import compile_model

    vim = tmp_path / "vim"
    compile_model(str(BUNDLED_DIR.parent / "vim-fmnist"), "fp32", vim)
    assert_user_error(run_cli("generate", vim, "--prompt", "hi"), "Vision Mamba (Vim) image classifier",
                      "--task fashion_mnist")
    for target in (vim, vim / "model.onnx"):
        assert_user_error(run_cli("eval", target, "--task", "text"), "Vision Mamba (Vim) image classifier",
                          "--task fashion_mnist")
    for graph in ("model.decode.onnx", "model.prefill.portable.onnx"):
        assert_user_error(run_cli("eval", outdir / graph, "--task", "text"), "a graph of `mq-deploy generate`",
                          "evaluate model.onnx, model.portable.onnx or the OUTDIR")
    # a graph of something else (one input x): not taken for a generate graph
    import onnx
    from onnx import TensorProto, helper

    relu = tmp_path / "relu.onnx"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    old_ir = {"ir_version": 8, "opset_imports": [helper.make_opsetid("", 17)]}  # (what onnxruntime 1.23 loads too)
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]), **old_ir),
              str(relu))
    r = run_cli("eval", relu, "--task", "text")
    assert_user_error(r, "takes x: it is not a Mamba language-model graph of mq-deploy")
    assert "mq-deploy generate" not in r.stderr
    # nor an exported transformer's (input_ids, attention_mask and more)
    hf = tmp_path / "hf.onnx"
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("input_ids", "attention_mask",
                                                                               "position_ids")]  # (names matter)
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Sum", [i.name for i in ins], ["logits"])], "g",
                                                  ins, [out]), **old_ir), str(hf))
    r = run_cli("eval", hf, "--task", "text")
    assert_user_error(r, "takes attention_mask, input_ids, position_ids: it is not a Mamba language-model graph")


def test_cli_flag_errors_name_the_flag(outdir, tmp_path):
    """--threads below 0 (every command that takes it), eval's one --data for several tasks, a prefill shape without
    its sequence, a bad temperature, a file that is no ONNX: one line each, naming the flag to change."""
    for cmd in (["validate", outdir], ["generate", outdir, "--prompt", "hi"], ["eval", outdir, "--task", "text"]):
        assert_user_error(run_cli(*cmd, "--threads", "-1"), "--threads must be 0 (all) or more, not -1")
    assert_user_error(run_cli("eval", outdir, "--task", "text", "--task", "arc_easy", "--data", tmp_path / "t.txt"),
                      "--data names one task's file", "give each its file as --data TASK=PATH")
    assert_user_error(run_cli("eval", outdir, "--task", "text", "--data", f"arc_easy={tmp_path / 't.txt'}"),
                      f"--data arc_easy={tmp_path / 't.txt'}: no --task arc_easy asks for it")
    # a task twice would be scored twice; two files for one task kept the last one silently
    assert_user_error(run_cli("eval", outdir, "--task", "text", "--task", "text", "--data", f"text={tmp_path}/t.txt"),
                      "--task text given more than once")
    assert_user_error(run_cli("eval", outdir, "--task", "text", "--data", f"text={tmp_path}/a.txt", "--data",
                              f"text={tmp_path}/b.txt"),
                      f"--data text={tmp_path}/a.txt and --data text={tmp_path}/b.txt: one file for one task")
    copy = tmp_path / "copy"  # an OUTDIR copied without its manifest: said so, not "no config.json"
    copy.mkdir()
    shutil.copyfile(outdir / "model.portable.onnx", copy / "model.portable.onnx")
    assert_user_error(run_cli("eval", copy, "--task", "text", "--data", tmp_path / "t.txt"),
                      f"{copy} holds model.portable.onnx but no manifest.json: copy it")
    notok = tmp_path / "notok"  # no tokenizer: the hint fits the model's vocabulary (8192 ids: not GPT-NeoX's)
    shutil.copytree(outdir, notok)
    (notok / "tokenizer.json").unlink()
    r = run_cli("eval", notok, "--task", "text", "--data", tmp_path / "t.txt")
    assert_user_error(r, "pass --tokenizer PATH/tokenizer.json or a Hub id (the tokenizer this model of 8192 ids")
    assert "GPT-NeoX" not in r.stderr
    # as compare takes it: TASK=PATH, one for each of several tasks
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    r = run_cli("eval", outdir, "--task", "text", "--task", "wikitext2", "--data", f"text={text}", "--data",
                f"wikitext2={text}", "--seq-len", "32", "--limit", "1", "--json", "-q")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["task"], x["data"]) for x in rows] == [("text", str(text)), ("wikitext2", str(text))]
    assert_user_error(run_cli("build", outdir, "--graph", "prefill", "--min-shapes", "1", "--dry-run"),
                      "--min-shapes gives a batch only (e.g. --min-shapes 1,1)")
    assert_user_error(run_cli("generate", outdir, "--prompt", "hi", "--temperature", "0"), "--temperature must be > 0")
    assert_user_error(run_cli("lint", outdir / "manifest.json"), "could not read ONNX file")  # one line, not protobuf's
    r = run_cli("lint", outdir)  # a float OUTDIR: passes, and says only scan-scales applied
    assert r.returncode == 0 and r.stderr.count("violation(s) (a float graph, no quantization nodes") == 3, r.stderr


def test_a_manifest_of_another_format_is_one_line_everywhere(outdir, tmp_path):
    """manifest.json's "format" is what each command checks first: an OUTDIR from another mq-deploy version, a
    manifest that is not JSON or not an object (or whose sections are not), is one line naming the file and the fix,
    not a KeyError later."""
    import json

    man = json.loads((outdir / "manifest.json").read_text())
    assert man["format"] == "mq-deploy/1"
    other = tmp_path / "other"
    other.mkdir()
    for name in ("model.onnx", "model.portable.onnx", "tokenizer.json"):
        shutil.copy(outdir / name, other / name)
    cmds = (["generate", other, "--prompt", "hi"], ["build", other, "--dry-run", "--plugins", tmp_path / "lib.so"],
            ["validate", other], ["eval", other, "--task", "text", "--data", tmp_path / "t.txt"])
    (tmp_path / "t.txt").write_text("some words to score " * 20)
    for text, fragments in ((json.dumps({**man, "format": "mq-deploy/2"}), ["has format 'mq-deploy/2'"]),
                            (json.dumps({k: v for k, v in man.items() if k != "format"}), ['has no "format"']),
                            ("[1, 2]", ["is not a manifest of `mq-deploy compile`"]),
                            # edited into other shapes (were: AttributeError tracebacks)
                            (json.dumps({**man, "files": [1]}), ['"files" is a JSON list, not an object']),
                            (json.dumps({**man, "io": "x"}), ['"io" is a JSON string, not an object']),
                            (json.dumps({**man, "files": {**man["files"], "model.onnx": 7}}),
                             ['files["model.onnx"] is not an object']),
                            ("{", ["is not valid JSON"])):
        (other / "manifest.json").write_text(text)
        for cmd in cmds:
            r = run_cli(*cmd)
            assert_user_error(r, str(other / "manifest.json"), *fragments)
            if "format" in fragments[0]:
                assert "this mq-deploy reads 'mq-deploy/1'" in r.stderr and "compile" in r.stderr


def test_generate_ctrl_c_ends_the_streamed_line(outdir, monkeypatch, capsys):
    """Ctrl-C while tokens stream: the streamed text ends with a newline, so `mq-deploy: interrupted` is a line of its
    own; exit 130."""
    import mq_deploy.generate as gen
    from mq_deploy.cli import main

    real = gen.generate

    def interrupted(session, prompts, **kw):
        stop = kw["on_token"]

        def on_token(row, t):
            stop(row, t)
            raise KeyboardInterrupt

        return real(session, prompts, **{**kw, "on_token": on_token})

    monkeypatch.setattr(gen, "generate", interrupted)
    assert main(["generate", str(outdir), "--prompt", "The river", "--max-new-tokens", "8"]) == 130
    cap = capsys.readouterr()
    assert cap.out.startswith("The river") and cap.out.endswith("\n") and cap.out.count("\n") == 1
    assert cap.err.endswith("mq-deploy: interrupted\n")


def test_generate_stopped_keeps_the_rows_so_far(outdir, monkeypatch, capsys):
    """Several prompts print each row when it finishes; Ctrl-C or SIGTERM prints the rows still running as far as they
    got, marked [stopped], instead of throwing them away (a row that finished is printed once)."""
    import mq_deploy.generate as gen
    from mq_deploy.cli import main
    from mq_deploy.errors import Terminated

    real = gen.generate
    for stop_with, code in ((KeyboardInterrupt, 130), (Terminated, 143)):
        def interrupted(session, prompts, **kw):
            seen = []

            def on_token(row, t):
                kw["on_token"](row, t)
                seen.append(row)
                if len(seen) == 6:  # three tokens of each of the two rows
                    raise stop_with

            return real(session, prompts, **{**kw, "on_token": on_token})

        monkeypatch.setattr(gen, "generate", interrupted)
        args = ["generate", str(outdir), "--prompt", "The river", "--prompt", "Once upon", "--max-new-tokens", "50"]
        assert main(args) == code
        out = capsys.readouterr().out.splitlines()
        assert [ln.split("] ")[0] for ln in out] == ["[1", "[2"] and all(ln.endswith(" [stopped]") for ln in out)
        assert out[0].startswith("[1] The river") and len(out[0]) > len("[1] The river [stopped]")
        assert out[1].startswith("[2] Once upon") and len(out[1]) > len("[2] Once upon [stopped]")
