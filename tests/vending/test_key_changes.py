"""Key changes as a vending workflow: a supervisor requests one, the next vend is refused
with its tokens until the clerk acknowledges them, and the acknowledged vend prints the
key change tokens before a credit token made under the new key -- which a simulated
meter accepts, in that order."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.audit import AuditEntry
from headend.interface import find_meter
from meter_sim.model import DecoderSettings, MeterConfig, MeterModel, TokenStatus
from protocols.sts import BaseDate, KeyConfig
from tests.vending.counter_world import NOW, World, key_config, make_world
from vending.models_keychange import KeyChangeRecord


@pytest.fixture
def world(session_factory: sessionmaker[Session]) -> Iterator[World]:
    yield from make_world(session_factory)


def add_key(world: World, config: KeyConfig) -> None:
    with world.session_factory() as session, session.begin():
        world.keystore.add_key(session, config)


def revision_2(world: World, **changes: Any) -> KeyConfig:
    """A second key revision of the world's supply group, stored in the key store."""
    config = dataclasses.replace(
        world.config, key_revision=2, vending_key=bytes(range(40, 48)), **changes
    )
    add_key(world, config)
    return config


def request_change(world: World, role: str = "supervisor", **target: Any) -> Any:
    return world.post(f"/meters/{world.meters[0]}/key-changes", role, target)


def simulated_meter(world: World, config: KeyConfig) -> MeterModel:
    """meter_sim's meter model holding ``config``'s key for the world's first meter."""
    return MeterModel(
        MeterConfig(
            serial="KC-00000001",
            meter_number=world.meters[0],
            decoder=DecoderSettings(
                supply_group_code=config.supply_group_code,
                tariff_index=config.tariff_index,
                key_revision_number=config.key_revision,
                key_type=int(config.key_type),
                key_expiry_number=config.key_expiry_number,
                base_date_year=int(config.base_date),
                encryption_algorithm=f"EA{config.algorithm.value}",
                key_generation_algorithm=f"DKGA{config.dkga.value}",
                vending_key_hex=config.vending_key.hex(),
            ),
        ),
        NOW - timedelta(minutes=5),
    )


def key_changes(world: World) -> int:
    with world.session_factory() as session:
        return session.scalar(select(func.count()).select_from(KeyChangeRecord)) or 0


def audit_actions(world: World) -> list[str]:
    with world.session_factory() as session:
        return list(session.scalars(select(AuditEntry.action).order_by(AuditEntry.id)))


def registry_key(world: World) -> tuple[str | None, str | None, int | None]:
    with world.session_factory() as session:
        meter = find_meter(session, meter_number=world.meters[0])
        assert meter is not None
        return meter.supply_group_code, meter.tariff_index, meter.key_revision


# Requesting ---------------------------------------------------------------------------------


def test_a_supervisor_requests_a_key_change_and_gets_its_tokens(world: World) -> None:
    revision_2(world)
    answer = request_change(world, key_revision=2, reason="KRN 1 is being retired")
    assert answer.status_code == 201, answer.text
    change = answer.json()
    assert change["status"] == "pending"
    assert change["from"]["key_revision"] == 1 and change["to"]["key_revision"] == 2
    assert change["rollover"] is False
    # A 64-bit (EA07) key: two section tokens.
    assert len(change["tokens"]) == 2 and all(len(t) == 20 for t in change["tokens"])
    assert audit_actions(world)[-1] == "key_change.request"
    # The registry moves only when the tokens are handed out.
    assert registry_key(world)[2] == 1


def test_an_unknown_target_key_is_refused_and_nothing_is_written(world: World) -> None:
    before = (world.counts(), key_changes(world))
    answer = request_change(world, key_revision=5)
    assert answer.status_code == 422
    assert answer.json()["detail"]["code"] == "target_key_not_found"
    assert (world.counts(), key_changes(world)) == before


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ({}, "invalid_key_change"),
        ({"key_revision": 1}, "no_key_change"),
        ({"base_date": 2014}, "key_revision_required"),
        ({"key_revision": 2, "base_date": 2035}, "base_date_mismatch"),
        ({"supply_group_code": "12AB56"}, "invalid_request"),
    ],
)
def test_a_malformed_or_pointless_request_is_refused_with_its_code(
    world: World, target: dict[str, Any], code: str
) -> None:
    revision_2(world)
    before = (world.counts(), key_changes(world))
    answer = request_change(world, **target)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"]["code"] == code
    assert (world.counts(), key_changes(world)) == before


def test_a_second_request_while_one_is_pending_is_refused(world: World) -> None:
    revision_2(world)
    first = request_change(world, key_revision=2).json()
    before = (world.counts(), key_changes(world))
    again = request_change(world, tariff_index="02")
    assert again.status_code == 409
    assert again.json()["detail"]["code"] == "key_change_pending"
    assert again.json()["detail"]["detail"]["key_change_id"] == str(first["id"])
    assert (world.counts(), key_changes(world)) == before


