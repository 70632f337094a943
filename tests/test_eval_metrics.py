"""LongBench and LooGLE metrics: hand-computed values, LongBench's quirks, and `vist2 eval score`
pinned to numbers that LongBench's official eval.py printed for the same prediction files."""

import argparse
import json

import pytest

from vist2.errors import Vist2Error
from vist2.eval import metrics, score

TREC = ["Abbreviation", "Entity", "Human being", "Human", "Location", "City"]
LSHT = ["体育", "财经", "科技", "军事", "军事武器"]
# (pred, answers[, all_classes]) per subset. The expected scores below were printed by the official
# THUDM/LongBench LongBench/eval.py (with its metrics.py, rouge 1.0.1, jieba 0.42.1, fuzzywuzzy
# 0.18.0 without python-Levenshtein) run on exactly these lines written as pred/m/<subset>.jsonl.
CASES = {
    "hotpotqa": [
        ("The Eiffel Tower", ["Eiffel Tower"]),
        ("It was built in 1889 in Paris.", ["1889"]),
        ("Paris, France", ["Paris", "France"]),
        ("", ["London"]),
    ],
    "multifieldqa_zh": [("北京是中国的首都。", ["北京"]), ("我认为答案是上海", ["上海市"]), ("不知道", ["广州"])],
    "triviaqa": [
        ("\n\nNeil Armstrong\nQuestion: who was second?", ["Neil Armstrong", "Armstrong"]),
        ("the moon landing was in 1969", ["1969"]),
    ],
    "trec": [
        ("Human being\nQuestion: what?", ["Human being"], TREC),
        ("Location or City", ["City"], TREC),
        ("Entity", ["Abbreviation"], TREC),
        ("\nAbbreviation", ["Abbreviation"], TREC),
    ],
    "lsht": [("军事武器", ["军事武器"], LSHT), ("体育和财经", ["财经"], LSHT), ("科技\n体育", ["体育"], LSHT)],
    "samsum": [
        ("Anna will bring the cake to the party.\nDialogue: more", ["Anna is bringing cake to the party."]),
        ("...", ["Tom is late."]),
        ("Tom will be late. He is stuck in traffic", ["Tom is late because of traffic."]),
    ],
    "vcsum": [("会议讨论了项目进度和下一步计划。", ["本次会议主要讨论了项目的进度，并确定了下一步的计划。"]), ("", ["会议总结"])],
    "passage_count": [("There are 12 unique paragraphs.", ["12"]), ("12 or 13", ["12"]), ("I am not sure", ["7"])],
    "passage_retrieval_en": [("Paragraph 3", ["Paragraph 3"]), ("Paragraph 3 or Paragraph 14", ["Paragraph 14"])],
    "passage_retrieval_zh": [("答案是段落5", ["段落5"]), ("段落2，段落7", ["段落7"])],
    "lcc": [
        ("```python\n    return self.value + 1\n```", ["    return self.value + 1"]),
        ("# next line\nx = compute(a, b)", ["x = compute(a, c)"]),
        ("for (int i = 0; i < n; i++) {", ["for (int j = 0; j < n; j++) {"]),
    ],
}
OFFICIAL = {  # official eval.py's pred/m/result.json for CASES
    "vcsum": 36.0, "trec": 62.5, "multifieldqa_zh": 11.11, "triviaqa": 66.67, "passage_retrieval_zh": 75.0,
    "hotpotqa": 47.92, "lcc": 94.67, "samsum": 41.59, "passage_count": 50.0, "passage_retrieval_en": 75.0,
    "lsht": 50.0,
}  # fmt: skip
E_CASES = [("yes", ["yes"], 1200), ("no it is not", ["no"], 3999), ("unanswerable", ["yes"], 4000),
           ("They use BERT.", ["BERT"], 9000), ("a transformer model", ["transformer"], 12000)]  # fmt: skip
OFFICIAL_E = {"0-4k": 70.0, "4-8k": 0.0, "8k+": 58.33}  # official eval.py --e, pred_e/m/qasper.jsonl


def _write(path, rows, lengths=None):
    with open(path, "w", encoding="utf-8") as handle:
        for i, row in enumerate(rows):
            record = {"pred": row[0], "answers": row[1], "all_classes": row[2] if len(row) > 2 else None}
            record["length"] = lengths[i] if lengths else 100
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def _score(path, task, e=False):
    return argparse.Namespace(benchmark="longbench", task=task, predictions=str(path), e=e)


