"""Data readers on small temp files and on the real files in ../shared/data (conftest.DATA_DIR)."""

import bz2
import json

import pytest

from mq_deploy.errors import UserError
from mq_deploy.eval import TASK_NAMES
from mq_deploy.eval import data

from .conftest import DATA_DIR

REAL = DATA_DIR
needs_real = pytest.mark.skipif(not (REAL / "eval").is_dir(), reason="shared data not present")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- TASKS table


def test_tasks_table_is_complete():
    assert TASK_NAMES == (
        "wikitext2", "text", "arc_easy", "arc_challenge", "piqa",
        "winogrande", "lambada_openai", "hellaswag",
    )
    for spec in data.TASKS.values():
        assert spec.format and spec.source and spec.metrics
        assert spec.kind in ("perplexity", "multiple_choice", "loglikelihood")
    assert data.TASKS["text"].path is None
    assert data.TASKS["hellaswag"].path == "eval/hellaswag_val.txt.bz2"


# ----------------------------------------------------------------------------- default paths


def test_default_data_path_needs_a_data_dir(monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    with pytest.raises(UserError, match="--data PATH.*MQ_DEPLOY_DATA_DIR"):
        data.default_data_path("arc_easy")
    with pytest.raises(UserError, match="no default"):
        data.default_data_path("text")
    with pytest.raises(UserError, match="valid tasks: wikitext2"):
        data.default_data_path("mmlu")


def test_default_data_path_layout(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(UserError, match="arc_easy.jsonl"):
        data.default_data_path("arc_easy")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval/arc_easy.jsonl").write_text("")
    assert data.default_data_path("arc_easy") == tmp_path / "eval/arc_easy.jsonl"
    # PIQA: llm-foundry jsonl is used if it is the only one; the official folder wins.
    (tmp_path / "eval/piqa.jsonl").write_text("")
    assert data.default_data_path("piqa") == tmp_path / "eval/piqa.jsonl"
    (tmp_path / "eval/piqa_official").mkdir()
    assert data.default_data_path("piqa") == tmp_path / "eval/piqa_official"
    # An explicit data_dir overrides the environment.
    other = tmp_path / "other"
    (other / "eval").mkdir(parents=True)
    (other / "eval/arc_easy.jsonl").write_text("")
    assert data.default_data_path("arc_easy", other) == other / "eval/arc_easy.jsonl"
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(UserError, match="not a folder"):
        data.default_data_path("arc_easy")


def test_resolve_data_path(tmp_path):
    with pytest.raises(UserError, match="not found"):
        data.resolve_data_path("arc_easy", tmp_path / "none.jsonl")
    f = tmp_path / "a.jsonl"
    f.write_text("")
    assert data.resolve_data_path("arc_easy", f) == f


# ----------------------------------------------------------------------------- text


def test_read_text_plain_jsonl_and_compressed(tmp_path):
    (tmp_path / "t.txt").write_text("line one\r\nline two\n")
    assert data.read_text(tmp_path / "t.txt") == "line one\nline two\n"
    write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}, {"text": " b "}, {"text": ""}])
    assert data.read_text(tmp_path / "t.jsonl") == "a\n\n b \n\n"
    with bz2.open(tmp_path / "t.txt.bz2", "wt", encoding="utf-8") as f:
        f.write("zipped text")
    assert data.read_text(tmp_path / "t.txt.bz2") == "zipped text"


def test_read_text_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        data.read_text(tmp_path / "missing.txt")
    with pytest.raises(UserError, match="folder"):
        data.read_text(tmp_path)
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(UserError, match="no text"):
        data.read_text(tmp_path / "empty.txt")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": 3}\n')
    with pytest.raises(UserError, match="line 2.*'text'"):
        data.read_text(tmp_path / "bad.jsonl")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    with pytest.raises(UserError, match="UTF-8"):
        data.read_text(tmp_path / "latin1.txt")


# ----------------------------------------------------------------------------- ARC


def test_read_arc_both_formats(tmp_path):
    p = write_jsonl(tmp_path / "arc.jsonl", [
        {"query": "Question: Which is a gas?", "choices": ["rock", "air"], "gold": 1},
        {"question": "What melts?", "choices": {"text": ["ice", "sand", "salt"],
                                                "label": ["A", "B", "C"]}, "answerKey": "A"},
    ])
    items = data.read_question_choices(p)
    assert items[0] == data.ChoiceItem("Which is a gas?", ("rock", "air"), 1)
    assert items[1] == data.ChoiceItem("What melts?", ("ice", "sand", "salt"), 0)


