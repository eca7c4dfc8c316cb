"""Readings with their verdicts, estimates and interval consumption over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from headend.ingest import Ingestor
from tests.conftest import bearer_headers
from tests.headend.test_ingest_vee import SCHEME, _message, _meter, _read
from tests.headend.test_registry_api import make_app


@pytest.fixture
async def api(session_factory: sessionmaker[Session]) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(session_factory))
    async with httpx.AsyncClient(transport=transport, base_url="http://gridvend") as client:
        yield client


async def test_readings_show_quality_flags_and_estimates_and_consumption_its_intervals(
    api: httpx.AsyncClient, session_factory: sessionmaker[Session]
) -> None:
    meter_id, serial = _meter(session_factory)
    ingestor = Ingestor(session_factory, SCHEME)
    ingestor.ingest([_message(serial, _read(0, "10.000")), _message(serial, _read(30, "10.200"))])
    ingestor.ingest([_message(serial, _read(45, "600.000"))])
    headers = bearer_headers(session_factory, "clerk")

    readings = (await api.get(f"/api/meters/{meter_id}/readings", headers=headers)).json()
    assert [(r["value"], r["quality"], r["flags"]) for r in readings] == [
        ("600.000", "flagged", ["spike"]),
        ("10.200", "measured", ["gap"]),
        ("10.000", "measured", []),
    ]
    assert readings[0]["reason"].startswith("spike: advanced 589.800 kWh")

    with_estimates = (
        await api.get(
            f"/api/meters/{meter_id}/readings",
            params={"include_estimates": "true"},
            headers=headers,
        )
    ).json()
    assert [(r["value"], r["quality"], r["source"]) for r in with_estimates][2] == (
        "10.100",
        "estimated",
        "estimate",
    )

    consumption = (await api.get(f"/api/meters/{meter_id}/consumption", headers=headers)).json()
    assert [(c["energy_kwh"], c["quality"]) for c in consumption] == [
        ("0.100", "estimated"),
        ("0.100", "estimated"),
        ("589.800", "flagged"),
    ]

    not_cumulative = await api.get(
        f"/api/meters/{meter_id}/consumption", params={"quantity": "voltage_v"}, headers=headers
    )
    assert not_cumulative.status_code == 422
    missing = await api.get("/api/meters/999999/consumption", headers=headers)
    assert missing.status_code == 404