@pytest.mark.parametrize("task", sorted(CASES))
def test_score_command_equals_official_eval(task, tmp_path, capsys):
    _write(tmp_path / f"{task}.jsonl", CASES[task])
    assert score.main(_score(tmp_path / f"{task}.jsonl", task)) == 0
    assert json.loads(capsys.readouterr().out) == {"score": OFFICIAL[task]}


def test_score_command_longbench_e_buckets_equal_official(tmp_path, capsys):
    _write(tmp_path / "qasper.jsonl", [r[:2] for r in E_CASES], lengths=[r[2] for r in E_CASES])
    parser = argparse.ArgumentParser()
    score.add_arguments(parser)
    argv = ["--benchmark", "longbench", "--task", "qasper", "--predictions", str(tmp_path / "qasper.jsonl"), "--e"]
    assert score.main(parser.parse_args(argv)) == 0
    assert json.loads(capsys.readouterr().out) == {"score": OFFICIAL_E}
    _write(tmp_path / "short.jsonl", [r[:2] for r in E_CASES[:2]], lengths=[10, 20])
    assert score.main(_score(tmp_path / "short.jsonl", "qasper", e=True)) == 0
    # by hand: "yes" = 1, "no it is not" vs "no" = F1(P=1/4, R=1) = 0.4; empty buckets print null
    assert json.loads(capsys.readouterr().out) == {"score": {"0-4k": 70.0, "4-8k": None, "8k+": None}}


def test_score_command_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"pred": "x", "answers": ["x"], "all_classes": null}\n{"pred": oops}\n')
    with pytest.raises(Vist2Error, match=r"bad.jsonl, line 2: not valid JSON"):
        score.main(_score(bad, "hotpotqa"))
    bad.write_text('{"pred": "x", "answers": ["x"], "all_classes": null}\n')
    with pytest.raises(Vist2Error, match=r"line 1: missing field 'length'"):
        score.main(_score(bad, "qasper", e=True))
    bad.write_text('{"pred": "x", "answers": ["x"], "all_classes": null, "length": NaN}\n')
    with pytest.raises(Vist2Error, match=r"line 1: not valid JSON \(NaN is not allowed\)"):
        score.main(_score(bad, "qasper", e=True))
    bad.write_text('{"pred": 3, "answers": ["x"], "all_classes": null}\n')
    with pytest.raises(Vist2Error, match=r"line 1: field 'pred' must be a string"):
        score.main(_score(bad, "hotpotqa"))
    with pytest.raises(Vist2Error, match=r"--task 'nq'"):
        score.main(_score(bad, "nq"))
    with pytest.raises(Vist2Error, match=r"no such file"):
        score.main(_score(tmp_path / "missing.jsonl", "hotpotqa"))


def test_english_qa_f1_by_hand():
    assert metrics.normalize_answer("The, Cat!  an apple") == "cat apple"
    assert metrics.qa_f1_score("The Eiffel Tower", "Eiffel Tower") == 1.0
    # 7 tokens after normalisation, 1 shared: P = 1/7, R = 1, F1 = 2PR / (P + R) = 0.25
    assert metrics.qa_f1_score("It was built in 1889 in Paris.", "1889") == pytest.approx(0.25)
    assert metrics.qa_f1_score("", "London") == 0.0


def test_chinese_metrics_by_hand():
    assert metrics.normalize_zh_answer("北京， 是 首都！") == "北京是首都"
    # jieba: 北京/是/中国/的/首都 against 北京: P = 1/5, R = 1, F1 = 1/3
    assert metrics.qa_f1_zh_score("北京是中国的首都。", "北京") == pytest.approx(1 / 3)
    assert metrics.rouge_zh_score("", "会议总结") == 0.0


def test_rouge_l_by_hand_and_failure_scores_zero():
    # LCS of "a b c d" and "a b x d" is 3 of 4 words each way: ROUGE-L F = 0.75
    assert metrics.rouge_score("a b c d", "a b x d") == pytest.approx(0.75, abs=1e-8)
    assert metrics.rouge_score("", "Tom is late.") == 0.0
    assert metrics.rouge_score("...", "Tom is late.") == 0.0


def test_classification_keeps_longbench_removal_quirk():
    assert metrics.classification_score("Location or City", "City", all_classes=TREC) == 0.5
    assert metrics.classification_score("Human being", "Human being", all_classes=TREC) == 1.0
    # "a" is dropped as part of the truth, and the removal skips "b": 1 / len(["a b", "b"])
    assert metrics.classification_score("a b", "a b", all_classes=["a b", "a", "b"]) == 0.5
    with pytest.raises(Vist2Error, match="all_classes"):
        metrics.classification_score("x", "x")


