"""Zero-shot scoring with the protocol of EleutherAI's lm-evaluation-harness (v0.4).

Log-likelihood of a continuation (lm-eval `TemplateLM.loglikelihood` + `_encode_pair` +
`HFLM._loglikelihood_tokens`, causal models):
- Trailing whitespace of the context (`len(context) - len(context.rstrip())` characters) moves to
  the front of the continuation.
- whole = encode(context + continuation); context_enc = encode(context);
  continuation_enc = whole[len(context_enc):]. No special tokens are added.
- Empty context: continuation_enc = encode(continuation) and context_enc = [eot_id]; if the
  continuation already starts with eot_id, its first token becomes the context instead.
- The model sees (context_enc + continuation_enc)[-(max_length + 1):][:-1] (truncated from the
  left); the result is (sum of log p(continuation tokens), whether every continuation token was
  the argmax at its position).
- (Not in lm-eval, which fails an assert there:) a context of only whitespace conditions on
  [eot_id] like an empty one, after its whitespace moved to the continuation.

Prompts (lm-eval task YAMLs; target_delimiter " "):
- arc_easy, arc_challenge: "Question: {question}\\nAnswer:" + " {choice}"    -> acc, acc_norm
- piqa:                    "Question: {goal}\\nAnswer:" + " {sol}"            -> acc, acc_norm
- hellaswag:               "{preprocessed context}" + " {ending}"             -> acc, acc_norm
- winogrande (partial):    "{sentence up to the blank, option filled}" + " {rest of sentence}",
                           one context per option, same continuation          -> acc
- lambada_openai:          "{text minus last word}" + " {last word}"          -> acc, perplexity

The llm-foundry copies of ARC/PIQA store "Question: {question}" as `query`; llm-foundry's own
harness scores `query + " " + choice` without "\nAnswer:", which gives different numbers (on
mamba-ref-29m, ARC-Easy first 300: 0.27/0.277 that way vs 0.24/0.27 with lm-eval's prompt).

Metrics (lm-eval `process_results` / aggregations):
- acc: argmax of the choices' log-likelihoods == gold (first index wins ties, as np.argmax).
- acc_norm: argmax of loglik / len(choice) == gold, len in characters of the choice text without
  the leading delimiter space (lm-eval's `completion_len`).
- lambada acc: mean of is_greedy; perplexity: exp(-mean log-likelihood) over items.
- *_stderr: sample standard deviation / sqrt(n) (lm-eval `mean_stderr`); None when n < 2.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from mq_deploy.errors import InternalError, UserError
from mq_deploy.eval.data import ChoiceItem, ClozeItem, PartialItem
from mq_deploy.eval.scoring import LogitsFn, ScoreRequest, score_requests

ZEROSHOT_TASKS = ("arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande", "lambada_openai")


def _split_trailing_space(context: str, continuation: str) -> tuple[str, str]:
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        return context[:-n_spaces], context[-n_spaces:] + continuation
    return context, continuation


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context_enc, continuation_enc) exactly as lm-eval builds them (see module docstring)."""
    if context == "":
        cont = tokenizer.encode(continuation)
        if cont and cont[0] == tokenizer.eot_id:
            return cont[:1], cont[1:]
        return [tokenizer.eot_id], cont
    context, continuation = _split_trailing_space(context, continuation)
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    if not ctx:  # whitespace-only context (lm-eval would fail an assert): condition on eot
        return [tokenizer.eot_id], whole
    return ctx, whole[len(ctx):]


def _encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """`encode_pair` for many pairs, with batched and de-duplicated tokenizer calls."""
    split = [
        _split_trailing_space(c, x) if c != "" else (c, x) for c, x in pairs
    ]
    texts: dict[str, None] = {}
    for (c, x), (orig_c, _) in zip(split, pairs):
        if orig_c == "":
            texts[x] = None
        else:
            texts[c] = None
            texts[c + x] = None
    keys = list(texts)
    encode_batch = getattr(tokenizer, "encode_batch", None)
    encoded = encode_batch(keys) if encode_batch else [tokenizer.encode(t) for t in keys]
    enc = dict(zip(keys, encoded))
    out = []
    for (c, x), (orig_c, _) in zip(split, pairs):
        if orig_c == "":
            cont = enc[x]
            if cont and cont[0] == tokenizer.eot_id:
                out.append((cont[:1], cont[1:]))
            else:
                out.append(([tokenizer.eot_id], cont))
        else:
            ctx = enc[c]
            if not ctx:  # whitespace-only context: as in encode_pair
                out.append(([tokenizer.eot_id], enc[c + x]))
            else:
                out.append((ctx, enc[c + x][len(ctx):]))
    return out


def build_request(
    context_enc: Sequence[int], continuation_enc: Sequence[int], max_length: int
) -> ScoreRequest:
    """The model input for one pair: (ctx + cont)[-(max_length+1):][:-1], scoring the tail."""
    if len(continuation_enc) > max_length:
        raise UserError(
            f"a continuation of {len(continuation_enc)} tokens does not fit the maximum length "
            f"{max_length}; raise --seq-len"
        )
    if not context_enc:
        raise InternalError("empty context encoding")
    tokens = (list(context_enc) + list(continuation_enc))[-(max_length + 1):]
    inputs = tuple(tokens[:-1])
    return ScoreRequest(inputs, len(inputs) - len(continuation_enc), tuple(continuation_enc))


