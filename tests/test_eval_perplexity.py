"""Perplexity windows, counts and values against hand-computed numbers (fake models)."""

import math

import numpy as np
import pytest

from mq_deploy.errors import InternalError, UserError
from mq_deploy.eval.perplexity import evaluate_perplexity, token_windows
from mq_deploy.eval.scoring import ScoreRequest, score_requests, target_logprobs

V = 128


class CharTokenizer:
    """One token per character (ord < 128); pad id 0."""

    pad_id = 0
    eot_id = 0

    def encode(self, text):
        return [ord(c) % V for c in text]


def uniform_model(ids):
    return np.zeros(ids.shape + (V,), dtype=np.float32)


def bigram_model(seed=0):
    table = np.random.default_rng(seed).normal(0, 2, (V, V)).astype(np.float32)

    def fn(ids):
        return table[ids]

    return fn, table


def prefix_model(seed=1):
    """Causal but depends on the whole prefix: wrong padding or shifting would change scores."""
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 2, (V, V)).astype(np.float32)
    b = rng.normal(0, 2, (7, V)).astype(np.float32)

    def fn(ids):
        return a[ids] + b[np.cumsum(ids, axis=1) % 7]

    return fn


TEXT = "".join(chr(32 + (i * 7919) % 95) for i in range(1000))  # 1000 printable chars


def test_windows_counts():
    ids = list(range(1000))
    w = token_windows(ids, 64)
    assert len(w) == 15 and all(len(x) == 64 for x in w)
    assert w[1][0] == 64 and w[-1][-1] == 959  # remainder 960..999 dropped
    assert len(token_windows(ids, 64, limit=4)) == 4
    assert token_windows(ids[:10], 64) == [tuple(range(10))]  # shorter than one window
    assert len(token_windows(ids, 1000)) == 1
    with pytest.raises(UserError):
        token_windows(ids, 1)
    with pytest.raises(UserError):
        token_windows(ids, 64, limit=0)
    with pytest.raises(UserError):
        token_windows([5], 64)


def test_uniform_model_perplexity_is_vocab_size():
    r = evaluate_perplexity(uniform_model, CharTokenizer(), TEXT, seq_len=64, progress=False)
    assert r["windows"] == 15
    assert r["tokens"] == 15 * 63
    assert r["seq_len"] == 64
    assert r["perplexity"] == pytest.approx(V, rel=1e-9)
    r = evaluate_perplexity(uniform_model, CharTokenizer(), TEXT, 64, limit=4, progress=False)
    assert (r["windows"], r["tokens"]) == (4, 4 * 63)
    r = evaluate_perplexity(uniform_model, CharTokenizer(), TEXT[:10], 64, progress=False)
    assert (r["windows"], r["tokens"], r["seq_len"]) == (1, 9, 10)


def test_bigram_perplexity_matches_hand_computation():
    fn, table = bigram_model()
    seq_len, limit = 50, 7
    r = evaluate_perplexity(
        fn, CharTokenizer(), TEXT, seq_len=seq_len, limit=limit, batch_size=3, progress=False
    )
    ids = CharTokenizer().encode(TEXT)
    nll, count = 0.0, 0
    for w in range(limit):
        win = ids[w * seq_len : (w + 1) * seq_len]
        for t in range(1, seq_len):
            row = [float(x) for x in table[win[t - 1]]]
            lse = math.log(sum(math.exp(x) for x in row))
            nll -= row[win[t]] - lse
            count += 1
    assert r["tokens"] == count == limit * (seq_len - 1)
    assert r["nll"] == pytest.approx(nll / count, rel=1e-6)
    assert r["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-6)
    # A real number, not the uniform one (a random bigram table is worse than uniform here).
    assert abs(r["perplexity"] - V) > 10


def test_batch_size_does_not_change_perplexity():
    fn = prefix_model()
    tok = CharTokenizer()
    one = evaluate_perplexity(fn, tok, TEXT, 40, batch_size=1, progress=False)
    many = evaluate_perplexity(fn, tok, TEXT, 40, batch_size=6, progress=False)
    assert one["windows"] == many["windows"] == 25
    assert many["perplexity"] == pytest.approx(one["perplexity"], rel=1e-12)


def test_right_padding_gives_same_scores_as_unbatched():
    fn = prefix_model()
    rng = np.random.default_rng(3)
    reqs = []
    for n in (5, 17, 3, 17, 9, 30, 2):
        ids = tuple(int(x) for x in rng.integers(2, V, n))
        reqs.append(ScoreRequest(ids, max(0, n - 4), ids[max(1, n - 3) :][: min(4, n - 1)]))
    batched = score_requests(fn, reqs, pad_id=0, batch_size=4)
    for r, s in zip(reqs, batched):
        alone = score_requests(fn, [r], pad_id=0, batch_size=1)[0]
        np.testing.assert_array_equal(s.logprobs, alone.logprobs)
        np.testing.assert_array_equal(s.greedy, alone.greedy)
    # ... and padding with a different id changes nothing either.
    other = score_requests(fn, reqs, pad_id=V - 1, batch_size=7)
    for s, o in zip(batched, other):
        np.testing.assert_array_equal(s.logprobs, o.logprobs)


def test_target_logprobs_is_stable_and_exact():
    logits = np.array([[1000.0, 1000.0, 990.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    lp, greedy = target_logprobs(logits, np.array([0, 2]))
    expected0 = -math.log(2 + math.exp(-10))
    assert lp[0] == pytest.approx(expected0, rel=1e-6)
    assert lp[1] == pytest.approx(-math.log(3), rel=1e-9)
    assert greedy.tolist() == [True, False]  # ties: first index is the argmax


def test_bad_model_output_and_vocab_mismatch():
    reqs = [ScoreRequest((1, 2, 3), 0, (2, 3))]
    with pytest.raises(InternalError, match="shape"):
        score_requests(lambda ids: np.zeros((1, 2, V), np.float32), reqs, 0)
    with pytest.raises(UserError, match="vocabulary"):
        score_requests(lambda ids: np.zeros(ids.shape + (3,), np.float32), reqs, 0)
    with pytest.raises(UserError):
        score_requests(uniform_model, reqs, 0, batch_size=0)
    for bad in (np.nan, np.inf):  # a broken model's logits: an error, not a perplexity of nan
        def broken(ids, bad=bad):
            out = uniform_model(ids)
            out[..., 0, 5] = bad  # (a position whose logits score a target)
            return out

        with pytest.raises(UserError, match=r"logits are not finite \(NaN or Inf\) while scoring"):
            score_requests(broken, reqs, 0)
