"""PNG plots in the manner of the paper's Figure 4: one line per mode against length.

`plot_measured` draws peak KV memory, FLOPs, time to first token and decode throughput
(one row per scenario); `plot_paper_sizes` draws the meta-device FLOPs and KV bytes of
the paper-size presets. Dashed lines are the analytic bounds.
"""

from __future__ import annotations

from pathlib import Path

from vist2.options import MODES

COLORS = {"text": "tab:gray", "pcc": "tab:blue", "gcc": "tab:red"}
AXIS = {"long-writing": "response tokens", "long-context": "query tokens"}


def _figure(rows: int, cols: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    return plt, figure, axes


def _lines(ax, rows: list[dict], value, bound=None, title: str = "", log: bool = True) -> None:
    for mode in MODES:
        points = sorted((r["length"], r) for r in rows if r["mode"] == mode)
        if not points:
            continue
        xs = [x for x, _ in points]
        ax.plot(xs, [value(r) for _, r in points], marker="o", color=COLORS[mode], label=mode)
        if bound is not None:
            ax.plot(xs, [bound(r) for _, r in points], linestyle="--", color=COLORS[mode], alpha=0.6)
    ax.set_title(title, fontsize=10)
    ax.set_xscale("log", base=2)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)


def plot_measured(measurements: list[dict], path: Path, title: str) -> Path:
    """Peak KV (MiB), total FLOPs, TTFT (ms) and decode tokens/s per scenario."""
    scenarios = [s for s in AXIS if any(m["scenario"] == s for m in measurements)]
    plt, figure, axes = _figure(len(scenarios), 4)
    for row, scenario in enumerate(scenarios):
        rows = [m for m in measurements if m["scenario"] == scenario]
        mib = 2.0 ** 20
        _lines(axes[row][0], rows, lambda r: r["kv_bytes_peak"] / mib, lambda r: r["bound"]["kv_bytes_peak"] / mib,
               f"{scenario}: peak KV cache (MiB)")
        _lines(axes[row][1], rows, lambda r: r["flops"]["total"], lambda r: r["bound"]["flops"]["total"],
               f"{scenario}: FLOPs (counted)")
        _lines(axes[row][2], rows, lambda r: 1e3 * r["time_to_first_token_s"], title=f"{scenario}: first token (ms)")
        _lines(axes[row][3], rows, lambda r: r["decode_tokens_per_s"], title=f"{scenario}: decode tokens/s", log=False)
        for ax in axes[row]:
            ax.set_xlabel(AXIS[scenario])
    axes[0][0].legend()
    figure.suptitle(title + "   (solid: measured, dashed: analytic bound)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_paper_sizes(rows: list[dict], path: Path) -> Path:
    """Meta-device FLOPs (with the vision encoder) and peak KV GiB of each preset and scenario."""
    presets = sorted({r["preset"] for r in rows}, key=lambda name: [r["preset"] for r in rows].index(name))
    scenarios = [s for s in AXIS if any(r["scenario"] == s for r in rows)]
    plt, figure, axes = _figure(len(presets), 2 * len(scenarios))
    for i, name in enumerate(presets):
        for j, scenario in enumerate(scenarios):
            chosen = [r for r in rows if r["preset"] == name and r["scenario"] == scenario]
            _lines(axes[i][2 * j], chosen, lambda r: r["flops"]["total"], title=f"{name} {scenario}: FLOPs")
            _lines(axes[i][2 * j + 1], chosen, lambda r: r["kv_bytes_peak"] / 2.0 ** 30,
                   title=f"{name} {scenario}: peak KV (GiB, bf16)")
            for ax in axes[i][2 * j: 2 * j + 2]:
                ax.set_xlabel(AXIS[scenario])
    axes[0][0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
