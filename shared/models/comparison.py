"""Model comparison: one self-contained HTML page over candidate model directories, like AutoML's Models tab.

`python -m shared report --model-dir A B ... --out REPORT.html`. Everything comes from what `train`
leaves in each model directory (metadata.json and any PNG figures), so the page can be rebuilt at any
time without the data: the backtest metrics of each candidate and of the baselines it was measured
against, the best candidate by the registry's own champion rule (so the page marks the model that
`promote_if_better` would serve), reliability diagrams, each directory's figures, the fairness table
(metadata "fairness") and the data-quality summary. PNGs are embedded as base64, so the file can be
mailed or attached to a ticket on its own. Figures use matplotlib's Figure directly (no pyplot state).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from shared.core.telemetry import InputError
from shared.models.backtest import METHOD_TITLES
from shared.models.champion import DEFAULT_RULE, ChampionRule, model_metrics, read_model_metadata

METRICS = ["nrmse", "mae", "brier", "average_precision", "recall_at_threshold", "precision_at_threshold", "alerts"]
BASELINES = ("seasonal_naive", "recent_mean")
BEST_MARK = "★ best"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #1b1b1b; max-width: 1200px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #d0d0d0; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child, td.text { text-align: left; }
th { background: #f2f4f7; } tr.best { background: #e6f4ea; font-weight: 600; } tr.baseline { color: #666; }
figure { display: inline-block; margin: 8px 16px 8px 0; } figcaption { font-size: 12px; color: #555; }
img { max-width: 560px; border: 1px solid #eee; } .note { font-size: 12px; color: #555; }
"""


@dataclass(frozen=True)
class Candidate:
    """One model directory as the report sees it."""

    model_dir: Path
    metadata: dict

    @property
    def name(self) -> str:
        return f"{self.metadata.get('model_kind', 'unknown')} {self.metadata['version']}"

    @property
    def metrics(self) -> dict:
        return model_metrics(self.metadata, str(self.model_dir))


def load_candidates(model_dirs: Sequence[str | Path]) -> list[Candidate]:
    """The model directories' metadata; `InputError` names a directory without a version or backtest."""
    if not model_dirs:
        raise InputError("give at least one --model-dir")
    candidates = [Candidate(Path(d), read_model_metadata(Path(d))) for d in model_dirs]
    for candidate in candidates:
        candidate.metrics  # noqa: B018 - raises InputError naming the directory when the backtest is missing
    return candidates


def best_candidate(candidates: Sequence[Candidate], rule: ChampionRule = DEFAULT_RULE) -> Candidate:
    """The candidate the registry would end up serving: each in turn challenges the champion so far."""
    champion = candidates[0]
    for challenger in candidates[1:]:
        promote, _ = rule.decide(challenger.metrics, champion.metrics)
        if promote:
            champion = challenger
    return champion


def comparison_html(candidates: Sequence[Candidate], rule: ChampionRule = DEFAULT_RULE) -> str:
    """The whole page as one HTML string (figures embedded)."""
    best = best_candidate(candidates, rule)
    sections = [
        f"<h1>Battery forecaster comparison: {len(candidates)} candidate(s)</h1>",
        f"<p>Best model ({html.escape(BEST_MARK)}): <b>{html.escape(best.name)}</b>, by the champion rule: "
        f"{html.escape(rule.describe())}.</p>",
        "<h2>Backtest metrics</h2>",
        _metrics_table(candidates, best),
        "<p class='note'>nrmse, mae: daily-cycles forecast over the evaluation origins (lower is better); "
        "brier: failure_probability_30d (lower is better); average precision, recall and precision of alerts "
        "at the threshold (higher is better). Baselines go through the same risk code.</p>",
        "<h2>Figures</h2>",
        _figures(candidates),
        "<h2>Fairness</h2>",
        *[_fairness(c) for c in candidates],
        "<h2>Data quality</h2>",
        *[_data_quality(c) for c in candidates],
    ]
    body = "\n".join(sections)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>Model comparison</title>"
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")  # fmt: skip


