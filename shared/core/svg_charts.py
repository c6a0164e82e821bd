"""Small server-side SVG charts for the dashboard page: stacked bars and lines, as inline markup.

Why not a charting library: the page must work offline and load nothing (no CDN, no JavaScript, no fonts),
and these charts are a few dozen rectangles and polylines. Every mark carries a <title>, so hovering shows
its value without script.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

PALETTE = ("#3566a8", "#d9822b", "#c23b3b", "#3f9b57", "#7a4fa3", "#8c6d31", "#2b9bb3", "#b34d8a")
WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 44


def stacked_bars(labels: Sequence[str], series: Sequence[tuple[str, Sequence[float]]], *, unit: str) -> str:
    """One bar per label, each series stacked in its colour, with a legend; `unit` names what is counted."""
    totals = [sum(values[i] for _, values in series) for i in range(len(labels))]
    top = _nice_top(max(totals, default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(len(labels), 1)
    bar_w = max(step * 0.8, 1.0)
    marks = []
    for i, label in enumerate(labels):
        base = 0.0
        for colour, (name, values) in zip(PALETTE * 4, series, strict=False):
            value = values[i]
            if value:
                y, h = _y(base + value, top, plot_h), value / top * plot_h
                marks.append(
                    f'<rect x="{LEFT + i * step + (step - bar_w) / 2:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
                    f'height="{h:.1f}" fill="{colour}"><title>{_e(label)} {_e(name)}: {value:g} {_e(unit)}'
                    "</title></rect>"
                )
            base += value
    legend = "".join(
        f'<span class="key"><i style="background:{colour}"></i>{_e(name)}</span>'
        for colour, (name, _) in zip(PALETTE * 4, series, strict=False)
    )
    return _frame(marks, labels, top, unit) + f'<div class="legend">{legend}</div>'


def lines(
    labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]], *, unit: str, top: float | None = None
) -> str:
    """One polyline per series over the labels (None: a gap), with points and a legend."""
    values = [v for _, vs in series for v in vs if v is not None]
    top = top or _nice_top(max(values, default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(len(labels), 1)
    marks = []
    for colour, (name, points) in zip(PALETTE * 4, series, strict=False):
        coordinates = [
            (LEFT + (i + 0.5) * step, _y(v, top, plot_h), labels[i], v) for i, v in enumerate(points) if v is not None
        ]
        if len(coordinates) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in coordinates)
            marks.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        marks += [
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"><title>{_e(label)} {_e(name)}: '
            f"{v:.4g} {_e(unit)}</title></circle>"
            for x, y, label, v in coordinates
        ]
    legend = "".join(
        f'<span class="key"><i style="background:{colour}"></i>{_e(name)}</span>'
        for colour, (name, _) in zip(PALETTE * 4, series, strict=False)
    )
    return _frame(marks, labels, top, unit) + f'<div class="legend">{legend}</div>'


def _frame(marks: list[str], labels: Sequence[str], top: float, unit: str) -> str:
    """The axes around the marks: four gridlines with values, and at most 12 x labels."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    grid = []
    for k in range(5):
        value = top * k / 4
        y = _y(value, top, plot_h)
        grid.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{value:g}</text>'
        )
    step = plot_w / max(len(labels), 1)
    every = max(1, -(-len(labels) // 12))
    ticks = [
        f'<text x="{LEFT + (i + 0.5) * step:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{_e(label)}</text>'
        for i, label in enumerate(labels)
        if i % every == 0
    ]
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{_e(unit)}" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(grid)}{"".join(marks)}{"".join(ticks)}'
        f'<text x="{LEFT}" y="{HEIGHT - 6}" class="unit">{_e(unit)}</text></svg>'
    )


def _y(value: float, top: float, plot_h: float) -> float:
    return TOP + plot_h - value / top * plot_h


def _nice_top(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × a power of ten at or above `value` (1 for nothing)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for factor in (1, 2, 2.5, 5, 10):
        if value <= factor * power:
            return factor * power
    return 10 * power


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)
