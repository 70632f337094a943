"""LongBench's and LooGLE's metrics, giving the numbers their official scorers give.

LongBench (THUDM/LongBench, `LongBench/metrics.py` and `eval.py`): every metric maps
(prediction, one ground truth, all_classes) to [0, 1]; a sample scores the best over its
answers, after cutting the prediction to its first line for trec/triviaqa/samsum/lsht; a
subset scores round(100 * mean, 2), and LongBench-E splits that mean by length
(0-4k, 4-8k, 8k+; `length` counts words, or characters for Chinese).
Quirks kept on purpose, because they change published numbers: ROUGE comes from the `rouge`
package (1.0.1) and any failure there (empty text, recursion on very long sentences) scores
0; code similarity is fuzzywuzzy's `fuzz.ratio` as installed by LongBench's requirements,
i.e. without python-Levenshtein, which is difflib's ratio rounded to a whole percent (with
python-Levenshtein installed fuzzywuzzy switches to an edit-distance ratio that gives other
numbers); classification removes classes from its match list while iterating over it.
The `rouge` package recurses once per word of a sentence and fails past Python's recursion
limit, so where a long unpunctuated text scores 0 depends on stack depth: `sample_score`
shifts the limit by its depth so that the boundary falls where eval.py's falls.

LooGLE (bigai-nlco/LooGLE, `Evaluation/automatic_metrics.py`), the metrics that run offline:
BLEU-1/BLEU-4 (nltk's sentence_bleu on whitespace tokens), ROUGE-1/2/L recall (the `rouge`
package, as LooGLE reports recall), and for cloze the exact and partial entity match, pooled
over the masks of all questions (`Evaluation/automatic_eval.py`, get_match_score).
Left out: METEOR (nltk needs the WordNet corpus, which no package here ships, and LooGLE
feeds it sets, so its value depends on hash order), BERTScore (needs model weights) and the
GPT-4 judge (needs an API).
"""

from __future__ import annotations

import ast
import difflib
import re
import string
import sys
from collections import Counter
from typing import Callable, Sequence

import numpy as np

from vist2.errors import Vist2Error

_CN_PUNCTUATION = (
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
)
_EN_PUNCTUATION = frozenset(string.punctuation)
_ALL_PUNCTUATION = frozenset(string.punctuation + _CN_PUNCTUATION)


def _jieba_words(text: str) -> list[str]:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)  # its "Building prefix dict" chatter goes to stderr
    return list(jieba.cut(text, cut_all=False))


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation, then articles, squeeze whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _EN_PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def normalize_zh_answer(text: str) -> str:
    """Chinese normalisation: lower case, drop English and Chinese punctuation and all whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _ALL_PUNCTUATION)
    return "".join(text.split())


def _token_f1(prediction: Sequence[str], ground_truth: Sequence[str]) -> float:
    same = sum((Counter(prediction) & Counter(ground_truth)).values())
    if same == 0:
        return 0.0
    precision = same / len(prediction)
    recall = same / len(ground_truth)
    return (2 * precision * recall) / (precision + recall)


def qa_f1_score(prediction: str, ground_truth: str, all_classes=None) -> float:
    return _token_f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def qa_f1_zh_score(prediction: str, ground_truth: str, all_classes=None) -> float:
    def words(text: str) -> list[str]:
        return [w for w in (normalize_zh_answer(t) for t in _jieba_words(text)) if w]

    return _token_f1(words(prediction), words(ground_truth))


def rouge_score(prediction: str, ground_truth: str, all_classes=None) -> float:
    """ROUGE-L F of the `rouge` package; 0 where the package fails, as in LongBench."""
    from rouge import Rouge

    try:
        scores = Rouge().get_scores([prediction], [ground_truth], avg=True)
    except Exception:  # empty hypothesis, RecursionError on a long sentence: LongBench scores 0
        return 0.0
    return scores["rouge-l"]["f"]


def rouge_zh_score(prediction: str, ground_truth: str, all_classes=None) -> float:
    return rouge_score(" ".join(_jieba_words(prediction)), " ".join(_jieba_words(ground_truth)))


def classification_score(prediction: str, ground_truth: str, all_classes=None) -> float:
    if all_classes is None:
        raise Vist2Error("classification needs the subset's all_classes")
    matches = [name for name in all_classes if name in prediction]
    for name in matches:  # removing while iterating skips the next name, exactly as LongBench does
        if name in ground_truth and name != ground_truth:
            matches.remove(name)
    return 1.0 / len(matches) if ground_truth in matches else 0.0


def _share_of_numbers(prediction: str, wanted: str) -> float:
    numbers = re.findall(r"\d+", prediction)
    return 0.0 if not numbers else sum(n == wanted for n in numbers) / len(numbers)


def count_score(prediction: str, ground_truth: str, all_classes=None) -> float:
    return _share_of_numbers(prediction, str(ground_truth))


def _paragraph_id(ground_truth: str, pattern: str) -> str:
    found = re.findall(pattern, ground_truth)
    if not found:
        raise Vist2Error(f"answer {ground_truth[:60]!r} does not name a paragraph (expected {pattern!r})")
    return found[0]


def retrieval_score(prediction: str, ground_truth: str, all_classes=None) -> float:
    return _share_of_numbers(prediction, _paragraph_id(ground_truth, r"Paragraph (\d+)"))


def retrieval_zh_score(prediction: str, ground_truth: str, all_classes=None) -> float:
    return _share_of_numbers(prediction, _paragraph_id(ground_truth, r"段落(\d+)"))


def fuzz_ratio(a: str, b: str) -> int:
    """fuzzywuzzy 0.18 `fuzz.ratio` without python-Levenshtein: difflib's ratio in whole percent."""
    if a == b:
        return 100
    if not a or not b:
        return 0
    return int(round(100 * difflib.SequenceMatcher(None, a, b).ratio()))


