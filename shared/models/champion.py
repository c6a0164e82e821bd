"""The champion rule: when a newly trained model replaces the serving one, decided from backtest metrics.

Pure (metadata dicts in, a decision and its reason out), so the registry (shared/adapters/registry.py),
the comparison report and the tests apply the same rule without storage. `read_model_metadata` is the one
reader of a model directory's metadata.json both of them start from.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.core.telemetry import InputError

METADATA_FILE = "metadata.json"  # every model directory's description: version, kind, metrics, ...
# A model version: it names blobs and folders, so letters, digits and . _ : + - only, at most 128.
VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}")

LOWER_IS_BETTER = frozenset({"nrmse", "mae", "brier"})
HIGHER_IS_BETTER = frozenset({"average_precision", "recall_at_threshold", "precision_at_threshold"})


@dataclass(frozen=True)
class ChampionRule:
    """When a candidate replaces the champion: a strictly better primary backtest metric, and a secondary
    metric no more than `secondary_tolerance` (relative) worse. Lower Brier wins by default, because the
    alert is a probability; NRMSE guards the forecast that probability is built on."""

    primary: str = "brier"
    secondary: str = "nrmse"
    secondary_tolerance: float = 0.02

    def __post_init__(self) -> None:
        for metric in (self.primary, self.secondary):
            if metric not in LOWER_IS_BETTER | HIGHER_IS_BETTER:
                known = ", ".join(sorted(LOWER_IS_BETTER | HIGHER_IS_BETTER))
                raise ValueError(f"unknown backtest metric {metric!r}; known: {known}")
        if not self.secondary_tolerance >= 0:
            raise ValueError(f"secondary_tolerance must be 0 or more, got {self.secondary_tolerance!r}")

    def describe(self) -> str:
        """The rule in words, as recorded with every decision."""
        return (
            f"a candidate becomes champion if its backtest {self.primary} is {_better_word(self.primary)} "
            f"than the champion's and its {self.secondary} is at most {self.secondary_tolerance:.0%} "
            f"{_worse_word(self.secondary)} than the champion's; the first model becomes champion"
        )

    def decide(self, candidate_metrics: dict, champion_metrics: dict | None) -> tuple[bool, str]:
        """(promote?, why) from the backtest metrics of the model itself (not its baselines) of both.

        The candidate's metrics are checked even without a champion, so a first model that lacks them
        cannot become a champion no later candidate can be compared with.
        """
        new = _metric(candidate_metrics, self.primary, "candidate")
        new2 = _metric(candidate_metrics, self.secondary, "candidate")
        if champion_metrics is None:
            return True, "no champion yet: the first model becomes champion"
        old = _metric(champion_metrics, self.primary, "champion")
        old2 = _metric(champion_metrics, self.secondary, "champion")
        if not (new < old if self.primary in LOWER_IS_BETTER else new > old):
            return False, f"{self.primary} {new:.4g} does not beat the champion's {old:.4g}"
        slack = abs(old2) * self.secondary_tolerance
        if self.secondary in LOWER_IS_BETTER:
            limit, too_bad = old2 + slack, new2 > old2 + slack
        else:
            limit, too_bad = old2 - slack, new2 < old2 - slack
        if too_bad:
            return False, (
                f"{self.primary} {new:.4g} beats the champion's {old:.4g}, but {self.secondary} {new2:.4g} "
                f"is {_worse_word(self.secondary)} than the allowed {limit:.4g} (champion {old2:.4g})"
            )
        return True, (
            f"{self.primary} {new:.4g} beats the champion's {old:.4g} and {self.secondary} {new2:.4g} "
            f"is within {self.secondary_tolerance:.0%} of the champion's {old2:.4g}"
        )


DEFAULT_RULE = ChampionRule()


@dataclass(frozen=True)
class PromotionDecision:
    """What `promote_if_better` decided for one version, and why."""

    version: str
    promoted: bool
    reason: str
    previous_champion: str | None
    rule: str


def model_metrics(metadata: dict, source: str) -> dict:
    """The model's own backtest metrics (`backtest.metrics.model`) from metadata; `InputError` if absent."""
    metrics: Any = metadata
    for key in ("backtest", "metrics", "model"):
        metrics = metrics.get(key) if isinstance(metrics, dict) else None
    if not isinstance(metrics, dict):
        raise InputError(f"{source}: no backtest metrics for the model (backtest → metrics → model)")
    return metrics


def _metric(metrics: dict, name: str, whose: str) -> float:
    value = metrics.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"the {whose}'s backtest metric {name!r} must be a finite number, got {value!r}")
    return float(value)


def _better_word(metric: str) -> str:
    return "lower" if metric in LOWER_IS_BETTER else "higher"


def _worse_word(metric: str) -> str:
    return "higher" if metric in LOWER_IS_BETTER else "lower"


def read_model_metadata(model_dir: Path) -> dict:
    """A model directory's metadata.json, checked for a usable "version"; `InputError` names the problem."""
    path = Path(model_dir) / METADATA_FILE
    if not path.is_file():
        raise InputError(f"{path}: no such file; a model directory needs metadata.json")
    try:
        metadata = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(metadata, dict):
        raise InputError(f"{path}: must hold a JSON object")
    version = metadata.get("version")
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise InputError(
            f'{path}: "version" must be a string of letters, digits and . _ : + - (starting with a letter '
            f"or digit, at most 128), got {version!r}"
        )
    return metadata
