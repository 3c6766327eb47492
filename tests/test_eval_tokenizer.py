"""TextTokenizer on the GPT-NeoX tokenizer and the bundled mamba-tiny one."""

from pathlib import Path

import pytest

from mq_deploy.errors import UserError
from mq_deploy.eval.tokenizer import TextTokenizer

from .conftest import NEOX_TOKENIZER

NEOX = NEOX_TOKENIZER
BUNDLED = Path(__file__).resolve().parents[1] / "src/mq_deploy/assets/mamba-tiny/tokenizer.json"

needs_neox = pytest.mark.skipif(not NEOX.is_file(), reason="GPT-NeoX tokenizer not present")


@needs_neox
def test_neox_special_ids_and_vocab():
    tok = TextTokenizer(NEOX)
    assert tok.eot_id == 0
    assert tok.pad_id == 1
    assert tok.vocab_size == 50277


@needs_neox
def test_neox_encode_adds_no_special_tokens_and_round_trips():
    tok = TextTokenizer(NEOX)
    assert tok.encode("Hello world") == [12092, 1533]
    assert tok.encode(" Paris") == [7785]
    text = "Question: What is 2+2?\nAnswer: 4\n\n = Heading = \n"
    ids = tok.encode(text)
    assert 0 not in ids
    assert tok.decode(ids) == text
    assert tok.encode_batch([text, " Paris"]) == [ids, [7785]]
    assert tok.encode_batch([]) == []


def test_bundled_tokenizer_file_and_folder():
    tok = TextTokenizer(BUNDLED)
    assert tok.eot_id == 0
    assert tok.pad_id == 1
    assert tok.vocab_size == 8192
    same = TextTokenizer(BUNDLED.parent)  # a folder holding tokenizer.json
    text = "The cat sat on the mat."
    assert same.encode(text) == tok.encode(text)
    assert tok.decode(tok.encode(text)).strip() == text  # add_prefix_space=True: leading space
    assert 0 not in tok.encode(text)


def test_missing_and_bad_tokenizer_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        TextTokenizer(tmp_path / "nope.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="tokenizers"):
        TextTokenizer(bad)
    with pytest.raises(UserError, match="not found"):
        TextTokenizer(tmp_path / "empty_dir_without_tokenizer")


def test_tokenizer_without_an_end_of_text_token_serves_what_does_not_need_one():
    """No end-of-text token: encoding (perplexity, calibration) works and padding takes id 0; what needs the token
    (zero-shot's empty context, generation's stop) is one error naming the tokens looked for. `</s>` and the other
    names of EOT_TOKENS are found too."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    t = TextTokenizer.from_tokenizer(tok)
    assert t.encode("a b a") == [0, 1, 0] and t.pad_id == 0
    with pytest.raises(UserError, match=r"has no end-of-text token \(<\|endoftext\|>, </s>, .*perplexity and "
                                        r"calibration do not"):
        t.eot_id
    tok.add_special_tokens(["</s>"])
    t = TextTokenizer.from_tokenizer(tok)
    assert t.eot_id == 3 and t.pad_id == 3


def test_ids_outside_the_models_vocabulary_are_one_error():
    """for_model(V): every encode refuses an id >= V, naming it (another model's tokenizer); below V, nothing."""
    tok = TextTokenizer(BUNDLED)
    ids = tok.encode("The cat sat on the mat.")
    assert tok.for_model(max(ids) + 1).encode("The cat sat on the mat.") == ids
    tok.for_model(max(ids))
    with pytest.raises(UserError, match=f"gives token id {max(ids)} .*outside the model's vocabulary of {max(ids)} "
                                        "ids: it is not this model's tokenizer"):
        tok.encode_batch(["x", "The cat sat on the mat."])
    assert tok.for_model(None).encode("The cat sat on the mat.") == ids


def test_eval_with_another_models_tokenizer_is_one_line(tmp_path):
    """`mq-deploy eval` of a checkpoint (torch) and of an OUTDIR's graph (onnxruntime) with a tokenizer whose ids pass
    the model's vocabulary: one error line, no Gather / IndexError traceback."""
    import subprocess
    import sys

    from mq_deploy.model import MambaConfig, random_model

    from .helpers import write_hf_checkpoint

    ck = write_hf_checkpoint(random_model(MambaConfig(d_model=32, n_layer=1, vocab_size=500), seed=1), tmp_path / "ck")
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    run = lambda *a: subprocess.run([sys.executable, "-m", "mq_deploy", *map(str, a)], capture_output=True,  # noqa
                                    text=True, timeout=300)
    r = run("compile", ck, "-o", tmp_path / "out", "-q", "--tokenizer", BUNDLED)  # copied, with a warning
    assert r.returncode == 0 and r.stderr.strip() == (f"warning: tokenizer {BUNDLED} has 8192 ids, the model's "
                                                      "vocabulary 500: is it this model's tokenizer? (eval and "
                                                      "generate refuse text with ids outside the vocabulary)")
    for target in (ck, tmp_path / "out", tmp_path / "out" / "model.onnx"):
        r = run("eval", target, "--tokenizer", BUNDLED, "--task", "text", "--data", text, "--seq-len", 32, "--limit", 1)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (target, r.stderr)
        (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("mq-deploy: error: ")]
        assert "outside the model's vocabulary of 500 ids" in line, (target, line)


def test_encode_adds_no_special_tokens_even_where_the_tokenizer_would():
    """A Llama-style tokenizer.json whose post-processor adds a BOS: `encode` must still add nothing (lm-eval's
    add_special_tokens=False); the shipped ByteLevel tokenizers cannot tell."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    t = Tokenizer(models.WordLevel({"<s>": 0, "</s>": 1, "a": 2, "b": 3, "[UNK]": 4}, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    assert t.encode("a b").ids == [0, 2, 3]  # (the tokenizer itself would add it)
    tt = TextTokenizer.from_tokenizer(t)
    assert tt.encode("a b") == [2, 3] and tt.encode_batch(["a b", "b"]) == [[2, 3], [3]]
    assert tt.eot_id == 1
