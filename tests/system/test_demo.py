"""``gridvend demo`` end to end: it comes up, serves meters with readings, and stops."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from gridvend.demo import DEMO_ADMIN, run_demo
from gridvend.settings import Settings


async def test_the_demo_serves_simulated_readings_and_stops_cleanly(tmp_path: Path) -> None:
    announcements: list[str] = []
    settings = Settings(data_dir=tmp_path, api_port=0)
    task = asyncio.create_task(
        run_demo(settings, meters=3, speed=60, seed=5, announce=announcements.append)
    )
    try:
        while not announcements:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.05)
        text = announcements[0]
        base_url = text.split("ready on ")[1].split()[0]
        password = text.split("password '")[1].split("'")[0]
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            login = await client.post(
                "/api/auth/token", data={"username": DEMO_ADMIN, "password": password}
            )
            headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
            meters = (await client.get("/api/meters", headers=headers)).json()
            assert len(meters) == 3
            for _ in range(200):
                readings = (
                    await client.get(f"/api/meters/{meters[0]['id']}/readings", headers=headers)
                ).json()
                if readings:
                    break
                await asyncio.sleep(0.05)
            assert readings
            rejected = (await client.get("/api/headend/rejected-messages", headers=headers)).json()
            assert rejected == []  # simulated time is the validation's "now" in the demo
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
