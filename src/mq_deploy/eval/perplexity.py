"""Perplexity over non-overlapping windows: the GPTQ / lm-eval-wikitext "seq_len windows" protocol.

Protocol:
1. Tokenize the whole text once (no special tokens).
2. Split the ids into non-overlapping windows of `seq_len` tokens, dropping the incomplete
   remainder; if the text is shorter than one window, use one shorter window of all its tokens.
   With `limit`, keep only the first `limit` windows.
3. Feed each window whole; score tokens 1..L-1 of the window given the tokens before them (token 0
   of each window is never predicted: no state carries over between windows).
4. perplexity = exp(total NLL / number of predicted tokens). With equal-length windows this is
   exactly GPTQ's exp(mean over windows of the mean window loss).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from mq_deploy.errors import UserError
from mq_deploy.eval.scoring import LogitsFn, ScoreRequest, score_requests


def token_windows(
    ids: Sequence[int], seq_len: int, limit: int | None = None
) -> list[tuple[int, ...]]:
    """Non-overlapping windows of `seq_len` ids (see the module docstring)."""
    if seq_len < 2:
        raise UserError(f"sequence length must be at least 2 tokens, got {seq_len}")
    if limit is not None and limit < 1:
        raise UserError(f"limit must be at least 1, got {limit}")
    if len(ids) < 2:
        raise UserError(
            f"the text has {len(ids)} token(s); perplexity needs at least 2 (nothing to predict)"
        )
    n = len(ids) // seq_len
    if n == 0:
        windows = [tuple(ids)]
    else:
        windows = [tuple(ids[i * seq_len : (i + 1) * seq_len]) for i in range(n)]
    if limit is not None:
        windows = windows[:limit]
    return windows


def windows_perplexity(
    logits_fn: LogitsFn,
    windows: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "perplexity",
) -> tuple[float, int]:
    """(total NLL in nats, number of predicted tokens) over `windows`."""
    requests = [ScoreRequest(tuple(w), 0, tuple(w[1:])) for w in windows]
    scores = score_requests(logits_fn, requests, pad_id, batch_size, progress, desc)
    nll = -math.fsum(float(np.sum(s.logprobs)) for s in scores)
    return nll, sum(len(r.targets) for r in requests)


def evaluate_perplexity(
    logits_fn: LogitsFn,
    tokenizer,
    text: str,
    seq_len: int = 2048,
    limit: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
    task: str = "text",
) -> dict:
    """Perplexity of `text` under the model (protocol in the module docstring).

    Returns {"task", "perplexity", "nll" (mean NLL per predicted token, nats), "tokens"
    (predicted tokens), "windows", "seq_len"}.
    """
    ids = tokenizer.encode(text)
    windows = token_windows(ids, seq_len, limit)
    nll, count = windows_perplexity(
        logits_fn, windows, tokenizer.pad_id, batch_size, progress, desc=task
    )
    mean = nll / count
    with np.errstate(over="ignore"):
        ppl = float(np.exp(mean))
    return {
        "task": task,
        "perplexity": ppl,
        "nll": mean,
        "tokens": count,
        "windows": len(windows),
        "seq_len": len(windows[0]),
    }
