"""`mq-deploy generate` as a user runs it: streaming output, timings on stderr, and clean failures."""

import shutil
import subprocess
import sys

import pytest

from mq_deploy.loaders import BUNDLED_DIR

from .conftest import need


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mq_deploy", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


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
    (["--prompt", "fine", "--prompt", "   "], ["prompt 2 is empty"]),
    (["--prompt", "one two three four five six", "--max-prompt-tokens", "3"], ["prompt 1 has", "maximum of 3"]),
    (["--prompt", "hi", "--max-new-tokens", "0"], ["max-new-tokens must be at least 1"]),
    (["--prompt", "hi", "--greedy", "--temperature", "0.5"], ["--greedy cannot be combined"]),
    (["--prompt", "hi", "--top-p", "1.5"], ["top-p must be in (0, 1]"]),
])
def test_generate_bad_input(outdir, args, fragments):
    assert_user_error(run_cli("generate", outdir, *args), *fragments)


def test_generate_outdir_without_decode_graphs(outdir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(outdir, old)
    (old / "model.decode.portable.onnx").unlink()
    assert_user_error(run_cli("generate", old, "--prompt", "hi"), "no model.decode.portable.onnx", "recompile")
    assert_user_error(run_cli("generate", tmp_path / "missing", "--prompt", "hi"), "is not a directory")


def test_generate_api_refuses_text_prompts():
    """The Python API takes token ids; text (what the CLI takes) is one clear error, not a ValueError from int()."""
    from mq_deploy.errors import UserError
    from mq_deploy.generate import check_request

    for prompts in ("Once upon a time", ["Once upon a time"], [[1, 2], "x"]):
        with pytest.raises(UserError, match="encode text first"):
            check_request(prompts, 4)
    check_request([[1, 2, 3], [4]], 4)  # token ids pass
