"""The running system end to end: a meter publishes over the real broker, the head-end
stores the reading, and the API returns it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

from gridvend.broker import BrokerEndpoint
from gridvend.runtime import System
from gridvend.settings import Settings
from meter_sim.fleet import MqttFleet, describe_fleet
from protocols.mqtt import MeterChannel, TelemetryReport, TopicScheme
from protocols.quantities import Quantity
from tests.conftest import bearer_headers
from tests.eventually import eventually


@pytest.fixture
async def system(
    database_url: str, mqtt_broker: BrokerEndpoint, topic_prefix: str, tmp_path: Path
) -> AsyncIterator[System]:
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        api_port=0,
        mqtt_topic_prefix=topic_prefix,
        headend_instance=f"headend-{topic_prefix.strip('/')}",
    )
    async with System(settings, mqtt_broker) as running:
        yield running


@pytest.fixture
async def api(system: System) -> AsyncIterator[httpx.AsyncClient]:
    """An API client signed in as a technician."""
    headers = bearer_headers(system.session_factory, "technician")
    async with httpx.AsyncClient(base_url=system.base_url, timeout=10, headers=headers) as client:
        yield client


async def _register(api: httpx.AsyncClient, serial: str, meter_number: str = "60072712346") -> int:
    response = await api.post("/api/meters", json={"serial": serial, "meter_number": meter_number})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def _publish(broker: BrokerEndpoint, topic: str, payload: bytes) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish(topic, payload, qos=1)


# Readings of the hour before now, on 15-minute boundaries (never in the future).
_HOUR_START = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)


def _telemetry(seq: int, kwh: str) -> bytes:
    report = TelemetryReport(
        seq=seq,
        ts=_HOUR_START + timedelta(minutes=15 * seq),
        values={Quantity.ENERGY_IMPORT_KWH: Decimal(kwh), Quantity.VOLTAGE_V: Decimal("231.4")},
    )
    return report.to_bytes()


async def test_reading_published_by_a_meter_is_served_by_the_api(
    system: System, api: httpx.AsyncClient, mqtt_broker: BrokerEndpoint
) -> None:
    meter_id = await _register(api, "SIM-0001")
    topic = TopicScheme(system.settings.mqtt_topic_prefix).meter_topic(
        "SIM-0001", MeterChannel.TELEMETRY
    )
    await _publish(mqtt_broker, topic, _telemetry(1, "1234.567"))

    async def readings() -> list[dict[str, Any]]:
        response = await api.get(f"/api/meters/{meter_id}/readings")
        assert response.status_code == 200
        return list(response.json())

    stored = await eventually(readings)
    by_quantity = {r["quantity"]: Decimal(r["value"]) for r in stored}
    assert by_quantity == {"energy_import_kwh": Decimal("1234.567"), "voltage_v": Decimal("231.4")}


async def test_malformed_payload_is_quarantined_and_the_worker_keeps_running(
    system: System, api: httpx.AsyncClient, mqtt_broker: BrokerEndpoint
) -> None:
    meter_id = await _register(api, "SIM-0002")
    topic = TopicScheme(system.settings.mqtt_topic_prefix).meter_topic(
        "SIM-0002", MeterChannel.TELEMETRY
    )
    await _publish(mqtt_broker, topic, b'{"v":1,"seq":"x"')

    async def rejected() -> list[dict[str, Any]]:
        return list((await api.get("/api/headend/rejected-messages")).json())

    [quarantined] = await eventually(rejected)
    assert quarantined["topic"] == topic
    assert quarantined["payload"] == '{"v":1,"seq":"x"'
    assert quarantined["reason"].startswith("bad_payload: not JSON")
    stats = (await api.get("/api/headend/stats")).json()["ingest"]
    assert stats["rejected"] == {"bad_payload": 1}

    await _publish(mqtt_broker, topic, _telemetry(2, "10.5"))

    async def readings() -> list[Any]:
        return list((await api.get(f"/api/meters/{meter_id}/readings")).json())

    assert await eventually(readings)


async def test_reading_from_an_unregistered_meter_is_kept_with_its_reason(
    system: System, api: httpx.AsyncClient, mqtt_broker: BrokerEndpoint
) -> None:
    topic = TopicScheme(system.settings.mqtt_topic_prefix).meter_topic(
        "GHOST-1", MeterChannel.TELEMETRY
    )
    await _publish(mqtt_broker, topic, _telemetry(1, "1.0"))

    async def rejected() -> list[dict[str, Any]]:
        return list((await api.get("/api/headend/rejected-messages")).json())

    [quarantined] = await eventually(rejected)
    assert quarantined["reason"] == "unknown_meter: meter 'GHOST-1' is not in the registry"


async def test_simulated_meters_readings_reach_the_api(
    system: System, api: httpx.AsyncClient, mqtt_broker: BrokerEndpoint
) -> None:
    configs = describe_fleet(3, seed=7)
    ids = [await _register(api, c.serial, c.meter_number) for c in configs]
    async with MqttFleet(
        mqtt_broker.host,
        mqtt_broker.port,
        configs,
        topic_prefix=system.settings.mqtt_topic_prefix,
        mqtt_v5=mqtt_broker.supports_v5,
    ):

        async def every_meter_has_energy() -> bool:
            for meter_id in ids:
                response = await api.get(
                    f"/api/meters/{meter_id}/readings", params={"quantity": "energy_import_kwh"}
                )
                if not response.json():
                    return False
            return True

        assert await eventually(every_meter_has_energy)
    meters = {m["serial"]: m for m in (await api.get("/api/meters")).json()}
    assert all(meters[c.serial]["last_seen_at"] for c in configs)


async def test_a_disconnect_through_the_api_is_confirmed_by_the_simulated_meter(
    system: System, api: httpx.AsyncClient, mqtt_broker: BrokerEndpoint
) -> None:
    [config] = describe_fleet(1, seed=11)
    meter_id = await _register(api, config.serial, config.meter_number)
    async with MqttFleet(
        mqtt_broker.host,
        mqtt_broker.port,
        [config],
        topic_prefix=system.settings.mqtt_topic_prefix,
        mqtt_v5=mqtt_broker.supports_v5,
    ):
        response = await api.post(
            f"/api/meters/{meter_id}/commands", json={"name": "disconnect", "reason": "test"}
        )
        assert response.status_code == 202, response.text
        command_id = response.json()["id"]

        async def final_state() -> str | None:
            body = (await api.get(f"/api/commands/{command_id}")).json()
            return body["state"] if body["state"] in ("confirmed", "failed", "expired") else None

        assert await eventually(final_state, timeout_s=30) == "confirmed"
