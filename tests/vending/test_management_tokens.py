"""Management tokens through the REST API: for technicians and supervisors only, TIDs
from the meter's one cursor, stored and audited, and accepted by a simulated meter's
STS decoder with the effect asked for."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.app import create_app
from gridvend.audit import AuditEntry, AuditLog
from gridvend.db import make_read_only_session_factory
from headend.models import MeterLifecycle, PrepaidMode
from headend.registry import MeterRegistration, register_meter
from meter_sim.fleet import sts_meter_pan
from meter_sim.model import DecoderSettings, MeterModel, TamperKind, TokenStatus
from protocols.sts import TokenStatus as StsStatus
from protocols.sts import process_token
from tests.meter_sim.factories import T0, config
from tests.vending.counter_world import NOW, SGC, key_config, make_world, quick_bearer_headers
from vending.keystore import KeyEncryptionKey, KeyStore
from vending.management_tokens import (
    ManagementKind,
    ManagementRequest,
    issue_management_token,
    token_meter_key,
)
from vending.models import MeterTidCursor
from vending.models_management import ManagementTokenRecord
from vending.security_module import SoftwareSecurityModule

AT = T0 + timedelta(minutes=5)


@dataclass
class Site:
    client: TestClient
    session_factory: sessionmaker[Session]
    headers: dict[str, dict[str, str]]
    meter_number: str
    central_meter: str

    def issue(self, role: str, meter: str | None = None, **body: Any) -> Any:
        body.setdefault("reason", "site visit")
        body.setdefault("reference", f"ref-{body['kind']}-{len(self.tokens()) + 1}")
        return self.client.post(
            f"/api/vending/meters/{meter or self.meter_number}/management-tokens",
            headers=self.headers[role],
            json=body,
        )

    def tokens(self) -> list[ManagementTokenRecord]:
        with self.session_factory() as session:
            return list(session.scalars(select(ManagementTokenRecord)))

    def audit_count(self) -> int:
        with self.session_factory() as session:
            return session.scalar(select(func.count()).select_from(AuditEntry)) or 0


def _register(session: Session, serial: int, mode: PrepaidMode) -> str:
    pan = sts_meter_pan(serial)
    register_meter(
        session,
        MeterRegistration(
            serial=f"SIM-{serial:08d}",
            meter_number=pan,
            prepaid_mode=mode,
            lifecycle=MeterLifecycle.INSTALLED,
            supply_group_code=SGC,
            tariff_index="01",
            key_revision=1,
            key_type=2,
            base_date=2014,
            encryption_algorithm="EA07",
            dkga="DKGA02",
        ),
    )
    return pan


@pytest.fixture
def site(session_factory: sessionmaker[Session], engine: Engine) -> Iterator[Site]:
    kek = KeyEncryptionKey.generate()
    with session_factory() as session, session.begin():
        KeyStore(kek).add_key(session, key_config())
        token_meter = _register(session, 1, PrepaidMode.TOKEN)
        central = _register(session, 2, PrepaidMode.CENTRAL)
    # As gridvend.runtime builds it: key reads never wait for the issuing transaction.
    module = SoftwareSecurityModule(KeyStore(kek), make_read_only_session_factory(engine))
    app = create_app(session_factory, security_module=module)
    with TestClient(app) as client:
        headers = {
            role: quick_bearer_headers(session_factory, role)
            for role in ("admin", "supervisor", "clerk", "technician")
        }
        yield Site(client, session_factory, headers, token_meter, central)


def _simulated_meter(site: Site, **changes: Any) -> MeterModel:
    """The meter_sim model of the registered token meter, holding the same key."""
    decoder = DecoderSettings(
        supply_group_code=SGC,
        key_generation_algorithm="DKGA02",
        vending_key_hex=key_config().vending_key.hex(),
    )
    return MeterModel(config(meter_number=site.meter_number, decoder=decoder, **changes), T0)


def test_a_power_limit_token_from_a_technician_sets_the_simulated_meters_limit(
    site: Site,
) -> None:
    answer = site.issue("technician", kind="set_power_limit", limit_w=1500)
    assert answer.status_code == 201, answer.text
    issued = answer.json()
    meter = _simulated_meter(site)
    result = meter.enter_token(issued["token"], AT)
    assert result.status is TokenStatus.ACCEPT
    assert result.tid == issued["tid"]
    assert meter.power_limit_w == 1500
    assert issued["parameters"] == {"limit_w": 1500}
    assert issued["issued_role"] == "technician"


def test_a_clear_tamper_token_from_a_supervisor_clears_the_tamper(site: Site) -> None:
    meter = _simulated_meter(site, open_relay_on_tamper=True)
    meter.raise_tamper(TamperKind.MAGNETIC, AT)
    assert not meter.relay_closed
    answer = site.issue("supervisor", kind="clear_tamper")
    assert answer.status_code == 201, answer.text
    assert meter.enter_token(answer.json()["token"], AT).status is TokenStatus.ACCEPT
    assert meter.tamper == frozenset()
    assert meter.relay_closed


def test_a_clear_credit_token_empties_the_credit_register(site: Site) -> None:
    meter = _simulated_meter(site, initial_credit_kwh=Decimal(40))
    answer = site.issue("technician", kind="clear_credit", register="all")
    assert answer.status_code == 201, answer.text
    assert meter.enter_token(answer.json()["token"], AT).status is TokenStatus.ACCEPT
    assert meter.credit_kwh == 0
    assert not meter.relay_closed


def test_successive_tokens_take_new_tids_from_the_meters_cursor_and_all_are_accepted(
    site: Site,
) -> None:
    meter = _simulated_meter(site)
    tids = []
    for watts, reference in ((1000, "a"), (2000, "b"), (3000, "c")):
        issued = site.issue(
            "technician", kind="set_power_limit", limit_w=watts, reference=reference
        )
        tids.append(issued.json()["tid"])
        assert meter.enter_token(issued.json()["token"], AT).status is TokenStatus.ACCEPT
    assert tids == sorted(set(tids))
    assert meter.power_limit_w == 3000
    with site.session_factory() as session:
        cursor = session.scalars(select(MeterTidCursor)).one()
    assert cursor.last_tid == tids[-1]


def test_each_token_is_stored_and_audited_without_the_key(site: Site) -> None:
    issued = site.issue("supervisor", kind="set_power_limit", limit_w=5000, reason="fuse 25 A")
    assert issued.status_code == 201
    [stored] = site.tokens()
    assert (stored.kind, stored.tid, stored.token_digits) == (
        "set_power_limit",
        issued.json()["tid"],
        issued.json()["token"],
    )
    with site.session_factory() as session:
        entry = session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc())).first()
    assert entry is not None
    assert entry.action == "token.management"
    assert entry.subject == f"meter:{stored.meter_number}"
    assert issued.json()["meter_number"] == stored.meter_number
    assert entry.detail["kind"] == "set_power_limit"
    assert entry.detail["limit_w"] == 5000
    assert entry.detail["tid"] == stored.tid
    assert entry.detail["reason"] == "fuse 25 A"
    assert key_config().vending_key.hex() not in str(entry.detail)


def test_a_retry_with_the_same_reference_answers_the_same_token(site: Site) -> None:
    first = site.issue("technician", kind="clear_tamper", reference="visit-9")
    audits = site.audit_count()
    again = site.issue("technician", kind="clear_tamper", reference="visit-9")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["token"] == first.json()["token"]
    assert len(site.tokens()) == 1 and site.audit_count() == audits
    other = site.issue("technician", kind="set_power_limit", limit_w=100, reference="visit-9")
    assert other.status_code == 409
    assert other.json()["detail"]["code"] == "reference_conflict"


def test_the_history_lists_the_meters_tokens(site: Site) -> None:
    site.issue("technician", kind="clear_tamper", reference="h1")
    site.issue("supervisor", kind="set_power_limit", limit_w=700, reference="h2")
    listed = site.client.get(
        f"/api/vending/meters/{site.meter_number}/management-tokens",
        headers=site.headers["supervisor"],
    )
    assert listed.status_code == 200
    assert [t["reference"] for t in listed.json()] == ["h2", "h1"]


@pytest.mark.parametrize("role", ["clerk", "admin"])
def test_other_roles_are_refused_with_forbidden_role_and_nothing_is_stored(
    site: Site, role: str
) -> None:
    audits = site.audit_count()
    answer = site.issue(role, kind="clear_tamper")
    assert answer.status_code == 403
    assert answer.json()["detail"]["code"] == "forbidden_role"
    history = site.client.get(
        f"/api/vending/meters/{site.meter_number}/management-tokens", headers=site.headers[role]
    )
    assert history.status_code == 403
    assert site.tokens() == [] and site.audit_count() == audits


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"kind": "open_relay"}, 422, "invalid_management_kind"),
        ({"kind": "set_power_limit"}, 422, "limit_required"),
        ({"kind": "set_power_limit", "limit_w": "1500"}, 422, "invalid_power_limit"),
        ({"kind": "set_power_limit", "limit_w": -1}, 422, "invalid_power_limit"),
        ({"kind": "set_power_limit", "limit_w": 16_385}, 422, "invalid_power_limit"),
        (
            {"kind": "set_power_limit", "limit_w": 100, "register": "all"},
            422,
            "unexpected_parameter",
        ),
        ({"kind": "clear_tamper", "limit_w": 100}, 422, "unexpected_parameter"),
        ({"kind": "clear_credit", "register": "beer"}, 422, "invalid_register"),
        ({"kind": "clear_tamper", "reason": ""}, 422, "reason_required"),
        ({"kind": "clear_tamper", "colour": "red"}, 422, "invalid_request"),
    ],
)
def test_bad_requests_answer_a_specific_code_and_store_nothing(
    site: Site, body: dict[str, Any], status: int, code: str
) -> None:
    audits = site.audit_count()
    answer = site.issue("technician", **body)
    assert answer.status_code == status, answer.text
    assert answer.json()["detail"]["code"] == code
    assert site.tokens() == [] and site.audit_count() == audits


def test_meters_that_cannot_take_the_token_are_refused(site: Site) -> None:
    central = site.issue("technician", meter=site.central_meter, kind="clear_tamper")
    assert central.status_code == 409
    assert central.json()["detail"]["code"] == "meter_not_token_mode"
    unknown = site.issue("technician", meter=sts_meter_pan(99), kind="clear_tamper")
    assert unknown.status_code == 404
    assert unknown.json()["detail"]["code"] == "meter_not_found"
    garbage = site.issue("technician", meter="12345", kind="clear_tamper")
    assert garbage.status_code == 422
    assert garbage.json()["detail"]["code"] == "invalid_meter_number"
    assert site.tokens() == []


def test_a_retired_key_refuses_the_token(site: Site) -> None:
    with site.session_factory() as session, session.begin():
        KeyStore(KeyEncryptionKey.generate()).retire_key(session, SGC, 1, T0)
    answer = site.issue("technician", kind="clear_tamper")
    assert answer.status_code == 409
    assert answer.json()["detail"]["code"] == "key_retired"
    assert site.tokens() == []


def test_a_management_token_and_a_vend_never_share_a_tid(
    session_factory: sessionmaker[Session],
) -> None:
    for world in make_world(session_factory):
        # The world's module reads keys in sessions of its own: load the key before the
        # SQLite write transaction (as the router does).
        with session_factory() as session:
            _, ref = token_meter_key(session, world.meters[0])
        world.security_module.key_attributes(ref)
        with session_factory() as session, session.begin():
            issued = issue_management_token(
                session,
                ManagementRequest(
                    meter_number=world.meters[0],
                    kind=ManagementKind.SET_POWER_LIMIT,
                    reference="m1",
                    reason="fuse",
                    limit_w=2000,
                ),
                issuer="tech",
                issuer_role="technician",
                security_module=world.security_module,
                audit=AuditLog(),
                now=NOW,
            )
            management_tid = issued.record.tid
            token = issued.record.token_digits
        vend = world.vend("100.00").json()
        assert vend["tid"] > management_tid
        state = world.meter()
        for digits in (token, vend["token"]):
            result = process_token(state, digits, NOW)
            assert result.status is StsStatus.ACCEPT
            state = result.state