def loglikelihoods(
    logits_fn: LogitsFn,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    max_length: int = 2048,
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "loglikelihood",
) -> list[tuple[float, bool]]:
    """(sum log p(continuation | context), is_greedy) for each (context, continuation) pair."""
    if max_length < 1:
        raise UserError(f"maximum length must be at least 1, got {max_length}")
    requests = []
    for (ctx, cont), (c_enc, x_enc) in zip(pairs, _encode_pairs(tokenizer, pairs)):
        if not x_enc:
            raise UserError(
                f"continuation {cont!r} encodes to no tokens after context {ctx[-60:]!r}"
            )
        requests.append(build_request(c_enc, x_enc, max_length))
    scores = score_requests(logits_fn, requests, tokenizer.pad_id, batch_size, progress, desc)
    return [(s.total, s.is_greedy) for s in scores]


def loglikelihood(
    logits_fn: LogitsFn, tokenizer, context: str, continuation: str, max_length: int = 2048
) -> tuple[float, bool]:
    """One (context, continuation) pair; see `loglikelihoods`."""
    return loglikelihoods(
        logits_fn, tokenizer, [(context, continuation)], max_length, 1, progress=False
    )[0]


# ----------------------------------------------------------------------------- prompts


def question_context(question: str) -> str:
    """lm-eval's ARC / PIQA doc_to_text."""
    return f"Question: {question}\nAnswer:"


def task_requests(task: str, item) -> tuple[list[tuple[str, str]], list[str]]:
    """lm-eval's (context, continuation) pairs for one item, and the choice texts whose
    character lengths normalize acc_norm (empty for tasks without acc_norm)."""
    if task in ("arc_easy", "arc_challenge", "piqa"):
        ctx = question_context(item.prompt)
        return [(ctx, " " + c) for c in item.choices], list(item.choices)
    if task == "hellaswag":
        return [(item.prompt, " " + c) for c in item.choices], list(item.choices)
    if task == "winogrande":
        return [(c, " " + item.continuation) for c in item.contexts], []
    if task == "lambada_openai":
        return [(item.context, " " + item.target)], []
    raise UserError(f"unknown zero-shot task {task!r}; valid: {', '.join(ZEROSHOT_TASKS)}")


def _stderr(values: Sequence[float]) -> float | None:
    n = len(values)
    if n < 2:
        return None
    mu = sum(values) / n
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1)) / math.sqrt(n)


def evaluate_zeroshot(
    task: str,
    logits_fn: LogitsFn,
    tokenizer,
    items: Sequence[ChoiceItem | PartialItem | ClozeItem],
    max_length: int = 2048,
    limit: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> dict:
    """Score `items` of `task` (the first `limit` of them) and aggregate lm-eval's metrics.

    Returns {"task", "n", "acc", "acc_stderr", ...} plus "acc_norm"/"acc_norm_stderr" for ARC,
    PIQA and HellaSwag, "perplexity" for LAMBADA, and "seq_len" (the maximum length used).
    """
    if task not in ZEROSHOT_TASKS:
        raise UserError(f"unknown zero-shot task {task!r}; valid: {', '.join(ZEROSHOT_TASKS)}")
    if limit is not None:
        if limit < 1:
            raise UserError(f"limit must be at least 1, got {limit}")
        items = items[:limit]
    if not items:
        raise UserError(f"no items to evaluate for task {task!r}")

    pairs: list[tuple[str, str]] = []
    spans = []
    for item in items:
        reqs, norm_texts = task_requests(task, item)
        spans.append((len(pairs), len(reqs), norm_texts))
        pairs.extend(reqs)
    results = loglikelihoods(
        logits_fn, tokenizer, pairs, max_length, batch_size, progress, desc=task
    )

    out: dict = {"task": task, "n": len(items)}
    if task == "lambada_openai":
        lls = [ll for ll, _ in results]
        acc = [float(g) for _, g in results]
        out["acc"] = float(np.mean(acc))
        out["acc_stderr"] = _stderr(acc)
        with np.errstate(over="ignore"):
            out["perplexity"] = float(np.exp(-np.mean(lls)))
    else:
        acc, acc_norm = [], []
        for item, (start, count, norm_texts) in zip(items, spans):
            lls = np.array([ll for ll, _ in results[start : start + count]], dtype=np.float64)
            acc.append(float(int(np.argmax(lls)) == item.gold))
            if norm_texts:
                lengths = np.array([float(len(t)) for t in norm_texts])
                with np.errstate(divide="ignore", invalid="ignore"):
                    acc_norm.append(float(int(np.argmax(lls / lengths)) == item.gold))
        out["acc"] = float(np.mean(acc))
        out["acc_stderr"] = _stderr(acc)
        if acc_norm:
            out["acc_norm"] = float(np.mean(acc_norm))
            out["acc_norm_stderr"] = _stderr(acc_norm)
    out["seq_len"] = max_length
    return out