@pytest.mark.parametrize("line, message", [
    ('{"query": "Q", "choices": ["a", "b"], "gold": 2}', "line 2: gold index 2 out of range"),
    ('{"query": "Q", "choices": ["a", "b"], "gold": "1"}', "line 2: field 'gold' should be int"),
    ('{"query": "Q", "choices": ["a"], "gold": 0}', "line 2: field 'choices'"),
    ('{"query": "Q", "gold": 0}', "line 2: missing field 'choices'"),
    ('{"query": "Q", "choices": ["a", "b"], "gold": 0', "line 2: not valid JSON"),
    ('["Q"]', "line 2: expected a JSON object"),
    ('{"prompt": "Q"}', "line 2: expected fields"),
])
def test_read_arc_errors_name_the_line(tmp_path, line, message):
    p = tmp_path / "arc.jsonl"
    p.write_text('{"query": "Q", "choices": ["a", "b"], "gold": 0}\n' + line + "\n")
    with pytest.raises(UserError, match=message):
        data.read_question_choices(p)


def test_empty_file_is_an_error(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(UserError, match="no items"):
        data.read_question_choices(tmp_path / "e.jsonl")


# ----------------------------------------------------------------------------- PIQA


def test_read_piqa_official_folder_file_and_foundry(tmp_path):
    d = tmp_path / "piqa"
    d.mkdir()
    write_jsonl(d / "valid.jsonl", [
        {"goal": "Open a jar", "sol1": "twist the lid ", "sol2": "hit it"},
        {"goal": "Dry hair", "sol1": "use a towel", "sol2": "use water"},
    ])
    (d / "valid-labels.lst").write_text("0\n0\n")
    items = data.read_piqa(d)
    assert items[0] == data.ChoiceItem("Open a jar", ("twist the lid ", "hit it"), 0)
    assert data.read_piqa(d / "valid.jsonl") == items
    f = write_jsonl(tmp_path / "piqa.jsonl", [
        {"query": "Question: Open a jar\n", "choices": ["twist the lid", "hit it"], "gold": 0}])
    assert data.read_piqa(f)[0] == data.ChoiceItem("Open a jar", ("twist the lid", "hit it"), 0)


def test_read_piqa_errors(tmp_path):
    d = tmp_path / "piqa"
    d.mkdir()
    with pytest.raises(UserError, match="valid-labels.lst"):
        data.read_piqa(d)
    write_jsonl(d / "valid.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b"}] * 2)
    (d / "valid-labels.lst").write_text("0\n")
    with pytest.raises(UserError, match="2 items but .* 1 labels"):
        data.read_piqa(d)
    (d / "valid-labels.lst").write_text("0\n2\n")
    with pytest.raises(UserError, match="line 2: expected a label"):
        data.read_piqa(d)


# ----------------------------------------------------------------------------- WinoGrande


def test_read_winogrande_both_formats(tmp_path):
    p = write_jsonl(tmp_path / "w.jsonl", [
        {"context_options": ["A beat B so A", "A beat B so B"], "continuation": "won.", "gold": 0},
        {"sentence": "The cup fell off the table because the _ was slippery.",
         "option1": "cup", "option2": "table", "answer": "2"},
    ])
    items = data.read_winogrande(p)
    assert items[0] == data.PartialItem(("A beat B so A", "A beat B so B"), "won.", 0)
    assert items[1] == data.PartialItem(
        ("The cup fell off the table because the cup",
         "The cup fell off the table because the table"), "was slippery.", 1)


def test_read_winogrande_errors(tmp_path):
    p = write_jsonl(tmp_path / "w.jsonl", [{"sentence": "no blank", "option1": "a",
                                             "option2": "b", "answer": "1"}])
    with pytest.raises(UserError, match="line 1: sentence has no blank"):
        data.read_winogrande(p)
    p = write_jsonl(tmp_path / "w.jsonl", [{"context_options": ["a", "b"],
                                             "continuation": "x", "gold": 5}])
    with pytest.raises(UserError, match="out of range"):
        data.read_winogrande(p)


# ----------------------------------------------------------------------------- LAMBADA


def test_read_lambada_both_formats(tmp_path):
    p = write_jsonl(tmp_path / "l.jsonl", [
        {"context": "He opened the", "continuation": "door"},
        {"text": "She read the final chapter of the book"},
    ])
    assert data.read_lambada(p) == [
        data.ClozeItem("He opened the", "door"),
        data.ClozeItem("She read the final chapter of the", "book"),
    ]
    p = write_jsonl(tmp_path / "l.jsonl", [{"context": "x", "continuation": ""}])
    with pytest.raises(UserError, match="empty continuation"):
        data.read_lambada(p)


# ----------------------------------------------------------------------------- HellaSwag


HS_ITEM = ["Ctx: a man walks. he", "2", "sits.", "runs.", "jumps.", "flies."]


def test_read_hellaswag_text_and_bz2(tmp_path):
    text = "\n".join(HS_ITEM + HS_ITEM) + "\n"
    (tmp_path / "h.txt").write_text(text)
    items = data.read_hellaswag(tmp_path / "h.txt")
    assert len(items) == 2
    assert items[0] == data.ChoiceItem(HS_ITEM[0], tuple(HS_ITEM[2:]), 2)
    with bz2.open(tmp_path / "h.txt.bz2", "wt", encoding="utf-8") as f:
        f.write(text)
    assert data.read_hellaswag(tmp_path / "h.txt.bz2") == items


