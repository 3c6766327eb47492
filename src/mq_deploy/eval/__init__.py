"""Model evaluation: perplexity (GPTQ window protocol) and lm-evaluation-harness zero-shot tasks.

Entry point: `run_task(task, logits_fn, tokenizer, ...)`. The model is any callable
`logits_fn(input_ids: int64[B, L]) -> float32[B, L, V]` of a causal LM (position t's logits
predict token t+1); the tokenizer is a `TextTokenizer`. Data sets are not shipped: see
`data.TASKS` for each task's file, format and source, and `data.default_data_path` for the
`MQ_DEPLOY_DATA_DIR` layout.

Modules: `tokenizer` (TextTokenizer), `data` (TASKS and readers), `scoring` (batched
log-probabilities), `perplexity`, `zeroshot`.
"""

from __future__ import annotations

from pathlib import Path

from mq_deploy.errors import UserError
from mq_deploy.eval.data import TASKS, default_data_path, load_task_data, resolve_data_path
from mq_deploy.eval.perplexity import evaluate_perplexity
from mq_deploy.eval.scoring import LogitsFn
from mq_deploy.eval.tokenizer import TextTokenizer
from mq_deploy.eval.zeroshot import encode_pair, evaluate_zeroshot, loglikelihoods

TASK_NAMES: tuple[str, ...] = tuple(TASKS)

__all__ = [
    "TASKS",
    "TASK_NAMES",
    "TextTokenizer",
    "default_data_path",
    "encode_pair",
    "evaluate_perplexity",
    "evaluate_zeroshot",
    "load_task_data",
    "loglikelihoods",
    "resolve_data_path",
    "run_task",
]


def run_task(
    task: str,
    logits_fn: LogitsFn,
    tokenizer: TextTokenizer,
    data_path: str | Path | None = None,
    seq_len: int = 2048,
    limit: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> dict:
    """Evaluate the model on one task and return its metrics.

    task: one of TASK_NAMES. "wikitext2" and "text" are perplexity tasks (`seq_len` is the
        window length, `limit` the number of windows); the others are zero-shot tasks
        (`seq_len` is the maximum model input, contexts are truncated from the left; `limit`
        is the number of items, taken from the start of the file).
    data_path: the data file (or PIQA folder); default `default_data_path(task)`. The "text"
        task has no default.
    Returns a dict with "task" and the task's metrics (see `perplexity.evaluate_perplexity` and
    `zeroshot.evaluate_zeroshot`).
    """
    if task not in TASKS:
        raise UserError(f"unknown evaluation task {task!r}; valid tasks: {', '.join(TASK_NAMES)}")
    if task == "text" and data_path is None:
        raise UserError("task 'text' scores a text file of your own: pass --data PATH")
    if batch_size is None or batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if seq_len is None or seq_len < 2:
        raise UserError(f"sequence length must be at least 2, got {seq_len}")
    if limit is not None and limit < 1:
        raise UserError(f"limit must be at least 1, got {limit}")
    path = resolve_data_path(task, data_path)
    data = load_task_data(task, path)
    if TASKS[task].kind == "perplexity":
        result = evaluate_perplexity(
            logits_fn, tokenizer, data, seq_len, limit, batch_size, progress, task=task
        )
    else:
        result = evaluate_zeroshot(
            task, logits_fn, tokenizer, data, seq_len, limit, batch_size, progress
        )
    result["data"] = str(path)
    return result
