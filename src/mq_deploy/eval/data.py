"""Evaluation data sets: where they live, what format they have, and readers for each.

Data sets are not shipped with mq-deploy. Each task reads a file given by the user (`--data PATH`)
or, failing that, a file at a fixed place inside the folder named by the environment variable
`MQ_DEPLOY_DATA_DIR` (see `TASKS` for the layout and `default_data_path`).

Readers return plain records that keep the data set's own fields; the prompt templates of
lm-evaluation-harness are applied later, in `zeroshot.py`:

- `read_text`            -> str                  (wikitext2, text)
- `read_question_choices`-> list[ChoiceItem]     (arc_easy, arc_challenge)
- `read_piqa`            -> list[ChoiceItem]     (piqa)
- `read_hellaswag`       -> list[ChoiceItem]     (hellaswag; `prompt` is the finished context)
- `read_winogrande`      -> list[PartialItem]    (winogrande)
- `read_lambada`         -> list[ClozeItem]      (lambada_openai)

Every problem with a file (missing, unreadable, bad JSON, missing field, gold index out of
range, wrong line count) raises `UserError` naming the file and, where there is one, the line.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from mq_deploy.errors import UserError

DATA_DIR_ENV = "MQ_DEPLOY_DATA_DIR"

_LLM_FOUNDRY = "github mosaicml/llm-foundry @8c8dd48f `scripts/eval/local_data/`"


@dataclass(frozen=True)
class TaskSpec:
    """One evaluation task.

    name: the task name given to `run_task` / `mq-deploy eval`.
    kind: "perplexity" (rolling windows over one text), "multiple_choice" (pick the most likely
        of several scored continuations) or "loglikelihood" (score one continuation).
    paths: default locations relative to `MQ_DEPLOY_DATA_DIR`, most preferred first (empty:
        the task needs an explicit path).
    format: what the reader accepts.
    source: where to get the file.
    metrics: the result keys the task reports besides "task" and "n"/"tokens".
    """

    name: str
    kind: str
    paths: tuple[str, ...]
    format: str
    source: str
    metrics: tuple[str, ...]

    @property
    def where_to_get(self) -> str:
        """`source` without the note on which copy this project's own runs used (for messages to users)."""
        return self.source.split("; copy used here")[0]

    @property
    def path(self) -> str | None:
        """The preferred default relative path (None when there is no default)."""
        return self.paths[0] if self.paths else None


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "wikitext2",
            "perplexity",
            ("text/wikitext2_test.txt",),
            'plain text, scored as one string: WikiText-2 raw test as `"\\n\\n".join(rows)`; '
            'or `.jsonl` of `{"text": ...}` rows (joined with "\\n\\n"); .bz2/.gz/.xz accepted',
            "wikitext-2-raw-v1 test split (HF `wikitext`), joined; copy used here: "
            "github Deathnetworks/rotorquant @c5be50f0 `wikitext-test.txt` (CRLF->LF)",
            ("perplexity",),
        ),
        TaskSpec(
            "text",
            "perplexity",
            (),
            'any plain text file scored as one string, or `.jsonl` of `{"text": ...}` rows '
            '(joined with "\\n\\n"); .bz2/.gz/.xz accepted',
            "your own text (e.g. held-out in-domain text); needs --data PATH",
            ("perplexity",),
        ),
        TaskSpec(
            "arc_easy",
            "multiple_choice",
            ("eval/arc_easy.jsonl",),
            'jsonl `{"query": "Question: ...", "choices": [...], "gold": i}` (llm-foundry), or '
            'HF ai2_arc rows `{"question", "choices": {"text", "label"}, "answerKey"}`',
            f"ARC-Easy test (2,376): {_LLM_FOUNDRY}",
            ("acc", "acc_norm"),
        ),
        TaskSpec(
            "arc_challenge",
            "multiple_choice",
            ("eval/arc_challenge.jsonl",),
            "same as arc_easy",
            f"ARC-Challenge test (1,172): {_LLM_FOUNDRY}",
            ("acc", "acc_norm"),
        ),
        TaskSpec(
            "piqa",
            "multiple_choice",
            ("eval/piqa_official", "eval/piqa.jsonl"),
            "official PIQA: a folder with valid.jsonl (`goal`, `sol1`, `sol2`) + valid-labels.lst "
            '(preferred: keeps the solutions\' trailing spaces as lm-eval does); or jsonl '
            '`{"query", "choices", "gold"}` (llm-foundry)',
            "PIQA dev (1,838): github ybisk/ybisk.github.io @21edab43 `piqa/data/` "
            f"(official), or {_LLM_FOUNDRY}",
            ("acc", "acc_norm"),
        ),
        TaskSpec(
            "winogrande",
            "multiple_choice",
            ("eval/winogrande.jsonl",),
            'jsonl `{"context_options": [a, b], "continuation", "gold"}` (llm-foundry), or '
            'official rows `{"sentence", "option1", "option2", "answer": "1"|"2"}`',
            f"WinoGrande dev, winogrande_xl (1,267): {_LLM_FOUNDRY}",
            ("acc",),
        ),
        TaskSpec(
            "lambada_openai",
            "loglikelihood",
            ("eval/lambada_openai.jsonl",),
            'jsonl `{"context", "continuation"}` (llm-foundry), or `{"text"}` rows '
            "(EleutherAI/lambada_openai; the last space-separated word is the target)",
            f"LAMBADA, OpenAI variant, test (5,153): {_LLM_FOUNDRY}",
            ("acc", "perplexity"),
        ),
        TaskSpec(
            "hellaswag",
            "multiple_choice",
            ("eval/hellaswag_val.txt.bz2",),
            "text (.bz2/.gz/.xz or plain), 6 lines per item: context, gold index, 4 endings; or "
            "the official hellaswag_val.jsonl (`ctx_a`, `ctx_b`, `activity_label`, `endings`, "
            "`label`), which gets lm-eval's exact preprocessing",
            "HellaSwag validation (10,042): github klosax/hellaswag_text_data @1105d370 "
            "(from github rowanz/hellaswag `data/hellaswag_val.jsonl`)",
            ("acc", "acc_norm"),
        ),
    )
}


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ChoiceItem:
    """A multiple-choice item scored as (context, " " + choice) pairs.

    prompt: for ARC and PIQA the bare question (lm-eval's `question` / `goal`, without the
        "Question: " prefix or "\\nAnswer:" suffix); for HellaSwag the finished context.
    choices: answer texts without the leading space.
    gold: index of the right choice.
    """

    prompt: str
    choices: tuple[str, ...]
    gold: int


