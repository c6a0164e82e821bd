"""Report: the human-readable account of a trained model — what it is, what data it saw, how it did.

Written next to the model as `report.md` by `train`, and included in the main job's summary, so a data
scientist can judge a model without opening metadata.json.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from shared.models.backtest import backtest_markdown
from shared.models.fairness import fairness_markdown

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def training_report(metadata: dict[str, Any], quality: Any | None = None) -> str:
    """Markdown: model identity and data, data-quality report, backtest against the baselines, fairness, features."""
    data_range = metadata.get("data_range", {})
    lines = [
        f"# Battery forecaster {metadata.get('version', '(unversioned)')}",
        "",
        f"- kind: {metadata.get('model_kind', 'unknown')}; trained at {metadata.get('trained_at', '?')}",
        f"- data: {data_range.get('start', '?')} to {data_range.get('end', '?')}, "
        f"{metadata.get('n_batteries', '?')} batteries on {metadata.get('n_cars', '?')} cars",
        f"- forecast horizon: {metadata.get('horizon_days', '?')} days from a window of "
        f"{metadata.get('window_days', '?')} days",
        f"- libraries: {_versions(metadata.get('library_versions', {}))}",
        "",
        "## Data quality",
        "",
        quality.to_markdown() if quality is not None else _quality_table(metadata.get("data_quality", {})),
        "",
        "## Backtest",
        "",
    ]
    backtest = metadata.get("backtest")
    lines.append(backtest_markdown(backtest) if backtest else "No backtest recorded.")
    fairness = metadata.get("fairness")
    if fairness:
        lines += ["## Fairness", "", fairness_markdown(fairness)]
        lines += [f"- **warning**: {warning}" for warning in fairness.get("warnings", [])]
        lines.append("")
    promotion = metadata.get("promotion")
    if promotion:
        lines += [
            "## Promotion",
            "",
            f"- promoted: {promotion.get('promoted')}; {promotion.get('reason', '')}",
            f"- rule: {promotion.get('rule', '')}",
            "",
        ]
    lines += ["## Features", "", ", ".join(f"`{name}`" for name in metadata.get("features", [])), ""]
    return "\n".join(lines)


def _versions(versions: dict[str, str]) -> str:
    return ", ".join(f"{name} {version}" for name, version in versions.items()) or "not recorded"


def _quality_table(counts: dict[str, Any]) -> str:
    """The data-quality counts from metadata (for a model loaded without its preparation report)."""
    flat = counts.get("counts", counts)
    if not flat:
        return "Not recorded."
    rows = [f"| {name} | {value:,} |" for name, value in flat.items() if isinstance(value, int | float)]
    return "\n".join(["| problem | count |", "| --- | ---: |", *rows])


def training_curves_figure(curves: pd.DataFrame, title: str | None = None) -> Figure:
    """Training vs validation curves, one panel per quantity (see `TrainingRun.log_training_curves`).

    matplotlib is imported here, so reading a report costs no plotting stack."""
    from matplotlib.figure import Figure

    quantities = list(dict.fromkeys(column.split("_", 1)[1] for column in curves.columns))
    figure = Figure(figsize=(5 * len(quantities), 3.8), layout="constrained")
    for axes, quantity in zip(figure.subplots(1, len(quantities), squeeze=False)[0], quantities, strict=True):
        for column in curves.columns:
            split, measured = column.split("_", 1)
            if measured == quantity:
                axes.plot(curves.index, curves[column], marker=".", label=split)
        step = curves.index.name or "step"
        axes.set(xlabel=step, ylabel=quantity, title=f"{quantity} by {step}")
        axes.grid(alpha=0.3)
        axes.legend()
    if title:
        figure.suptitle(title)
    return figure
