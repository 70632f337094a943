"""`vist2 eval score`: score a predictions file as the benchmark's own scorer does.

    vist2 eval score --benchmark longbench --task hotpotqa --predictions pred/hotpotqa.jsonl
    {"score": 41.27}
    vist2 eval score --benchmark longbench --task qasper --predictions pred_e/qasper.jsonl --e
    {"score": {"0-4k": 38.1, "4-8k": 30.52, "8k+": 25.0}}
    vist2 eval score --benchmark gsm8k --predictions gsm8k.jsonl
    {"strict": 33.33, "flexible": 66.67}

LongBench (as its eval.py): each line holds `pred` (str), `answers` (list of str),
`all_classes` (list of str or null) and, for --e, `length`. As in eval.py, the last line's
all_classes serves every line (all lines of a real subset carry the same list). An empty
length bucket prints null (eval.py writes NaN, which is not JSON).

GSM8K (as lm-evaluation-harness's gsm8k task): each line holds `pred` (the response) and
`answer` (the reference solution ending "#### N"); the scores are lm-eval's exact_match under
its strict-match and flexible-extract filters, on a 0-100 scale (`vist2.eval.gsm8k`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vist2 import jsonl_files
from vist2.errors import Vist2Error
from vist2.eval.metrics import DATASET_METRIC, subset_score, subset_score_e

NAME = "score"
BENCHMARKS = ("longbench", "gsm8k")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", required=True, choices=BENCHMARKS, help="whose scorer to use")
    parser.add_argument("--task", help=f"longbench's subset: {', '.join(DATASET_METRIC)}")
    parser.add_argument("--predictions", required=True,
                        help="JSONL: pred, answers, all_classes, length (longbench); pred, answer (gsm8k)")
    parser.add_argument("--e", action="store_true", help="LongBench-E: score per length bucket (0-4k, 4-8k, 8k+)")


def _string_list(value, where: str, name: str, allow_none: bool = False) -> list[str] | None:
    """A list of strings; whole numbers become strings (eval.py's count metric compares str())."""
    if value is None and allow_none:
        return None
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        raise Vist2Error(f"{where}: field {name!r} must be a list of strings")
    return [str(v) for v in value]


def read_predictions(path: Path, need_length: bool) -> tuple[list[str], list[list[str]], list[float], list | None]:
    """predictions, answers, lengths and the last line's all_classes of a LongBench predictions file."""
    predictions, answers, lengths, all_classes = [], [], [], None
    for number, record in jsonl_files.records(path):
        where = f"{path}, line {number}"
        for name in ("pred", "answers", "all_classes") + (("length",) if need_length else ()):
            if name not in record:
                raise Vist2Error(f"{where}: missing field {name!r}")
        if not isinstance(record["pred"], str):
            raise Vist2Error(f"{where}: field 'pred' must be a string")
        predictions.append(record["pred"])
        answers.append(_string_list(record["answers"], where, "answers"))
        all_classes = _string_list(record["all_classes"], where, "all_classes", allow_none=True)
        if need_length:
            lengths.append(jsonl_files.finite_number(record["length"], where, "length"))
    if not predictions:
        raise Vist2Error(f"{path}: holds no predictions")
    return predictions, answers, lengths, all_classes


def gsm8k_scores(path: Path) -> dict[str, float]:
    """{"strict", "flexible"}: lm-eval's mean exact_match of a file of `pred` and `answer` lines, 0-100."""
    from vist2.eval.gsm8k import lm_eval_scores

    totals, lines = {"strict": 0.0, "flexible": 0.0}, 0
    for number, record in jsonl_files.records(path):
        for name in ("pred", "answer"):
            if not isinstance(record.get(name), str):
                raise Vist2Error(f"{path}, line {number}: field {name!r} must be a string")
        for name, value in lm_eval_scores(record["pred"], record["answer"]).items():
            totals[name] += value
        lines += 1
    if not lines:
        raise Vist2Error(f"{path}: holds no predictions")
    return {name: round(total / lines, 2) for name, total in totals.items()}


def main(args: argparse.Namespace) -> int:
    path = Path(args.predictions)
    if not path.exists():
        raise Vist2Error(f"--predictions {path}: no such file")
    if args.benchmark == "gsm8k":
        if args.task is not None or args.e:
            raise Vist2Error("--task and --e are LongBench's; --benchmark gsm8k takes neither")
        print(json.dumps(gsm8k_scores(path)))
        return 0
    task = args.task
    if task not in DATASET_METRIC:
        raise Vist2Error(f"--task {task!r}: LongBench has {', '.join(DATASET_METRIC)}")
    predictions, answers, lengths, all_classes = read_predictions(path, need_length=args.e)
    if args.e:
        score = subset_score_e(task, predictions, answers, lengths, all_classes)
    else:
        score = subset_score(task, predictions, answers, all_classes)
    print(json.dumps({"score": score}, ensure_ascii=False))
    return 0