@dataclass(frozen=True)
class PartialItem:
    """A WinoGrande item for partial scoring: one context per option, one shared continuation.

    contexts: the sentence up to the blank, with each option filled in.
    continuation: the sentence after the blank, stripped (no leading space).
    """

    contexts: tuple[str, ...]
    continuation: str
    gold: int


@dataclass(frozen=True)
class ClozeItem:
    """A LAMBADA item: `target` (one word, no leading space) follows `context` after a space."""

    context: str
    target: str


# ----------------------------------------------------------------------------- locations


def task_spec(task: str) -> TaskSpec:
    """The `TaskSpec` of `task`; unknown names raise `UserError` listing the valid ones."""
    try:
        return TASKS[task]
    except KeyError:
        raise UserError(
            f"unknown evaluation task {task!r}; valid tasks: {', '.join(TASKS)}"
        ) from None


def default_data_path(task: str, data_dir: str | Path | None = None, flag: str = "--data PATH") -> Path:
    """Where `task`'s data lives inside `data_dir` (default: `$MQ_DEPLOY_DATA_DIR`).

    The first of the task's `paths` that exists is returned. Raises `UserError` when the task has
    no default file, when no data folder is given, or when none of its files is there; the message
    names `flag` as the way to pass a file (`compare` takes `--data TASK=PATH`).
    """
    spec = task_spec(task)
    if not spec.paths:
        raise UserError(f"task {task!r} has no default data set; pass {flag}")
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or None
    if data_dir is None:
        raise UserError(
            f"no data for task {task!r}: pass {flag}, or set {DATA_DIR_ENV} to a folder "
            f"that holds {spec.paths[0]} (source: {spec.where_to_get})"
        )
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"{DATA_DIR_ENV}={root} is not a folder; point it at your data folder")
    for rel in spec.paths:
        if (root / rel).exists():
            return root / rel
    raise UserError(
        f"no data for task {task!r} in {root}: expected "
        + " or ".join(str(root / rel) for rel in spec.paths)
        + f" (source: {spec.where_to_get}); or pass {flag}"
    )


def resolve_data_path(task: str, data_path: str | Path | None, flag: str = "--data PATH") -> Path:
    """`data_path` if given (it must exist), else `default_data_path(task)` (`flag` as there)."""
    if data_path is None:
        return default_data_path(task, flag=flag)
    p = Path(data_path)
    if not p.exists():
        raise UserError(f"data file for task {task!r} not found: {p}")
    return p


