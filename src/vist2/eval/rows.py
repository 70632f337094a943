"""Rows of an eval run: records summarized per (task, length, mode) with standard errors, the
aggregate rows (means per length and per mode), the printed table and the plot."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from vist2.eval.sample import Row
from vist2.options import MODES


def summarize(benchmark: str, records: list[dict], ratio: float) -> list[Row]:
    """One row per (task, length, mode): mean scores with their standard error, generation stats
    and the answer budget (the most new tokens allowed, and the benchmark's own); ratio K/beta
    outside text (None: the mean tokens per visual token measured, as fill chunks vary). Then
    the aggregate rows (`aggregates`)."""
    groups = defaultdict(list)
    for record in records:
        groups[(record["task"], record["length"], record["mode"])].append(record)
    tasks = list(dict.fromkeys(r["task"] for r in records))
    keys = sorted(groups, key=lambda k: (tasks.index(k[0]), k[1] is not None, k[1] or 0, MODES.index(k[2])))
    rows = []
    for task, length, mode in keys:
        group = groups[(task, length, mode)]
        errors = [r["error"] for r in group if r.get("error")]
        if errors:
            rows.append(Row(benchmark, task, length, mode, None, None, 0, error=errors[0]))
            continue
        metrics = {name: _mean([r["scores"][name] for r in group]) for name in group[0]["scores"]}
        stats = {name: _mean([r["stats"][name] for r in group])
                 for name in ("kv_tokens_peak", "kv_tokens_full_text", "time_to_first_token_s")}
        measured = _mean([r["stats"].get("tokens_per_visual_token", 0.0) for r in group])
        for name in ("max_new_tokens", "benchmark_max_new_tokens"):  # the answer budget used, and the benchmark's
            if all(name in r for r in group):
                metrics[name] = max(r[name] for r in group)
        rows.append(Row(benchmark, task, length, mode, None if mode == "text" else ratio or measured,
                        metrics.pop("score"), len(group), stats["kv_tokens_peak"], stats["kv_tokens_full_text"],
                        stats["time_to_first_token_s"], metrics,
                        stderr=standard_error([r["scores"]["score"] for r in group])))
    return rows + aggregates(benchmark, rows)


def aggregates(benchmark: str, rows: list[Row]) -> list[Row]:
    """Unweighted means of task rows, as RULER and LongBench report them: per (length, mode) over
    the tasks scored there (RULER's mean per length; with no lengths, LongBench's average per
    mode), and per mode over every row when there are several lengths. Error rows are left out
    and the count of rows averaged is in `aggregate`. The standard error of a mean of k
    independent rows is sqrt(sum se_i^2) / k."""
    scored = [r for r in rows if r.error is None and r.aggregate is None]
    modes = sorted({r.mode for r in scored}, key=lambda m: (m not in MODES, MODES.index(m)
                                                            if m in MODES else 0, m))
    lengths = sorted({r.length for r in scored}, key=lambda n: (n is not None, n or 0))
    means = []
    for mode in modes:
        for length in lengths:
            group = [r for r in scored if r.mode == mode and r.length == length]
            if len(group) > 1:
                means.append(_aggregate(benchmark, group, length, mode, f"mean of {len(group)} tasks"))
        group = [r for r in scored if r.mode == mode]
        if len({r.length for r in group}) > 1:
            means.append(_aggregate(benchmark, group, None, mode, f"mean of {len(group)} task-length rows"))
    return means


def _aggregate(benchmark: str, group: list[Row], length: int | None, mode: str, what: str) -> Row:
    errors = [r.stderr for r in group]
    ratios = {r.ratio for r in group}
    return Row(benchmark, "mean", length, mode, ratios.pop() if len(ratios) == 1 else None,
               _mean([r.score for r in group]), sum(r.n for r in group),
               stderr=None if None in errors else math.sqrt(sum(e * e for e in errors)) / len(group),
               aggregate=what)


def standard_error(values: list[float]) -> float | None:
    """Standard error of the mean, s / sqrt(n) with s the sample standard deviation (n - 1), as
    lm-evaluation-harness reports it; None for fewer than two values."""
    if len(values) < 2:
        return None
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def plot(rows: list[Row], path: Path, title: str) -> None:
    """Score vs length with standard-error bars, one panel per mode, one line per task (its own
    colour and marker, nudged up to 3% sideways and 1.5 points up or down so equal scores stay
    apart; the table has the exact values) and the mean per length dashed black; grouped bars when
    rows have no length. Error rows are not drawn (the table names them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = [r for r in rows if r.error is None]
    tasks = list(dict.fromkeys(r.task for r in drawn if r.aggregate is None))
    palette = plt.cm.tab10 if len(tasks) <= 10 else plt.cm.tab20
    colors = {task: palette(i % palette.N) for i, task in enumerate(tasks)}
    markers = dict(zip(tasks, "osD^v<>pP*Xhd" * 2))
    modes = [m for m in MODES if any(r.mode == m for r in drawn)] + \
        list(dict.fromkeys(r.mode for r in drawn if r.mode not in MODES))  # e.g. "ocr"
    if drawn and all(r.length is not None for r in drawn if r.aggregate is None):
        figure, panels = plt.subplots(1, len(modes), figsize=(5 * len(modes) + 2.5, 5), sharey=True, squeeze=False)
        for axes, mode in zip(panels[0], modes):
            for i, task in enumerate(tasks):
                line = sorted((r.length, r.score, r.stderr or 0.0) for r in drawn
                              if r.task == task and r.mode == mode and r.aggregate is None)
                if line:
                    share = (i - (len(tasks) - 1) / 2) / max(len(tasks) - 1, 1)  # in [-0.5, 0.5]
                    x, y, e = zip(*line)
                    axes.errorbar([v * 2 ** (0.08 * share) for v in x], [v + 3 * share for v in y], yerr=e,
                                  marker=markers[task], color=colors[task], markersize=5, capsize=2, linewidth=1,
                                  alpha=0.85, label=task)
            mean = sorted((r.length, r.score) for r in drawn if r.mode == mode and r.aggregate and r.length)
            if mean:
                axes.plot(*zip(*mean), "k--", marker="*", markersize=11, linewidth=2, alpha=0.7, label="mean of tasks")
            axes.set_xscale("log", base=2)
            ticks = sorted({r.length for r in drawn if r.length})
            axes.set_xticks(ticks, [str(n) for n in ticks])
            axes.set_xlabel("length (tokens)")
            axes.set_title(mode, fontsize=9)
            axes.grid(alpha=0.3)
        axes = panels[0][0]
        panels[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    else:
        figure, axes = plt.subplots(figsize=(8, 5))
        width = 0.8 / max(len(modes), 1)
        for j, mode in enumerate(modes):
            cells = [[r for r in drawn if r.task == t and r.mode == mode and r.aggregate is None] for t in tasks]
            scores = [_mean([r.score for r in c]) if c else 0.0 for c in cells]
            errors = [c[0].stderr or 0.0 if len(c) == 1 else 0.0 for c in cells]
            axes.bar([i + j * width for i in range(len(tasks))], scores, width, yerr=errors, capsize=2, label=mode)
        axes.set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))], tasks, rotation=30, ha="right")
        axes.legend(fontsize=7, ncol=2)
    axes.set_ylabel("score (0-100), bars: standard error; lines nudged apart")
    axes.set_ylim(-5, 105)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def table(rows: list[Row]) -> str:
    """The rows as text: score ± standard error; error rows, answer budgets below the benchmark's
    and aggregate rows said."""
    header = f"{'task':20s} {'length':>7s} {'mode':5s} {'ratio':>6s} {'score':>6s} {'± se':>5s} {'n':>4s} " \
             f"{'kv peak':>8s} {'kv text':>8s} {'ttft s':>7s}  note"
    lines = [header]
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:g}"
        length = "-" if r.length is None else str(r.length)
        used, budget = r.extra.get("max_new_tokens"), r.extra.get("benchmark_max_new_tokens")
        note = f"error: {r.error}" if r.error else r.aggregate or \
            (f"answers capped at {used} tokens, the benchmark allows {budget}" if used and budget and used < budget
             else "")
        lines.append(f"{r.task:20s} {length:>7s} {r.mode:5s} {ratio:>6s} {_num(r.score, '6.1f'):>6s} "
                     f"{_num(r.stderr, '5.1f'):>5s} {r.n:4d} {_num(r.kv_tokens_peak_mean, '.0f'):>8s} "
                     f"{_num(r.kv_tokens_full_text_mean, '.0f'):>8s} {_num(r.time_to_first_token_s_mean, '.2f'):>7s}"
                     f"  {note}".rstrip())
    lines.append("± se: standard error of the mean (sample s.d. / sqrt(n)); of a mean row, sqrt(sum se^2) / rows")
    return "\n".join(lines)


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
