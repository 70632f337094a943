"""GSM8K from a local JSONL (`question`, `answer` ending in `#### N`), scored as lm-evaluation-harness does.

Two scores, lm-eval's `exact_match` under its two filters of the `gsm8k` task (lm_eval 0.4.13,
tasks/gsm8k/gsm8k.yaml): `score` is `strict-match` (the first `#### N` of the response) and
`flexible` is `flexible-extract` (the last number-like run). The extracted string and the
reference solution then go through the metric's own normalisation (",", "$", everything up to
the last "#### " and a final "." removed, lower case) and must be equal as strings: "$18.00"
does not equal "18", and a response without a match is "[invalid]".

Prompts (--prompt): `zeroshot` asks, in the chat template, for step-by-step reasoning ending
with "#### N"; `lm-eval` is lm-eval's plain-text few-shot prompt ("Question: ...\\nAnswer: ..."
examples drawn from --fewshot-data as its default sampler draws them, random.Random(1234),
--num-fewshot per question in file order), without the chat template and stopping at
"Question:", as `lm_eval --tasks gsm8k --num_fewshot 5` prompts a model.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from vist2 import jsonl_files
from vist2.errors import Vist2Error
from vist2.eval.sample import EvalSample

NAME = "gsm8k"
PROMPTS = ("zeroshot", "lm-eval")
ZERO_SHOT = ("Solve the following math problem step by step. End your response with a line of the form "
             "\"#### N\", where N is the final number.\n\nQuestion: {question}")
FEW_SHOT_TURN = "Question: {question}\nAnswer:"  # lm-eval's doc_to_text; " " + answer after it in examples
FEW_SHOT_DELIMITER = "\n\n"
FEW_SHOT_SEED = 1234  # lm-eval's default fewshot_random_seed
SHOTS = 5  # gsm8k.yaml's num_fewshot
UNTIL = ("Question:", "</s>", "<|im_end|>")  # gsm8k.yaml's generation_kwargs.until
MAX_NEW_TOKENS = 256  # lm-eval's default max_gen_toks
MAX_FILE_BYTES = 100 * 2**20

# lm-eval's gsm8k filters and exact_match settings
STRICT = r"#### (\-?[0-9\.\,]+)"
FLEXIBLE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
IGNORED = (",", r"\$", r"(?s).*#### ", r"\.$")  # regexes_to_ignore, removed in this order
INVALID = "[invalid]"  # the regex filter's fallback


def add_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="a JSONL file with `question` and `answer` (`#### N`) per line")
    parser.add_argument("--prompt", choices=PROMPTS, default="zeroshot",
                        help="zeroshot (chat template, ends with `#### N`; default) or lm-eval (its few-shot format)")
    parser.add_argument("--fewshot-data", help="with --prompt lm-eval: the JSONL the examples come from (GSM8K's train split)")
    parser.add_argument("--num-fewshot", type=int, help=f"examples per question with --prompt lm-eval (default {SHOTS})")


def check_arguments(args) -> None:
    for flag, name in (("--data", args.data), ("--fewshot-data", getattr(args, "fewshot_data", None))):
        if name is None:
            continue
        path = Path(name)
        if not path.is_file():
            raise Vist2Error(f"{flag} {path} is not a regular file")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise Vist2Error(f"{flag} {path} is larger than {MAX_FILE_BYTES // 2**20} MiB")
    if getattr(args, "prompt", "zeroshot") != "lm-eval":
        if getattr(args, "fewshot_data", None) is not None or getattr(args, "num_fewshot", None) is not None:
            raise Vist2Error("--fewshot-data and --num-fewshot are for --prompt lm-eval")
        return
    if args.fewshot_data is None:
        raise Vist2Error("--prompt lm-eval needs --fewshot-data FILE (GSM8K's train split as JSONL)")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise Vist2Error(f"--num-fewshot must be >= 0, got {args.num_fewshot}")


def read_problems(path: Path, flag: str, limit: int | None = None) -> list[dict]:
    """(id, question, answer) records of a GSM8K JSONL; a malformed line is an error naming it."""
    problems, ids = [], {}
    for number, item in jsonl_files.records(path):
        if len(problems) == limit:
            break
        where = f"{flag} {path}, line {number}"
        if not isinstance(item.get("question"), str) or not isinstance(item.get("answer"), str):
            raise Vist2Error(f"{where}: needs string fields `question` and `answer`")
        if re.search(r"####\s*\S", item["answer"]) is None:
            raise Vist2Error(f"{where}: the answer does not end with `#### N`")
        given = item.get("id")  # a line without one is "line<N>" (a given id equal to it is refused)
        problem_id = f"line{number}" if given is None else str(given)
        jsonl_files.unique_id(ids, problem_id, path, number, "id")
        problems.append({"id": problem_id, "question": item["question"], "answer": item["answer"]})
    return problems


def few_shot_prompts(questions: list[str], examples: list[dict], shots: int) -> list[str]:
    """lm-eval's gsm8k context for each question: `shots` examples drawn per question, in order."""
    if shots > len(examples):
        raise Vist2Error(f"--num-fewshot {shots}: --fewshot-data holds only {len(examples)} problems")
    draw = random.Random(FEW_SHOT_SEED)
    prompts = []
    for question in questions:
        turns = [FEW_SHOT_TURN.format(question=e["question"]) + " " + e["answer"] + FEW_SHOT_DELIMITER
                 for e in draw.sample(examples, shots)]
        prompts.append("".join(turns) + FEW_SHOT_TURN.format(question=question))
    return prompts