def test_only_supervisors_and_admins_request_or_cancel_key_changes(world: World) -> None:
    revision_2(world)
    for role in ("clerk", "technician"):
        assert request_change(world, role, key_revision=2).status_code == 403
    change = request_change(world, "admin", key_revision=2).json()
    cancel = {"reason": "wrong meter"}
    for role in ("clerk", "technician"):
        assert world.post(f"/key-changes/{change['id']}/cancel", role, cancel).status_code == 403
    # Clerks get the tokens only through the vend; technicians print them for a visit.
    assert world.post(f"/key-changes/{change['id']}/print", "clerk").status_code == 403
    assert world.get(f"/key-changes/{change['id']}", "clerk").status_code == 403
    printed = world.post(f"/key-changes/{change['id']}/print", "technician")
    assert printed.status_code == 200
    assert printed.json()["tokens"] == change["tokens"]
    assert "tokens" not in world.get(f"/key-changes/{change['id']}", "technician").json()
    assert audit_actions(world)[-1] == "key_change.print"


# Vending ----------------------------------------------------------------------------------


def test_a_vend_to_a_meter_with_a_pending_key_change_is_refused_with_its_tokens(
    world: World,
) -> None:
    revision_2(world)
    change = request_change(world, key_revision=2).json()
    before = (world.counts(), key_changes(world), registry_key(world))
    refused = world.vend("100.00")
    assert refused.status_code == 409
    detail = refused.json()["detail"]
    assert detail["code"] == "key_change_required"
    assert detail["detail"]["tokens"] == change["tokens"]
    assert (world.counts(), key_changes(world), registry_key(world)) == before


def test_the_lookup_shows_the_pending_key_change(world: World) -> None:
    revision_2(world)
    assert (
        world.get("/lookup", "clerk", params={"meter": world.meters[0]}).json()["quotes"][0][
            "key_change"
        ]
        is None
    )
    change = request_change(world, key_revision=2).json()
    quote = world.get("/lookup", "clerk", params={"meter": world.meters[0]}).json()["quotes"][0]
    assert quote["key_change"]["id"] == change["id"]
    assert quote["key_change"]["token_count"] == 2
    assert "tokens" not in quote["key_change"]


def test_an_acknowledged_vend_prints_the_key_change_tokens_before_the_credit_token(
    world: World,
) -> None:
    revision_2(world)
    change = request_change(world, key_revision=2).json()
    answer = world.vend("150.00", key_change_acknowledged=True)
    assert answer.status_code == 201, answer.text
    vend = answer.json()
    assert vend["key_change_tokens"] == change["tokens"]
    text = vend["receipt"]["text"]
    grouped = change["tokens_grouped"]
    positions = [text.index(token) for token in grouped] + [text.index(vend["token_grouped"])]
    assert positions == sorted(positions)
    assert text.index("KEY CHANGE") < text.index("TOKEN\n")
    html = world.client.get(
        f"/api/vending/vends/{vend['receipt_number']}/receipt.html", headers=world.as_("clerk")
    ).text
    html_positions = [html.index(token) for token in grouped] + [html.index(vend["token_grouped"])]
    assert html_positions == sorted(html_positions)
    # Completed in the vend's transaction: registry moved, status done, audited.
    assert registry_key(world)[2] == 2
    done = world.get(f"/key-changes/{change['id']}", "supervisor").json()
    assert done["status"] == "completed"
    assert done["completed_by_vend"]["channel"] == "counter"
    assert "key_change.complete" in audit_actions(world)
    # The next vend needs no acknowledgement and prints no key change tokens.
    later = world.vend("20.00")
    assert later.status_code == 201 and later.json()["key_change_tokens"] == []


def test_the_meter_accepts_the_key_change_tokens_then_the_credit_token(world: World) -> None:
    new = revision_2(world)
    meter = simulated_meter(world, world.config)
    request_change(world, key_revision=2)
    vend = world.vend("250.00", key_change_acknowledged=True).json()
    statuses = [meter.enter_token(t, NOW).status for t in vend["key_change_tokens"]]
    assert statuses == [TokenStatus.KEY_CHANGE_1ST, TokenStatus.ACCEPT]
    credit = meter.enter_token(vend["token"], NOW)
    assert credit.status is TokenStatus.ACCEPT
    assert credit.credit_added_kwh == Decimal(vend["units_kwh"]) > 0
    # The meter now holds the new key: a meter still on the old one refuses the token.
    old_meter = simulated_meter(world, world.config)
    assert old_meter.enter_token(vend["token"], NOW).status is TokenStatus.REJECT
    assert simulated_meter(world, new).enter_token(vend["token"], NOW).accepted


