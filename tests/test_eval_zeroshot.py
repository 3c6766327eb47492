"""lm-eval zero-shot protocol: pair encoding, truncation, log-likelihoods and metrics with
fake models whose scores can be computed by hand."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mq_deploy.errors import UserError
from mq_deploy.eval import run_task
from mq_deploy.eval.data import ChoiceItem, ClozeItem, PartialItem, read_hellaswag
from mq_deploy.eval.tokenizer import TextTokenizer
from mq_deploy.eval.zeroshot import (
    _encode_pairs,
    build_request,
    encode_pair,
    evaluate_zeroshot,
    loglikelihood,
    loglikelihoods,
    task_requests,
)

from .conftest import DATA_DIR, NEOX_TOKENIZER

BUNDLED = Path(__file__).resolve().parents[1] / "src/mq_deploy/assets/mamba-tiny/tokenizer.json"
NEOX = NEOX_TOKENIZER
REAL = DATA_DIR
needs_neox = pytest.mark.skipif(not NEOX.is_file(), reason="GPT-NeoX tokenizer not present")
needs_real = pytest.mark.skipif(
    not (REAL / "eval").is_dir() or not NEOX.is_file(), reason="shared data not present"
)

V = 8192  # the bundled tokenizer's vocabulary


@pytest.fixture(scope="module")
def tok():
    return TextTokenizer(BUNDLED)


def uniform(vocab=V):
    return lambda ids: np.zeros(ids.shape + (vocab,), dtype=np.float32)


def peaked(token, value):
    """Every position: logit `value` on `token`, 0 elsewhere."""

    def fn(ids):
        out = np.zeros(ids.shape + (V,), dtype=np.float32)
        out[..., token] = value
        return out

    return fn


def bigram(entries):
    """logits[t, nxt] = value where ids[t] == prev, for (prev, nxt) -> value in `entries`."""

    def fn(ids):
        out = np.zeros(ids.shape + (V,), dtype=np.float32)
        for (prev, nxt), value in entries.items():
            out[..., nxt][ids == prev] = value
        return out

    return fn


def prefix_model(seed=0):
    # float64 logits: a float32 matmul's summation order depends on the batch shape on some BLAS kernels (seen on an
    # AVX2-only CPU: 8e-8 relative between a row alone and the same row in a padded batch), which is not what the
    # batching tests are about; in float64 that reordering stays ~1e-16
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 1, (V, 16))
    b = rng.normal(0, 1, (13, 16))
    w = rng.normal(0, 1, (16, V))

    def fn(ids):
        return (a[ids] + b[np.cumsum(ids, axis=1) % 13]) @ w

    return fn


def lse(c):
    """log of the softmax normalizer of a row with one logit c and V-1 zeros."""
    return math.log(math.exp(c) + V - 1)


# ----------------------------------------------------------------------------- encode_pair


def test_encode_pair_moves_trailing_whitespace(tok):
    ctx, cont = encode_pair(tok, "Question: ", "x")
    assert ctx == tok.encode("Question:")
    assert cont == tok.encode("Question: x")[len(ctx):] == tok.encode(" x")
    # any whitespace, not only spaces
    ctx, cont = encode_pair(tok, "A:\n", "b")
    assert ctx == tok.encode("A:") == [34, 27]
    assert cont == tok.encode("A:\nb")[2:] == [200, 67]


@needs_neox
def test_encode_pair_neox():
    neox = TextTokenizer(NEOX)
    ctx, cont = encode_pair(neox, "Question: x\nAnswer: ", "Paris")
    assert ctx == neox.encode("Question: x\nAnswer:")
    assert cont == [7785] == neox.encode(" Paris")
    # Without moving the space the context would end in a lone " " token and "Paris" would differ.
    assert neox.encode("Question: x\nAnswer: ")[-1] == 209
    assert neox.encode("Paris") != cont


def test_encode_pair_empty_context(tok):
    assert encode_pair(tok, "", " cat") == ([0], [6113])
    assert encode_pair(tok, "", "<|endoftext|> cat") == ([0], [6113])  # eot taken as context
    assert encode_pair(tok, "  ", "b") == ([0], tok.encode("  b"))  # whitespace-only context


def test_batched_encoding_matches_encode_pair(tok):
    pairs = [("Question: ", "x"), ("", " cat"), ("A:\n", "b"), ("  ", "b"),
             ("He opened the", " door"), ("He opened the", " door"), ("", "<|endoftext|> cat")]
    assert _encode_pairs(tok, pairs) == [encode_pair(tok, c, x) for c, x in pairs]


# ----------------------------------------------------------------------------- truncation


def test_build_request_truncates_from_the_left():
    r = build_request(list(range(10, 20)), [1, 2, 3], max_length=5)
    assert r.input_ids == (17, 18, 19, 1, 2)
    assert r.start == 2 and r.targets == (1, 2, 3)
    r = build_request([5, 6], [7], max_length=2048)
    assert r.input_ids == (5, 6) and r.start == 1 and r.targets == (7,)
    with pytest.raises(UserError, match="seq-len"):
        build_request([1], [2, 3, 4], max_length=2)


# ----------------------------------------------------------------------------- loglikelihood


def test_loglikelihood_hand_computed(tok):
    assert encode_pair(tok, "He opened the", " door") == ([2147, 2883, 263], [2300])
    fn = bigram({(263, 2300): 5.0})
    ll, greedy = loglikelihood(fn, tok, "He opened the", " door")
    assert ll == pytest.approx(5.0 - lse(5.0), rel=1e-6) and greedy
    ll, greedy = loglikelihood(fn, tok, "He opened the", " cat")
    assert ll == pytest.approx(-lse(5.0), rel=1e-6) and not greedy
    # two tokens: " the" then " door" after " the"
    ll, greedy = loglikelihood(fn, tok, "He opened", " the door")
    assert ll == pytest.approx(-math.log(V) + 5.0 - lse(5.0), rel=1e-6) and not greedy


def test_truncation_keeps_bigram_scores(tok):
    fn = bigram({(263, 2300): 5.0, (2883, 263): 2.0})
    full = loglikelihoods(fn, tok, [("He opened the", " door"), ("He opened", " the door")],
                          max_length=2048, progress=False)
    short = loglikelihoods(fn, tok, [("He opened the", " door"), ("He opened", " the door")],
                           max_length=2, progress=False)
    assert [l for l, _ in short] == pytest.approx([l for l, _ in full], rel=1e-9)
    assert [g for _, g in short] == [g for _, g in full] == [True, True]
    assert full[1][0] == pytest.approx(2.0 - lse(2.0) + 5.0 - lse(5.0), rel=1e-6)


def test_batching_and_sorting_do_not_change_loglikelihoods(tok):
    fn = prefix_model()
    pairs = [("Question: Which animal barks?\nAnswer:", " dog"),
             ("A", " very long continuation with many more tokens than the others"),
             ("He opened the", " door"), ("", " cat"),
             ("The quick brown fox jumps over the lazy", " dog."),
             ("He opened the", " cat"), ("Short", " x")]
    alone = [loglikelihood(fn, tok, c, x) for c, x in pairs]
    batched = loglikelihoods(fn, tok, pairs, batch_size=4, progress=False)
    assert [g for _, g in batched] == [g for _, g in alone]
    np.testing.assert_allclose([l for l, _ in batched], [l for l, _ in alone], rtol=1e-12)
    assert len({round(l, 6) for l, _ in alone}) == len(pairs)  # all different: a real check


# ----------------------------------------------------------------------------- prompts


def test_task_prompts():
    arc = ChoiceItem("Which is a gas?", ("rock", "air"), 1)
    pairs, norm = task_requests("arc_easy", arc)
    assert pairs == [("Question: Which is a gas?\nAnswer:", " rock"),
                     ("Question: Which is a gas?\nAnswer:", " air")]
    assert norm == ["rock", "air"]
    assert task_requests("piqa", ChoiceItem("Open a jar", ("twist ", "hit"), 0))[0][0] == (
        "Question: Open a jar\nAnswer:", " twist ")
    hs = ChoiceItem("Ctx: a man walks. he", ("sits.", "runs."), 0)
    assert task_requests("hellaswag", hs)[0] == [("Ctx: a man walks. he", " sits."),
                                                  ("Ctx: a man walks. he", " runs.")]
    wg = PartialItem(("A beat B so A", "A beat B so B"), "won.", 0)
    assert task_requests("winogrande", wg) == (
        [("A beat B so A", " won."), ("A beat B so B", " won.")], [])
    assert task_requests("lambada_openai", ClozeItem("He opened the", "door")) == (
        [("He opened the", " door")], [])


# ----------------------------------------------------------------------------- metrics


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_acc_and_acc_norm_by_hand(tmp_path, tok):
    # Uniform model: loglik = -(number of tokens) * log V. " the" is one token, so
    # acc prefers the fewest tokens, acc_norm (per character) prefers "the the the" (-3/11 > -1/3).
    for c in ("the", "the the", "the the the"):
        assert encode_pair(tok, "Question: q\nAnswer:", " " + c)[1] == [263] * (c.count("the"))
    rows = [
        {"query": "Question: q", "choices": ["the", "the the the"], "gold": 0},  # acc 1, norm 0
        {"query": "Question: q", "choices": ["the", "the the the"], "gold": 1},  # acc 0, norm 1
        {"query": "Question: q", "choices": ["the the", "the"], "gold": 1},      # acc 1, norm 0
    ]
    p = _write(tmp_path / "arc.jsonl", rows)
    r = run_task("arc_easy", uniform(), tok, data_path=p, batch_size=2, progress=False)
    assert r["n"] == 3
    assert r["acc"] == pytest.approx(2 / 3)
    assert r["acc_norm"] == pytest.approx(1 / 3)
    assert r["acc_stderr"] == pytest.approx(1 / 3)  # sqrt(1/3) / sqrt(3)
    assert r["acc_norm_stderr"] == pytest.approx(1 / 3)
    r = run_task("arc_challenge", uniform(), tok, data_path=p, limit=1, progress=False)
    assert (r["n"], r["acc"], r["acc_norm"], r["acc_stderr"]) == (1, 1.0, 0.0, None)


def test_model_that_prefers_a_choice(tmp_path, tok):
    rows = [
        {"query": "Question: Which animal meows?", "choices": ["dog", "cat", "bird"], "gold": 1},
        {"query": "Question: Which animal barks?", "choices": ["dog", "cat", "bird"], "gold": 0},
        {"query": "Question: Which one purrs?", "choices": ["cat", "bird"], "gold": 0},
    ]
    p = _write(tmp_path / "arc.jsonl", rows)
    r = run_task("arc_easy", peaked(6113, 4.0), tok, data_path=p, progress=False)  # " cat"
    assert (r["acc"], r["acc_norm"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3))


def test_piqa_and_hellaswag_through_run_task(tmp_path, tok):
    d = tmp_path / "piqa"
    d.mkdir()
    _write(d / "valid.jsonl", [{"goal": "Feed a pet", "sol1": "cat", "sol2": "dog"},
                               {"goal": "Feed a pet", "sol1": "dog", "sol2": "cat"}])
    (d / "valid-labels.lst").write_text("0\n0\n")
    r = run_task("piqa", peaked(6113, 4.0), tok, data_path=d, progress=False)
    assert (r["n"], r["acc"]) == (2, 0.5)
    hs = tmp_path / "h.txt"
    hs.write_text("Pets: the man feeds the\n1\ndog\ncat\nbird\nfish\n"
                  "Pets: the man feeds the\n3\ndog\nbird\nfish\ncat\n")
    r = run_task("hellaswag", peaked(6113, 4.0), tok, data_path=hs, progress=False)
    assert (r["n"], r["acc"], r["acc_norm"]) == (2, 1.0, 1.0)


def test_winogrande_partial_scoring_by_hand(tok):
    a, b = "Alice beat Bob so Alice", "Alice beat Bob so Bob"
    ctx_a, cont = encode_pair(tok, a, " was happy.")
    ctx_b, _ = encode_pair(tok, b, " was happy.")
    assert len(cont) == 3 and ctx_a[-1] != ctx_b[-1] and ctx_a[-1] not in cont
    fn = bigram({(ctx_a[-1], cont[0]): 8.0})
    lls = loglikelihoods(fn, tok, [(a, " was happy."), (b, " was happy.")], progress=False)
    # only the continuation is scored: 3 tokens, the first boosted after option A
    assert lls[0][0] == pytest.approx(8.0 - lse(8.0) - 2 * math.log(V), rel=1e-6)
    assert lls[1][0] == pytest.approx(-3 * math.log(V), rel=1e-6)
    items = [PartialItem((a, b), "was happy.", 0), PartialItem((a, b), "was happy.", 1)]
    r = evaluate_zeroshot("winogrande", fn, tok, items, progress=False)
    assert r == {"task": "winogrande", "n": 2, "acc": 0.5,
                 "acc_stderr": pytest.approx(0.5), "seq_len": 2048}


def test_lambada_acc_and_perplexity_by_hand(tmp_path, tok):
    p = _write(tmp_path / "l.jsonl", [{"context": "He opened the", "continuation": "door"},
                                      {"context": "He opened the", "continuation": "cat"}])
    c = 4.0
    r = run_task("lambada_openai", peaked(2300, c), tok, data_path=p, progress=False)
    ll_door, ll_cat = c - lse(c), -lse(c)
    assert r["n"] == 2
    assert r["acc"] == 0.5  # " door" is the argmax, " cat" is not
    assert r["perplexity"] == pytest.approx(math.exp(-(ll_door + ll_cat) / 2), rel=1e-6)
    assert "acc_norm" not in r


# ----------------------------------------------------------------------------- run_task


def test_run_task_errors(tmp_path, tok):
    with pytest.raises(UserError, match="valid tasks: wikitext2, text, arc_easy"):
        run_task("mmlu", uniform(), tok)
    with pytest.raises(UserError, match="--data PATH"):
        run_task("text", uniform(), tok)
    with pytest.raises(UserError, match="not found"):
        run_task("arc_easy", uniform(), tok, data_path=tmp_path / "none.jsonl")
    f = tmp_path / "t.txt"
    f.write_text("some text " * 50)
    for kwargs in ({"limit": 0}, {"batch_size": 0}, {"seq_len": 1}):
        with pytest.raises(UserError):
            run_task("text", uniform(), tok, data_path=f, progress=False, **kwargs)


def test_run_task_perplexity(tmp_path, tok, monkeypatch):
    f = tmp_path / "t.txt"
    f.write_text("The cat sat on the mat. " * 40)
    n = len(tok.encode(f.read_text()))
    r = run_task("text", uniform(), tok, data_path=f, seq_len=16, progress=False)
    assert r["perplexity"] == pytest.approx(V, rel=1e-9)
    assert (r["windows"], r["tokens"]) == (n // 16, (n // 16) * 15)
    assert r["data"] == str(f)
    (tmp_path / "text").mkdir()
    f.rename(tmp_path / "text/wikitext2_test.txt")
    monkeypatch.setenv("MQ_DEPLOY_DATA_DIR", str(tmp_path))
    r2 = run_task("wikitext2", uniform(), tok, seq_len=16, limit=2, progress=False)
    assert (r2["task"], r2["windows"], r2["tokens"]) == ("wikitext2", 2, 30)


@needs_real
def test_real_arc_and_hellaswag_with_uniform_model():
    """Uniform model: the prediction is the choice with the fewest tokens (acc) / the best
    tokens-per-character (acc_norm); check against counts from the tokenizer."""
    neox = TextTokenizer(NEOX)
    from mq_deploy.eval.data import read_question_choices

    items = read_question_choices(REAL / "eval/arc_easy.jsonl")[:20]
    exp_acc, exp_norm = [], []
    for it in items:
        pairs, _ = task_requests("arc_easy", it)
        n = np.array([len(encode_pair(neox, c, x)[1]) for c, x in pairs], dtype=float)
        exp_acc.append(int(np.argmax(-n)) == it.gold)
        exp_norm.append(int(np.argmax(-n / [len(c) for c in it.choices])) == it.gold)
    r = run_task("arc_easy", uniform(50280), neox, data_path=REAL / "eval/arc_easy.jsonl",
                 limit=20, progress=False)
    assert r["n"] == 20
    assert r["acc"] == pytest.approx(np.mean(exp_acc))
    assert r["acc_norm"] == pytest.approx(np.mean(exp_norm))
    hs = read_hellaswag(REAL / "eval/hellaswag_val.txt.bz2")[:12]
    exp_acc, exp_norm = [], []
    for it in hs:  # the same by-count prediction through HellaSwag's own prompts
        pairs, _ = task_requests("hellaswag", it)
        n = np.array([len(encode_pair(neox, c, x)[1]) for c, x in pairs], dtype=float)
        exp_acc.append(int(np.argmax(-n)) == it.gold)
        exp_norm.append(int(np.argmax(-n / [len(c) for c in it.choices])) == it.gold)
    r = evaluate_zeroshot("hellaswag", uniform(50280), neox, hs, progress=False)
    assert r["n"] == 12
    assert r["acc"] == pytest.approx(np.mean(exp_acc))
    assert r["acc_norm"] == pytest.approx(np.mean(exp_norm))
    assert 0 < np.mean(exp_acc) < 1 or 0 < np.mean(exp_norm) < 1  # the items tell a right count from a wrong one


def test_lambada_multi_token_word_is_right_only_if_every_token_is_greedy(tmp_path, tok):
    """lm-eval's is_greedy is over the whole continuation: a word whose first token is the argmax but whose second is
    not is wrong (acc 0), and one whose every token is the argmax is right."""
    ctx, cont = encode_pair(tok, "He opened", " the door")
    assert ctx[-1] == 2883 and cont == [263, 2300]

    def first_only(ids):  # " opened" -> " the" is the argmax; after " the" everything is uniform (argmax is id 0)
        out = np.zeros(ids.shape + (V,), dtype=np.float32)
        out[..., 263][ids == 2883] = 5.0
        return out

    assert loglikelihood(first_only, tok, "He opened", " the door")[1] is False
    p = tmp_path / "l.jsonl"
    p.write_text(json.dumps({"context": "He opened", "continuation": "the door"}) + "\n")
    assert run_task("lambada_openai", first_only, tok, data_path=p, progress=False)["acc"] == 0.0

    def both(ids):
        out = first_only(ids)
        out[..., 2300][ids == 263] = 5.0
        return out

    assert run_task("lambada_openai", both, tok, data_path=p, progress=False)["acc"] == 1.0
