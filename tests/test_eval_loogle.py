"""LooGLE reader: tiny files in LooGLE's layout (qa_pairs as a Python-literal string), prompts, scores."""

import argparse
import json

import pytest

from vist2.errors import Vist2Error
from vist2.eval import loogle

TEXT = "Picardo was born in Jerez in 1919. He moved to Madrid."


def _doc(qa_pairs, output="none", **changes):
    record = {"input": TEXT, "title": "Picardo", "qa_pairs": qa_pairs, "output": output}
    record.update(changes)
    return record


def _write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def _args(data, tasks=None, samples=None):
    return argparse.Namespace(data=str(data), tasks=tasks, max_prompt_tokens=None, samples=samples)


def test_reads_all_four_tasks_with_loogle_prompts(tmp_path):
    pairs = [{"S": "born in Jerez", "Q": "Where was Picardo born?", "A": "In Jerez."}, {"Q": "When?", "A": "1919"}]
    _write(tmp_path / "shortdep_qa.jsonl", [_doc(str(pairs))])  # LooGLE writes str(list), not JSON
    _write(tmp_path / "longdep_qa.jsonl", [_doc(pairs[:1], output="None")])  # a JSON list is read too
    _write(tmp_path / "longdep_summarization.jsonl", [_doc("none", output="A life in architecture.")])
    cloze = [{"Q": "<mask-0> was born in <mask-1>.", "A": "{'<mask-0>': 'Picardo', '<mask-1>': 'Jerez'}"}]
    _write(tmp_path / "shortdep_cloze.jsonl", [_doc(str(cloze), output="None")])
    samples = loogle.load_samples(_args(tmp_path), None)
    assert [(s.task, s.id, s.max_new_tokens) for s in samples] == [
        ("shortdep_qa", "line1:Picardo#0", 300),
        ("shortdep_qa", "line1:Picardo#1", 300),
        ("longdep_qa", "line1:Picardo#0", 500),
        ("longdep_summarization", "line1:Picardo#0", 500),
        ("shortdep_cloze", "line1:Picardo#0", 50),
    ]
    qa, _, _, summary, fill = samples
    assert qa.query == f"Please answer the question based on the long texts below. \n{TEXT}\nQuestion: Where was Picardo born?\nAnswer: "
    assert summary.query == f"Please generate a summary of the below paper. \n{TEXT}\n Summarization: "
    assert "for example: {'<mask-0>': 'Bob'" in fill.query and fill.query.endswith("What are the masked entities? \nAnswer:")
    assert qa.references == ("In Jerez.",) and summary.references == ("A life in architecture.",)

    assert loogle.score(qa, "In Jerez.")["score"] == pytest.approx(100.0)
    assert set(loogle.score(summary, "")) == {"score", "bleu1", "bleu4", "rouge1", "rouge2"}
    assert loogle.score(fill, "{'<mask-0>': 'Picardo', '<mask-1>': 'Madrid'}") == {
        "score": 50.0, "partial_match": 50.0, "exact_matches": 1, "partial_matches": 1, "masks": 2}


@pytest.mark.parametrize(
    "record, message",
    [
        (_doc("[{'Q': 'x', 'A': 'y'"), "field 'qa_pairs' is neither a list literal"),
        (_doc("__import__('os').system('true')"), "field 'qa_pairs' is neither a list literal"),
        (_doc("none"), "shortdep_qa needs 'qa_pairs'"),
        (_doc("[{'Q': 'x'}]"), "needs a string 'A'"),
        (_doc([{"Q": "x", "A": "y"}], input=None), "fields 'input' and 'title' must be strings"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, record, message):
    _write(tmp_path / "shortdep_qa.jsonl", [_doc([{"Q": "q", "A": "a"}]), record])
    with pytest.raises(Vist2Error, match=f"shortdep_qa.jsonl, line 2: .*{message}"):
        loogle.load_samples(_args(tmp_path, "shortdep_qa"), None)


def test_bad_task_and_cloze_answers(tmp_path):
    with pytest.raises(Vist2Error, match="--tasks 'summary': LooGLE has"):
        loogle.load_samples(_args(tmp_path, "summary"), None)
    _write(tmp_path / "shortdep_cloze.jsonl", [_doc("[{'Q': 'x', 'A': 'Picardo'}]")])
    with pytest.raises(Vist2Error, match="line 1: a cloze 'A' must map"):
        loogle.load_samples(_args(tmp_path, "shortdep_cloze"), None)
    _write(tmp_path / "longdep_summarization.jsonl", [_doc("none", output="")])
    with pytest.raises(Vist2Error, match="line 1: a summarization record needs"):
        loogle.load_samples(_args(tmp_path, "longdep_summarization"), None)


def test_documents_sharing_a_title_keep_distinct_ids(tmp_path):
    _write(tmp_path / "shortdep_qa.jsonl", [_doc([{"Q": "Where?", "A": "Jerez"}]), _doc([{"Q": "When?", "A": "1919"}])])
    samples = loogle.load_samples(_args(tmp_path, "shortdep_qa"), None)
    assert [s.id for s in samples] == ["line1:Picardo#0", "line2:Picardo#0"]


def test_samples_keeps_the_first_questions_of_each_task(tmp_path):
    _write(tmp_path / "shortdep_qa.jsonl", [_doc([{"Q": "Where?", "A": "Jerez"}, {"Q": "When?", "A": "1919"}]),
                                            _doc([{"Q": "Who?", "A": "Picardo"}])])
    ids = lambda n: [s.id for s in loogle.load_samples(_args(tmp_path, "shortdep_qa", samples=n), None)]  # noqa: E731
    assert ids(1) == ["line1:Picardo#0"]
    assert ids(3) == ids(None) == ["line1:Picardo#0", "line1:Picardo#1", "line2:Picardo#0"]
