"""The operations dashboard as one self-contained HTML page (GET /api/dashboard, and `make run`'s file).

Why a page of its own and not Grafana or Power BI: the app already holds every figure, and an operator
should need nothing but the Function App (or the file) to see them. Everything is inline: styles, SVG
charts drawn here (shared/core/svg_charts.py), no script, no font or image fetched, so it works offline
and as a mailed file. Each figure a reader (or the browser test) checks carries `data-metric`, and a
section with nothing to show says "no data yet" instead of failing.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pandas as pd

from shared.core.dashboard import (
    ACCURACY_METRICS,
    DeliveryHealth,
    accuracy_over_time,
    alerts_per_day,
    drift_over_time,
    drifted_segments,
    highest_risk,
    latest_drift,
    model_summary,
    risk_distribution,
    segment_alert_rates,
)
from shared.core.monitoring import (
    BATTERIES,
    BRIER,
    DAY,
    DRIFTED,
    FEATURE,
    FORECAST,
    MODEL_VERSION,
    PSI,
    RECALL,
    ROLE,
    THRESHOLD,
)
from shared.core.risk import DAYS_TO_RATED_LIFE, HORIZON_DAYS, PROBABILITY
from shared.core.svg_charts import lines, stacked_bars
from shared.core.telemetry import BATTERY_ID, CAR_ID, DATE, LIFETIME_CYCLES, RATED_CYCLES

NO_DATA = "no data yet"
RETRAIN_ROWS = 5  # the newest retrain decisions shown
STYLE = """
body { font-family: system-ui, sans-serif; margin: 20px auto; color: #1b1b1b; max-width: 1180px; padding: 0 12px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 26px; border-bottom: 1px solid #ddd; }
.meta, .note { font-size: 12px; color: #555; } .empty { color: #777; font-style: italic; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 13px; }
th, td { border: 1px solid #d6d6d6; padding: 3px 8px; text-align: right; } th { background: #f2f4f7; }
td.text, th.text { text-align: left; } .chart { width: 100%; max-width: 720px; height: auto; font-size: 10px; }
.chart text { fill: #444; } .legend { font-size: 12px; margin: 2px 0 10px; }
.key { margin-right: 14px; } .key i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
.grid { display: flex; flex-wrap: wrap; gap: 10px 32px; } .error { color: #a11; font-weight: 600; }
form { margin: 10px 0; } input[type=text] { font-size: 14px; padding: 3px 6px; width: 14em; }
"""


@dataclass(frozen=True)
class LookupForm:
    """How the car lookup form submits: to `action`, with `hidden` fields (the function key, when the page
    was opened with one, so the lookup passes the same auth)."""

    action: str = ""
    hidden: Mapping[str, str] = field(default_factory=dict)
    note: str = ""

    def href(self, car_id: str | None = None) -> str:
        """The link to the fleet page (no car) or to a car's page, with the hidden fields."""
        query = dict(self.hidden) | ({"car": car_id} if car_id else {})
        return f"{self.action}?{urlencode(query)}" if query else (self.action or "?")


@dataclass(frozen=True)
class MonitorView:
    """The model monitor's history as its store reads it (shared/adapters/monitor_store.py): matured accuracy
    rows, drift rows and retrain decisions (empty frames: nothing stored yet)."""

    accuracy: pd.DataFrame = field(default_factory=pd.DataFrame)
    drift: pd.DataFrame = field(default_factory=pd.DataFrame)
    retrain: pd.DataFrame = field(default_factory=pd.DataFrame)


@dataclass(frozen=True)
class FleetView:
    """What the fleet page shows, read by the dashboard handler from the stores."""

    generated_at: str
    alert_days: tuple[str, str]
    alerts: pd.DataFrame  # alert rows of the window (shared.core.dashboard.ALERT_ROW_COLUMNS)
    delivery: DeliveryHealth
    scores: pd.DataFrame | None  # the latest nightly scores (None: none yet)
    scores_day: str | None
    model_version: str | None
    segments: pd.DataFrame  # Car_ID + Make, Region, Engine_Type (empty: none written)
    monitor: MonitorView = field(default_factory=MonitorView)
    lookup: LookupForm = field(default_factory=LookupForm)


@dataclass(frozen=True)
class CarView:
    """What the car lookup shows: recent telemetry, the latest score, and the car's alerts."""

    car_id: str
    generated_at: str
    telemetry: pd.DataFrame
    telemetry_days: tuple[str, str]
    scores: pd.DataFrame  # the car's rows of the latest scores (empty: not scored)
    scores_day: str | None
    alerts: list[dict[str, Any]]
    lookup: LookupForm = field(default_factory=LookupForm)


def render_fleet(view: FleetView) -> str:
    """The fleet page."""
    scored = view.scores is not None and not view.scores.empty
    meta = f"generated {_e(view.generated_at)} · alerts of {_e(view.alert_days[0])} to {_e(view.alert_days[1])}" + (
        f" · scores of {_e(view.scores_day)}, model {_e(view.model_version)}" if scored else ""
    )
    body = [
        f'<p class="meta">{meta}</p>',
        _lookup_form(view.lookup, ""),
        _section("alerts", "Alerts per day by type and severity", _alerts_section(view.alerts)),
        _section("delivery", "Delivery health", _delivery_section(view.delivery)),
        _section("risk", "The fleet's risk", _risk_section(view.scores, view.lookup) if scored else None),
        _section("segments", "Alert rates per segment", _segments_section(view.alerts, view.segments)),
        _section("models", "Champion and shadow models", _models_section(view.monitor)),
        _section("accuracy", "Matured accuracy over time", _accuracy_section(view.monitor.accuracy)),
        _section("drift", "Input drift per feature", _drift_section(view.monitor.drift)),
    ]
    return _page("Battery alerting: operations dashboard", body)


def render_car(view: CarView) -> str:
    """A car's page: its recent telemetry (table and lifetime-cycles chart), score and alerts."""
    body = [
        f'<p class="meta">generated {_e(view.generated_at)} · <a href="{_e(view.lookup.href())}">fleet</a></p>',
        _lookup_form(view.lookup, view.car_id),
        _section("car-score", f"Score of {view.car_id}", _car_score(view.scores, view.scores_day)),
        _section(
            "car-telemetry",
            f"Telemetry of {view.telemetry_days[0]} to {view.telemetry_days[1]}",
            _car_telemetry(view.telemetry),
        ),
        _section("car-alerts", "Alerts", _car_alerts(view.alerts)),
    ]
    return _page(f"Car {view.car_id}", body)


def render_unknown_car(car_id: str, generated_at: str, lookup: LookupForm, searched: str) -> str:
    """The answer to a lookup of a car no store knows (sent with 404)."""
    body = [
        f'<p class="meta">generated {_e(generated_at)} · <a href="{_e(lookup.href())}">fleet</a></p>',
        _lookup_form(lookup, car_id),
        f'<p class="error" data-metric="unknown-car">No car {_e(car_id)} is known: {_e(searched)}.</p>',
    ]
    return _page(f"Car {car_id}: not found", body)


# --- sections -----------------------------------------------------------------------------------------


def _alerts_section(alerts: pd.DataFrame) -> str | None:
    table = alerts_per_day(alerts)
    if table.empty:
        return None
    labels = list(table.index)
    series = [(f"{kind} · {severity}", table[(kind, severity)].tolist()) for kind, severity in table.columns]
    totals = {f"{kind} · {severity}": int(table[(kind, severity)].sum()) for kind, severity in table.columns}
    rows = "".join(
        f'<tr><td class="text">{_e(name)}</td><td data-metric="alerts:{_e(name)}">{count:,}</td></tr>'
        for name, count in totals.items()
    )
    return (
        stacked_bars(labels, series, unit="alerts per day")
        + f'<table><tr><th class="text">type · severity</th><th>alerts</th></tr>{rows}'
        f'<tr><th class="text">all</th><th data-metric="alerts-total">{len(alerts):,}</th></tr></table>'
    )


def _delivery_section(delivery: DeliveryHealth) -> str:
    rows = "".join(
        f'<tr><td class="text">{_e(label)}</td><td data-metric="{key}">{count:,}</td></tr>'
        for key, label, count in delivery.rows()
    )
    return f"<table>{rows}</table>"


def _risk_section(scores: pd.DataFrame, lookup: LookupForm) -> str:
    bins = risk_distribution(scores)
    labels = [f"{lower:.1f}–{upper:.1f}" for lower, upper in zip(bins["lower"], bins["upper"], strict=True)]
    chart = stacked_bars(labels, [("batteries", bins["batteries"].tolist())], unit="batteries per probability bin")
    alerted = int(scores["alert"].sum()) if "alert" in scores else 0
    summary = (
        f'<p><span data-metric="batteries-scored">{len(scores):,}</span> batteries scored, '
        f'<span data-metric="batteries-over-threshold">{alerted:,}</span> over the alert threshold.</p>'
    )
    top = highest_risk(scores)
    rows = "".join(
        f'<tr data-battery="{_e(row[BATTERY_ID])}"><td class="text">{_e(row[BATTERY_ID])}</td>'
        f'<td class="text"><a class="car" href="{_e(lookup.href(str(row[CAR_ID])))}">{_e(row[CAR_ID])}</a></td>'
        f'<td data-metric="probability">{row[PROBABILITY]:.3f}</td>'
        f"<td>{_days(row[DAYS_TO_RATED_LIFE])}</td><td>{row[LIFETIME_CYCLES]:,.1f} / {row[RATED_CYCLES]:,.0f}</td></tr>"
        for _, row in top.iterrows()
    )
    table = (
        '<h3>Highest risk</h3><table><tr><th class="text">battery</th><th class="text">car</th>'
        "<th>P(rated life in 30 days)</th><th>days to rated life</th><th>cycles used / rated</th></tr>"
        f"{rows}</table>"
    )
    return summary + chart + table


def _segments_section(alerts: pd.DataFrame, segments: pd.DataFrame) -> str | None:
    rates = segment_alert_rates(alerts, segments)
    if rates.empty:
        return None
    blocks = []
    for attribute, rows in rates.groupby("attribute", sort=False):
        body = "".join(
            f'<tr><td class="text">{_e(row.value)}</td><td>{row.cars:,}</td><td>{row.alerts:,}</td>'
            f'<td>{row.cars_alerted:,}</td><td data-metric="segment:{_e(attribute)}:{_e(row.value)}">'
            f"{_share(row.alerted_share)}</td></tr>"
            for row in rows.itertuples()
        )
        blocks.append(
            f'<div><h3>{_e(attribute)}</h3><table><tr><th class="text">{_e(attribute)}</th><th>cars</th>'
            f"<th>alerts</th><th>cars alerted</th><th>share alerted</th></tr>{body}</table></div>"
        )
    return f'<div class="grid">{"".join(blocks)}</div>'


def _models_section(monitor: MonitorView) -> str | None:
    summary = model_summary(monitor.accuracy) if not monitor.accuracy.empty else pd.DataFrame()
    if summary.empty and monitor.retrain.empty:
        return None
    parts = []
    if not summary.empty:
        rows = "".join(
            f'<tr><td class="text">{_e(row[ROLE])}</td><td class="text">{_e(row[MODEL_VERSION])}</td>'
            f"<td>{row['Days']}</td><td>{_e(row['Last_Scored_On'])}</td><td>{row[BATTERIES]:,}</td>"
            + "".join(
                f'<td data-metric="{_e(row[ROLE])}:{metric}">{_cell(row[metric])}</td>' for metric in ACCURACY_METRICS
            )
            + "</tr>"
            for _, row in summary.iterrows()
        )
        head = "".join(f"<th>{_e(metric)}</th>" for metric in ACCURACY_METRICS)
        parts.append(
            '<p class="note">matured: each night\'s scores judged on the 30 days of telemetry that followed, over the '
            'whole fleet, pooled over the days shown (weighted by batteries)</p><table><tr><th class="text">role</th>'
            f'<th class="text">model</th><th>days judged</th><th>last scored day</th><th>batteries</th>{head}</tr>'
            f"{rows}</table>"
        )
    if not monitor.retrain.empty:
        parts.append("<h3>Retrain decisions</h3>" + _frame_table(monitor.retrain.tail(RETRAIN_ROWS).iloc[::-1]))
    return "".join(parts)


def _accuracy_section(accuracy: pd.DataFrame) -> str | None:
    if accuracy.empty:
        return None
    charts = []
    for metric, unit in ((BRIER, "Brier score (lower is better)"), (RECALL, "recall at the threshold")):
        table = accuracy_over_time(accuracy, metric)
        if not table.empty:
            series = [(str(model), [None if pd.isna(v) else float(v) for v in table[model]]) for model in table.columns]
            charts.append(f"<h3>{_e(metric)}</h3>" + lines(list(table.index), series, unit=unit, top=1.0))
    return "".join(charts) or None


def _drift_section(drift: pd.DataFrame) -> str | None:
    latest = latest_drift(drift)
    if latest.empty:
        return None
    rows = "".join(
        f'<tr><td class="text">{_e(row[FEATURE])}</td><td data-metric="psi:{_e(row[FEATURE])}">{row[PSI]:.3f}</td>'
        f'<td>{row[THRESHOLD]:.2f}</td><td class="text">{"drifted" if row[DRIFTED] else "within"}</td></tr>'
        for _, row in latest.iterrows()
    )
    over_time = drift_over_time(drift)
    series = [(str(f), [None if pd.isna(v) else float(v) for v in over_time[f]]) for f in over_time.columns]
    day = pd.Timestamp(latest[DAY].iloc[0]).strftime("%Y-%m-%d")
    return (
        f'<p class="note">population stability index of the champion\'s inputs on {_e(day)} against its training '
        'data</p><table><tr><th class="text">feature</th><th>PSI</th><th>threshold</th><th class="text">state</th>'
        f"</tr>{rows}</table>" + lines(list(over_time.index), series, unit="PSI per day") + _drifted_segments(drift)
    )


def _drifted_segments(drift: pd.DataFrame) -> str:
    segments = drifted_segments(drift)
    if segments.empty:
        return '<p data-metric="drifted-segments">no segment past its threshold</p>'
    return f"<h3>Segments past the threshold</h3>{_frame_table(segments)}"


def _frame_table(frame: pd.DataFrame | None) -> str | None:
    if frame is None or frame.empty:
        return None
    head = "".join(f"<th>{_e(c)}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in frame.itertuples(index=False)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _car_score(scores: pd.DataFrame, day: str | None) -> str | None:
    if scores.empty:
        return None
    rows = "".join(
        f'<tr><td class="text">{_e(row[BATTERY_ID])}</td><td data-metric="car-probability">{row[PROBABILITY]:.3f}</td>'
        f'<td data-metric="car-days-to-rated-life">{_days(row[DAYS_TO_RATED_LIFE])}</td>'
        f"<td>{row[LIFETIME_CYCLES]:,.1f} / {row[RATED_CYCLES]:,.0f}</td></tr>"
        for _, row in scores.iterrows()
    )
    table = (
        f'<p class="note">nightly score as of {_e(day)}: the forecast of the next 30 days\' cycles turned into the '
        'chance of reaching rated life, and the day it is expected</p><table><tr><th class="text">battery</th>'
        f"<th>P(rated life in 30 days)</th><th>days to rated life</th><th>cycles used / rated</th></tr>{rows}"
        "</table>"
    )
    if FORECAST not in scores:
        return table
    first = pd.Timestamp(day) + pd.Timedelta(days=1)
    labels = [f"{first + pd.Timedelta(days=n):%m-%d}" for n in range(HORIZON_DAYS)]
    series = [(f"battery {row[BATTERY_ID]}", [float(v) for v in row[FORECAST]]) for _, row in scores.iterrows()]
    return table + "<h3>Forecast daily cycles</h3>" + lines(labels, series, unit="forecast cycles per day")


def _car_telemetry(telemetry: pd.DataFrame) -> str | None:
    if telemetry.empty:
        return None
    frame = telemetry.sort_values(DATE)
    labels = [f"{day:%m-%d}" for day in pd.to_datetime(frame[DATE])]
    series = [
        (
            f"battery {battery} lifetime cycles",
            [
                float(v) if b == battery else None
                for b, v in zip(frame[BATTERY_ID], frame[LIFETIME_CYCLES], strict=True)
            ],
        )
        for battery in frame[BATTERY_ID].unique()
    ]
    chart = lines(labels, series, unit="lifetime cycles used")
    shown = [c for c in frame.columns if c not in (CAR_ID,)]
    rows = "".join(
        "<tr>" + "".join(f"<td>{_cell(row[c])}</td>" for c in shown) + "</tr>" for _, row in frame.iloc[::-1].iterrows()
    )
    head = "".join(f"<th>{_e(c)}</th>" for c in shown)
    return (
        chart + f'<p><span data-metric="car-telemetry-days">{len(frame)}</span> records</p>'
        f"<table><tr>{head}</tr>{rows}</table>"
    )


def _car_alerts(alerts: Sequence[Mapping[str, Any]]) -> str | None:
    if not alerts:
        return None
    rows = "".join(
        f'<tr data-alert="{_e(a["alert_id"])}"><td class="text">{_e(a.get("created_at"))}</td><td class="text">'
        f'{_e(a.get("type"))}</td><td class="text">{_e(a.get("severity"))}</td><td data-metric="car-alert-state" '
        f'class="text">{_e(a.get("state"))}</td><td>{_cell(a.get("failure_probability_30d"))}</td>'
        f'<td class="text">{_e(a.get("message"))}</td></tr>'
        for a in alerts
    )
    return (
        f'<p><span data-metric="car-alerts">{len(alerts)}</span> alerts</p><table><tr><th class="text">created'
        '</th><th class="text">type</th><th class="text">severity</th><th class="text">state</th><th>P</th>'
        f'<th class="text">message</th></tr>{rows}</table>'
    )


# --- plumbing -----------------------------------------------------------------------------------------


def _page(title: str, body: list[str]) -> str:
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
        f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1>{''.join(body)}</body></html>"
    )


def _section(anchor: str, title: str, content: str | None) -> str:
    shown = content if content is not None else f'<p class="empty">{NO_DATA}</p>'
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{shown}</section>'


def _lookup_form(lookup: LookupForm, value: str) -> str:
    hidden = "".join(f'<input type="hidden" name="{_e(k)}" value="{_e(v)}">' for k, v in lookup.hidden.items())
    note = f' <span class="note">{_e(lookup.note)}</span>' if lookup.note else ""
    return (
        f'<form id="car-lookup" method="get" action="{_e(lookup.action)}"><label for="car">Car lookup </label>'
        f'<input type="text" id="car" name="car" value="{_e(value)}" placeholder="CAR-00001" required>{hidden} '
        f'<button type="submit">Look up</button>{note}</form>'
    )


def _days(value: float) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{value:,.1f}"


def _share(value: float) -> str:
    return "—" if not np.isfinite(value) else f"{value:.1%}"


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "—"
    if isinstance(value, float | np.floating):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.1f}"
    if isinstance(value, pd.Timestamp):
        return _e(f"{value:%Y-%m-%d}" if value == value.normalize() else value.isoformat())
    return _e(value)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)
