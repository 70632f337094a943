"""GSM8K scored as lm-evaluation-harness: its filters on tricky strings by hand, cross-checked
against lm-eval's own filter and metric functions when it is installed, its few-shot prompt,
`vist2 eval score --benchmark gsm8k`, and a tiny file end to end."""

import argparse
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import require_extra
from vist2.cli import main
from vist2.errors import Vist2Error
from vist2.eval import gsm8k


def solution(n: str) -> str:
    return f"She pays 3 * 6 = <<3*6=18>>18 dollars.\n#### {n}"


# (response, reference N, strict, flexible), worked out by hand from lm-eval's gsm8k.yaml
TRICKY = [
    ("$18.00", "18", 0, 0),  # "$" dropped, but "18.00" is not "18"
    ("#### $18", "18", 0, 100),  # strict's pattern has no "$"; flexible keeps "$18", the "$" is ignored
    ("7.50 dollars", "7.5", 0, 0),  # strings, not numbers
    ("The answer is 7.5 dollars.", "7.5", 0, 100),  # a lone "." is too short for the flexible pattern
    ("\u22123", "-3", 0, 0),  # unicode minus: only "3" is a number-like run
    ("-3", "-3", 0, 100),
    ("The answer is 42", "42", 0, 100),
    ("The answer is 42.", "42", 0, 100),  # "42." then the final "." removed
    ("The answer is 5. Then 10 more.", "5", 0, 0),  # flexible takes the last number: 10
    ("The answer is 5. Then 10 more.", "10", 0, 100),
    ("#### 5\nand later #### 6", "5", 100, 0),  # strict takes the first ####, flexible the last number
    ("so #### 1,200.", "1200", 100, 100),  # commas and the final period are ignored
    ("#### 18\n\nQuestion: next", "18", 100, 100),
    ("", "18", 0, 0),
    ("no number", "18", 0, 0),
]


@pytest.mark.parametrize("response, n, strict, flexible", TRICKY)
def test_lm_eval_filters_on_tricky_strings(response, n, strict, flexible):
    assert gsm8k.lm_eval_scores(response, solution(n)) == {"strict": strict, "flexible": flexible}


def _lm_eval_task_yaml() -> dict:
    import yaml

    lm_eval = require_extra("lm_eval")
    return yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml").read_text())


def _lm_eval_scores(response: str, answer: str) -> dict[str, float]:
    """lm-eval's own pipeline for one response: its filters by the yaml's settings, then exact_match."""
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter
    from lm_eval.filters.selection import TakeFirstFilter

    task = _lm_eval_task_yaml()
    metric = {k: v for k, v in task["metric_list"][0].items() if k not in ("metric", "aggregation", "higher_is_better")}
    scores = {}
    for pipeline in task["filter_list"]:
        regex, take = pipeline["filter"]
        assert take["function"] == "take_first"
        kwargs = {k: v for k, v in regex.items() if k != "function"}
        filtered = list(TakeFirstFilter().apply(RegexFilter(**kwargs).apply([[response]], [{}]), [{}]))
        value = exact_match_hf_evaluate(predictions=filtered, references=[answer], **metric)["exact_match"]
        name = {"strict-match": "strict", "flexible-extract": "flexible"}[pipeline["name"]]
        scores[name] = 100.0 * float(value)
    return scores


def test_our_constants_are_lm_evals_gsm8k_settings():
    task = _lm_eval_task_yaml()
    patterns = {p["name"]: p["filter"][0] for p in task["filter_list"]}
    assert patterns["strict-match"]["regex_pattern"] == gsm8k.STRICT
    assert patterns["flexible-extract"]["regex_pattern"] == gsm8k.FLEXIBLE
    assert patterns["flexible-extract"]["group_select"] == -1 and "group_select" not in patterns["strict-match"]
    metric = task["metric_list"][0]
    assert tuple(metric["regexes_to_ignore"]) == gsm8k.IGNORED
    assert (metric["metric"], metric["ignore_case"], metric["ignore_punctuation"]) == ("exact_match", True, False)
    assert tuple(task["generation_kwargs"]["until"]) == gsm8k.UNTIL and task["num_fewshot"] == gsm8k.SHOTS


