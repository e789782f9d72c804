"""Turning outcomes into cells, ratios, a terminal table, Markdown and a chart."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from benchmarks.config import DASH, METRICS, REFERENCE_CHAIN, TIMES, Metric, System
from benchmarks.procs import Outcome

Status = Literal["ok", "error", "n/a", "not run"]


@dataclass
class Cell:
    status: Status
    median: float | None = None
    lo: float | None = None
    hi: float | None = None
    runs: int = 0
    note: str | None = None  # error message or n/a reason

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "median": self.median,
            "min": self.lo,
            "max": self.hi,
            "runs": self.runs,
            "note": self.note,
        }


Table = dict[str, dict[str, Cell]]  # metric key -> system name -> cell


def build_table(
    systems: Sequence[System],
    workloads: Sequence[str],
    outcomes: dict[tuple[str, str], list[Outcome]],
) -> Table:
    table: Table = {}
    for metric in METRICS:
        if metric.workload not in workloads:
            continue
        row: dict[str, Cell] = {}
        for system in systems:
            if not system.runs(metric.workload):
                row[system.name] = Cell("n/a", note=system.na[metric.workload])
                continue
            runs = outcomes.get((system.name, metric.workload), [])
            values = [float(o.result[metric.field]) for o in runs if o.ok]
            errors = [o.error for o in runs if not o.ok and o.error]
            if values:
                row[system.name] = Cell(
                    "ok",
                    statistics.median(values),
                    min(values),
                    max(values),
                    len(values),
                    note=f"{len(errors)} failed run(s): {errors[0]}" if errors else None,
                )
            elif errors:
                row[system.name] = Cell("error", note=errors[0])
            else:
                row[system.name] = Cell("not run")
        table[metric.key] = row
    return table


def pick_references(
    table: Table, systems: Sequence[System], preferred: str | None
) -> dict[str, str]:
    """Per metric: the first system with a figure in the preferred order."""
    order: list[str] = []
    for name in [preferred or "", *REFERENCE_CHAIN, *(s.name for s in systems)]:
        if name and name not in order:
            order.append(name)
    refs: dict[str, str] = {}
    for key, row in table.items():
        for name in order:
            cell = row.get(name)
            if cell is not None and cell.status == "ok" and cell.median:
                refs[key] = name
                break
    return refs


def ratio(metric: Metric, value: float, reference: float) -> float:
    """How many times better than the reference (>1 = better), whatever the metric's direction."""
    if value <= 0 or reference <= 0:
        return float("nan")
    return value / reference if metric.higher_is_better else reference / value


