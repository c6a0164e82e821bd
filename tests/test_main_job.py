"""The main job end to end: the real function_app on real local services (Azurite, azmlinfsrv, the head-unit
simulator), a small fleet, a few replayed days, and what a person reads at the end.

The expectations are computed here from the simulated fleet (deterministic for its arguments), not taken
from the job's own summary: which batteries the simulator set to reach rated life, how many events the
replayed days hold, which of their records a car could not have sent validly.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest

from shared.config.settings import SettingsError
from shared.core.telemetry import BATTERY_ID, CAR_ID, DATE, InputError
from shared.devtools.azurite import PROJECT_ROOT
from shared.devtools.fleet_simulator import simulate_fleet
from shared.devtools.headunit_simulator import Attempt
from shared.devtools.main_job import (
    acceptable_records,
    alert_check,
    bad_events,
    check_failures,
    day_events,
    delivery_check,
    received_table,
    run_main_job,
    with_bad_events,
)

CARS, START, END, SEED, REPLAY_DAYS = 60, "2015-05-01", "2016-06-30", 4, 4
LAST_ARCHIVED = date.fromisoformat(END) - timedelta(days=REPLAY_DAYS)
REPLAYED = [LAST_ARCHIVED + timedelta(days=offset) for offset in range(1, REPLAY_DAYS + 1)]


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children, grandchildren…), from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        if fields[0] != "Z":  # a zombie has exited; only its exit status is left
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class MainJobRun:
    out: Path
    summary_md: str
    summary: dict
    progress: list[str]
    processes_before: set[int]
    processes_after: set[int]


@pytest.fixture(scope="module")
def main_job(tmp_path_factory) -> MainJobRun:
    out = tmp_path_factory.mktemp("main-job")
    progress: list[str] = []
    before = descendants(os.getpid())
    path = run_main_job(out, cars=CARS, start=START, end=END, seed=SEED, replay_days=REPLAY_DAYS,
                        progress=progress.append)  # fmt: skip
    after = descendants(os.getpid())
    summary = json.loads((out / "summary.json").read_text())
    return MainJobRun(out, path.read_text(), summary, progress, before, after)


@pytest.fixture(scope="module")
def fleet():
    return simulate_fleet(CARS, START, END, SEED)


def replayed_rows(fleet) -> pd.DataFrame:
    day = fleet.telemetry[DATE].dt.normalize()
    return fleet.telemetry[day.isin(pd.to_datetime(REPLAYED))]


# --- end to end -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_battery_the_simulator_set_to_fail_gets_an_alert_on_its_head_unit(main_job, fleet):
    batteries = fleet.batteries
    r = pd.Timestamp(LAST_ARCHIVED)
    reached = batteries["Rated_Life_Reached"]
    due = batteries[(reached > r) & (reached <= r + pd.Timedelta(days=30)) & (batteries["Installed"] <= r)]
    due_keys = set(zip(due[CAR_ID], due["Reported_ID"], strict=True))
    received = [(alert["car_id"], alert["battery_id"]) for alert in main_job.summary["head_units"]]
    assert due_keys, "the test fleet should have batteries reaching rated life in the 30 days after R"
    assert due_keys & set(received), f"no head unit got an alert for any of {sorted(due_keys)}; got {received}"
    assert "got an alert (recall" in main_job.summary_md


# What the test run achieves (4 of 4 due batteries alerted, 5 of 5 alerts right), less one battery or alert.
MIN_RECALL, MIN_RIGHT_SHARE = 0.75, 0.8


@pytest.mark.slow
def test_the_alerts_find_the_due_batteries_and_are_right_by_the_simulators_truth(main_job, fleet):
    batteries = fleet.batteries
    r = pd.Timestamp(LAST_ARCHIVED)
    reached = batteries["Rated_Life_Reached"]
    in_service = (batteries["Installed"] <= r) & (batteries["Replaced"].isna() | (batteries["Replaced"] > r))
    due = batteries[in_service & (reached > r) & (reached <= r + pd.Timedelta(days=30))]
    past = batteries[in_service & (reached <= r)]
    alerted = {(alert["car_id"], alert["battery_id"]) for alert in main_job.summary["head_units"]}
    due_alerted = sum(key in alerted for key in zip(due[CAR_ID], due["Reported_ID"], strict=True))
    assert len(due) >= 3, "the test fleet should have a few batteries due within 30 days after R"
    assert due_alerted / len(due) >= MIN_RECALL, (due_alerted, len(due), main_job.summary["check"]["missed"])
    check = main_job.summary["check"]
    assert (check["due_within_30_days"], check["due_alerted"]) == (len(due), due_alerted)
    right = [alert["right_to_alert"] for alert in main_job.summary["head_units"]]
    assert right and sum(right) / len(right) >= MIN_RIGHT_SHARE, main_job.summary["head_units"]
    # Not every battery alerted: no more batteries than the due and past ones, and one to spare.
    assert len(alerted) <= len(due) + len(past) + 1, sorted(alerted)


@pytest.mark.slow
def test_the_days_to_rated_life_a_car_is_told_agree_with_the_simulators_truth(main_job):
    # From the day the car received the alert to the day the simulator's battery reaches rated life, against
    # what the alert says: the test run is off by -0.1 day on average (worst single alert 1.4 days).
    told, truth = [], []
    for alert in main_job.summary["head_units"]:
        if alert["rated_life_reached"] is not None and alert["days_to_rated_life"] is not None:
            told.append(alert["days_to_rated_life"])
            received = date.fromisoformat(alert["created_at"][:10])
            truth.append((date.fromisoformat(alert["rated_life_reached"]) - received).days)
    assert len(told) >= 3
    errors = [said - real for said, real in zip(told, truth, strict=True)]
    assert abs(sum(errors) / len(errors)) <= 1.0, list(zip(told, truth, strict=True))


@pytest.mark.slow
def test_every_alert_delivered_is_received_once_and_none_within_the_cooldown(main_job):
    check, alerts = main_job.summary["check"], main_job.summary["alerts"]
    received = [alert["alert_id"] for alert in main_job.summary["head_units"]]
    assert len(received) == len(set(received)) == alerts["delivered"] > 0
    for key in ("delivered_not_received", "received_not_delivered", "received_twice", "sent_again",
                "cooldown_breaches"):  # fmt: skip
        assert check[key] == [], (key, check[key])
    assert alerts["suppressed_by_cooldown"] > 0, "the replayed days should re-alert a due battery within the cooldown"
    assert "`--check` (recall ≥ 0.75, right ≥ 0.8, each alert once, cooldown kept): passes." in main_job.summary_md


@pytest.mark.slow
def test_every_queued_alert_is_accounted_for_and_each_car_gets_an_alert_once(main_job):
    alerts = main_job.summary["alerts"]
    assert 0 < alerts["delivered"] <= alerts["queued"]
    assert alerts["delivered"] == alerts["received_by_head_units"] == len(main_job.summary["head_units"])
    handled = sum(alerts[key] for key in ("delivered", "suppressed_by_cooldown", "already_delivered", "rejected",
                                          "malformed", "poisoned"))  # fmt: skip
    assert handled + sum(alerts["held_back_by_feedback"].values()) == alerts["queued"], alerts
    per_car = Counter((alert["car_id"], alert["alert_id"]) for alert in main_job.summary["head_units"])
    assert max(per_car.values()) == 1
    assert alerts["queued_batch"] > 0, "the nightly batch path should queue alerts too"


@pytest.mark.slow
def test_every_event_is_processed_and_the_bad_ones_are_dead_lettered_with_reasons(main_job, fleet):
    events = main_job.summary["events"]
    rows = replayed_rows(fleet)
    cars_per_day = rows.groupby(rows[DATE].dt.normalize())[CAR_ID].nunique()
    injected = events["injected_bad"]
    assert injected == 6
    assert events["delivered"] == cars_per_day.sum() + injected
    assert events["failed_batches"] == []
    bad_records = int((~acceptable_records(rows)).sum())  # blank or impossible values the simulator planted
    assert events["dead_lettered"] == injected + bad_records
    assert events["records_accepted"] == len(rows) - bad_records
    assert all(event["dead_lettered"] and event["reason"] for event in events["injected"]), events["injected"]
    assert events["parked_for_rescoring"] == 0


@pytest.mark.slow
def test_the_apps_counters_agree_with_what_the_stores_the_host_and_the_head_units_saw(main_job):
    """The OpenTelemetry counters (observability, read in memory) against the figures taken elsewhere: dead
    letters listed in Blob, messages the host saw queued, alerts the simulator received."""
    summary = main_job.summary
    counters, events, alerts, scoring = summary["counters"], summary["events"], summary["alerts"], summary["scoring"]
    assert counters["battery.events.processed"] == events["delivered"]
    assert counters["battery.events.dead_lettered"] == events["dead_lettered"]
    assert counters["battery.events.parked"] == events["parked_for_rescoring"] == 0
    scored = scoring["batch_scored"] + scoring["streaming_scored"] - events["scoring_errors"]
    assert counters["battery.batteries.scored"] == scored
    assert counters["battery.alerts.queued"] == alerts["queued"]
    assert counters["battery.alerts.delivered"] == alerts["received_by_head_units"] > 0
    assert counters["battery.alerts.suppressed"] == alerts["suppressed_by_cooldown"] + sum(
        alerts["held_back_by_feedback"].values()
    )
    assert (counters["battery.alerts.rejected"], counters["battery.alerts.poisoned"]) == (0, 0)
    [lag] = counters["battery.events.lag_seconds"]
    assert lag["count"] == events["delivered"]
    assert {point["attributes"]["outcome"] for point in counters["battery.endpoint.latency"]} == {"ok"}
    assert "## Counters" in main_job.summary_md and "`battery.alerts.delivered`" in main_job.summary_md


@pytest.mark.slow
def test_head_units_answer_and_their_answers_hold_back_later_alerts(main_job):
    feedback, alerts = main_job.summary["feedback"], main_job.summary["alerts"]
    assert all(count > 0 for count in feedback["answers"].values()), feedback  # seen, dismissed, booked
    assert feedback["refused"] == 0
    assert alerts["held_back_by_feedback"]["service_booked"] > 0, alerts
    assert feedback["outcome_labels"]["booked"] == feedback["answers"]["service_booked"]
    assert "held back by the owner's answer: service booked" in main_job.summary_md


@pytest.mark.slow
def test_the_summary_reports_the_night_and_the_model(main_job):
    summary = main_job.summary
    assert summary["retrain"]["promoted"] is True
    assert summary["scoring"]["batch_as_of"] == str(LAST_ARCHIVED)
    assert summary["scoring"]["batch_scored"] > 0 and summary["scoring"]["streaming_scored"] > 0
    assert summary["run"]["replayed_days"] == [str(day) for day in REPLAYED]
    for heading in ("## Check against the simulator's truth", "## Alerts received by the simulated head units",
                    "#### Backtest", "#### Data quality"):  # fmt: skip
        assert heading in main_job.summary_md
    assert (main_job.out / "model_report.md").read_text().startswith(f"# Battery forecaster {summary['model_version']}")
    assert (main_job.out / "fleet" / "telemetry.csv").is_file()


@pytest.mark.slow
def test_the_run_writes_the_dashboard_page_with_the_runs_figures(main_job):
    page = (main_job.out / "dashboard.html").read_text()
    shown = dict(re.findall(r'data-metric="([a-z_-]+)"[^>]*>([^<]*)<', page))
    summary = main_job.summary
    assert int(shown["batteries-scored"].replace(",", "")) == summary["scoring"]["batch_scored"] > 0
    assert int(shown["dead_lettered"]) == summary["events"]["dead_lettered"] > 0
    # Each alert row in its state now: delivered ones stay delivered unless their battery was replaced since.
    assert 0 < int(shown["delivered"]) <= summary["alerts"]["delivered"]
    assert f"model {summary['model_version']}" in page


@pytest.mark.slow
def test_no_process_or_port_is_left_behind_and_the_signing_key_is_never_written(main_job):
    assert main_job.processes_after <= main_job.processes_before
    services = main_job.summary["local_services"]
    ports = [*services["azurite_ports"], int(services["scoring_endpoint"].split(":")[2].split("/")[0]),
             int(services["head_unit_gateway"].rsplit(":", 1)[1])]  # fmt: skip
    assert not [port for port in ports if listening(port)]
    assert "HEAD_UNIT_SIGNING_KEY" not in os.environ and "AzureWebJobsStorage" not in os.environ
    # The per-run signing key is 64 hex digits (no id the job writes is that long): not in any output.
    written = [path.read_text() for path in main_job.out.glob("*.*") if path.suffix in (".md", ".json")]
    assert not re.search(r"[0-9a-f]{64}", "\n".join([*written, *main_job.progress]))


def test_a_run_that_fails_stops_every_process_it_started_and_restores_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ALERT_PROBABILITY_THRESHOLD", "5")  # the app refuses it on first use, mid-run
    before = descendants(os.getpid())
    with pytest.raises(SettingsError, match="ALERT_PROBABILITY_THRESHOLD"):
        run_main_job(tmp_path, cars=3, start="2015-01-01", end="2015-06-30", seed=1, replay_days=2)
    assert descendants(os.getpid()) <= before
    assert "AzureWebJobsStorage" not in os.environ and os.environ["ALERT_PROBABILITY_THRESHOLD"] == "5"


# --- the pieces -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"cars": 0}, "--cars must be a whole number"),
        ({"replay_days": 0}, "--replay-days must be a whole number"),
        ({"end": "2016-13-01"}, "--end must be a day as YYYY-MM-DD"),
        ({"start": "2016-05-01", "end": "2016-06-30"}, "training needs at least 120"),
        ({"start": "2014-01-01", "end": "2014-12-31"}, "must start on or after 2015-01-01"),
    ],
)
def test_arguments_that_cannot_make_a_run_are_refused_before_anything_starts(tmp_path, arguments, message):
    chosen = {"cars": 5, "start": START, "end": END, "seed": 1, "replay_days": 3} | arguments
    with pytest.raises(InputError, match=message):
        run_main_job(tmp_path, **chosen)
    assert not any(tmp_path.iterdir())


def test_day_events_are_one_body_per_car_as_the_contract_writes_them():
    rows = pd.DataFrame({
        DATE: pd.to_datetime(["2016-03-01"] * 3), BATTERY_ID: ["7", "7", "8"], CAR_ID: ["CAR-7", "CAR-7", "CAR-8"],
        "Battery_Age_Days": [100.0, 100.0, 5.0], "Number_Of_Trips": [5.0, 5.0, 2.0],
        "Daily_Trip_Duration": [61.2, 61.2, float("nan")], "Daily_Cycles_Used": [0.15, 0.15, 0.05],
        "Lifetime_Cycles_Used": [120.5, 120.5, 1.0], "Battery_Rated_Cycles": [200.0, 200.0, 200.0],
    })  # fmt: skip
    bodies, keys = day_events(rows)
    assert keys == ["CAR-7", "CAR-8"]
    duplicate, single = (json.loads(body) for body in bodies)
    assert isinstance(duplicate, list) and len(duplicate) == 2  # a car's duplicate row travels as a backlog
    assert single["Date"] == "2016-03-01" and single["Daily_Trip_Duration"] is None
    assert single["Number_Of_Trips"] == 2 and isinstance(single["Number_Of_Trips"], int)


def test_bad_events_are_spread_among_the_good_ones():
    record = {"Date": "2016-03-01", "Battery_ID": "7", "Car_ID": "CAR-7", "Battery_Age_Days": 100,
              "Number_Of_Trips": 5, "Daily_Trip_Duration": 61.2, "Daily_Cycles_Used": 0.15,
              "Lifetime_Cycles_Used": 120.5, "Battery_Rated_Cycles": 200}  # fmt: skip
    bad = bad_events(record)
    good = [f"good {n}".encode() for n in range(20)]
    bodies, keys = with_bad_events(good, [f"CAR-{n}" for n in range(20)], bad)
    positions = [bodies.index(event.body) for event in bad]
    assert len(bodies) == len(keys) == 26 and positions == sorted(positions)
    assert positions[0] > 0 and positions[-1] < len(bodies) - 1
    assert [b for b in bodies if b.startswith(b"good")] == good


def test_the_check_maps_an_alert_to_the_real_battery_even_after_a_silent_replacement():
    batteries = pd.DataFrame({
        BATTERY_ID: ["1", "9", "2", "3"], CAR_ID: ["C1", "C1", "C2", "C3"], "Reported_ID": ["1", "1", "2", "3"],
        "Installed": pd.to_datetime(["2015-01-01", "2016-06-10", "2015-01-01", "2015-01-01"]),
        "Replaced": pd.to_datetime(["2016-06-10", None, None, None]),
        "Rated_Life_Reached": pd.to_datetime(["2016-06-01", None, "2016-07-10", "2016-06-20"]),
    })  # fmt: skip

    def alert(alert_id: str, car: str, battery: str) -> dict:
        return {"alert_id": alert_id, "car_id": car, "battery_id": battery, "severity": "high",
                "failure_probability_30d": 0.9, "days_to_rated_life": None, "created_at": "2016-06-27T03:00:00Z",
                "message": "…"}  # fmt: skip

    # C1's battery 1 was silently replaced by battery 9 (same reported id), which is far from rated life.
    received = received_table({"C1": [alert("a", "C1", "1")], "C2": [alert("b", "C2", "2")]}, batteries)
    assert received["real_battery_id"].tolist() == ["9", "2"]
    assert received["right_to_alert"].tolist() == [False, True]
    assert received["rated_life_reached"].tolist() == [None, "2016-07-10"]
    check = alert_check(batteries, received, date(2016, 6, 26))
    assert (check["due_within_30_days"], check["due_alerted"], check["recall"]) == (1, 1, 1.0)
    assert (check["past_rated_life"], check["past_alerted"], check["alerts_right"]) == (1, 0, 1)
    nothing = alert_check(batteries, received_table({}, batteries), date(2016, 6, 26))
    assert nothing["recall"] == 0.0 and nothing["missed"] == [
        {"car_id": "C2", "battery_id": "2", "rated_life_reached": "2016-07-10"}
    ]


def test_the_delivery_check_finds_alerts_sent_twice_lost_or_within_the_cooldown():
    def alert(alert_id: str, car: str, severity: str, created_at: str) -> dict:
        return {"alert_id": alert_id, "car_id": car, "battery_id": "1", "severity": severity, "created_at": created_at}

    received = pd.DataFrame([
        alert("a", "C1", "high", "2016-06-01T03:00:00Z"),
        alert("b", "C1", "critical", "2016-06-02T23:00:00Z"),  # escalated: allowed within the cooldown
        alert("c", "C1", "critical", "2016-06-05T23:00:00Z"),  # 3 days after b, not worse: a breach
        alert("d", "C2", "high", "2016-06-01T03:00:00Z"),
        alert("e", "C2", "high", "2016-06-08T03:00:00Z"),  # 7 days after d: the cooldown is over
    ])  # fmt: skip
    outcomes = [{"alert_id": name, "state": "delivered"} for name in "abcdf"]
    outcomes.append({"alert_id": "g", "state": "suppressed"})
    attempts = [Attempt("C1", "a", 201), Attempt("C1", "a", 200), Attempt("C2", "d", 503), Attempt("C2", "d", 201)]
    check = delivery_check(outcomes, received, attempts, cooldown_days=7)
    assert check["cooldown_breaches"] == [{"car_id": "C1", "alert_id": "c"}]
    assert (check["delivered_not_received"], check["received_not_delivered"]) == (["f"], ["e"])
    assert (check["sent_again"], check["received_twice"]) == (["a"], [])
    twice = delivery_check(outcomes, pd.concat([received, received.head(1)]), [], cooldown_days=0)
    assert (twice["received_twice"], twice["cooldown_breaches"]) == (["a"], [])


def test_check_failures_name_what_fails_and_a_run_with_nothing_due_fails():
    passing = {"recall": 0.75, "due_alerted": 3, "due_within_30_days": 4, "alerts_received": 5, "alerts_right": 4,
               "received_twice": [], "sent_again": [], "delivered_not_received": [], "received_not_delivered": [],
               "cooldown_breaches": []}  # fmt: skip
    assert check_failures(passing) == []
    assert check_failures(passing | {"recall": 0.5, "due_alerted": 2}) == ["recall 2/4 is below 0.75"]
    assert check_failures(passing | {"alerts_right": 3}) == ["3 of 5 alerts right, below 0.8"]
    assert check_failures(passing | {"recall": None}) == ["no battery was due to reach rated life within 30 days: "
                                                          "nothing to check"]  # fmt: skip
    assert check_failures(passing | {"received_twice": ["a"], "cooldown_breaches": [{}]}) == [
        "1 alert(s) received twice",
        "1 alert(s) received within the cooldown",
    ]


# --- the README's main-job command from a clean clone -----------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("RUN_CLEAN_CLONE") != "1",
    reason="opt-in (RUN_CLEAN_CLONE=1): clones the committed repo and runs `make run`, which installs its own "
    ".venv and node_modules from PyPI and npm (several minutes)",
)
def test_make_run_from_a_clean_clone(tmp_path):
    head = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "--verify", "--quiet", "HEAD"],
                          capture_output=True, text=True)  # fmt: skip
    if head.returncode != 0:
        pytest.skip(f"{PROJECT_ROOT} has no commit yet: a clone would be empty")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(PROJECT_ROOT), str(clone)], check=True)
    environment = {name: value for name, value in os.environ.items() if name not in ("VIRTUAL_ENV", "PYTHONPATH")}
    result = subprocess.run(
        ["make", "run", f"CARS={CARS}", f"START={START}", f"END={END}", f"SEED={SEED}", f"REPLAY_DAYS={REPLAY_DAYS}"],
        cwd=clone, env=environment, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    assert result.returncode == 0, f"make run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    summary = json.loads((clone / "data" / "run" / "summary.json").read_text())
    assert summary["check"]["due_alerted"] >= 1
    assert summary["alerts"]["delivered"] == summary["alerts"]["received_by_head_units"] >= 1
    assert "## Alerts received by the simulated head units" in result.stdout
