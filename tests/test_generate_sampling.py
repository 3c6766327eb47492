"""generate's sampling (temperature, top-p, per row) against its definition, and a batch's EOS, limit and left padding,
on fake logits and a fake session (no model)."""

import math

import numpy as np
import pytest

from mq_deploy.generate import Sampling, generate, sample


def _freq(logits, cfg, n=20000):
    rows = np.repeat(np.asarray(logits, np.float32)[None], n, axis=0)
    out = sample(rows, cfg, np.random.default_rng(cfg.seed))
    return np.bincount(out, minlength=rows.shape[1]) / n


def test_temperature_divides_the_logits():
    # p = [.25, .75]; at T = 0.5: p ∝ p**2 = [1, 9] / 10
    f = _freq([0.0, math.log(3)], Sampling(greedy=False, temperature=0.5, seed=0))
    assert f[1] == pytest.approx(0.9, abs=0.015)
    f = _freq([0.0, math.log(3)], Sampling(greedy=False, temperature=1.0, seed=0))
    assert f[1] == pytest.approx(0.75, abs=0.015)


def test_top_p_keeps_the_smallest_head_and_renormalizes():
    # p = [.5, .3, .2]; top_p .6 keeps {0, 1} -> [.625, .375, 0]; top_p .5 keeps {0} only
    logits = np.log([0.5, 0.3, 0.2])
    f = _freq(logits, Sampling(greedy=False, top_p=0.6, seed=1))
    assert f[2] == 0 and f[0] == pytest.approx(0.625, abs=0.015)
    assert _freq(logits, Sampling(greedy=False, top_p=0.5, seed=1)).tolist() == [1.0, 0.0, 0.0]


def test_top_p_reached_exactly_keeps_no_more_tokens():
    """p = [.5, .5] with top_p .5: the first token alone already has the mass, so only it is kept (the smallest set;
    mutant: searchsorted side="right", which keeps both at such a tie)."""
    assert _freq([0.0, 0.0], Sampling(greedy=False, top_p=0.5, seed=4), n=2000).tolist() == [1.0, 0.0]


def test_top_p_applies_to_the_tempered_distribution():
    """Temperature first, then nucleus (Hugging Face's order): at T=2 p = [.5,.3,.2] becomes [.415, .322, .263], so
    top_p .45 keeps two tokens ([.563, .437]); on the untempered p it would keep only the first."""
    f = _freq(np.log([0.5, 0.3, 0.2]), Sampling(greedy=False, temperature=2.0, top_p=0.45, seed=2))
    assert f[2] == 0 and f[1] == pytest.approx(0.437, abs=0.015)


def test_sampling_is_per_row():
    """Each row samples from its own distribution (softmax over the vocabulary, not the batch)."""
    logits = np.array([[9.0, 0.0, 0.0], [0.0, 0.0, 9.0]] * 50, np.float32)
    out = sample(logits, Sampling(greedy=False, seed=3), np.random.default_rng(3))
    assert (out[0::2] == 0).mean() > 0.95 and (out[1::2] == 2).mean() > 0.95


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("greedy", [True, False])
def test_logits_that_are_not_finite_are_an_error(bad, greedy):
    """A broken model's NaN / Inf logits: one error naming validate, not a token picked by argmax (greedy printed text)
    or numpy's "probabilities contain NaN" (sampling)."""
    from mq_deploy.errors import UserError

    logits = np.zeros((2, 5), np.float32)
    logits[1, 3] = bad
    with pytest.raises(UserError, match=r"logits are not finite \(NaN or Inf\) while generating.*mq-deploy validate"):
        sample(logits, Sampling(greedy=greedy, seed=0), np.random.default_rng(0))


class FakeSession:
    """Row r's logits favour token (last token + 1) % V, except after token 3 where they favour EOS (0). The prefill
    'state' is the last REAL prompt token; it checks that the mask marks exactly the left padding."""

    V = 16

    def __init__(self, pad_id):
        self.pad_id, self.prefills, self.steps, self.fed = pad_id, [], 0, []

    def _logits(self, last):
        out = np.zeros((len(last), self.V), np.float32)
        for r, t in enumerate(last):
            out[r, 0 if t == 3 else (t + 1) % self.V] = 5.0
        return out

    def prefill(self, ids, mask):
        self.prefills.append((ids.copy(), mask.copy()))
        last = ids[:, -1]
        return self._logits(last), {"s": last.copy()}

    def step(self, tokens, states):
        self.steps += 1
        t = np.asarray(tokens).reshape(-1)
        self.fed.append(t.tolist())
        return self._logits(t), {"s": t.copy()}


def test_generate_stops_each_row_at_eos_and_left_pads():
    s = FakeSession(pad_id=9)
    res = generate(s, [[1], [7, 8, 4], [5, 6]], max_new_tokens=4, sampling=Sampling(), eos_id=0, pad_id=9)
    ids, mask = s.prefills[0]
    assert ids.tolist() == [[9, 9, 1], [7, 8, 4], [9, 5, 6]]
    assert mask.tolist() == [[0, 0, 1], [1, 1, 1], [0, 1, 1]]
    # row 0: 2, 3, EOS (stops, EOS kept); row 1: 5, 6, 7, 8 (the limit); row 2: 7, 8, 9, 10
    assert res.tokens == [[2, 3, 0], [5, 6, 7, 8], [7, 8, 9, 10]]
    assert res.finished == [True, False, False]
    assert res.decode_steps == s.steps == 3
    assert s.fed == [[2, 5, 7], [3, 6, 8], [0, 7, 9]]  # the steps are fed each row's last token
    # a row that finished early is fed EOS on every later step, not a new sample (which would favour token 1 here)
    s = FakeSession(pad_id=9)
    res = generate(s, [[1], [4]], max_new_tokens=6, sampling=Sampling(), eos_id=0, pad_id=9)
    assert res.tokens == [[2, 3, 0], [5, 6, 7, 8, 9, 10]]
    assert s.fed == [[2, 5], [3, 6], [0, 7], [0, 8], [0, 9]]
    res = generate(FakeSession(9), [[1]], max_new_tokens=10, sampling=Sampling(), eos_id=0)
    assert res.tokens == [[2, 3, 0]] and res.decode_steps == 2 and res.finished == [True]