def ratios(table: Table, refs: dict[str, str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    by_key = {m.key: m for m in METRICS}
    for key, row in table.items():
        ref_name = refs.get(key)
        if ref_name is None:
            continue
        ref = row[ref_name].median
        assert ref is not None
        out[key] = {
            name: ratio(by_key[key], cell.median, ref)
            for name, cell in row.items()
            if cell.status == "ok" and cell.median is not None
        }
    return out


def fmt_value(metric: Metric, value: float | None) -> str:
    if value is None:
        return "-"
    if metric.unit in ("req/s", "msg/s", "deliveries/s"):
        if value >= 1e6:
            return f"{value / 1e6:.2f}M"
        if value >= 1e3:
            return f"{value / 1e3:.1f}k"
        return f"{value:.0f}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}"


def fmt_range(metric: Metric, cell: Cell) -> str:
    if cell.runs < 2:
        return ""
    return f"{fmt_value(metric, cell.lo)}{DASH}{fmt_value(metric, cell.hi)}"


def fmt_ratio(value: float | None) -> str:
    if value is None or value != value:  # NaN
        return "-"
    if value < 0.1:
        return f"{value:.3f}{TIMES}"
    return f"{value:.2f}{TIMES}" if value < 10 else f"{value:.1f}{TIMES}"


def _short(text: str | None, width: int) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 3] + "..."


def direction(metric: Metric) -> str:
    return "higher is better" if metric.higher_is_better else "lower is better"


def terminal_report(table: Table, systems: Sequence[System], refs: dict[str, str]) -> str:
    rat = ratios(table, refs)
    names = [s.name for s in systems]
    width = max(len(n) for n in names) + 2
    lines: list[str] = []
    for metric in METRICS:
        row = table.get(metric.key)
        if row is None:
            continue
        ref = refs.get(metric.key, "-")
        lines.append("")
        lines.append(
            f"{metric.title} ({metric.unit}, {direction(metric)}); ratio vs {ref}, >1 = better"
        )
        lines.append(f"  {'system':<{width}}{'median':>10}  {'min' + DASH + 'max':<19}{'ratio':>8}")
        for name in names:
            cell = row[name]
            if cell.status == "ok":
                r = rat.get(metric.key, {}).get(name)
                lines.append(
                    f"  {name:<{width}}{fmt_value(metric, cell.median):>10}  "
                    f"{fmt_range(metric, cell):<19}{fmt_ratio(r):>8}"
                )
            elif cell.status == "error":
                lines.append(f"  {name:<{width}}error: {_short(cell.note, 90)}")
            elif cell.status == "n/a":
                lines.append(f"  {name:<{width}}n/a ({_short(cell.note, 80)})")
            else:
                lines.append(f"  {name:<{width}}not run")
    # the compact matrix of ratios
    keys = [m.key for m in METRICS if m.key in table]
    heads = {
        m.key: m.key.replace("seq_rtt_", "seq ").replace("gather_", "gather ") for m in METRICS
    }
    colw = {k: max(8, len(heads[k]) + 2) for k in keys}
    lines.append("")
    lines.append(f"Ratios ({TIMES}, >1 = better than the column's reference, marked *)")
    lines.append(f"  {'system':<{width}}" + "".join(f"{heads[k]:>{colw[k]}}" for k in keys))
    for name in names:
        cells = []
        for key in keys:
            cell = table[key][name]
            if cell.status == "ok":
                text = fmt_ratio(rat.get(key, {}).get(name))
                if refs.get(key) == name:
                    text = "*" + text
            elif cell.status == "error":
                text = "err"
            elif cell.status == "n/a":
                text = "n/a"
            else:
                text = "-"
            cells.append(f"{text:>{colw[key]}}")
        lines.append(f"  {name:<{width}}" + "".join(cells))
    return "\n".join(lines) + "\n"


# The Markdown tables come in two groups, so that neither grows too wide to read.
TABLE_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Requests", ("seq_rtt_p50", "seq_rtt_p99", "pipelined", "gather_async", "gather_plain")),
    ("Messages, big payloads, memory", ("oneway", "fanout", "big", "connections")),
)


def _groups(table: Table) -> list[tuple[str, list[Metric]]]:
    by_key = {m.key: m for m in METRICS}
    grouped = {key for _, keys in TABLE_GROUPS for key in keys}
    groups = [
        (title, [by_key[k] for k in keys if k in table and k in by_key])
        for title, keys in TABLE_GROUPS
    ]
    rest = [m for m in METRICS if m.key in table and m.key not in grouped]
    if rest:
        groups.append(("Other", rest))
    return [(title, metrics) for title, metrics in groups if metrics]


def _absolute_rows(table: Table, systems: Sequence[System], metrics: list[Metric]) -> list[str]:
    out = [
        "| system | "
        + " | ".join(f"{m.title}<br>{m.unit}, {direction(m).split()[0]}" for m in metrics)
        + " |",
        "| --- |" + " ---: |" * len(metrics),
    ]
    for system in systems:
        cells = []
        for m in metrics:
            cell = table[m.key][system.name]
            if cell.status == "ok":
                rng = fmt_range(m, cell)
                cells.append(f"**{fmt_value(m, cell.median)}**" + (f"<br>{rng}" if rng else ""))
            elif cell.status == "error":
                cells.append("error")
            elif cell.status == "n/a":
                cells.append("n/a")
            else:
                cells.append("-")
        out.append(f"| {system.name} | " + " | ".join(cells) + " |")
    return out