def test_read_hellaswag_official_jsonl_gets_lm_eval_preprocessing(tmp_path):
    p = write_jsonl(tmp_path / "hellaswag_val.jsonl", [{
        "activity_label": "Making a cake", "ctx_a": "A woman mixes flour.",
        "ctx_b": "then SHE", "endings": ["bakes it [title] Enjoy.", "b", "c", "d"], "label": 0,
    }])
    item = data.read_hellaswag(p)[0]
    assert item.prompt == "Making a cake: A woman mixes flour. Then she"
    assert item.choices == ("bakes it. Enjoy.", "b", "c", "d")
    assert item.gold == 0


def test_read_hellaswag_errors(tmp_path):
    (tmp_path / "h.txt").write_text("\n".join(HS_ITEM + HS_ITEM[:1]) + "\n")
    with pytest.raises(UserError, match="6 lines per item.*7 lines.*item 2"):
        data.read_hellaswag(tmp_path / "h.txt")
    bad = list(HS_ITEM)
    bad[1] = "x"
    (tmp_path / "h.txt").write_text("\n".join(HS_ITEM + bad) + "\n")
    with pytest.raises(UserError, match="line 8: expected the gold index"):
        data.read_hellaswag(tmp_path / "h.txt")
    bad[1] = "4"
    (tmp_path / "h.txt").write_text("\n".join(bad) + "\n")
    with pytest.raises(UserError, match="line 2: gold index 4 out of range"):
        data.read_hellaswag(tmp_path / "h.txt")


# ----------------------------------------------------------------------------- real files


@needs_real
@pytest.mark.parametrize("task, rel, count", [
    ("arc_easy", "eval/arc_easy.jsonl", 2376),
    ("arc_challenge", "eval/arc_challenge.jsonl", 1172),
    ("piqa", "eval/piqa.jsonl", 1838),
    ("piqa", "eval/piqa_official", 1838),
    ("winogrande", "eval/winogrande.jsonl", 1267),
    ("lambada_openai", "eval/lambada_openai.jsonl", 5153),
    ("hellaswag", "eval/hellaswag_val.txt.bz2", 10042),
])
def test_real_file_counts(task, rel, count):
    items = data.load_task_data(task, REAL / rel)
    assert len(items) == count
    assert data.default_data_path(task, REAL).exists()


@needs_real
def test_real_file_contents():
    arc = data.read_question_choices(REAL / "eval/arc_easy.jsonl")
    assert arc[0].prompt == (
        "Which statement best explains why photosynthesis is the foundation of most food webs?")
    assert arc[0].gold == 0 and len(arc[0].choices) == 4
    foundry = data.read_piqa(REAL / "eval/piqa.jsonl")
    official = data.read_piqa(REAL / "eval/piqa_official")
    assert [i.prompt for i in foundry] == [i.prompt for i in official]
    assert [i.gold for i in foundry] == [i.gold for i in official]
    differ = sum(f.choices != o.choices for f, o in zip(foundry, official))
    assert differ == 118  # llm-foundry stripped trailing spaces of these solutions
    hs = data.read_hellaswag(REAL / "eval/hellaswag_val.txt.bz2")
    assert hs[0].prompt == "Roof shingle removal: A man is sitting on a roof. he"
    assert hs[0].gold == 3
    assert hs[0].choices[3] == "starts pulling up roofing on a roof."
    lam = data.read_lambada(REAL / "eval/lambada_openai.jsonl")
    assert lam[0].target == "signs" and lam[0].context.endswith("I don't care about")
    wg = data.read_winogrande(REAL / "eval/winogrande.jsonl")
    assert wg[0].contexts[1].endswith("so Maria") and wg[0].gold == 1
    text = data.read_text(REAL / "text/wikitext2_test.txt")
    assert text.startswith("\n\n = Robert Boulter = \n")


def test_lambada_text_rows_split_on_single_spaces_only(tmp_path):
    """lm-eval: context = text.split(' ')[:-1] joined with ' ', target = text.split(' ')[-1]; newlines and double
    spaces inside the text are kept as they are."""
    p = tmp_path / "l.jsonl"
    p.write_text(json.dumps({"text": "He said:  \"Open\nthe door"}) + "\n")
    assert data.read_lambada(p) == [data.ClozeItem("He said:  \"Open\nthe", "door")]


def test_winogrande_blank_followed_by_punctuation(tmp_path):
    """lm-eval's partial target is sentence[index('_') + 1:].strip(): a blank followed directly by "'s" or "." keeps
    that text in the continuation."""
    p = tmp_path / "w.jsonl"
    p.write_text(json.dumps({"sentence": "Ann lent Bea a pen because _'s was lost.", "option1": "Ann",
                             "option2": "Bea", "answer": "2"}) + "\n")
    item = data.read_winogrande(p)[0]
    assert item.contexts == ("Ann lent Bea a pen because Ann", "Ann lent Bea a pen because Bea")
    assert item.continuation == "'s was lost." and item.gold == 1