def test_count_retrieval_and_code_by_hand():
    assert metrics.count_score("12 or 13", "12") == 0.5
    assert metrics.count_score("none", "12") == 0.0
    assert metrics.retrieval_score("Paragraph 3 or Paragraph 14", "Paragraph 14") == 0.5
    assert metrics.retrieval_zh_score("段落2，段落7", "段落7") == 0.5
    with pytest.raises(Vist2Error, match="does not name a paragraph"):
        metrics.retrieval_score("3", "three")
    assert metrics.fuzz_ratio("abcd", "abce") == 75  # difflib: 2 * 3 matches / 8 characters
    assert metrics.code_sim_score("```python\nx = 1\n```", "x = 1") == 1.0
    assert metrics.code_sim_score("# only a comment", "x = 1") == 0.0


def test_first_line_rule_and_best_answer():
    assert metrics.sample_score("triviaqa", "\n\nArmstrong\nQuestion: next", ["Neil Armstrong", "Armstrong"]) == 1.0
    assert metrics.sample_score("hotpotqa", "Armstrong\nmore", ["Armstrong"]) == pytest.approx(2 / 3)
    assert metrics.length_bucket(3999) == "0-4k" and metrics.length_bucket(4000) == "4-8k"
    assert metrics.length_bucket(8000) == "8k+"
    assert set(metrics.DATASET_METRIC) >= set(OFFICIAL)


def test_loogle_metrics_equal_loogle_automatic_metrics():
    # values printed by LooGLE's own Evaluation/automatic_metrics.py (nltk 3.8.1, rouge 1.0.1):
    # get_bleu_score -> (0.36787944117144233, ~0), get_rouge_score -> (0.6, 0.4, 0.6)
    scores = metrics.loogle_similarity("the cat sat", "the cat sat on the mat")
    assert scores["bleu1"] == pytest.approx(0.36787944117144233)  # precision 1, brevity exp(1 - 6/3)
    assert scores["bleu4"] < 1e-300
    assert (scores["rouge1"], scores["rouge2"], scores["rougeL"]) == pytest.approx((0.6, 0.4, 0.6))
    assert metrics.loogle_similarity("", "None") == metrics.loogle_similarity("None", "None")


def test_loogle_cloze_match_by_hand():
    truth = {"<mask-0>": "Justin Timberlake", "<mask-1>": "Cerina Aragones", "<mask-2>": "Kentwood"}
    guess = "{'<mask-0>': 'Justin', '<mask-1>': 'Aragones Cerina', '<mask-2>': 'Kentwood'}"
    assert metrics.loogle_cloze(guess, truth) == {"exact_matches": 1, "partial_matches": 3, "masks": 3}
    assert metrics.loogle_cloze("__import__('os')", truth) == {"exact_matches": 0, "partial_matches": 0, "masks": 3}
    # LooGLE eval()s the text as generated: a leading newline then a space is an IndentationError there
    assert metrics.loogle_cloze("\n {'<mask-2>': 'Kentwood'}", truth)["exact_matches"] == 0
    assert metrics.loogle_cloze("\n{'<mask-2>': 'Kentwood'}", truth)["exact_matches"] == 1


def test_loogle_cloze_pools_masks_over_questions():
    # the example: LooGLE's get_match_score gives 2 of 3 masks exact, 3 of 3 partial
    first = metrics.loogle_cloze("{'<mask-0>': 'John', '<mask-1>': 'London'}",
                                 {"<mask-0>": "John Smith", "<mask-1>": "London"})
    second = metrics.loogle_cloze("{'<mask-0>': 'Paris'}", {"<mask-0>": "Paris"})
    pooled = metrics.loogle_match_score([first, second])
    assert pooled == {"exact_match": pytest.approx(200 / 3), "partial_match": 100.0}  # LooGLE prints 0.6667
    assert (100 * 1 / 2 + 100 * 1 / 1) / 2 == 75.0  # the mean of per-question shares, which it is not


def test_rouge_recursion_boundary_falls_where_eval_py_puts_it():
    # official eval.py on one gov_report line with these texts printed 50.0 for n = 660 and 0.0 for
    # n = 661 (the rouge package's LCS recursion overflows); the result must not depend on our stack depth
    def deeper(levels, n):
        if levels:
            return deeper(levels - 1, n)
        hyp, ref = " ".join(f"w{i}" for i in range(n)), " ".join(f"w{i}" for i in range(0, 2 * n, 2))
        return metrics.subset_score("gov_report", [hyp], [[ref]], None)

    assert deeper(0, 660) == 50.0 and deeper(50, 660) == 50.0
    assert deeper(0, 661) == 0.0