def code_sim_score(prediction: str, ground_truth: str, all_classes=None) -> float:
    """Similarity of the first prediction line that is not a comment or a code fence."""
    first = next(
        (line for line in prediction.lstrip("\n").split("\n") if "`" not in line and "#" not in line and "//" not in line),
        "",
    )
    return fuzz_ratio(first, ground_truth) / 100


Metric = Callable[..., float]

DATASET_METRIC: dict[str, Metric] = {
    "narrativeqa": qa_f1_score,
    "qasper": qa_f1_score,
    "multifieldqa_en": qa_f1_score,
    "multifieldqa_zh": qa_f1_zh_score,
    "hotpotqa": qa_f1_score,
    "2wikimqa": qa_f1_score,
    "musique": qa_f1_score,
    "dureader": rouge_zh_score,
    "gov_report": rouge_score,
    "qmsum": rouge_score,
    "multi_news": rouge_score,
    "vcsum": rouge_zh_score,
    "trec": classification_score,
    "triviaqa": qa_f1_score,
    "samsum": rouge_score,
    "lsht": classification_score,
    "passage_retrieval_en": retrieval_score,
    "passage_count": count_score,
    "passage_retrieval_zh": retrieval_zh_score,
    "lcc": code_sim_score,
    "repobench-p": code_sim_score,
}
FIRST_LINE_DATASETS = frozenset({"trec", "triviaqa", "samsum", "lsht"})
LENGTH_BUCKETS = ("0-4k", "4-8k", "8k+")


_EVAL_PY_DEPTH = 2  # recursion depth when eval.py's scorer() calls a metric: <module>, scorer


def _depth() -> int:
    """The caller's depth as Python's recursion limit counts it (C-level calls included),
    measured by recursing until the limit is hit."""

    def down(level: int) -> int:
        try:
            return down(level + 1)
        except RecursionError:
            return level

    return sys.getrecursionlimit() - down(1) - 1  # less this function's own frame


def sample_score(dataset: str, prediction: str, answers: Sequence[str], all_classes=None) -> float:
    """One prediction's LongBench score in [0, 1]: the best over its answers (0 if none)."""
    metric = DATASET_METRIC[dataset]
    if dataset in FIRST_LINE_DATASETS:
        prediction = prediction.lstrip("\n").split("\n")[0]
    best = 0.0
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + _depth() - _EVAL_PY_DEPTH)  # the depth eval.py's metrics run at
    try:
        for answer in answers:
            best = max(best, metric(prediction, answer, all_classes=all_classes))
    finally:
        sys.setrecursionlimit(limit)
    return best


