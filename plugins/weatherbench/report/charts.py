"""The report's charts, drawn with matplotlib and returned as PNG bytes.

Every chart has a title, labelled axes with units, and tells its series
apart by line style, marker and hatch as well as by shade, so it reads the
same printed in grey. Charts take plain numbers; choosing what to plot is
the report builder's job.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # no display: reports are built by schedulers and CLIs

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

DPI = 200
WIDTH_IN = 7.0
# Shades and styles that stay distinct in grey print; colour only adds to them.
ACCENTS = ("#1f4e79", "#8c2d04", "#2d6a4f", "#5a189a", "#7f6000", "#3d405b")
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (1, 1)))
MARKERS = ("o", "s", "^", "D", "v", "x")
FILLS = ("#e6e6e6", "#a6a6a6", "#595959", "#cccccc", "#808080", "#262626")
HATCHES = ("", "///", "...", "xxx", "\\\\\\", "---")

plt.rcParams.update(
    {
        "font.family": "DejaVu Sans",
        "font.size": 8,
        "axes.titlesize": 9,
        "axes.titleweight": "bold",
        "axes.labelsize": 8,
        "legend.fontsize": 7,
        "xtick.labelsize": 7,
        "ytick.labelsize": 7,
        "axes.grid": True,
        "grid.color": "#d9d9d9",
        "grid.linewidth": 0.6,
        "axes.spines.top": False,
        "axes.spines.right": False,
    }
)


@dataclass(frozen=True)
class Line:
    label: str
    points: Sequence[tuple[float, float]]


@dataclass(frozen=True)
class Marker:
    """A vertical line at an instant (a fault, a recovery) on a time chart."""

    at: float
    label: str


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _style(i: int) -> dict:
    return {
        "color": ACCENTS[i % len(ACCENTS)],
        "linestyle": LINESTYLES[i % len(LINESTYLES)],
        "marker": MARKERS[i % len(MARKERS)],
    }


def _title_over_legend(ax, title: str, ncols: int) -> None:
    """The title, then a one-row legend between it and the plot: it covers no data and no tick labels."""
    ax.set_title(title, pad=18)
    ax.legend(frameon=False, ncols=ncols, loc="lower center", bbox_to_anchor=(0.5, 1.0), borderaxespad=0.2)


def _readable(value: float, _pos: object = None) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:g}"


def stage_latency(title: str, stages: Sequence[tuple[str, float, float, float, float | None]]) -> bytes:
    """Horizontal bars of p50 / p95 / p99 per stage on a log axis, with the guide's target as a tick.

    ``stages``: (label, p50, p95, p99, target or None), in pipeline order.
    """
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 0.38 * len(stages) + 1.0))
    height = 0.26
    names = ("p50", "p95", "p99")
    for i, name in enumerate(names):
        ys = [row - (i - 1) * height for row in range(len(stages))]
        # Zero has no place on a log axis: such a bar is left out rather than drawn at an invented value.
        values = [s[1 + i] if s[1 + i] > 0 else math.nan for s in stages]
        ax.barh(
            ys,
            values,
            height=height,
            color=FILLS[i % len(FILLS)],
            edgecolor="black",
            linewidth=0.4,
            hatch=HATCHES[i],
            label=name,
        )
    for row, stage in enumerate(stages):
        if stage[4] is not None:
            ax.plot([stage[4]] * 2, [row - 0.45, row + 0.45], color="black", linewidth=1.6)
    if any(s[4] is not None for s in stages):
        ax.plot([], [], color="black", linewidth=1.6, label="guide target")
    ax.set_yticks(range(len(stages)), [s[0] for s in stages])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(_readable))
    ax.set_xlabel("latency (ms, log scale)")
    _title_over_legend(ax, title, ncols=4)
    return _png(fig)


def grouped_bars(
    title: str, categories: Sequence[str], groups: Sequence[tuple[str, Sequence[float]]], ylabel: str
) -> bytes:
    """Bars of several quantities (offered, achieved, ...) per category (a step)."""
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 2.8))
    width = 0.8 / max(1, len(groups))
    for i, (name, values) in enumerate(groups):
        xs = [c + (i - (len(groups) - 1) / 2) * width for c in range(len(categories))]
        ax.bar(
            xs,
            [0 if math.isnan(v) else v for v in values],
            width=width,
            color=FILLS[i % len(FILLS)],
            edgecolor="black",
            linewidth=0.4,
            hatch=HATCHES[i % len(HATCHES)],
            label=name,
        )
    ax.set_xticks(range(len(categories)), categories, rotation=20 if len(categories) > 6 else 0)
    ax.yaxis.set_major_formatter(FuncFormatter(_readable))
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    _title_over_legend(ax, title, ncols=len(groups))
    return _png(fig)


def time_series(
    title: str,
    ylabel: str,
    lines: Sequence[Line],
    markers: Sequence[Marker] = (),
    spans: Sequence[tuple[float, float, str]] = (),
    xlabel: str = "time since step start (s)",
    height_in: float = 2.6,
    right_lines: Sequence[Line] = (),
    right_ylabel: str = "",
) -> bytes:
    """Lines over time, with optional fault/recovery instants and shaded intervals.

    `right_lines` are drawn against a second y axis on the right (`right_ylabel`): a quantity
    of another unit or scale than `lines` (a rate beside a backlog) would be flattened on theirs.
    """
    fig, ax = plt.subplots(figsize=(WIDTH_IN, height_in))
    _plot_lines(ax, lines, first_style=0)
    right_ax = None
    if right_lines:
        right_ax = ax.twinx()
        right_ax.spines["right"].set_visible(True)
        right_ax.grid(False)
        _plot_lines(right_ax, right_lines, first_style=len(lines))
        right_ax.yaxis.set_major_formatter(FuncFormatter(_readable))
        right_ax.set_ylabel(right_ylabel)
        right_ax.set_ylim(bottom=min(0.0, right_ax.get_ylim()[0]))
    for start, end, label in spans:
        ax.axvspan(start, end, color="#bdbdbd", alpha=0.45, hatch="//", label=label, linewidth=0)
    for i, marker in enumerate(markers):
        ax.axvline(marker.at, color="black", linestyle=LINESTYLES[(i + 1) % len(LINESTYLES)], linewidth=1.1)
        ax.annotate(
            marker.label,
            xy=(marker.at, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -10 - 9 * (i % 3)),
            textcoords="offset points",
            fontsize=7,
        )
    ax.yaxis.set_major_formatter(FuncFormatter(_readable))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if lines or spans or right_lines:
        handles, labels = ax.get_legend_handles_labels()
        if right_ax is not None:
            right_handles, right_labels = right_ax.get_legend_handles_labels()
            handles, labels = handles + right_handles, labels + [f"{label} (right)" for label in right_labels]
        # Right of the plot, past the second axis's tick labels when there is one.
        anchor = (1.12, 1.0) if right_ax is not None else (1.0, 1.0)
        ax.legend(handles, labels, frameon=False, loc="upper left", bbox_to_anchor=anchor)
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
    return _png(fig)


def _plot_lines(ax, lines: Sequence[Line], first_style: int) -> None:
    for i, line in enumerate(lines, start=first_style):
        xs = [p[0] for p in line.points]
        ys = [math.nan if p[1] is None else p[1] for p in line.points]
        ax.plot(
            xs,
            ys,
            label=line.label,
            linewidth=1.2,
            markersize=2.5,
            markevery=max(1, len(xs) // 12),
            **_style(i),
        )


def scaling(
    title: str,
    xlabel: str,
    ylabel: str,
    measured: Sequence[tuple[float, float]],
    note: str = "",
) -> bytes:
    """Measured capacity per worker count against ideal linear scaling from the first point."""
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 2.9))
    xs = [p[0] for p in measured]
    ys = [p[1] for p in measured]
    if xs:
        ideal = [ys[0] * x / xs[0] for x in xs]
        ax.plot(xs, ideal, color="black", linestyle="--", linewidth=1.0, marker="", label="ideal linear")
        ax.plot(xs, ys, color=ACCENTS[0], linestyle="-", marker="o", linewidth=1.5, label="measured")
        for x, y, i in zip(xs, ys, ideal, strict=True):
            ax.annotate(f"{y / i:.0%}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
        ax.set_xticks(xs)
    ax.yaxis.set_major_formatter(FuncFormatter(_readable))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    if note:
        ax.text(0.01, 0.97, note, transform=ax.transAxes, fontsize=7, va="top")
    ax.legend(frameon=False, loc="lower right")
    return _png(fig)


def xy_lines(
    title: str, xlabel: str, ylabel: str, lines: Sequence[Line], ideal_identity: bool = False
) -> bytes:
    """Lines over a numeric x (load), optionally with the y = x line that perfect throughput follows."""
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 2.8))
    all_x = [p[0] for line in lines for p in line.points]
    if ideal_identity and all_x:
        top = max(all_x)
        ax.plot([0, top], [0, top], color="black", linestyle="--", linewidth=1.0, label="offered = achieved")
    for i, line in enumerate(lines):
        ax.plot(
            [p[0] for p in line.points],
            [p[1] for p in line.points],
            label=line.label,
            linewidth=1.4,
            **_style(i),
        )
    ax.xaxis.set_major_formatter(FuncFormatter(_readable))
    ax.yaxis.set_major_formatter(FuncFormatter(_readable))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(frameon=False, loc="upper left")
    return _png(fig)


def partition_balance(title: str, steps: Sequence[tuple[str, dict[str, float], float]]) -> bytes:
    """Messages per partition, one group per step, each labelled with its balance score."""
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 2.8))
    offset = 0
    ticks, labels = [], []
    for i, (label, counts, balance) in enumerate(steps):
        keys = sorted(counts, key=lambda k: int(k) if str(k).isdigit() else str(k))
        xs = [offset + j for j in range(len(keys))]
        ax.bar(
            xs,
            [counts[k] for k in keys],
            width=0.8,
            color=FILLS[i % len(FILLS)],
            edgecolor="black",
            linewidth=0.4,
            hatch=HATCHES[i % len(HATCHES)],
            label=f"{label}: balance {balance:.0f}%",
        )
        if keys:
            mean = sum(counts.values()) / len(keys)
            ax.plot([xs[0] - 0.4, xs[-1] + 0.4], [mean, mean], color="black", linewidth=0.9, linestyle=":")
        ticks += xs
        labels += [str(k) for k in keys]
        offset += len(keys) + 1
    ax.plot([], [], color="black", linewidth=0.9, linestyle=":", label="mean per partition")
    ax.set_xticks(ticks, labels, fontsize=6)
    ax.yaxis.set_major_formatter(FuncFormatter(_readable))
    ax.set_xlabel("partition (grouped by step)")
    ax.set_ylabel("messages")
    ax.set_title(title)
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def resources(title: str, rows: Sequence[tuple[str, float, float, float]]) -> bytes:
    """CPU (mean bar, max tick) and peak memory per component.

    ``rows``: (name, CPU mean, CPU max, RSS max in MB).
    """
    fig, (cpu_ax, mem_ax) = plt.subplots(1, 2, figsize=(WIDTH_IN, 0.3 * len(rows) + 1.1), sharey=True)
    ys = list(range(len(rows)))
    cpu_ax.barh(ys, [r[1] for r in rows], color="#bfbfbf", edgecolor="black", linewidth=0.4, label="mean")
    cpu_ax.plot([r[2] for r in rows], ys, linestyle="", marker="|", markersize=9, color="black", label="max")
    cpu_ax.axvline(100, color="black", linestyle=":", linewidth=0.8)
    cpu_ax.set_yticks(ys, [r[0] for r in rows])
    cpu_ax.invert_yaxis()
    cpu_ax.set_xlabel("CPU (% of one core)")
    cpu_ax.set_title("CPU per component")
    cpu_ax.legend(frameon=False, loc="upper right", fontsize=6)
    mem_ax.barh(ys, [r[3] for r in rows], color="#7f7f7f", edgecolor="black", linewidth=0.4, hatch="///")
    mem_ax.set_xlabel("resident memory, max (MB)")
    mem_ax.set_title("Memory per component")
    mem_ax.xaxis.set_major_formatter(FuncFormatter(_readable))
    fig.suptitle(title, fontsize=9, fontweight="bold")
    return _png(fig)


def trends(
    title: str,
    panels: Sequence[tuple[str, str, Sequence[Line], Sequence[tuple[float, float]]]],
    run_labels: Sequence[str],
) -> bytes:
    """Small multiples of headline metrics over runs; regressions drawn as large hollow markers.

    ``panels``: (metric label, unit, one line per step over x = run position, regression points).
    """
    columns = 2
    rows = max(1, math.ceil(len(panels) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(WIDTH_IN, 1.9 * rows + 0.4), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (label, unit, lines, flagged) in zip(axes.flat, panels, strict=False):
        for i, line in enumerate(lines):
            ax.plot(
                [p[0] for p in line.points],
                [p[1] for p in line.points],
                label=line.label,
                linewidth=1.1,
                markersize=3,
                **_style(i),
            )
        if flagged:
            ax.plot(
                [p[0] for p in flagged],
                [p[1] for p in flagged],
                linestyle="",
                marker="o",
                markersize=10,
                markerfacecolor="none",
                markeredgecolor="black",
                markeredgewidth=1.6,
                label="regression",
            )
        ax.set_title(label, fontsize=8)
        ax.set_ylabel(unit)
        if all(p[1] >= 0 for line in lines for p in line.points):
            ax.set_ylim(bottom=0)  # from zero, so run-to-run jitter does not look like a cliff
        ax.yaxis.set_major_formatter(FuncFormatter(_readable))
        ticks = sorted({p[0] for line in lines for p in line.points})
        ax.set_xticks(ticks, [run_labels[int(t)] for t in ticks], rotation=30, fontsize=6, ha="right")
        ax.set_xlabel("run start (UTC)", fontsize=6)
        if len(lines) > 1 or flagged:
            ax.legend(frameon=False, fontsize=6)
    fig.suptitle(title, fontsize=9, fontweight="bold")
    fig.tight_layout()
    return _png(fig)
