"""The fault-injection suite's figures: each fault test records what it lost and how many duplicates it saw.

A fault test calls the `fault_outcome` fixture once per fault it injects; at the end of the session the
recorded rows are written to `data/fault-report.md` (the table the README's "Failure semantics" section
copies), so the figures come from the suite's own run, not from a hand count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPORT = Path(__file__).resolve().parent.parent / "data" / "fault-report.md"


@dataclass(frozen=True)
class FaultOutcome:
    """One injected fault on one path: what was lost and how many duplicate deliveries were seen."""

    path: str  # "telemetry in", "alerts out", "scoring endpoint", ...
    fault: str  # what was injected, in words
    lost: int  # events, batches or alerts lost (the promise: 0)
    duplicates: int  # second deliveries of an alert_id the gateway counted
    bound: str  # the documented bound on duplicates, in words (e.g. "0", "≤ 1 (at-least-once)")


def write_report(outcomes: list[FaultOutcome], path: Path = REPORT) -> None:
    """Write the recorded outcomes as a Markdown table, sorted by path and fault."""
    rows = sorted(outcomes, key=lambda outcome: (outcome.path, outcome.fault))
    lines = ["| path | fault | lost | duplicates | documented bound |", "| --- | --- | ---: | ---: | --- |"]
    lines += [f"| {o.path} | {o.fault} | {o.lost} | {o.duplicates} | {o.bound} |" for o in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
