"""LongBench reader: tiny files in the distributed format, LongBench's prompts, hostile files."""

import argparse
import json
import os

import pytest

from vist2.errors import Vist2Error
from vist2 import jsonl_files
from vist2.eval import longbench
from vist2.tokenizer import byte_tokenizer


def _record(i, **changes):
    record = {
        "input": f"Who wrote book {i}?",
        "context": f"Passage 1:\nBook {i} was written by Ann.",
        "answers": ["Ann"],
        "length": 9 + 4000 * i,
        "dataset": "hotpotqa",
        "language": "en",
        "all_classes": None,
        "_id": f"id{i}",
    }
    record.update(changes)
    return record


def _write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def _args(data, tasks=None, e=False, max_prompt_tokens=None, samples=None):
    return argparse.Namespace(data=str(data), tasks=tasks, e=e, max_prompt_tokens=max_prompt_tokens, samples=samples)


def test_reads_v1_subsets_with_longbench_prompts(tmp_path):
    _write(tmp_path / "hotpotqa.jsonl", [_record(0), _record(1)])
    classes = ["Human", "City"]
    _write(tmp_path / "trec.jsonl", [_record(0, input="Where is Rome?\nType:", answers=["City"], all_classes=classes)])
    samples = longbench.load_samples(_args(tmp_path, "hotpotqa,trec"), None)
    assert [(s.id, s.task, s.length, s.max_new_tokens) for s in samples] == [
        ("id0", "hotpotqa", None, 32),
        ("id1", "hotpotqa", None, 32),
        ("id0", "trec", None, 64),
    ]
    hotpot = samples[0]
    assert hotpot.query.startswith("Answer the question based on the given passages. Only give me the answer")
    assert hotpot.query.endswith("\n\nQuestion: Who wrote book 0?\nAnswer:")
    assert "Book 0 was written by Ann." in hotpot.query and hotpot.references == ("Ann",)
    assert hotpot.extra["chat_template"] and not samples[2].extra["chat_template"]
    assert longbench.score(samples[2], "City\nQuestion: next") == {"score": 100.0}
    assert longbench.score(hotpot, "It was Ann") == {"score": pytest.approx(100 * 2 / 4)}


def test_longbench_e_rows_are_length_buckets(tmp_path):
    _write(tmp_path / "hotpotqa_e.jsonl", [_record(i) for i in range(3)])
    samples = longbench.load_samples(_args(tmp_path, "hotpotqa", e=True), None)
    assert [s.length for s in samples] == [0, 4000, 8000]
    assert [s.extra["length"] for s in samples] == [9, 4009, 8009]
    with pytest.raises(Vist2Error, match="--tasks 'narrativeqa': LongBench-E has"):
        longbench.load_samples(_args(tmp_path, "narrativeqa", e=True), None)


def test_middle_truncation_keeps_both_ends(tmp_path):
    _write(tmp_path / "hotpotqa.jsonl", [_record(0, context="x" * 5000)])
    sample = longbench.load_samples(_args(tmp_path, "hotpotqa", max_prompt_tokens=200), byte_tokenizer())[0]
    assert len(sample.query) == 200
    assert sample.query.startswith("Answer the question") and sample.query.endswith("Answer:")


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"input": "q"', "line 2: not valid JSON"),
        ("[1, 2]", "line 2: expected a JSON object, got list"),
        (json.dumps(_record(1, answers="Ann")), "line 2: field 'answers' must be a list of strings"),
        (json.dumps(_record(1, context=None)), "line 2: field 'context' must be a string"),
        (json.dumps(_record(1)).replace('"length": 4009', '"length": Infinity'), "line 2: not valid JSON"),
        (json.dumps(_record(1, length="long")), "line 2: field 'length' must be a finite number"),
        (json.dumps(_record(1, answers=[])), "line 2: field 'answers' is empty"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    (tmp_path / "hotpotqa.jsonl").write_text(json.dumps(_record(0)) + "\n" + line + "\n")
    with pytest.raises(Vist2Error, match=f"hotpotqa.jsonl, {message}"):
        longbench.load_samples(_args(tmp_path, "hotpotqa"), None)


def test_hostile_folders_are_refused(tmp_path, monkeypatch):
    data, outside = tmp_path / "data", tmp_path / "outside.jsonl"
    data.mkdir()
    _write(outside, [_record(0)])
    os.symlink(outside, data / "hotpotqa.jsonl")
    with pytest.raises(Vist2Error, match="outside the data folder"):
        longbench.load_samples(_args(data, "hotpotqa"), None)
    os.mkfifo(data / "qasper.jsonl")
    with pytest.raises(Vist2Error, match="qasper.jsonl: not a regular file"):
        longbench.load_samples(_args(data, "qasper"), None)
    with pytest.raises(Vist2Error, match="musique.jsonl: no such file"):
        longbench.load_samples(_args(data, "musique"), None)
    with pytest.raises(Vist2Error, match="--tasks '../outside'"):
        longbench.load_samples(_args(data, "../outside"), None)
    with pytest.raises(Vist2Error, match="--data .*: not a folder"):
        longbench.load_samples(_args(tmp_path / "nowhere", "hotpotqa"), None)
    monkeypatch.setattr(jsonl_files, "MAX_LINE_BYTES", 100)
    _write(data / "2wikimqa.jsonl", [_record(0, context="x" * 200)])
    with pytest.raises(Vist2Error, match="2wikimqa.jsonl, line 1: longer than 100 bytes"):
        longbench.load_samples(_args(data, "2wikimqa"), None)


def test_duplicate_ids_are_refused_naming_both_lines(tmp_path):
    _write(tmp_path / "hotpotqa.jsonl", [_record(0), _record(1), _record(2, _id="id0")])
    with pytest.raises(Vist2Error, match=r"hotpotqa.jsonl, lines 1 and 3: both have _id 'id0'"):
        longbench.load_samples(_args(tmp_path, "hotpotqa"), None)


def test_samples_keeps_the_first_records_of_each_subset_or_bucket(tmp_path):
    _write(tmp_path / "hotpotqa.jsonl", [_record(0), _record(1), _record(2)])
    assert [s.id for s in longbench.load_samples(_args(tmp_path, "hotpotqa", samples=2), None)] == ["id0", "id1"]
    _write(tmp_path / "hotpotqa_e.jsonl", [_record(0), _record(1), _record(3, length=20), _record(4, length=4500)])
    samples = longbench.load_samples(_args(tmp_path, "hotpotqa", e=True, samples=1), None)
    assert [(s.id, s.length) for s in samples] == [("id0", 0), ("id1", 4000)]
