"""The registry, lifecycle, import, commissioning and health routes over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.audit import AuditEntry, AuditLog
from gridvend.auth import Auth
from gridvend.auth import make_router as make_auth_router
from headend.api import make_router
from headend.health import record_read_outcome
from headend.models import Meter
from headend.registry import meter_pan
from meter_sim.modbus_server import ModbusSimServer, serve_modbus_tcp
from meter_sim.model import MeterConfig, MeterModel
from tests.conftest import bearer_headers

DRN = "01234567897"
T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def make_app(session_factory: sessionmaker[Session]) -> FastAPI:
    app = FastAPI()
    auth = Auth(session_factory)
    app.include_router(make_auth_router(session_factory, auth))
    app.include_router(
        make_router(session_factory, lambda: None, require=auth.require, audit=AuditLog())
    )
    return app


@pytest.fixture
async def api(session_factory: sessionmaker[Session]) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(session_factory))
    async with httpx.AsyncClient(transport=transport, base_url="http://gridvend") as client:
        yield client


@pytest.fixture
def tech(session_factory: sessionmaker[Session]) -> dict[str, str]:
    return bearer_headers(session_factory, "technician")


@pytest.fixture
def sup(session_factory: sessionmaker[Session]) -> dict[str, str]:
    return bearer_headers(session_factory, "supervisor")


async def test_registering_a_meter_validates_and_audits(
    api: httpx.AsyncClient, tech: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    bad = await api.post(
        "/api/meters", json={"serial": "M-1", "meter_number": "01234567890"}, headers=tech
    )
    assert bad.status_code == 422
    assert "check digit" in bad.text
    created = await api.post(
        "/api/meters",
        json={"serial": "M-1", "meter_number": meter_pan(DRN), "tariff_index": "01"},
        headers=tech,
    )
    assert created.status_code == 201, created.text
    assert created.json()["meter_number"] == DRN
    again = await api.post("/api/meters", json={"serial": "M-1"}, headers=tech)
    assert (again.status_code, again.json()["detail"]["code"]) == (409, "meter_exists")
    with session_factory() as session:
        entry = session.scalars(select(AuditEntry)).one()
        assert (entry.action, entry.actor[:10]) == ("meter.register", "technician")


async def test_lifecycle_moves_are_checked_and_listed(
    api: httpx.AsyncClient, tech: dict[str, str], sup: dict[str, str]
) -> None:
    meter_id = (await api.post("/api/meters", json={"serial": "M-1"}, headers=tech)).json()["id"]
    url = f"/api/meters/{meter_id}/lifecycle"
    installed = await api.post(url, json={"to": "installed"}, headers=tech)
    assert installed.status_code == 200, installed.text
    assert installed.json()["from_state"] == "in_stock"
    forbidden = await api.post(url, json={"to": "decommissioned", "reason": "x"}, headers=tech)
    assert (forbidden.status_code, forbidden.json()["detail"]["code"]) == (403, "forbidden_role")
    skip = await api.post(url, json={"to": "active"}, headers=sup)
    assert (skip.status_code, skip.json()["detail"]["code"]) == (409, "transition_not_allowed")
    early = await api.post(url, json={"to": "commissioned"}, headers=sup)
    assert early.json()["detail"]["code"] == "commissioning_required"
    reasonless = await api.post(url, json={"to": "decommissioned"}, headers=sup)
    assert (reasonless.status_code, reasonless.json()["detail"]["code"]) == (
        422,
        "reason_required",
    )
    history = (await api.get(url, headers=tech)).json()
    assert [(h["from_state"], h["to_state"]) for h in history] == [
        (None, "in_stock"),
        ("in_stock", "installed"),
    ]
    assert (await api.get("/api/meters/999/lifecycle", headers=tech)).status_code == 404
    listed = await api.get("/api/meters", params={"lifecycle": "installed"}, headers=tech)
    assert [m["serial"] for m in listed.json()] == ["M-1"]


async def test_a_meter_is_edited_with_patch(api: httpx.AsyncClient, tech: dict[str, str]) -> None:
    meter_id = (await api.post("/api/meters", json={"serial": "M-1"}, headers=tech)).json()["id"]
    changed = await api.patch(
        f"/api/meters/{meter_id}",
        json={"location": "Stand 12", "latitude": "-26.1", "longitude": "28.05"},
        headers=tech,
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["location"] == "Stand 12"
    assert Decimal(changed.json()["latitude"]) == Decimal("-26.1")
    broken = await api.patch(
        f"/api/meters/{meter_id}", json={"protocol": "modbus_tcp"}, headers=tech
    )
    assert (broken.status_code, broken.json()["detail"]["code"]) == (409, "invalid_state")


async def test_a_commissioned_meters_key_moves_only_through_a_key_change(
    api: httpx.AsyncClient, tech: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    """Before commissioning the key fields are the registry's plan and may be corrected;
    once the meter holds the key, a new one needs tokens (vending's key change)."""
    created = await api.post(
        "/api/meters",
        json={"serial": "M-1", "meter_number": DRN, "supply_group_code": "123456"},
        headers=tech,
    )
    meter_id = created.json()["id"]
    planned = await api.patch(f"/api/meters/{meter_id}", json={"tariff_index": "02"}, headers=tech)
    assert planned.status_code == 200, planned.text
    with session_factory() as session, session.begin():
        session.get_one(Meter, meter_id).lifecycle = "commissioned"
    with session_factory() as session:
        audited = len(session.scalars(select(AuditEntry)).all())

    moved = await api.patch(f"/api/meters/{meter_id}", json={"tariff_index": "03"}, headers=tech)

    assert (moved.status_code, moved.json()["detail"]["code"]) == (409, "key_change_required")
    assert f"/api/vending/meters/{DRN}/key-changes" in moved.json()["detail"]["message"]
    same = await api.patch(
        f"/api/meters/{meter_id}", json={"tariff_index": "02", "location": "Stand 4"}, headers=tech
    )
    assert same.status_code == 200 and same.json()["tariff_index"] == "02"
    with session_factory() as session:
        assert len(session.scalars(select(AuditEntry)).all()) == audited + 1  # the location


async def test_a_csv_upload_reports_rows(
    api: httpx.AsyncClient, tech: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    data = b"serial,meter_number\nM-1,01234567897\nM-2,01234567890\n"
    response = await api.post(
        "/api/meters/import", files={"file": ("fleet.csv", data, "text/csv")}, headers=tech
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["imported"], body["rejected"]) == (1, 1)
    assert body["errors"][0]["row"] == 3
    assert "check digit" in body["errors"][0]["reasons"][0]
    bad = await api.post(
        "/api/meters/import", files={"file": ("x.csv", b"colour\nred\n", "text/csv")}, headers=tech
    )
    assert (bad.status_code, bad.json()["detail"]["code"]) == (422, "invalid_file")
    template = await api.get("/api/meters/import/template", headers=tech)
    assert template.text.startswith("serial,meter_number,")
    from_template = await api.post(
        "/api/meters/import",
        files={"file": ("t.csv", template.content, "text/csv")},
        params={"dry_run": "true"},
        headers=tech,
    )
    # Its only refusal is the meter number the upload above registered already.
    assert [e["reasons"] for e in from_template.json()["errors"]] == [
        ["meter_number 01234567897 is already in the registry"]
    ]
    clerk = bearer_headers(session_factory, "clerk")
    refused = await api.post(
        "/api/meters/import", files={"file": ("fleet.csv", data, "text/csv")}, headers=clerk
    )
    assert refused.status_code == 403


@pytest.fixture
async def sim() -> AsyncIterator[ModbusSimServer]:
    model = MeterModel(
        MeterConfig(
            serial="SIM-000001",
            meter_number=meter_pan(DRN),
            initial_energy_kwh=Decimal("10.25"),
            initial_credit_kwh=Decimal(20),
        ),
        T0,
    )
    async with serve_modbus_tcp([model], now=lambda: T0, port=0) as server:
        yield server


async def test_commissioning_over_the_api_guided_and_in_one_go(
    api: httpx.AsyncClient, tech: dict[str, str], sim: ModbusSimServer
) -> None:
    host, port = sim.address
    meter = {
        "meter_number": DRN,
        "protocol": "modbus_tcp",
        "modbus_profile": "eastron-sdm120-prepaid",
        "modbus_host": host,
        "modbus_port": port,
        "modbus_unit": 1,
        "lifecycle": "installed",
    }
    created = await api.post("/api/meters", json={"serial": "SIM-000001", **meter}, headers=tech)
    meter_id = created.json()["id"]
    started = await api.post(
        f"/api/meters/{meter_id}/commissioning", json={"run_all": False}, headers=tech
    )
    assert started.status_code == 201, started.text
    run = started.json()
    assert (run["status"], run["next_step"], run["steps"]) == (
        "running",
        "verify_communication",
        [],
    )
    step = await api.post(f"/api/commissioning/{run['run_id']}/next", headers=tech)
    assert step.json()["steps"][0]["status"] == "passed"
    while step.json()["next_step"]:
        step = await api.post(f"/api/commissioning/{run['run_id']}/next", headers=tech)
    assert step.json()["status"] == "passed"
    assert step.json()["report"]["install_reading_kwh"] == "10.250000"
    fetched = await api.get(f"/api/commissioning/{run['run_id']}", headers=tech)
    assert fetched.json() == step.json()
    finished = await api.post(f"/api/commissioning/{run['run_id']}/next", headers=tech)
    assert (finished.status_code, finished.json()["detail"]["code"]) == (409, "run_finished")
    again = await api.post(f"/api/meters/{meter_id}/commissioning", headers=tech)
    assert again.json()["detail"]["code"] == "meter_not_installed"
    assert (await api.get(f"/api/meters/{meter_id}", headers=tech)).json()[
        "lifecycle"
    ] == "commissioned"
    runs = await api.get(f"/api/meters/{meter_id}/commissioning", headers=tech)
    assert [r["status"] for r in runs.json()] == ["passed"]
    assert (await api.get("/api/commissioning/999", headers=tech)).status_code == 404


async def test_health_routes_list_silent_meters_and_read_rates(
    api: httpx.AsyncClient,
    tech: dict[str, str],
    sup: dict[str, str],
    session_factory: sessionmaker[Session],
) -> None:
    meter_id = (await api.post("/api/meters", json={"serial": "M-1"}, headers=tech)).json()["id"]
    with session_factory() as session, session.begin():
        meter = session.get(Meter, meter_id)
        assert meter is not None
        meter.lifecycle = "active"
        yesterday = datetime.now(UTC) - timedelta(days=1)
        record_read_outcome(session, meter_id, yesterday, ok=True)
        record_read_outcome(session, meter_id, yesterday, ok=False, reason="no answer")
    silent = await api.get("/api/headend/health/silent", params={"intervals": 4}, headers=sup)
    assert [(m["serial"], m["intervals_missed"]) for m in silent.json()] == [("M-1", 96)]
    day = yesterday.date().isoformat()
    rates = await api.get(
        "/api/headend/health/read-rates",
        params={"since": day, "until": day, "meter_id": meter_id},
        headers=sup,
    )
    assert [(r["attempts"], r["successes"], r["rate"]) for r in rates.json()] == [(2, 1, "0.5000")]
    reversed_range = await api.get(
        "/api/headend/health/read-rates",
        params={"since": day, "until": date(2000, 1, 1).isoformat()},
        headers=sup,
    )
    assert reversed_range.status_code == 422