@pytest.mark.parametrize("response, n, strict, flexible", TRICKY)
def test_tricky_strings_score_as_lm_eval_itself(response, n, strict, flexible):
    _lm_eval_task_yaml()
    assert _lm_eval_scores(response, solution(n)) == {"strict": strict, "flexible": flexible}


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="0123456789-$.,# \nabT\u2212", max_size=24), st.sampled_from(["18", "1,200", "-3", "7.5"]))
def test_random_strings_score_as_lm_eval_itself(response, n):
    _lm_eval_task_yaml()
    assert gsm8k.lm_eval_scores(response, solution(n)) == _lm_eval_scores(response, solution(n))


def _write(path: Path, problems: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in problems))
    return path


def test_few_shot_prompt_is_lm_evals(tmp_path):
    """The contexts lm-eval builds for a local copy of its gsm8k task (5 shots, its default seed)."""
    _lm_eval_task_yaml()
    import lm_eval
    from lm_eval.tasks import TaskManager

    train = _write(tmp_path / "train.jsonl", [(f"Train q{i}?", solution(str(i))) for i in range(12)])
    test = _write(tmp_path / "test.jsonl", [(f"How many {i}?", solution(str(3 * i))) for i in range(4)])
    (tmp_path / "local_gsm8k.yaml").write_text(
        f"include: {Path(lm_eval.__file__).parent / 'tasks' / 'gsm8k' / 'gsm8k.yaml'}\ntask: local_gsm8k\n"
        f"dataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    train: {train}\n    test: {test}\n")
    task = TaskManager(include_path=str(tmp_path), include_defaults=False).load(["local_gsm8k"])["tasks"]["local_gsm8k"]
    task.set_fewshot_seed(1234)  # simple_evaluate's default fewshot_random_seed
    task.build_all_requests(limit=None, rank=0, world_size=1)
    theirs = [instance.args[0] for instance in sorted(task.instances, key=lambda i: i.doc_id)]
    args = argparse.Namespace(data=str(test), samples=4, prompt="lm-eval", fewshot_data=str(train), num_fewshot=None)
    ours = gsm8k.load_samples(args, None)
    assert [s.query for s in ours] == theirs
    assert ours[0].extra == {"chat_template": False, "stop_strings": gsm8k.UNTIL}


def test_score_command_prints_strict_and_flexible(tmp_path, capsys):
    path = tmp_path / "pred.jsonl"
    lines = [{"pred": "So #### 18", "answer": solution("18")}, {"pred": "It is 18.", "answer": solution("18")},
             {"pred": "$18.00", "answer": solution("18")}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["eval", "score", "--benchmark", "gsm8k", "--predictions", str(path)]) == 0
    assert json.loads(capsys.readouterr().out) == {"strict": 33.33, "flexible": 66.67}
    path.write_text(json.dumps({"pred": 18, "answer": solution("18")}) + "\n")
    assert main(["eval", "score", "--benchmark", "gsm8k", "--predictions", str(path)]) == 2
    assert "field 'pred' must be a string" in capsys.readouterr().err
    assert main(["eval", "score", "--benchmark", "gsm8k", "--task", "x", "--predictions", str(path)]) == 2