def write_comparison_report(model_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Read the model directories and write the HTML page to `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(comparison_html(load_candidates(model_dirs)), encoding="utf-8")
    return out


def _metrics_table(candidates: Sequence[Candidate], best: Candidate) -> str:
    header = ["model", "kind", "backtest cut-off", *METRICS]
    rows = []
    for candidate in candidates:
        backtest = candidate.metadata["backtest"]
        mark = f" {BEST_MARK}" if candidate is best else ""
        rows.append((("best" if candidate is best else ""),
                     [candidate.metadata["version"] + mark, candidate.metadata.get("model_kind", "?"),
                      backtest.get("cutoff", "?"), *[candidate.metrics.get(m) for m in METRICS]]))  # fmt: skip
    seen = set()
    for candidate in candidates:  # baselines once per distinct backtest (same data and cut-off = same numbers)
        backtest = candidate.metadata["backtest"]
        for method in BASELINES:
            metrics = backtest["metrics"].get(method)
            key = (method, backtest.get("cutoff"), repr(metrics))
            if metrics is None or key in seen:
                continue
            seen.add(key)
            rows.append(("baseline", [f"baseline: {METHOD_TITLES[method]}", "baseline", backtest.get("cutoff", "?"),
                                      *[metrics.get(m) for m in METRICS]]))  # fmt: skip
    return _table(header, rows)


def _figures(candidates: Sequence[Candidate]) -> str:
    """Computed from metadata: metric bars and reliability diagram; then each directory's own PNGs."""
    figures = [
        (_png(_metric_bars(candidates)), "Backtest metrics by candidate (lower nrmse/brier is better)"),
        (_png(_reliability(candidates)), "Reliability of failure_probability_30d on the backtest"),
    ]
    for candidate in candidates:
        for path in sorted(candidate.model_dir.glob("*.png")):
            figures.append((path.read_bytes(), f"{candidate.name}: {path.name}"))
    return "\n".join(
        f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for png, caption in figures
    )


def _metric_bars(candidates: Sequence[Candidate]) -> Figure:
    figure = Figure(figsize=(7, 3), layout="constrained")
    names = ["nrmse", "brier", "average_precision"]
    for axes, name in zip(figure.subplots(1, len(names)), names, strict=True):
        values = [candidate.metrics.get(name) or 0.0 for candidate in candidates]
        labels = [candidate.metadata.get("model_kind", "?")[:12] + f"\n#{i + 1}" for i, candidate in
                  enumerate(candidates)]  # fmt: skip
        axes.bar(labels, values, color="#4c78a8")
        axes.set_title(name, fontsize=10)
        axes.tick_params(labelsize=8)
    return figure


def _reliability(candidates: Sequence[Candidate]) -> Figure:
    figure = Figure(figsize=(4.5, 4), layout="constrained")
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], color="#999", linestyle="--", label="perfectly calibrated")
    for i, candidate in enumerate(candidates):
        table = candidate.metadata["backtest"].get("reliability", {}).get("model", [])
        points = [(r["mean_predicted"], r["observed_rate"]) for r in table if r["count"]]
        if points:
            x, y = zip(*points, strict=True)
            axes.plot(x, y, marker="o", label=f"#{i + 1} {candidate.metadata.get('model_kind', '?')[:20]}")
    axes.set(xlabel="mean predicted probability", ylabel="observed rate", xlim=(0, 1), ylim=(0, 1))
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    return figure


def _fairness(candidate: Candidate) -> str:
    """metadata["fairness"] as tables, whatever its nesting (a table per list of records or dict of dicts)."""
    fairness = candidate.metadata.get("fairness")
    title = f"<h3>{html.escape(candidate.name)}</h3>"
    if not fairness:
        return f"{title}<p class='note'>No fairness assessment recorded with this model.</p>"
    return title + _json_tables(fairness)


def _data_quality(candidate: Candidate) -> str:
    quality = candidate.metadata.get("data_quality") or {}
    totals = {k: v for k, v in quality.items() if isinstance(v, int | float)}
    counts = quality.get("counts", {}) if isinstance(quality.get("counts"), dict) else {}
    title = f"<h3>{html.escape(candidate.name)}</h3>"
    if not totals and not counts:
        return f"{title}<p class='note'>No data-quality report recorded with this model.</p>"
    data_range = candidate.metadata.get("data_range", {})
    note = (f"<p class='note'>data {data_range.get('start', '?')} to {data_range.get('end', '?')}, "
            f"{candidate.metadata.get('n_batteries', '?')} batteries on {candidate.metadata.get('n_cars', '?')} "
            "cars</p>")  # fmt: skip
    rows = [("", [name.replace("_", " "), value]) for name, value in {**totals, **counts}.items()]
    return title + note + _table(["data quality", "count"], rows)


def _json_tables(value: Any) -> str:
    """A list of records becomes a table; a dict of scalars a two-column table; other dicts recurse."""
    if isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
        header = list(dict.fromkeys(key for row in value for key in row))
        return _table(header, [("", [row.get(key) for key in header]) for row in value])
    if isinstance(value, dict):
        scalars = {k: v for k, v in value.items() if not isinstance(v, dict | list)}
        nested = {k: v for k, v in value.items() if isinstance(v, dict | list)}
        if nested and all(isinstance(v, dict) and not any(isinstance(x, dict | list) for x in v.values())
                          for v in nested.values()):  # fmt: skip
            header = ["", *dict.fromkeys(key for row in nested.values() for key in row)]
            parts = [_table(header, [("", [name, *[row.get(k) for k in header[1:]]]) for name, row in nested.items()])]
        else:
            parts = [f"<h4>{html.escape(str(k))}</h4>{_json_tables(v)}" for k, v in nested.items()]
        if scalars:
            parts.insert(0, _table(["", "value"], [("", [k, v]) for k, v in scalars.items()]))
        return "".join(parts)
    return f"<p>{html.escape(str(value))}</p>"


def _table(header: list[str], rows: list[tuple[str, list[Any]]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(f"<tr class='{css}'>" + "".join(_cell(value) for value in values) + "</tr>" for css, values in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    if value is None:
        return "<td>–</td>"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"<td class='text'>{html.escape(str(value))}</td>"
    return f"<td>{value:,}</td>" if isinstance(value, int) else f"<td>{value:.4g}</td>"


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()