def _ratio_rows(
    table: Table,
    systems: Sequence[System],
    metrics: list[Metric],
    rat: dict[str, dict[str, float]],
    refs: dict[str, str],
) -> list[str]:
    out = [
        "| system | " + " | ".join(m.title for m in metrics) + " |",
        "| --- |" + " ---: |" * len(metrics),
    ]
    for system in systems:
        cells = []
        for m in metrics:
            cell = table[m.key][system.name]
            if cell.status == "ok":
                text = fmt_ratio(rat.get(m.key, {}).get(system.name))
                cells.append(f"**{text}**" if refs.get(m.key) == system.name else text)
            else:
                cells.append({"error": "error", "n/a": "n/a"}.get(cell.status, "-"))
        out.append(f"| {system.name} | " + " | ".join(cells) + " |")
    return out


def markdown_tables(table: Table, systems: Sequence[System], refs: dict[str, str]) -> str:
    rat = ratios(table, refs)
    groups = _groups(table)
    out: list[str] = []
    out.append(f"### Absolute figures (median of runs, min{DASH}max below)\n")
    for title, metrics in groups:
        out.append(f"#### {title}\n")
        out += _absolute_rows(table, systems, metrics)
        out.append("")
    out.append(f"### Ratios ({TIMES}, >1 = better than the reference)\n")
    out.append(
        "Each column is divided by its reference (marked **bold**): value / reference when "
        "higher is better, reference / value when lower is better.\n"
    )
    for title, metrics in groups:
        out.append(f"#### {title}\n")
        out += _ratio_rows(table, systems, metrics, rat, refs)
        out.append("")
    metrics = [m for _, ms in groups for m in ms]
    out.append("References: " + ", ".join(f"{m.title}: {refs.get(m.key, 'none')}" for m in metrics))
    return "\n".join(out) + "\n"


NICE_TICKS = [k * 10.0**e for e in range(-3, 3) for k in (1, 2, 5)]


def write_chart(path: Path, table: Table, systems: Sequence[System], refs: dict[str, str]) -> None:
    """The ratios as bar charts, two a row, sized for the docs page (about 750 px wide).

    Drawn at twice the width it is shown at, with fonts of 9 to 11 points,
    so that the labels stay readable once the page scales it down.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    rat = ratios(table, refs)
    metrics = [m for m in METRICS if m.key in rat]
    if not metrics:
        return
    cols = min(2, len(metrics))
    rows = -(-len(metrics) // cols)
    bars = max(len(rat[m.key]) for m in metrics)
    fig, axes = plt.subplots(
        rows, cols, figsize=(7.5, rows * (0.24 * bars + 1.0) + 0.6), squeeze=False
    )
    # tab10 repeats after ten systems; tab20 has twenty distinct colours
    palette = plt.get_cmap("tab10" if len(systems) <= 10 else "tab20")
    colours = {s.name: palette(i % palette.N) for i, s in enumerate(systems)}
    for ax, metric in zip(axes.flat, metrics, strict=False):
        names = [s.name for s in systems if s.name in rat[metric.key]]
        values = [rat[metric.key][n] for n in names]
        ax.barh(range(len(names)), values, color=[colours[n] for n in names])
        ax.set_yticks(range(len(names)), names, fontsize=9)
        ax.set_ylim(bars - 0.5, -0.5)  # the same bar height in every panel, top down
        ax.axvline(1.0, color="0.4", linewidth=0.8, zorder=0)  # behind the bars and labels
        ax.set_xscale("log")
        low, high = min([*values, 1.0]) / 1.5, max([*values, 1.0]) * 4.0  # room for labels
        ax.set_xlim(low, high)
        ticks = [t for t in NICE_TICKS if low <= t <= high]
        if high / low > 200:  # a wide range: the powers of ten only, or the labels collide
            ticks = [t for t in ticks if f"{t:g}".lstrip("0.").startswith("1")]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{metric.title} ({metric.unit})\nvs {refs[metric.key]}", fontsize=10)
        ax.tick_params(axis="x", labelsize=9)
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.2f}" if v < 10 else f" {v:.3g}", va="center", fontsize=8.5)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.suptitle(f"Relative performance ({TIMES}, log scale, >1 = better)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))  # room for the title
    fig.savefig(path, dpi=200)
    plt.close(fig)