def load_task_data(task: str, path: str | Path):
    """Read `path` with the reader of `task` (see the module docstring for the return types)."""
    kind = task_spec(task).name
    reader = {
        "wikitext2": read_text,
        "text": read_text,
        "arc_easy": read_question_choices,
        "arc_challenge": read_question_choices,
        "piqa": read_piqa,
        "hellaswag": read_hellaswag,
        "winogrande": read_winogrande,
        "lambada_openai": read_lambada,
    }[kind]
    return reader(path)


# ----------------------------------------------------------------------------- file helpers


def _check_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise UserError(f"data file not found: {p}")
    if p.is_dir():
        raise UserError(f"{p} is a folder; pass the data file itself")
    return p


def _read_all(path: str | Path) -> str:
    """Whole text of a UTF-8 file, transparently decompressing .bz2/.gz/.xz; universal newlines."""
    p = _check_file(path)
    opener = {".bz2": bz2.open, ".gz": gzip.open, ".xz": lzma.open}.get(p.suffix.lower())
    try:
        if opener is not None:
            with opener(p, "rt", encoding="utf-8") as f:
                return f.read()
        with open(p, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise UserError(f"{p} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise UserError(f"cannot read {p}: {exc}") from None


def is_jsonl(path: Path) -> bool:
    """Whether `path` is read as JSON lines: .jsonl / .json, compressed (.bz2 / .gz / .xz) or not."""
    name = Path(path).name.lower()
    for ext in (".bz2", ".gz", ".xz"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return name.endswith(".jsonl") or name.endswith(".json")


def _jsonl_objects(p: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of `text`, the contents of `p` (or its first whole lines); bad
    JSON or non-objects raise UserError."""
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{p} line {lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise UserError(f"{p} line {lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def _iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; bad JSON or non-objects raise UserError."""
    p = Path(path)
    yield from _jsonl_objects(p, _read_all(p))


def jsonl_text(p: Path, text: str) -> str:
    """The `{"text": str}` rows of a .jsonl file's contents `text` (or its first whole lines), joined with "\n\n"
    (see read_text)."""
    return "\n\n".join(_field(obj, "text", str, f"{p} line {n}") for n, obj in _jsonl_objects(p, text))


def _field(obj: dict, key: str, kind: type | tuple, where: str) -> Any:
    if key not in obj:
        raise UserError(f"{where}: missing field {key!r} (fields present: {', '.join(obj)})")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise UserError(f"{where}: field {key!r} should be {want}, got {type(value).__name__}")
    return value


def _str_list(obj: dict, key: str, where: str, min_len: int = 2) -> tuple[str, ...]:
    value = _field(obj, key, list, where)
    if len(value) < min_len or not all(isinstance(v, str) for v in value):
        raise UserError(f"{where}: field {key!r} should be a list of at least {min_len} strings")
    return tuple(value)


def _gold(value: Any, n: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{where}: gold index should be an integer, got {value!r}")
    if not 0 <= value < n:
        raise UserError(f"{where}: gold index {value} out of range for {n} choices")
    return value


def _nonempty(items: list, path: Path) -> list:
    if not items:
        raise UserError(f"{path} holds no items")
    return items


# ----------------------------------------------------------------------------- readers


def read_text(path: str | Path) -> str:
    """The text to score as one string.

    A `.jsonl` file (optionally compressed) must hold `{"text": str}` rows; they are joined with
    "\\n\\n" (how GPTQ and lm-eval build the WikiText-2 test string). Anything else is read as UTF-8
    text as is (universal newlines).
    """
    p = _check_file(path)
    if is_jsonl(p):
        text = jsonl_text(p, _read_all(p))
    else:
        text = _read_all(p)
    if not text.strip():
        raise UserError(f"{p} holds no text to score")
    return text


_QUESTION_PREFIX = "Question: "


def _question_from_query(query: str) -> str:
    """lm-eval's bare question from an llm-foundry `query`.

    llm-foundry stores ARC queries as "Question: {question}" and PIQA ones as
    "Question: {goal}\\n"; lm-eval's template is "Question: {question}\\nAnswer:". Strip the prefix,
    an "Answer:" suffix if present, and one trailing newline.
    """
    q = query
    if q.startswith(_QUESTION_PREFIX):
        q = q[len(_QUESTION_PREFIX):]
    if q.endswith("Answer:"):
        q = q[: -len("Answer:")]
    if q.endswith("\n"):
        q = q[:-1]
    return q


def _read_query_choices_row(obj: dict, where: str) -> ChoiceItem:
    query = _field(obj, "query", str, where)
    choices = _str_list(obj, "choices", where)
    gold = _gold(_field(obj, "gold", int, where), len(choices), where)
    return ChoiceItem(_question_from_query(query), choices, gold)


def read_question_choices(path: str | Path) -> list[ChoiceItem]:
    """ARC rows: llm-foundry `{"query","choices","gold"}` or HF ai2_arc
    `{"question", "choices": {"text": [...], "label": [...]}, "answerKey"}`."""
    p = _check_file(path)
    items = []
    for n, obj in _iter_jsonl(p):
        where = f"{p} line {n}"
        if "query" in obj:
            items.append(_read_query_choices_row(obj, where))
        elif "question" in obj and "answerKey" in obj:
            question = _field(obj, "question", str, where)
            ch = _field(obj, "choices", dict, where)
            texts = _str_list(ch, "text", where)
            labels = _field(ch, "label", list, where)
            key = obj["answerKey"]
            if key not in labels:
                raise UserError(f"{where}: answerKey {key!r} is not one of the labels {labels}")
            items.append(ChoiceItem(question, texts, labels.index(key)))
        else:
            raise UserError(
                f"{where}: expected fields query/choices/gold (llm-foundry) or "
                f"question/choices/answerKey (ai2_arc); got {', '.join(obj)}"
            )
    return _nonempty(items, p)


def read_piqa(path: str | Path) -> list[ChoiceItem]:
    """PIQA: a folder with valid.jsonl + valid-labels.lst (official), the official valid.jsonl
    itself (labels read from the sibling `<stem>-labels.lst`), or llm-foundry jsonl
    `{"query","choices","gold"}`.

    The official solutions are kept exactly (some end in a space; lm-eval keeps it, llm-foundry's
    copy strips it, which changes the scores of 118 of 1,838 items slightly).
    """
    p = Path(path)
    if p.is_dir():
        rows, labels = p / "valid.jsonl", p / "valid-labels.lst"
        if not rows.is_file() or not labels.is_file():
            raise UserError(
                f"{p} is a folder but lacks valid.jsonl and valid-labels.lst "
                "(the official PIQA dev files)"
            )
        return _read_piqa_official(rows, labels)
    p = _check_file(p)
    rows = list(_iter_jsonl(p))
    if rows and "goal" in rows[0][1]:
        stem = p.name[: -len(".jsonl")] if p.name.endswith(".jsonl") else p.stem
        labels = p.with_name(f"{stem}-labels.lst")
        if not labels.is_file():
            raise UserError(f"{p} is official PIQA (goal/sol1/sol2) but {labels} is missing")
        return _read_piqa_official(p, labels)
    return _nonempty([_read_query_choices_row(obj, f"{p} line {n}") for n, obj in rows], p)


def _read_piqa_official(rows_path: Path, labels_path: Path) -> list[ChoiceItem]:
    labels = []
    for n, line in enumerate(_read_all(labels_path).split("\n"), start=1):
        if not line.strip():
            continue
        if line.strip() not in ("0", "1"):
            raise UserError(f"{labels_path} line {n}: expected a label 0 or 1, got {line!r}")
        labels.append(int(line))
    items = []
    for n, obj in _iter_jsonl(rows_path):
        where = f"{rows_path} line {n}"
        sols = (_field(obj, "sol1", str, where), _field(obj, "sol2", str, where))
        items.append([_field(obj, "goal", str, where), sols])
    if len(items) != len(labels):
        raise UserError(
            f"{rows_path} has {len(items)} items but {labels_path} has {len(labels)} labels"
        )
    return _nonempty([ChoiceItem(g, s, lab) for (g, s), lab in zip(items, labels)], rows_path)


def _hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag `preprocess` (WikiHow bracket artifacts removed)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def read_hellaswag(path: str | Path) -> list[ChoiceItem]:
    """HellaSwag: 6-line text items (context, gold index, 4 endings), or official jsonl.

    The text format (klosax/hellaswag_text_data) is used as is: its context is
    `activity_label + ": " + ctx`, already cleaned. lm-eval instead builds
    `activity_label + ": " + ctx_a + " " + ctx_b.capitalize()`, so its contexts can differ in the
    case of the first letter of `ctx_b`; give the official hellaswag_val.jsonl to reproduce lm-eval
    exactly (this reader then applies lm-eval's `process_docs`).
    """
    p = _check_file(path)
    if is_jsonl(p):
        items = []
        for n, obj in _iter_jsonl(p):
            where = f"{p} line {n}"
            ctx = (
                _field(obj, "ctx_a", str, where)
                + " "
                + _field(obj, "ctx_b", str, where).capitalize()
            )
            query = _hellaswag_preprocess(_field(obj, "activity_label", str, where) + ": " + ctx)
            endings = tuple(_hellaswag_preprocess(e) for e in _str_list(obj, "endings", where))
            label = _field(obj, "label", (int, str), where)
            try:
                gold = int(label)
            except ValueError:
                raise UserError(
                    f"{where}: label {label!r} is not an integer (the unlabeled test split?)"
                ) from None
            items.append(ChoiceItem(query, endings, _gold(gold, len(endings), where)))
        return _nonempty(items, p)

    lines = _read_all(p).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise UserError(
            f"{p}: HellaSwag text needs 6 lines per item (context, gold index, 4 endings) but has "
            f"{len(lines)} lines; item {len(lines) // 6 + 1} (from line {len(lines) // 6 * 6 + 1}) "
            "is incomplete"
        )
    items = []
    for i in range(0, len(lines), 6):
        gold_line = lines[i + 1].strip()
        if not gold_line.isdigit():
            raise UserError(f"{p} line {i + 2}: expected the gold index 0-3, got {lines[i + 1]!r}")
        gold = _gold(int(gold_line), 4, f"{p} line {i + 2}")
        items.append(ChoiceItem(lines[i], tuple(lines[i + 2 : i + 6]), gold))
    return _nonempty(items, p)


def read_winogrande(path: str | Path) -> list[PartialItem]:
    """WinoGrande: llm-foundry `{"context_options": [a, b], "continuation", "gold"}` or official
    `{"sentence", "option1", "option2", "answer"}` (lm-eval's doc_to_choice / doc_to_target:
    contexts = sentence[:blank] + option, continuation = sentence[blank+1:].strip())."""
    p = _check_file(path)
    items = []
    for n, obj in _iter_jsonl(p):
        where = f"{p} line {n}"
        if "context_options" in obj:
            contexts = _str_list(obj, "context_options", where)
            cont = _field(obj, "continuation", str, where).strip()
            gold = _gold(_field(obj, "gold", int, where), len(contexts), where)
        elif "sentence" in obj:
            sentence = _field(obj, "sentence", str, where)
            if "_" not in sentence:
                raise UserError(f"{where}: sentence has no blank '_'")
            idx = sentence.index("_")
            options = (_field(obj, "option1", str, where), _field(obj, "option2", str, where))
            contexts = tuple(sentence[:idx] + o for o in options)
            cont = sentence[idx + 1 :].strip()
            answer = obj.get("answer")
            if answer not in ("1", "2", 1, 2):
                raise UserError(f"{where}: answer should be \"1\" or \"2\", got {answer!r}")
            gold = int(answer) - 1
        else:
            raise UserError(
                f"{where}: expected fields context_options/continuation/gold (llm-foundry) or "
                f"sentence/option1/option2/answer (official); got {', '.join(obj)}"
            )
        if not cont:
            raise UserError(f"{where}: empty continuation")
        items.append(PartialItem(contexts, cont, gold))
    return _nonempty(items, p)


def read_lambada(path: str | Path) -> list[ClozeItem]:
    """LAMBADA: llm-foundry `{"context", "continuation"}` or `{"text"}` rows, split as lm-eval does
    (context = all but the last space-separated word, target = the last word)."""
    p = _check_file(path)
    items = []
    for n, obj in _iter_jsonl(p):
        where = f"{p} line {n}"
        if "context" in obj:
            context = _field(obj, "context", str, where)
            target = _field(obj, "continuation", str, where)
        elif "text" in obj:
            words = _field(obj, "text", str, where).split(" ")
            context, target = " ".join(words[:-1]), words[-1]
        else:
            raise UserError(
                f"{where}: expected fields context/continuation or text; got {', '.join(obj)}"
            )
        if target.startswith(" "):
            target = target[1:]
        if not target:
            raise UserError(f"{where}: empty continuation")
        items.append(ClozeItem(context, target))
    return _nonempty(items, p)
