"""The balance engine's operator side through the real API and database: the balance
view with decisions and command outcomes, the paged ledger, the operator's list of
protected customers and held consumption."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from tests.vending.balance.operator_world import MORNING, BalanceWorld, make_balance_world
from vending.models import HeldConsumption, LedgerEntry
from vending.models_balance import OperatorReview

AFTER_GRACE = MORNING + timedelta(minutes=31)


@pytest.fixture
def world(session_factory: sessionmaker[Session]) -> Iterator[BalanceWorld]:
    yield from make_balance_world(session_factory)


def _ledger_sum(world: BalanceWorld) -> Decimal:
    with world.session_factory() as session:
        return Decimal(session.scalar(select(func.sum(LedgerEntry.amount_minor))) or 0) / 100


def test_the_balance_view_shows_the_ledger_sum_alerts_and_the_disconnect_command_state(
    world: BalanceWorld,
) -> None:
    number = world.central_customer(1, "20.00")
    world.exhaust(number)
    world.run_engine(AFTER_GRACE)

    answer = world.get(f"/accounts/{number}/balance", "clerk")

    assert answer.status_code == 200, answer.text
    view = answer.json()
    assert Decimal(view["balance"]) == _ledger_sum(world) < 0
    assert view["last_top_up"] == "20.00"
    assert "0" in view["alerts_sent_percent"]
    assert {"low_balance_0", "disconnect"} <= {n["kind"] for n in view["notifications"]}
    assert view["supply_as_decided"] == "disconnected"
    assert view["exhausted_since"] is not None
    latest, earlier = view["decisions"][:2]
    assert (latest["action"], earlier["action"]) == ("disconnect", "defer")
    assert latest["reason"] == "balance exhausted and grace period over"
    command = latest["command"]
    assert command["name"] == "disconnect"
    assert command["state"] == world.queue.status(command["id"]).state.value == "queued"
    assert earlier["command"] is None


def test_an_account_never_seen_by_the_engine_shows_its_ledger_and_a_connected_supply(
    world: BalanceWorld,
) -> None:
    number = world.central_customer(2, "50.00")
    view = world.get(f"/accounts/{number}/balance", "supervisor").json()
    assert view["balance"] == "50.00"
    assert view["supply_as_decided"] == "connected"
    assert view["decisions"] == []


def test_an_unknown_account_answers_account_not_found(world: BalanceWorld) -> None:
    answer = world.get("/accounts/NOPE-1/balance", "clerk")
    assert answer.status_code == 404
    assert answer.json()["detail"]["code"] == "account_not_found"


def test_the_ledger_pages_newest_first_without_gaps_or_repeats(world: BalanceWorld) -> None:
    number = world.central_customer(3, "100.00")
    meter_id = world.meter_id(number)
    for n in range(7):
        world.stream.add(meter_id, MORNING - timedelta(hours=1) + n * timedelta(minutes=15), "0.1")
    world.run_engine(MORNING)

    seen: list[int] = []
    before: int | None = None
    while True:
        params = {"limit": 3} | ({"before_id": before} if before else {})
        page = world.get(f"/accounts/{number}/ledger", "clerk", params=params).json()
        seen += [e["id"] for e in page["entries"]]
        before = page["next_before_id"]
        if before is None:
            break
    assert seen == sorted(seen, reverse=True)
    with world.session_factory() as session:
        assert sorted(seen) == sorted(session.scalars(select(LedgerEntry.id)).all())
    assert len(seen) == 8  # the top-up and seven intervals


def test_a_ledger_page_size_out_of_range_is_refused(world: BalanceWorld) -> None:
    number = world.central_customer(4, "10.00")
    answer = world.get(f"/accounts/{number}/ledger", "clerk", params={"limit": 0})
    assert answer.status_code == 422
    assert answer.json()["detail"]["code"] == "invalid_request"


def test_a_protected_exhausted_customer_is_listed_with_reason_and_since_when(
    world: BalanceWorld,
) -> None:
    number = world.central_customer(5, "20.00", protection="life_support")
    world.central_customer(6, "500.00", protection="hospital")  # protected but in credit
    world.exhaust(number)
    world.run_engine(AFTER_GRACE + timedelta(hours=3))

    listed = world.get("/balance/operator-list", "supervisor").json()

    assert [e["account_number"] for e in listed] == [number]
    entry = listed[0]
    assert "protected (life_support)" in entry["reason"]
    assert entry["listed_since"] == MORNING.isoformat()
    assert entry["customer"]["protection"] == "life_support"
    assert Decimal(entry["balance"]) < 0
    assert entry["acknowledged"] is False
    assert world.queue.list_for_meter(world.meter_id(number)) == []  # never disconnected


def test_an_operator_acknowledges_a_listed_customer_and_it_is_audited(
    world: BalanceWorld,
) -> None:
    number = world.central_customer(7, "20.00", protection="hospital")
    world.exhaust(number)
    note = world.post(
        f"/balance/operator-list/{number}/reviews",
        "supervisor",
        {"action": "note", "note": "Called the clinic: paying tomorrow"},
    )
    ack = world.post(f"/balance/operator-list/{number}/reviews", "admin", {"action": "acknowledge"})

    assert note.status_code == ack.status_code == 201, ack.text
    entry = world.get("/balance/operator-list", "supervisor").json()[0]
    assert entry["acknowledged"] is True
    assert [r["action"] for r in entry["reviews"]] == ["acknowledge", "note"]
    assert entry["reviews"][1]["note"] == "Called the clinic: paying tomorrow"
    assert world.get("/balance/operator-list?unacknowledged=true", "supervisor").json() == []
    assert world.audited("balance.operator_list.note") == 1
    assert world.audited("balance.operator_list.acknowledge") == 1


@pytest.mark.parametrize(
    ("review", "code", "http"),
    [
        ({"action": "note", "note": "  "}, "reason_required", 422),
        ({"action": "disconnect"}, "invalid_request", 422),
        ({"action": "acknowledge", "extra": 1}, "invalid_request", 422),
    ],
)
def test_a_bad_review_is_refused_and_stores_nothing(
    world: BalanceWorld, review: dict[str, object], code: str, http: int
) -> None:
    number = world.central_customer(8, "20.00", protection="priority")
    world.exhaust(number)
    answer = world.post(f"/balance/operator-list/{number}/reviews", "supervisor", review)
    assert answer.status_code == http
    assert answer.json()["detail"]["code"] == code
    with world.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(OperatorReview)) == 0


def test_reviewing_an_account_that_is_not_listed_is_refused(world: BalanceWorld) -> None:
    number = world.central_customer(9, "20.00")  # in credit, not protected
    answer = world.post(
        f"/balance/operator-list/{number}/reviews", "supervisor", {"action": "acknowledge"}
    )
    assert answer.status_code == 409
    assert answer.json()["detail"]["code"] == "not_on_operator_list"
    assert world.audited("balance.operator_list.acknowledge") == 0


def test_a_clerk_may_read_a_balance_but_not_the_operator_list(world: BalanceWorld) -> None:
    number = world.central_customer(11, "20.00")
    assert world.get(f"/accounts/{number}/balance", "clerk").status_code == 200
    assert world.get(f"/accounts/{number}/balance", "technician").status_code == 403
    assert world.get("/balance/operator-list", "clerk").status_code == 403
    assert world.get("/balance/held-consumption", "clerk").status_code == 403
    assert world.get("/balance/operator-list", "technician").status_code == 403


def test_held_consumption_is_listed_and_resolved_once_with_a_note(world: BalanceWorld) -> None:
    number = world.central_customer(10, "100.00")
    world.stream.add(world.meter_id(number), MORNING - timedelta(hours=1), "9.0", "flagged")
    world.run_engine(MORNING)

    held = world.get("/balance/held-consumption", "supervisor").json()
    assert len(held) == 1 and "flagged reading" in held[0]["reason"]
    assert held[0]["meter_number"] == world.meter_number(number)
    held_id = held[0]["id"]
    path = f"/balance/held-consumption/{held_id}/resolution"
    done = world.post(path, "supervisor", {"note": "Spike confirmed as a meter fault"})
    again = world.post(path, "admin", {"note": "second try"})

    assert done.status_code == 200, done.text
    assert done.json()["resolution_note"] == "Spike confirmed as a meter fault"
    assert done.json()["resolved_by"].startswith("supervisor-")
    assert again.status_code == 409 and again.json()["detail"]["code"] == "already_resolved"
    assert world.get("/balance/held-consumption", "supervisor").json() == []
    resolved = world.get("/balance/held-consumption?status=resolved", "admin").json()
    assert [h["id"] for h in resolved] == [held_id]
    assert world.audited("balance.held_consumption.resolve") == 1
    with world.session_factory() as session:
        assert session.get_one(HeldConsumption, held_id).resolved_at == MORNING


def test_resolving_needs_a_note_and_an_existing_held_interval(world: BalanceWorld) -> None:
    missing = world.post("/balance/held-consumption/999/resolution", "supervisor", {"note": "x"})
    assert missing.status_code == 404
    assert missing.json()["detail"]["code"] == "held_consumption_not_found"
    blank = world.post("/balance/held-consumption/999/resolution", "supervisor", {"note": "  "})
    assert blank.status_code == 422
    assert blank.json()["detail"]["code"] == "reason_required"


def test_the_balance_view_shows_a_disconnect_that_expired_unsent_with_its_error(
    world: BalanceWorld,
) -> None:
    number = world.central_customer(12, "20.00")
    world.exhaust(number)
    world.run_engine(AFTER_GRACE)
    command_id = world.get(f"/accounts/{number}/balance", "clerk").json()["decisions"][0][
        "command"
    ]["id"]
    # No meter answered: once its time is over, the head-end expires the command.
    world.clock.now = world.queue.status(command_id).expires_at + timedelta(seconds=1)
    world.queue.claim_due(instance="test-worker")

    command = world.get(f"/accounts/{number}/balance", "clerk").json()["decisions"][0]["command"]
    assert command["state"] == "expired"
    assert command["finished_at"] is not None
    assert command["last_error"]