def test_gsm8k_end_to_end_and_bad_lines(tmp_path, one_thread, capsys):
    data = _write(tmp_path / "test.jsonl", [(f"What is {i} + 1?", f"{i} + 1 = {i + 1}\n#### {i + 1}") for i in range(3)])
    out = tmp_path / "out"
    assert main(["eval", "gsm8k", "--preset", "tiny", "--data", str(data), "--samples", "2", "--modes", "text",
                 "--max-new-tokens", "2", "--out", str(out), "--no-progress-bar"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["task"], r["length"], r["mode"], r["n"]) for r in rows] == [("gsm8k", None, "text", 2)]
    assert "flexible" in rows[0]
    assert (out / "results.png").is_file()
    bad = _write(tmp_path / "bad.jsonl", [("q", "no marker")])
    assert main(["eval", "gsm8k", "--preset", "tiny", "--data", str(bad), "--out", str(tmp_path / "o2")]) == 2
    assert "line 1" in capsys.readouterr().err
    assert main(["eval", "gsm8k", "--preset", "tiny", "--data", str(data), "--prompt", "lm-eval",
                 "--out", str(tmp_path / "o3")]) == 2
    assert "--fewshot-data" in capsys.readouterr().err
    assert main(["eval", "gsm8k", "--preset", "tiny", "--data", str(data), "--num-fewshot", "3",
                 "--out", str(tmp_path / "o4")]) == 2
    assert "are for --prompt lm-eval" in capsys.readouterr().err


def test_few_shot_run_generates_as_lm_eval_prompts(tmp_path, one_thread, monkeypatch):
    """Plain text (no chat template), lm-eval's `until` added to --stop, the whole solution as reference."""
    import vist2.generate

    configs, generate = [], vist2.generate.generate
    monkeypatch.setattr(vist2.generate, "generate", lambda *a, **k: configs.append(a[3]) or generate(*a, **k))
    data = _write(tmp_path / "test.jsonl", [("What is 1 + 1?", "#### 2")])
    train = _write(tmp_path / "train.jsonl", [(f"q{i}", f"#### {i}") for i in range(3)])
    out = tmp_path / "out"
    assert main(["eval", "gsm8k", "--preset", "tiny", "--data", str(data), "--prompt", "lm-eval", "--fewshot-data",
                 str(train), "--num-fewshot", "2", "--modes", "text", "--max-new-tokens", "3", "--stop", "x",
                 "--out", str(out), "--no-progress-bar"]) == 0
    assert [(c.chat_template, c.stop_strings) for c in configs] == [(False, ("x", *gsm8k.UNTIL))]
    record = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert record["references"] == ["#### 2"]


def test_gsm8k_lines_are_read_as_bounded_strict_json(tmp_path):
    data = tmp_path / "gsm.jsonl"
    data.write_text('{"question": "1+1?", "answer": "#### 2", "id": NaN}\n')
    with pytest.raises(Vist2Error, match="line 1: not valid JSON .NaN is not allowed"):
        gsm8k.load_samples(argparse.Namespace(data=str(data), samples=5), None)


def test_ids_stay_distinct_or_are_refused(tmp_path, one_thread, fixed_predictions, capsys):
    # line 1's id "line2" is what line 2 (no id) is called: once, the two collapsed into one key
    data = tmp_path / "gsm.jsonl"
    lines = [{"question": "One plus one?", "answer": "#### 2", "id": "2"},
             {"question": "Two plus two?", "answer": "#### 4"}]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    fixed_predictions({"One plus one": "#### 2", "Two plus two": "#### 2"})  # strict-match: right, then wrong
    out = tmp_path / "o"
    assert main(["eval", "gsm8k", "--preset", "tiny", "--data", str(data), "--out", str(out), "--modes", "text",
                 "--max-new-tokens", "2", "--no-progress-bar"]) == 0
    (row,) = json.loads((out / "results.json").read_text())["rows"]
    assert (row["n"], row["score"]) == (2, 50.0)
    lines.append({"question": "Three?", "answer": "#### 3", "id": "2"})
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["eval", "gsm8k", "--preset", "tiny", "--data", str(data), "--out", str(tmp_path / "o2"),
                 "--modes", "text", "--no-progress-bar"]) == 2
    assert "gsm.jsonl, lines 1 and 3: both have id '2'" in capsys.readouterr().err