def test_the_2024_rollover_moves_a_1993_meter_to_a_2014_key(
    session_factory: sessionmaker[Session],
) -> None:
    old = dataclasses.replace(key_config(), base_date=BaseDate.Y1993)
    for world in make_world(session_factory, config=old):
        # A 1993 key has run out of token ids (Nov 2024): it cannot be sold credit.
        exhausted = world.vend("50.00")
        assert exhausted.status_code == 409
        assert exhausted.json()["detail"]["code"] == "token_refused"
        new = revision_2(world, base_date=BaseDate.Y2014)
        change = request_change(world, key_revision=2, base_date=2014, reason="TID rollover")
        assert change.status_code == 201, change.text
        assert change.json()["rollover"] is True
        assert change.json()["to"]["base_date"] == 2014
        meter = simulated_meter(world, old)
        vend = world.vend("100.00", key_change_acknowledged=True).json()
        for token in vend["key_change_tokens"]:
            assert meter.enter_token(token, NOW).accepted
        assert meter.base_date_year == 2014
        credit = meter.enter_token(vend["token"], NOW)
        assert credit.status is TokenStatus.ACCEPT
        assert credit.credit_added_kwh == Decimal(vend["units_kwh"])
        with world.session_factory() as session:
            moved = find_meter(session, meter_number=world.meters[0])
            assert moved is not None and moved.key_revision == new.key_revision


def test_a_retried_acknowledged_vend_answers_the_same_vend(world: World) -> None:
    revision_2(world)
    request_change(world, key_revision=2)
    first = world.vend("100.00", reference="kc-1", key_change_acknowledged=True)
    assert first.status_code == 201
    counts = (world.counts(), audit_actions(world))
    for acknowledged in (True, False):
        again = world.vend("100.00", reference="kc-1", key_change_acknowledged=acknowledged)
        assert again.status_code == 200
        assert again.json()["token"] == first.json()["token"]
        assert again.json()["key_change_tokens"] == first.json()["key_change_tokens"]
    assert (world.counts(), audit_actions(world)) == counts


# Cancelling and completing on site -----------------------------------------------------------


def test_a_cancelled_key_change_no_longer_holds_vends_back(world: World) -> None:
    revision_2(world)
    change = request_change(world, key_revision=2).json()
    no_reason = world.post(f"/key-changes/{change['id']}/cancel", "supervisor", {"reason": ""})
    assert no_reason.status_code == 422
    assert no_reason.json()["detail"]["code"] == "reason_required"
    cancelled = world.post(
        f"/key-changes/{change['id']}/cancel", "supervisor", {"reason": "meter replaced"}
    )
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["cancel_reason"] == "meter replaced"
    assert audit_actions(world)[-1] == "key_change.cancel"
    again = world.post(f"/key-changes/{change['id']}/cancel", "supervisor", {"reason": "twice"})
    assert again.json()["detail"]["code"] == "key_change_not_pending"
    vend = world.vend("50.00").json()
    assert vend["key_change_tokens"] == []
    assert simulated_meter(world, world.config).enter_token(vend["token"], NOW).accepted
    assert registry_key(world)[2] == 1


def test_a_technician_reports_the_tokens_entered_and_vends_use_the_new_key(world: World) -> None:
    new = revision_2(world)
    change = request_change(world, key_revision=2).json()
    done = world.post(f"/key-changes/{change['id']}/complete", "technician")
    assert done.status_code == 200 and done.json()["status"] == "completed"
    assert registry_key(world)[2] == 2
    vend = world.vend("50.00")
    assert vend.status_code == 201 and vend.json()["key_change_tokens"] == []
    assert simulated_meter(world, new).enter_token(vend.json()["token"], NOW).accepted


def test_moving_a_meter_to_a_new_tariff_index_needs_no_new_vending_key(world: World) -> None:
    meter = simulated_meter(world, world.config)
    change = request_change(world, tariff_index="02", reason="moved to the business tariff")
    assert change.status_code == 201, change.text
    vend = world.vend("80.00", key_change_acknowledged=True).json()
    for token in vend["key_change_tokens"]:
        assert meter.enter_token(token, NOW).accepted
    assert meter.enter_token(vend["token"], NOW).status is TokenStatus.ACCEPT
    assert registry_key(world) == (world.config.supply_group_code, "02", 1)


def test_a_technician_prints_the_tokens_in_entry_order(world: World) -> None:
    revision_2(world)
    change = request_change(world, key_revision=2).json()
    printed = world.client.post(
        f"/api/vending/key-changes/{change['id']}/print",
        params={"format": "text"},
        headers=world.as_("technician"),
    )
    assert printed.status_code == 200
    first, second = change["tokens_grouped"]
    assert f"1. {first}" in printed.text and f"2. {second}" in printed.text
    assert printed.text.index(first) < printed.text.index(second)
