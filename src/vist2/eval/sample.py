"""The two records every benchmark shares: one sample to generate, one tidy result row."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class EvalSample:
    """One prompt of a benchmark. `query` is the whole user message (context, template and
    question), which pcc/gcc compress with the tail rule; references are what the scorer compares."""

    id: str
    task: str  # subset or task name, e.g. "niah_single_1", "hotpotqa"
    query: str
    references: tuple[str, ...]
    max_new_tokens: int
    length: int | None = None  # context tokens as the benchmark counts them, or None
    extra: dict = field(default_factory=dict)  # benchmark-specific fields (all_classes, language, ...)


@dataclass
class Row:
    """One row of `results.json`: one (task, length, mode), or an aggregate of such rows (`aggregate`
    says which), or a (task, length) the benchmark could not provide (`error`, score None).
    Scores are on a 0-100 scale; `stderr` is the standard error of `score` (None for n < 2)."""

    benchmark: str
    task: str
    length: int | None
    mode: str
    ratio: float | None  # K / beta in pcc and gcc, None in text mode
    score: float | None
    n: int
    kv_tokens_peak_mean: float | None = None
    kv_tokens_full_text_mean: float | None = None
    time_to_first_token_s_mean: float | None = None
    extra: dict = field(default_factory=dict)  # further metrics, e.g. {"rouge_l": ...}
    stderr: float | None = None
    error: str | None = None
    aggregate: str | None = None

    def as_dict(self) -> dict:
        row = asdict(self)
        row.update(row.pop("extra"))
        return row