def subset_score(dataset: str, predictions, answers, all_classes) -> float:
    """LongBench v1: round(100 * mean, 2), summed in order as eval.py sums."""
    total = 0.0
    for prediction, truths in zip(predictions, answers):
        total += sample_score(dataset, prediction, truths, all_classes)
    return round(100 * total / len(predictions), 2)


def length_bucket(length: float) -> str:
    return "0-4k" if length < 4000 else "4-8k" if length < 8000 else "8k+"


def subset_score_e(dataset: str, predictions, answers, lengths, all_classes) -> dict[str, float | None]:
    """LongBench-E: round(100 * mean, 2) per length bucket; None for an empty bucket (eval.py writes NaN)."""
    buckets: dict[str, list[float]] = {name: [] for name in LENGTH_BUCKETS}
    for prediction, truths, length in zip(predictions, answers, lengths):
        buckets[length_bucket(length)].append(sample_score(dataset, prediction, truths, all_classes))
    # numpy's round of a numpy mean, as eval.py (it can differ from Python's round in the last digit)
    return {name: float(round(100 * np.mean(s), 2)) if s else None for name, s in buckets.items()}


# --- LooGLE ---------------------------------------------------------------------------------


def loogle_bleu(prediction: str, reference: str) -> dict[str, float]:
    """BLEU-1 and BLEU-4 (nltk sentence_bleu, whitespace tokens, no smoothing) in [0, 1]."""
    import warnings

    from nltk.translate.bleu_score import sentence_bleu

    ref, hyp = reference.replace("\n", " ").split(), prediction.replace("\n", " ").split()
    with warnings.catch_warnings():  # nltk warns when an n-gram order has no match; the score is then 0
        warnings.simplefilter("ignore")
        return {
            "bleu1": float(sentence_bleu([ref], hyp, weights=(1, 0, 0, 0))),
            "bleu4": float(sentence_bleu([ref], hyp, weights=(0, 0, 0, 1))),
        }


def loogle_rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L recall of the `rouge` package in [0, 1] (LooGLE reports recall).
    LooGLE crashes where the package fails (e.g. a text of only dots); this scores 0 instead."""
    from rouge import Rouge

    try:
        scores = Rouge().get_scores(hyps=[prediction], refs=[reference])[0]
    except Exception:
        return {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    return {"rouge1": scores["rouge-1"]["r"], "rouge2": scores["rouge-2"]["r"], "rougeL": scores["rouge-l"]["r"]}


def loogle_similarity(prediction: str, reference: str) -> dict[str, float]:
    """LooGLE's offline similarity metrics; an empty prediction counts as "None", as in LooGLE."""
    prediction = prediction or "None"
    return loogle_bleu(prediction, reference) | loogle_rouge(prediction, reference)


def parse_cloze_answer(text: str) -> dict | None:
    """A prediction like "{'<mask-0>': 'Bob'}" as a dict, or None. LooGLE eval()s the text as
    generated (not stripped); a literal parse gives the same dicts and never runs model output."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def loogle_cloze(prediction: str, reference: dict[str, str]) -> dict[str, int]:
    """Counts of one question, as LooGLE's get_exact_match / get_partial_match: masks filled
    exactly, masks sharing at least one word with the reference, and masks. A guess that is
    not a string shares no word (LooGLE crashes there)."""
    if not reference:
        raise Vist2Error("a cloze answer needs at least one mask")
    guess = parse_cloze_answer(prediction) or {}
    exact = sum(key in guess and guess[key] == value for key, value in reference.items())
    partial = sum(
        key in guess and isinstance(guess[key], str) and bool(set(value.split()) & set(guess[key].split()))
        for key, value in reference.items()
    )
    return {"exact_matches": exact, "partial_matches": partial, "masks": len(reference)}


def loogle_match_score(counts: Sequence[dict[str, int]]) -> dict[str, float]:
    """Exact and partial match, 0-100, pooled as LooGLE's get_match_score pools them: matched
    masks of all questions over all masks (not a mean of per-question shares). LooGLE prints
    the fraction rounded to 4 places; this is not rounded."""
    masks = sum(c["masks"] for c in counts)
    return {name: 100 * sum(c[f"{name}es"] for c in counts) / masks for name in ("exact_match", "partial_match")}
