"""TextTokenizer on the GPT-NeoX tokenizer and the bundled mamba-tiny one."""

from pathlib import Path

import pytest

from mq_deploy.errors import UserError
from mq_deploy.eval.tokenizer import TextTokenizer

NEOX = Path("/work/shared/data/tokenizer/gpt-neox-20b.json")
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


def test_tokenizer_without_endoftext_is_a_user_error():
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(UserError, match="endoftext"):
        TextTokenizer.from_tokenizer(tok)
