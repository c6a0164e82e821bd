"""Deduplication of archived telemetry: one row per battery and record time, the newest copy winning.

The archive may hold a record more than once (a redelivered batch under a new batch id, a compaction
interrupted between writing its output and deleting its sources); readers apply this, so such copies
never reach preparation twice.
"""

from __future__ import annotations

import pandas as pd

from shared.core.telemetry import BATTERY_ID, DATE

ARCHIVED_AT = "Archived_At"  # when the row's batch was written to the archive (UTC, naive)
DEDUP_KEY = [BATTERY_ID, DATE]  # DATE keeps its time: the two 12-hour rows of an old car are distinct


def latest_written(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per DEDUP_KEY: the one with the latest ARCHIVED_AT, the later row on a tie (file order)."""
    ordered = frame.sort_values(ARCHIVED_AT, kind="stable")
    return ordered.drop_duplicates(DEDUP_KEY, keep="last")
