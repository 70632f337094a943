"""LooGLE from its JSONL files: long- and short-dependency QA, cloze and summarization.

    vist2 eval loogle --data DIR [--tasks shortdep_qa,longdep_qa] [--max-prompt-tokens N]

DIR holds `<task>.jsonl` for the tasks below, as LooGLE distributes them (its
LooGLE-testdata/ folder or the Hugging Face dataset saved as JSONL). Each line is one
document: `input` (the long text), `title`, `qa_pairs` (a list of {"Q", "A", ...} records,
usually written as a Python-literal string; "none" for summarization) and `output` (the
summary). Every question becomes one sample; a summarization document is one sample. A
sample's id is `line<N>:<title>#<question index>`, unique even where documents share a title.
--samples N keeps the first N samples of each task (default all).
Prompts and answer lengths are those of LooGLE's prediction scripts (config/task2prompt.json,
config/task2maxlen.json).

Scores (0-100, metrics.py): QA and summarization: "score" is ROUGE-L recall, with BLEU-1,
BLEU-4, ROUGE-1 and ROUGE-2 beside it; cloze: "score" is exact match, with partial match
beside it, each pooled over the masks of all questions as LooGLE's scorer pools them (a row's
score is matched masks / masks of its questions, not the mean of per-question shares; a
prediction record's "score" is its own question's share, and its mask counts are beside it).
Not computed: METEOR (needs the WordNet corpus), BERTScore (needs model weights) and LooGLE's
GPT-4 judge (needs an API).
"""

from __future__ import annotations

import argparse
import ast
import json
from dataclasses import replace

from vist2 import jsonl_files
from vist2.errors import Vist2Error
from vist2.eval.longbench import middle_truncate, task_files
from vist2.eval.metrics import loogle_cloze, loogle_match_score, loogle_similarity
from vist2.eval.sample import EvalSample, Row

NAME = "loogle"
SAMPLES = None  # --samples default: every question
QA_PROMPT = "Please answer the question based on the long texts below. \n{input}\nQuestion: {Q}\nAnswer: "
TASK_PROMPT = {
    "shortdep_qa": QA_PROMPT,
    "longdep_qa": QA_PROMPT,
    "longdep_summarization": "Please generate a summary of the below paper. \n{input}\n Summarization: ",
    "shortdep_cloze": (
        "Please fill in the clozes based on the given long texts below. Each of the placeholder '<mask-n>' in the "
        "question could be an entity of Person, Location or Organiocation. The same masks represent the same entity. "
        "Output a json format answer, for example: {{'<mask-0>': 'Bob', '<mask-1>': 'Gorrosion Magazine','<mask-2>': "
        "'Bethel Horizon'}}\n{input}\n Question: {Q} What are the masked entities? \nAnswer:"
    ),
}
TASK_MAX_NEW_TOKENS = {"shortdep_qa": 300, "longdep_qa": 500, "longdep_summarization": 500, "shortdep_cloze": 50}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="folder with LooGLE's <task>.jsonl files")
    parser.add_argument("--tasks", default=None, help=f"comma-separated tasks (default: all of {', '.join(TASK_PROMPT)})")
    parser.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=None,
        help="cut longer prompts in the middle to this many tokens, as LooGLE does (default: keep whole)",
    )


def selected_tasks(tasks: str | None) -> list[str]:
    if tasks is None:
        return list(TASK_PROMPT)
    names = [name.strip() for name in tasks.split(",") if name.strip()]
    if not names or any(name not in TASK_PROMPT for name in names):
        raise Vist2Error(f"--tasks {tasks!r}: LooGLE has {', '.join(TASK_PROMPT)}")
    return list(dict.fromkeys(names))


def qa_pairs(value, where: str) -> list[dict] | None:
    """The record's question-answer list, or None for a summarization record ("none")."""
    if isinstance(value, str):
        if value.strip().lower() == "none":
            return None
        try:
            value = ast.literal_eval(value)  # LooGLE writes a Python literal; literal_eval never runs code
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise Vist2Error(f"{where}: field 'qa_pairs' is neither a list literal nor \"none\"") from None
    if not isinstance(value, list) or not all(isinstance(pair, dict) for pair in value):
        raise Vist2Error(f"{where}: field 'qa_pairs' must be a list of {{'Q': ..., 'A': ...}} records")
    return value


