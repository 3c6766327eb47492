"""Batched log-probabilities of target tokens under a causal LM given as `logits_fn`.

Model interface: `logits_fn(input_ids: int64[B, L]) -> float32[B, L, V]`, where the logits at
position t predict token t+1. Because the model is causal, padding on the RIGHT does not change
the logits at earlier positions, so sequences of different lengths are batched by padding them on
the right with `pad_id` up to the longest one in the batch. Requests are sorted longest first
(as lm-evaluation-harness does) so that sequences of similar length share a batch, and requests
with identical inputs share one row of the batch (this also gives lm-eval's one-token-continuation
reuse: same context + different single-token continuations = same input).

Log-softmax is computed per position with max subtraction, the exponent sum accumulated in
float64; log-probabilities are returned in float64.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from mq_deploy.errors import InternalError, UserError

LogitsFn = Callable[[np.ndarray], np.ndarray]

# Rows of logits turned into log-probabilities at once (bounds the float32 temporaries).
_CHUNK_POSITIONS = 256


@dataclass(frozen=True)
class ScoreRequest:
    """Score `targets` as the tokens predicted at positions start .. start+len(targets)-1.

    input_ids: the tokens fed to the model (at most the model's max length).
    start: the first position whose logits are used.
    targets: token ids predicted there (input_ids[start+1:...] for teacher forcing, or the
        continuation when input_ids ends one token before the continuation's last one).
    """

    input_ids: tuple[int, ...]
    start: int
    targets: tuple[int, ...]

    def __post_init__(self) -> None:
        end = self.start + len(self.targets)
        if not self.targets or self.start < 0 or end > len(self.input_ids):
            raise InternalError(
                f"bad ScoreRequest: {len(self.input_ids)} inputs, start {self.start}, "
                f"{len(self.targets)} targets"
            )


@dataclass(frozen=True)
class TokenScores:
    """Per target token: log-probability (float64) and whether it was the argmax (greedy)."""

    logprobs: np.ndarray
    greedy: np.ndarray

    @property
    def total(self) -> float:
        return float(self.logprobs.sum())

    @property
    def is_greedy(self) -> bool:
        return bool(self.greedy.all())


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> np.ndarray:
    """int64[B, max_len] with each sequence left-aligned and the rest filled with `pad_id`."""
    width = max(len(s) for s in seqs)
    out = np.full((len(seqs), width), pad_id, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


def target_logprobs(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log softmax(logits)[i, targets[i]] (float64) and argmax(logits[i]) == targets[i].

    `logits` is [N, V]; computed in chunks of positions with max subtraction.
    """
    n = logits.shape[0]
    lp = np.empty(n, dtype=np.float64)
    greedy = np.empty(n, dtype=bool)
    for a in range(0, n, _CHUNK_POSITIONS):
        b = min(n, a + _CHUNK_POSITIONS)
        x = np.asarray(logits[a:b], dtype=np.float32)
        t = targets[a:b]
        m = x.max(axis=-1)
        with np.errstate(invalid="ignore", over="ignore"):
            sumexp = np.exp(x - m[:, None]).sum(axis=-1, dtype=np.float64)
        lse = np.log(sumexp) + m.astype(np.float64)
        lp[a:b] = x[np.arange(b - a), t].astype(np.float64) - lse
        greedy[a:b] = x.argmax(axis=-1) == t
    return lp, greedy


def score_requests(
    logits_fn: LogitsFn,
    requests: Sequence[ScoreRequest],
    pad_id: int,
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "scoring",
) -> list[TokenScores]:
    """Run the model over `requests` in right-padded batches; scores in request order."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    # Requests with identical inputs share a row.
    rows: dict[tuple[int, ...], list[int]] = {}
    for i, r in enumerate(requests):
        rows.setdefault(r.input_ids, []).append(i)
    order = sorted(rows, key=lambda ids: (-len(ids), ids))
    results: list[TokenScores | None] = [None] * len(requests)

    from tqdm import tqdm

    with tqdm(total=len(requests), desc=desc, file=sys.stderr, disable=not progress) as bar:
        for lo in range(0, len(order), batch_size):
            batch = order[lo : lo + batch_size]
            inputs = pad_right(batch, pad_id)
            logits = _call(logits_fn, inputs)
            done = 0
            for b, ids in enumerate(batch):
                for i in rows[ids]:
                    r = requests[i]
                    tg = np.asarray(r.targets, dtype=np.int64)
                    if int(tg.max()) >= logits.shape[-1]:
                        raise UserError(
                            f"token id {int(tg.max())} is outside the model's vocabulary of "
                            f"{logits.shape[-1]}: the tokenizer does not match the model"
                        )
                    lp, gr = target_logprobs(logits[b, r.start : r.start + len(tg)], tg)
                    if not np.all(np.isfinite(lp)):  # (a perplexity of nan would read as a result)
                        raise UserError(
                            f"the model's logits are not finite (NaN or Inf) while {desc}: its weights or graph "
                            "are broken (an OUTDIR's files: `mq-deploy validate OUTDIR` checks them)"
                        )
                    results[i] = TokenScores(lp, gr)
                    done += 1
            bar.update(done)
    return results  # type: ignore[return-value]


def _call(logits_fn: LogitsFn, inputs: np.ndarray) -> np.ndarray:
    out = logits_fn(inputs)
    out = np.asarray(out)
    if out.ndim != 3 or out.shape[:2] != inputs.shape:
        raise InternalError(
            f"logits_fn returned shape {out.shape} for input shape {inputs.shape}; "
            "expected [batch, length, vocab]"
        )
    if not np.issubdtype(out.dtype, np.floating):
        raise InternalError(f"logits_fn returned dtype {out.dtype}; expected float logits")
    return out
