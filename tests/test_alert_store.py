"""Alert store against a real Azurite: records round trip, claims exclude each other, latest stays latest."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from shared.adapters import alert_store
from shared.adapters.alert_store import (
    DELIVERED,
    DELIVERING,
    FAILED,
    QUEUED,
    REJECTED,
    SUPPRESSED,
    ClaimLostError,
    claim_delivery,
    get_alert,
    list_alerts,
    read_latest,
    record_delivered,
    record_given_up,
    record_latest_delivered,
    record_outcome,
    record_queued,
    record_suppressed,
)
from shared.core.alerts import FIRST
from shared.core.telemetry import InputError

NOW = datetime(2017, 3, 20, 3, 0, tzinfo=UTC)


def test_a_queued_alert_round_trips_with_its_state(alert_table, make_alert):
    alert = make_alert()
    assert record_queued(alert_table, alert, NOW) is True
    assert record_queued(alert_table, alert | {"severity": "critical"}, NOW + timedelta(hours=1)) is False

    record = get_alert(alert_table, alert["car_id"], alert["alert_id"])
    assert {k: record[k] for k in alert} == alert
    assert record | dict.fromkeys(alert) == dict.fromkeys(alert) | {
        "state": QUEUED, "reason": None, "attempts": 0, "last_error": None,
        "queued_at": "2017-03-20T03:00:00Z", "updated_at": "2017-03-20T03:00:00Z", "delivered_at": None,
        "seen_at": None, "dismissed_at": None, "snoozed_at": None, "snoozed_until": None, "booked_at": None,
        "booking_ref": None, "service_at": None, "release_at": None,
        "lifecycle": [{"step": QUEUED, "at": "2017-03-20T03:00:00Z"}],
    }  # fmt: skip
    assert get_alert(alert_table, alert["car_id"], "0" * 32) is None


def test_claim_then_delivered_is_final(alert_table, make_alert):
    alert = make_alert()
    record_queued(alert_table, alert, NOW)
    claim = claim_delivery(alert_table, alert, FIRST, NOW)
    assert (claim.claimed, claim.state, claim.attempts) == (True, DELIVERING, 1)
    record_outcome(alert_table, claim, DELIVERED, NOW + timedelta(seconds=2))

    record = get_alert(alert_table, alert["car_id"], alert["alert_id"])
    assert (record["state"], record["reason"], record["attempts"]) == (DELIVERED, FIRST, 1)
    assert record["delivered_at"] == "2017-03-20T03:00:02Z" and record["queued_at"] == "2017-03-20T03:00:00Z"
    later = claim_delivery(alert_table, alert, FIRST, NOW + timedelta(days=1))
    assert (later.claimed, later.state) == (False, DELIVERED)


def test_a_failed_attempt_keeps_its_error_and_can_be_claimed_again(alert_table, make_alert):
    alert = make_alert()
    first = claim_delivery(alert_table, alert, FIRST, NOW)
    record_outcome(alert_table, first, FAILED, NOW, error="gateway answered 503")
    record = get_alert(alert_table, alert["car_id"], alert["alert_id"])
    assert (record["state"], record["attempts"], record["last_error"]) == (FAILED, 1, "gateway answered 503")

    second = claim_delivery(alert_table, alert, FIRST, NOW + timedelta(seconds=30))
    assert (second.claimed, second.attempts) == (True, 2)
    record_outcome(alert_table, second, REJECTED, NOW + timedelta(seconds=31), error="gateway answered 404")
    assert claim_delivery(alert_table, alert, FIRST, NOW + timedelta(days=1)).state == REJECTED


def test_a_claim_is_a_lease_and_a_holder_that_lost_it_cannot_overwrite(alert_table, make_alert):
    alert = make_alert()
    holder = claim_delivery(alert_table, alert, FIRST, NOW, lease=timedelta(seconds=60))
    during = claim_delivery(alert_table, alert, FIRST, NOW + timedelta(seconds=59))
    assert (during.claimed, during.state) == (False, DELIVERING)

    successor = claim_delivery(alert_table, alert, FIRST, NOW + timedelta(seconds=61))
    assert (successor.claimed, successor.attempts) == (True, 2)
    with pytest.raises(ClaimLostError, match=alert["alert_id"]):
        record_outcome(alert_table, holder, FAILED, NOW + timedelta(seconds=62), error="late")
    record_outcome(alert_table, successor, DELIVERED, NOW + timedelta(seconds=63))
    assert get_alert(alert_table, alert["car_id"], alert["alert_id"])["state"] == DELIVERED


def test_giving_up_is_recorded_but_leaves_a_delivery_or_a_live_claim_alone(alert_table, make_alert):
    # One car each: an alert in flight holds its car's cooldown, which would keep the others from a claim.
    failed, delivered, in_flight, unseen = (make_alert(car_id=f"CAR-{n}", day=day) for n, day in enumerate(
        ("2017-03-16", "2017-03-17", "2017-03-18", "2017-03-19")))  # fmt: skip
    record_outcome(alert_table, claim_delivery(alert_table, failed, FIRST, NOW), FAILED, NOW, error="503")
    record_outcome(alert_table, claim_delivery(alert_table, delivered, FIRST, NOW), DELIVERED, NOW)
    claim_delivery(alert_table, in_flight, FIRST, NOW, lease=timedelta(seconds=60))
    later = NOW + timedelta(seconds=30)

    assert [record_given_up(alert_table, a, "gave up", later) for a in (failed, delivered, in_flight, unseen)] == [
        True, False, False, True,
    ]  # fmt: skip
    states = [get_alert(alert_table, a["car_id"], a["alert_id"]) for a in (failed, delivered, in_flight, unseen)]
    assert [(r["state"], r["reason"]) for r in states] == [
        (FAILED, "gave up"), (DELIVERED, FIRST), (DELIVERING, FIRST), (FAILED, "gave up"),
    ]  # fmt: skip
    assert states[0]["last_error"] == "503"  # the gateway's last words are kept
    assert claim_delivery(alert_table, failed, FIRST, later).claimed  # a replayed message may still deliver


class WritesWaitForEveryone:
    """The real alerts table, except that each thread's first write waits until every contender has come to
    its first write: all have read what they read, none has written. That is the interleaving a racy
    read-then-write loses every time (each read sees the row free), so a race test is decided, not lucky.
    The winner never records an outcome here, so it holds its claim open while the others try."""

    _WRITES = frozenset({"create_entity", "update_entity", "upsert_entity", "delete_entity", "submit_transaction"})

    def __init__(self, table, contenders: int) -> None:
        self._table = table
        self._everyone = threading.Barrier(contenders, timeout=30)
        self._wrote = threading.local()
        self._client = _Gated(table._client, {"send_request"}, self._first_write)  # shared.adapters.tables

    def _first_write(self) -> None:
        if not getattr(self._wrote, "done", False):
            self._wrote.done = True
            self._everyone.wait()

    def __getattr__(self, name: str):
        return getattr(_Gated(self._table, self._WRITES, self._first_write), name)


class _Gated:
    def __init__(self, target, names, gate) -> None:
        self._target, self._names, self._gate = target, names, gate

    def __getattr__(self, name: str):
        attribute = getattr(self._target, name)
        if name not in self._names:
            return attribute

        def gated(*args, **kwargs):
            self._gate()
            return attribute(*args, **kwargs)

        return gated


def contend(table, alerts: list[dict], now: datetime) -> list:
    """Claim each alert on its own thread at once; each thread's Claim, or the exception it raised."""
    outcomes: list = [None] * len(alerts)

    def claim(position: int) -> None:
        try:
            outcomes[position] = claim_delivery(table, alerts[position], FIRST, now)
        except Exception as error:  # reported to the test, which says what it expects
            outcomes[position] = error

    threads = [threading.Thread(target=claim, args=(position,)) for position in range(len(alerts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


@pytest.mark.parametrize("earlier_state", [None, FAILED])
def test_concurrent_claims_of_one_alert_let_exactly_one_through(alert_table, make_alert, earlier_state):
    alert = make_alert()
    if earlier_state == FAILED:
        record_outcome(alert_table, claim_delivery(alert_table, alert, FIRST, NOW), FAILED, NOW, error="503")
    contenders = 6

    claims = contend(WritesWaitForEveryone(alert_table, contenders), [alert] * contenders, NOW + timedelta(minutes=5))

    assert all(isinstance(claim, alert_store.Claim) for claim in claims), claims
    assert len(claims) == contenders
    assert sum(claim.claimed for claim in claims) == 1
    assert {claim.state for claim in claims if not claim.claimed} <= {DELIVERING}


def test_concurrent_claims_of_two_alerts_for_one_car_let_one_hold_the_cooldown(alert_table, make_alert):
    alerts = [make_alert(day="2017-03-18"), make_alert(day="2017-03-19")]  # day D and D+1, same car and type

    outcomes = contend(WritesWaitForEveryone(alert_table, 2), alerts, NOW)

    [winner] = [outcome for outcome in outcomes if isinstance(outcome, alert_store.Claim)]
    [loser] = [alert for alert, outcome in zip(alerts, outcomes, strict=True) if outcome is not winner]
    assert winner.claimed
    assert [type(outcome) for outcome in outcomes if outcome is not winner] == [alert_store.LatestChanged]
    # Deciding again, the loser finds the car's cooldown held until the winner's outcome or its lease's end.
    assert claim_delivery(alert_table, loser, FIRST, NOW).state == alert_store.CAR_BUSY
    later = NOW + alert_store.DEFAULT_LEASE + timedelta(seconds=1)
    assert claim_delivery(alert_table, loser, FIRST, later).claimed  # a dead holder's hold runs out


def test_an_outcome_releases_the_cars_cooldown_hold(alert_table, make_alert):
    first, second = make_alert(day="2017-03-18"), make_alert(day="2017-03-19")
    holder = claim_delivery(alert_table, first, FIRST, NOW)
    assert read_latest(alert_table, first["car_id"], first["type"]).held_by == first["alert_id"]
    assert claim_delivery(alert_table, second, FIRST, NOW).state == alert_store.CAR_BUSY

    record_outcome(alert_table, holder, alert_store.UNKNOWN, NOW, error="read timeout")

    latest = read_latest(alert_table, first["car_id"], first["type"])
    assert (latest.alert, latest.held_by) == (None, None)  # unknown is not a delivery the cooldown counts
    assert claim_delivery(alert_table, second, FIRST, NOW).claimed


def test_an_unknown_outcome_is_claimable_and_a_give_up_after_it_says_unknown(alert_table, make_alert):
    alert = make_alert()
    record_outcome(alert_table, claim_delivery(alert_table, alert, FIRST, NOW), alert_store.UNKNOWN, NOW,
                   error="gateway did not answer within 15s")  # fmt: skip
    again = claim_delivery(alert_table, alert, FIRST, NOW + timedelta(minutes=1))
    assert (again.claimed, again.attempts) == (True, 2)
    record_outcome(alert_table, again, FAILED, NOW + timedelta(minutes=1), error="gateway answered 503")

    assert record_given_up(alert_table, alert, "gave up", NOW + timedelta(minutes=2))

    record = get_alert(alert_table, alert["car_id"], alert["alert_id"])
    assert (record["state"], record["reason"], record["last_error"]) == (
        alert_store.UNKNOWN, "gave up", "gateway answered 503")  # fmt: skip


def test_suppression_is_recorded_but_never_overwrites_a_delivery(alert_table, make_alert):
    held_back = make_alert(day="2017-03-18")
    assert record_suppressed(alert_table, held_back, "cooldown", NOW) is True
    record = get_alert(alert_table, held_back["car_id"], held_back["alert_id"])
    assert (record["state"], record["reason"]) == (SUPPRESSED, "cooldown")

    sent = make_alert(day="2017-03-19")
    record_outcome(alert_table, claim_delivery(alert_table, sent, FIRST, NOW), DELIVERED, NOW)
    assert record_suppressed(alert_table, sent, "cooldown", NOW + timedelta(days=1)) is False
    assert get_alert(alert_table, sent["car_id"], sent["alert_id"])["state"] == DELIVERED

    in_flight = make_alert(day="2017-03-20")
    claim_delivery(alert_table, in_flight, FIRST, NOW)
    assert record_suppressed(alert_table, in_flight, "cooldown", NOW) is False


def test_latest_delivered_follows_delivery_time_per_car_and_type(alert_table, make_alert):
    car = "CAR-00017"
    assert read_latest(alert_table, car, "battery_end_of_life").alert is None
    first, second = make_alert(day="2017-03-10"), make_alert(day="2017-03-19", days_left=5.0)
    record_latest_delivered(alert_table, first, NOW - timedelta(days=9))
    record_latest_delivered(alert_table, second, NOW)
    record_latest_delivered(alert_table, first, NOW - timedelta(days=1))  # a late write of an older delivery
    assert read_latest(alert_table, car, "battery_end_of_life").alert == {
        "alert_id": second["alert_id"], "car_id": car, "battery_id": "17", "type": "battery_end_of_life",
        "severity": "critical", "created_at": "2017-03-20T03:00:00Z", "delivered_at": "2017-03-20T03:00:00Z",
    }  # fmt: skip
    assert read_latest(alert_table, car, "component_compliance").alert is None
    assert read_latest(alert_table, "CAR-00018", "battery_end_of_life").alert is None


@pytest.mark.parametrize("earlier", [False, True])
def test_an_older_delivery_held_between_its_read_and_its_write_does_not_replace_a_newer_one(
    alert_table, make_alert, earlier
):
    """The interleaving a read-compare-write without the ETag check loses every time: the older delivery
    reads the row (empty, or an earlier delivery), is held at its write while the newer one records itself
    completely, then writes."""
    oldest, older, newer = (make_alert(day=day) for day in ("2017-03-01", "2017-03-18", "2017-03-19"))
    if earlier:
        record_latest_delivered(alert_table, oldest, NOW - timedelta(days=1))
    read_done, newer_done = threading.Event(), threading.Event()

    def hold_until_the_newer_is_recorded() -> None:
        read_done.set()
        assert newer_done.wait(timeout=60), "the newer delivery never finished"

    held = _Gated(alert_table, WritesWaitForEveryone._WRITES, hold_until_the_newer_is_recorded)
    writer = threading.Thread(target=record_latest_delivered, args=(held, older, NOW))
    writer.start()
    assert read_done.wait(timeout=60), "the older delivery never came to its write"
    record_latest_delivered(alert_table, newer, NOW + timedelta(hours=1))
    newer_done.set()
    writer.join()

    latest = read_latest(alert_table, "CAR-00017", "battery_end_of_life").alert
    assert (latest["alert_id"], latest["delivered_at"]) == (newer["alert_id"], "2017-03-20T04:00:00Z")


def test_a_delivery_records_its_outcome_and_the_latest_row_together(alert_table, make_alert):
    alert = make_alert()
    record_queued(alert_table, alert, NOW)
    seen = read_latest(alert_table, alert["car_id"], alert["type"])
    assert (seen.alert, seen.etag) == (None, None)
    claim = claim_delivery(alert_table, alert, FIRST, NOW, seen)

    record_delivered(alert_table, claim, alert, NOW + timedelta(seconds=2))

    record = get_alert(alert_table, alert["car_id"], alert["alert_id"])
    assert (record["state"], record["delivered_at"], record["queued_at"]) == (
        DELIVERED, "2017-03-20T03:00:02Z", "2017-03-20T03:00:00Z")  # fmt: skip
    assert read_latest(alert_table, alert["car_id"], alert["type"]).alert["alert_id"] == alert["alert_id"]
    again = read_latest(alert_table, alert["car_id"], alert["type"])
    assert again.alert["delivered_at"] == "2017-03-20T03:00:02Z" and again.etag is not None


def test_a_latest_row_written_since_it_was_read_still_ends_with_the_latest_delivery(alert_table, make_alert):
    older, newer, oldest = (make_alert(day=day) for day in ("2017-03-18", "2017-03-19", "2017-03-10"))
    seen = read_latest(alert_table, older["car_id"], older["type"])
    record_latest_delivered(alert_table, newer, NOW + timedelta(hours=1))  # another delivery, after the read
    with pytest.raises(alert_store.LatestChanged):  # a claim on a stale read of the cooldown is refused...
        claim_delivery(alert_table, older, FIRST, NOW, seen)
    claim = claim_delivery(alert_table, older, FIRST, NOW)
    record_latest_delivered(alert_table, newer, NOW + timedelta(hours=2))  # ...and a late writer past the hold

    record_delivered(alert_table, claim, older, NOW)

    assert get_alert(alert_table, older["car_id"], older["alert_id"])["state"] == DELIVERED
    assert read_latest(alert_table, older["car_id"], older["type"]).alert["alert_id"] == newer["alert_id"]
    seen = read_latest(alert_table, oldest["car_id"], oldest["type"])  # a later delivery seen: kept as latest
    record_delivered(alert_table, claim_delivery(alert_table, oldest, FIRST, NOW, seen), oldest, NOW)
    assert get_alert(alert_table, oldest["car_id"], oldest["alert_id"])["state"] == DELIVERED
    assert read_latest(alert_table, oldest["car_id"], oldest["type"]).alert["alert_id"] == newer["alert_id"]


def test_a_delivery_whose_claim_was_taken_over_records_neither_row(alert_table, make_alert):
    alert = make_alert()
    seen = read_latest(alert_table, alert["car_id"], alert["type"])
    holder = claim_delivery(alert_table, alert, FIRST, NOW, seen, lease=timedelta(seconds=60))
    taker = claim_delivery(alert_table, alert, FIRST, NOW + timedelta(seconds=61))
    assert taker.claimed

    with pytest.raises(ClaimLostError, match="claimed by another delivery"):
        record_delivered(alert_table, holder, alert, NOW + timedelta(seconds=62))

    assert get_alert(alert_table, alert["car_id"], alert["alert_id"])["state"] == DELIVERING
    assert read_latest(alert_table, alert["car_id"], alert["type"]).alert is None, "all or nothing"


def test_list_alerts_gives_one_cars_alerts_newest_first_without_bookkeeping_rows(alert_table, make_alert):
    older, newer = make_alert(day="2017-03-18"), make_alert(day="2017-03-19")
    newer["created_at"] = "2017-03-21T03:00:00Z"
    record_queued(alert_table, older, NOW)
    record_outcome(alert_table, claim_delivery(alert_table, newer, FIRST, NOW), DELIVERED, NOW)
    record_latest_delivered(alert_table, newer, NOW)
    record_queued(alert_table, make_alert(car_id="CAR-00018"), NOW)

    listed = list_alerts(alert_table, "CAR-00017")
    assert [(r["alert_id"], r["state"]) for r in listed] == [(newer["alert_id"], DELIVERED),
                                                              (older["alert_id"], QUEUED)]  # fmt: skip
    assert list_alerts(alert_table, "CAR-99999") == []


@pytest.mark.parametrize("car_id", ["CAR/17", "CAR#17", "CAR?17", "CAR\\17", "CAR\n17", ""])
def test_car_ids_table_storage_cannot_key_are_named(alert_table, make_alert, car_id):
    with pytest.raises(InputError, match="car_id"):
        record_queued(alert_table, make_alert() | {"car_id": car_id}, NOW)


def test_only_outcomes_of_held_claims_are_recorded(alert_table, make_alert):
    alert = make_alert()
    holder = claim_delivery(alert_table, alert, FIRST, NOW)
    with pytest.raises(ValueError, match="outcome must be one of"):
        record_outcome(alert_table, holder, QUEUED, NOW)
    loser = claim_delivery(alert_table, alert, FIRST, NOW)
    with pytest.raises(ValueError, match="was not claimed"):
        record_outcome(alert_table, loser, DELIVERED, NOW)
    assert alert_store.get_alert(alert_table, alert["car_id"], alert["alert_id"])["state"] == DELIVERING
