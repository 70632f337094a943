"""LongBench v1 and LongBench-E from the JSONL files the benchmark distributes.

    vist2 eval longbench --data DIR [--tasks hotpotqa,trec] [--e] [--max-prompt-tokens N]

DIR holds `<subset>.jsonl` (v1) or `<subset>_e.jsonl` (LongBench-E), as unpacked from
LongBench's data.zip; each line has input, context, answers, length, all_classes, language,
dataset and _id. Prompts and answer lengths are LongBench's own (longbench_prompts.py);
scores are its metrics (metrics.py), 0-100. Rows: one per subset in v1; per subset and
length bucket in LongBench-E (`length` is the bucket's lower bound, 0, 4000 or 8000, in
LongBench's words-or-characters count). `extra["chat_template"]` is False for the subsets
LongBench feeds as raw text; the runner then builds the prompt without the chat template.
--samples N keeps the first N records of each subset (of each length bucket for -E; default all).
"""

from __future__ import annotations

import argparse
from collections import Counter

from vist2 import jsonl_files
from vist2.errors import Vist2Error
from vist2.eval.longbench_prompts import DATASET_MAX_NEW_TOKENS, DATASET_PROMPT, LONGBENCH_E, NO_CHAT_TEMPLATE
from vist2.eval.metrics import length_bucket, sample_score
from vist2.eval.sample import EvalSample

NAME = "longbench"
SAMPLES = None  # --samples default: every record
BUCKET_START = {"0-4k": 0, "4-8k": 4000, "8k+": 8000}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="folder with LongBench's <subset>.jsonl / <subset>_e.jsonl files")
    parser.add_argument("--tasks", default=None, help="comma-separated subsets (default: all of v1, or of -E with --e)")
    parser.add_argument("--e", action="store_true", help="LongBench-E: read <subset>_e.jsonl, rows per length bucket")
    parser.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=None,
        help="cut longer prompts in the middle to this many tokens, as LongBench does (default: keep whole)",
    )


def selected_tasks(tasks: str | None, e: bool) -> list[str]:
    allowed = LONGBENCH_E if e else tuple(DATASET_PROMPT)
    if tasks is None:
        return list(allowed)
    names = [name.strip() for name in tasks.split(",") if name.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise Vist2Error(f"--tasks {tasks!r}: LongBench{'-E' if e else ''} has {', '.join(allowed)}")
    return list(dict.fromkeys(names))


def _string(record: dict, name: str, where: str) -> str:
    value = record.get(name)
    if not isinstance(value, str):
        raise Vist2Error(f"{where}: field {name!r} must be a string")
    return value


def _strings(value, name: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Vist2Error(f"{where}: field {name!r} must be a list of strings")
    return tuple(value)


def middle_truncate(prompt: str, tokenizer, max_tokens: int | None) -> str:
    """LongBench's cut: keep the first and last max_tokens // 2 tokens of a longer prompt."""
    if max_tokens is None:
        return prompt
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    if len(ids) <= max_tokens:
        return prompt
    half = max_tokens // 2
    return tokenizer.decode(ids[:half], skip_special_tokens=True) + tokenizer.decode(ids[-half:], skip_special_tokens=True)


def read_subset(path, task: str, e: bool, tokenizer=None, max_prompt_tokens: int | None = None,
                limit: int | None = None) -> list[EvalSample]:
    """The records of one subset file as EvalSamples, each field checked: all, or the first `limit`
    (of each length bucket for LongBench-E)."""
    samples, ids, taken = [], {}, Counter()
    for number, record in jsonl_files.records(path):
        if limit is not None and not e and len(samples) == limit:
            break
        where = f"{path}, line {number}"
        sample_id = jsonl_files.unique_id(ids, _string(record, "_id", where), path, number, "_id")
        context, question = _string(record, "context", where), _string(record, "input", where)
        answers = _strings(record.get("answers"), "answers", where)
        classes = record.get("all_classes")
        classes = None if classes is None else list(_strings(classes, "all_classes", where))
        length = jsonl_files.finite_number(record.get("length"), where, "length")
        bucket = BUCKET_START[length_bucket(length)] if e else None
        if limit is not None and taken[bucket] == limit:
            continue
        taken[bucket] += 1
        if not answers:
            raise Vist2Error(f"{where}: field 'answers' is empty")
        if task in ("trec", "lsht") and not classes:
            raise Vist2Error(f"{where}: {task} needs a non-empty 'all_classes'")
        prompt = middle_truncate(DATASET_PROMPT[task].format(context=context, input=question), tokenizer, max_prompt_tokens)
        samples.append(
            EvalSample(
                id=sample_id,
                task=task,
                query=prompt,
                references=answers,
                max_new_tokens=DATASET_MAX_NEW_TOKENS[task],
                length=bucket,
                extra={
                    "where": where,
                    "all_classes": classes,
                    "length": length,
                    "language": record.get("language"),
                    "chat_template": task not in NO_CHAT_TEMPLATE,
                },
            )
        )
    if not samples:
        raise Vist2Error(f"{path}: holds no samples")
    return samples


def task_files(args: argparse.Namespace, names: dict[str, str]) -> dict:
    """{task: path} of the files `names` in the --data folder, and --max-prompt-tokens, checked
    before anything is loaded (shared with LooGLE)."""
    if args.max_prompt_tokens is not None and args.max_prompt_tokens < 2:
        raise Vist2Error(f"--max-prompt-tokens {args.max_prompt_tokens}: must be at least 2")
    root = jsonl_files.data_folder(args.data)
    return {task: jsonl_files.file_in(root, name) for task, name in names.items()}


def check_arguments(args: argparse.Namespace) -> dict:
    """The subset files of --data and --tasks."""
    tasks = selected_tasks(args.tasks, args.e)
    return task_files(args, {task: f"{task}_e.jsonl" if args.e else f"{task}.jsonl" for task in tasks})


def data_files(args: argparse.Namespace) -> list:
    return list(check_arguments(args).values())


def load_samples(args: argparse.Namespace, tokenizer) -> list[EvalSample]:
    samples = []
    for task, path in check_arguments(args).items():
        samples += read_subset(path, task, args.e, tokenizer, args.max_prompt_tokens, args.samples)
    return samples


def score(sample: EvalSample, prediction: str) -> dict[str, float]:
    """The sample's LongBench score (0-100) by its subset's metric, first-line rule included."""
    return {"score": 100 * sample_score(sample.task, prediction, sample.references, sample.extra.get("all_classes"))}