def data_files(args) -> list[Path]:
    return [Path(name) for name in (args.data, getattr(args, "fewshot_data", None)) if name is not None]


def load_samples(args, tokenizer) -> list[EvalSample]:
    """The first --samples problems of the file; the reference is the whole solution (lm-eval's target)."""
    check_arguments(args)
    problems = read_problems(Path(args.data), "--data", args.samples)
    if getattr(args, "prompt", "zeroshot") == "lm-eval":
        examples = read_problems(Path(args.fewshot_data), "--fewshot-data")
        shots = SHOTS if args.num_fewshot is None else args.num_fewshot
        queries = few_shot_prompts([p["question"] for p in problems], examples, shots)
        extra = {"chat_template": False, "stop_strings": UNTIL}
    else:
        queries = [ZERO_SHOT.format(question=p["question"].strip()) for p in problems]
        extra = {}
    return [EvalSample(id=p["id"], task=NAME, query=query, references=(p["answer"],),
                       max_new_tokens=MAX_NEW_TOKENS, extra=extra) for p, query in zip(problems, queries)]


def extract(text: str, pattern: str, last: bool) -> str:
    """lm-eval's regex filter: the first (or last) match, its first non-empty group, stripped."""
    found = re.findall(pattern, text)
    if not found:
        return INVALID
    match = found[-1 if last else 0]
    if isinstance(match, tuple):
        match = next((group for group in match if group), INVALID)
    return match.strip()


def normalize(text: str) -> str:
    """exact_match's preprocessing of prediction and reference alike."""
    for pattern in IGNORED:
        text = re.sub(pattern, "", text)
    return text.lower()


def lm_eval_scores(prediction: str, answer: str) -> dict[str, float]:
    """{"strict", "flexible"}: 100 or 0, lm-eval's exact_match of one response against a GSM8K solution."""
    reference = normalize(answer)
    return {name: 100.0 * (normalize(extract(prediction, pattern, last)) == reference)
            for name, pattern, last in (("strict", STRICT, False), ("flexible", FLEXIBLE, True))}


def score(sample: EvalSample, prediction: str) -> dict[str, float]:
    scores = lm_eval_scores(prediction, sample.references[0])
    return {"score": scores["strict"], "flexible": scores["flexible"]}