def _answer(pair: dict, task: str, where: str) -> str | dict:
    answer, question = pair.get("A"), pair.get("Q")
    if not isinstance(question, str):
        raise Vist2Error(f"{where}: every qa_pairs record needs a string 'Q'")
    if task == "shortdep_cloze":
        if isinstance(answer, str):
            answer = _literal(answer)
        ok = isinstance(answer, dict) and answer and all(isinstance(v, str) for v in answer.values())
        if not ok:
            raise Vist2Error(f"{where}: a cloze 'A' must map each '<mask-n>' to a string")
        return answer
    if not isinstance(answer, str):
        raise Vist2Error(f"{where}: every qa_pairs record needs a string 'A'")
    return answer


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def read_task(path, task: str, tokenizer=None, max_prompt_tokens: int | None = None,
              limit: int | None = None) -> list[EvalSample]:
    """The questions (or summarization documents) of one task file as EvalSamples: all, or the
    first `limit`."""
    samples = []
    for number, record in jsonl_files.records(path):
        if limit is not None and len(samples) >= limit:
            break
        where = f"{path}, line {number}"
        text, title = record.get("input"), record.get("title", f"line{number}")
        if not isinstance(text, str) or not isinstance(title, str):
            raise Vist2Error(f"{where}: fields 'input' and 'title' must be strings")
        pairs = qa_pairs(record.get("qa_pairs"), where)
        if pairs is None and task != "longdep_summarization":
            raise Vist2Error(f"{where}: {task} needs 'qa_pairs' (a list of questions), not \"none\"")
        if pairs is not None and task == "longdep_summarization":
            raise Vist2Error(f"{where}: longdep_summarization expects 'qa_pairs' \"none\" and a summary in 'output'")
        if pairs is None:
            summary = record.get("output")
            if not isinstance(summary, str) or not summary.strip():
                raise Vist2Error(f"{where}: a summarization record needs a non-empty string 'output'")
            items = [(None, summary)]
        else:
            items = [(pair.get("Q"), _answer(pair, task, where)) for pair in pairs]
        if limit is not None:
            items = items[: limit - len(samples)]
        for index, (question, answer) in enumerate(items):
            fields = {"input": text} if question is None else {"input": text, "Q": question}
            prompt = middle_truncate(TASK_PROMPT[task].format(**fields), tokenizer, max_prompt_tokens)
            reference = json.dumps(answer, ensure_ascii=False) if isinstance(answer, dict) else answer
            samples.append(
                EvalSample(
                    id=f"line{number}:{title}#{index}",
                    task=task,
                    query=prompt,
                    references=(reference,),
                    max_new_tokens=TASK_MAX_NEW_TOKENS[task],
                    extra={"where": where, **({"masks": answer} if isinstance(answer, dict) else {})},
                )
            )
    if not samples:
        raise Vist2Error(f"{path}: holds no samples")
    return samples


def check_arguments(args: argparse.Namespace) -> dict:
    """The task files of --data and --tasks."""
    return task_files(args, {task: f"{task}.jsonl" for task in selected_tasks(args.tasks)})


def data_files(args: argparse.Namespace) -> list:
    return list(check_arguments(args).values())


def load_samples(args: argparse.Namespace, tokenizer) -> list[EvalSample]:
    samples = []
    for task, path in check_arguments(args).items():
        samples += read_task(path, task, tokenizer, args.max_prompt_tokens, args.samples)
    return samples


def score(sample: EvalSample, prediction: str) -> dict[str, float]:
    """LooGLE's offline metrics for one prediction, 0-100 (see the module docstring); for cloze
    also the question's mask counts, which `pool` sums over a row."""
    if sample.task == "shortdep_cloze":
        counts = loogle_cloze(prediction, sample.extra["masks"])
        match = loogle_match_score([counts])
        return {"score": match["exact_match"], "partial_match": match["partial_match"], **counts}
    metrics = loogle_similarity(prediction, sample.references[0])
    scores = {"score": 100 * metrics["rougeL"]}
    scores.update({name: 100 * metrics[name] for name in ("bleu1", "bleu4", "rouge1", "rouge2")})
    return scores


def pool(row: Row) -> Row:
    """A cloze row scored as LooGLE pools it: its means of mask counts per question give the
    same ratio as the sums (matched masks / masks), which replaces the mean of shares."""
    if "masks" not in row.extra:
        return row
    counts = {name: row.extra[name] for name in ("exact_matches", "partial_matches", "masks")}
    match = loogle_match_score([counts])
    return replace(row, score=match["exact_match"], extra={**row.extra, "partial_match": match["partial_match"]})
