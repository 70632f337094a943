"""GSM8K-style math from a local JSONL (`question`, `answer` ending in `#### N`): exact-match accuracy.

The prompt asks for step-by-step reasoning ending in "The answer is N." (zero-shot chain of
thought). The predicted number is the one after "####", else after the last "The answer is",
else the last number in the text; numbers compare by value ("1,000" = "1000.00").
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

from vist2.errors import Vist2Error
from vist2.eval import jsonl_files
from vist2.eval.sample import EvalSample

NAME = "gsm8k"
PROMPT = ("Solve the following math problem step by step. End your response with a line of the form "
          "\"The answer is N.\", where N is the final number.\n\nQuestion: {question}")
MAX_FILE_BYTES = 100 * 2**20
NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"


def add_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="a JSONL file with `question` and `answer` (`#### N`) per line")


def check_arguments(args) -> None:
    path = Path(args.data)
    if not path.is_file():
        raise Vist2Error(f"--data {path} is not a regular file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise Vist2Error(f"--data {path} is larger than {MAX_FILE_BYTES // 2**20} MiB")


def data_files(args) -> list[Path]:
    return [Path(args.data)]


def load_samples(args, tokenizer) -> list[EvalSample]:
    """The first --samples problems of the file; a malformed line is an error naming it."""
    check_arguments(args)
    samples, ids = [], {}
    for number, item in jsonl_files.records(Path(args.data)):
        if len(samples) == args.samples:
            break
        where = f"--data {args.data}, line {number}"
        if not isinstance(item.get("question"), str) or not isinstance(item.get("answer"), str):
            raise Vist2Error(f"{where}: needs string fields `question` and `answer`")
        reference = reference_answer(item["answer"])
        if reference is None:
            raise Vist2Error(f"{where}: the answer does not end with `#### N`")
        given = item.get("id")  # a line without one is "line<N>" (a given id equal to it is refused)
        sample_id = f"line{number}" if given is None else str(given)
        jsonl_files.unique_id(ids, sample_id, Path(args.data), number, "id")
        samples.append(EvalSample(id=sample_id, task=NAME,
                                  query=PROMPT.format(question=item["question"].strip()),
                                  references=(reference,), max_new_tokens=256))
    return samples


def reference_answer(answer: str) -> str | None:
    """N of the final `#### N` of a GSM8K answer."""
    found = re.search(rf"####\s*({NUMBER})\s*$", answer.strip())
    return found.group(1) if found else None


def extract_answer(text: str) -> str | None:
    """The predicted number: after `####`, else after the last "The answer is", else the last number."""
    for pattern in (rf"####\s*({NUMBER})", rf"[Tt]he (?:final )?answer is:?\s*({NUMBER})"):
        found = re.findall(pattern, text)
        if found:
            return found[-1]
    numbers = re.findall(NUMBER, text)
    return numbers[-1] if numbers else None


def same_number(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return Decimal(a.replace(",", "").replace("$", "")) == Decimal(b.replace(",", "").replace("$", ""))
    except InvalidOperation:
        return False


def score(sample: EvalSample, prediction: str) -> dict[str, float]:
    return {"score": 100.0 * same_number(extract_answer(prediction), sample.references[0])}
