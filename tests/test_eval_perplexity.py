"""Perplexity windows, counts and values against hand-computed numbers (fake models)."""

import math

import numpy as np
import pytest

from mq_deploy.compare import perplexity_and_drift
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


# -- compare's numbers (perplexity_and_drift) against a plain-Python computation -------------------------------------
def _logits_fn(seed, vocab):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0, 2, (vocab, vocab)), rng.normal(0, 1, (5, vocab))

    def fn(ids):  # causal, depends on the token and its position
        return (a[ids] + b[np.arange(ids.shape[1]) % 5]).astype(np.float32)

    return fn


def test_compare_drift_by_hand():
    """perplexity_and_drift: perplexity of the recipe's model on w[:, 1:], KL(fp32 ‖ recipe) and top-1 agreement with
    fp32's argmax, each a mean over every predicted token (3 windows in batches of 2: a per-batch or per-window mean
    differs), against a plain-Python computation."""
    vocab, L = 11, 9
    ref_fn, fn = _logits_fn(0, vocab), _logits_fn(1, vocab)
    windows = np.random.default_rng(2).integers(0, vocab, (3, L)).astype(np.int64)
    windows[2, 4:] = 7  # (a window unlike the others)
    got = perplexity_and_drift(ref_fn, fn, windows, batch_size=2)

    def logsoftmax(row):
        m = max(row)
        s = math.log(sum(math.exp(x - m) for x in row))
        return [x - m - s for x in row]

    nll = kl = agree = 0.0
    n = 0
    for w in windows:
        lq, lp = fn(w[None])[0].astype(np.float64), ref_fn(w[None])[0].astype(np.float64)
        for t in range(L - 1):
            q, p = logsoftmax(list(lq[t])), logsoftmax(list(lp[t]))
            nll -= q[w[t + 1]]
            kl += sum(math.exp(pi) * (pi - qi) for pi, qi in zip(p, q))
            agree += int(np.argmax(q) == np.argmax(p))
            n += 1
    assert got["tokens"] == n == 3 * (L - 1)
    assert got["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-9)
    assert got["kl"] == pytest.approx(kl / n, rel=1e-9)
    assert got["top1_agree"] == pytest.approx(agree / n, rel=1e-12)
    assert 0 < got["top1_agree"] < 1 and got["kl"] > 0.1  # (a real check: the two models differ)
    same = perplexity_and_drift(ref_fn, ref_fn, windows, batch_size=2)
    assert same["kl"] == 0.0 and same["top1_agree"] == 1.0
