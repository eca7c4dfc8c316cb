"""Many simulated meters in one process: who they are, and running them over MQTT.

:func:`describe_fleet` makes a reproducible list of meter configurations from a count
and a seed (serials, STS meter numbers, load profiles, initial registers).
:class:`MqttFleet` runs such a list against an MQTT broker as an async context manager:
every meter connects, publishes its status, a reading at start and one every interval
of simulated time, its events, and answers commands until the context exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import TracebackType
from typing import Self

from meter_sim.agent import MqttMeterAgent
from meter_sim.clock import SimClock
from meter_sim.faults import NO_FAULTS, FaultConfig
from meter_sim.load import LoadProfile, epoch_seconds, mix64
from meter_sim.model import DecoderSettings, MeterConfig, MeterModel, PrepaidMode
from meter_sim.mqtt_client import MeterLink
from protocols.mqtt import TopicScheme
from protocols.sts import MeterNumberError, MeterPan

SIM_MANUFACTURER_CODE = "99"  # two-digit STS manufacturer code used for simulated meters


class FleetError(ValueError):
    """A fleet was asked for with invalid parameters, or could not connect."""


def sts_meter_pan(decoder_serial: int, manufacturer_code: str = SIM_MANUFACTURER_CODE) -> str:
    """The 18-digit STS PAN: IIN 600727 + DRN (MfrCode + 8-digit serial + Luhn) + Luhn."""
    if not 0 <= decoder_serial < 10**8:
        raise FleetError(f"decoder serial must have at most 8 digits: {decoder_serial}")
    try:
        return MeterPan.from_parts(manufacturer_code, f"{decoder_serial:08d}").digits
    except MeterNumberError as exc:
        raise FleetError(str(exc)) from None


def describe_fleet(
    count: int,
    seed: int,
    *,
    prefix: str = "SIM",
    prepaid_mode: PrepaidMode = PrepaidMode.TOKEN,
    three_phase_every: int = 10,
    central_every: int = 0,
    faults: FaultConfig = NO_FAULTS,
    decoder: DecoderSettings | None = None,
) -> list[MeterConfig]:
    """``count`` meter configurations, the same for the same ``count``, ``seed`` and options.

    Serials are ``{prefix}-{8-digit decoder serial}``; meter numbers are valid STS PANs
    (IIN 600727, manufacturer code 99, Luhn check digits), unique within the fleet.
    Every ``three_phase_every``-th meter is three-phase (0: none); every
    ``central_every``-th meter is a central-balance meter whatever ``prepaid_mode`` says
    (0: none), for fleets that mix both kinds. Load profiles,
    initial energy and initial credit (token mode) vary per meter from the seed.
    Raise :class:`FleetError` for a count outside 0..1,000,000 or a bad prefix.
    """
    if not 0 <= count <= 1_000_000:
        raise FleetError(f"count must be 0..1000000: {count}")
    if not prefix or not all(c.isalnum() or c in "_.-" for c in prefix) or len(prefix) > 40:
        raise FleetError(f"prefix must be 1-40 letters, digits or '_.-': {prefix!r}")
    if three_phase_every < 0 or central_every < 0:
        raise FleetError("three_phase_every and central_every must not be negative")
    first_serial = mix64(seed, 9) % (10**8 - count) if count else 0
    configs = []
    for index in range(count):
        rng = random.Random(mix64(seed, 11, index))
        decoder_serial = first_serial + index
        three_phase = three_phase_every > 0 and index % three_phase_every == three_phase_every - 1
        central = central_every > 0 and index % central_every == central_every - 1
        base = rng.randrange(60, 260, 10)
        peak = rng.randrange(1200, 4200, 100) * (3 if three_phase else 1)
        configs.append(
            MeterConfig(
                serial=f"{prefix}-{decoder_serial:08d}",
                meter_number=sts_meter_pan(decoder_serial),
                phases=3 if three_phase else 1,
                prepaid_mode=PrepaidMode.CENTRAL if central else prepaid_mode,
                rated_max_current_a=80 if three_phase else 60,
                load=LoadProfile(base_load_w=base, peak_load_w=peak),
                seed=mix64(seed, 12, index),
                initial_energy_kwh=Decimal(rng.randrange(0, 20_000_000)).scaleb(-3),
                initial_credit_kwh=Decimal(rng.randrange(20_000, 150_000)).scaleb(-3),
                decoder=decoder or DecoderSettings(),
                faults=faults,
            )
        )
    return configs


@dataclass(frozen=True, slots=True)
class FleetStats:
    """Counters over the whole fleet."""

    meters: int
    connected: int
    readings: int
    events: int
    commands: int
    bad_commands: int
    published: int
    simulated_now: datetime
    lag_s: float  # how far the reading schedule runs behind real time
    boundary_s: float  # real seconds the last interval's readings took to take and queue


class MqttFleet:
    """Run simulated meters against an MQTT broker (async context manager).

    ``speed`` simulated seconds pass per real second; readings are taken at every
    multiple of ``interval_s`` simulated seconds (aligned to the Unix epoch, so 900 gives
    :00/:15/:30/:45) and once at start; each meter uploads its reading a seeded delay of
    up to ``upload_spread_s`` simulated seconds after the interval end (0: at once), but
    always stamped with the interval end. Meters that could raise an event (credit
    running out, a power limit) are advanced every ``poll_s`` simulated seconds so
    their events go out promptly; the others only when a reading or command is due.
    ``start`` is the simulated start time (default: now, UTC, whole seconds).
    Entering the context returns once every meter is connected and online; raise
    :class:`FleetError` if the broker refuses or cannot be reached. Exiting publishes a
    retained ``offline`` status for each meter and disconnects.
    """

    def __init__(
        self,
        host: str,
        port: int,
        configs: Sequence[MeterConfig],
        *,
        topic_prefix: str = "",
        speed: float = 60.0,
        interval_s: int = 900,
        mqtt_v5: bool = True,
        start: datetime | None = None,
        poll_s: int = 60,
        upload_spread_s: int = 0,
        keepalive_s: int = 60,
        connect_concurrency: int = 64,
        connect_timeout_s: float = 60.0,
        wall: Callable[[], datetime] | None = None,
    ) -> None:
        if not 1 <= interval_s <= 86_400:
            raise FleetError(f"interval_s must be 1..86400: {interval_s}")
        if not 1 <= poll_s <= interval_s:
            raise FleetError(f"poll_s must be 1..interval_s: {poll_s}")
        if not 0 <= upload_spread_s < interval_s:
            raise FleetError(f"upload_spread_s must be 0..interval_s-1: {upload_spread_s}")
        serials = [c.serial for c in configs]
        if len(set(serials)) != len(serials):
            raise FleetError("meter serials in a fleet must be unique")
        if speed <= 0:
            raise FleetError(f"speed must be positive: {speed}")
        self._host = host
        self._port = port
        self._configs = list(configs)
        self._scheme = TopicScheme(prefix=topic_prefix)
        self._speed = speed
        self._interval_s = interval_s
        self._poll_s = poll_s
        self._upload_spread_s = upload_spread_s
        self._mqtt_v5 = mqtt_v5
        self._start = start
        self._keepalive_s = keepalive_s
        self._connect_concurrency = connect_concurrency
        self._connect_timeout_s = connect_timeout_s
        self._wall = wall
        self._links: list[MeterLink] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._scheduler: asyncio.Task[None] | None = None
        self._clock: SimClock | None = None
        self._lag_s = 0.0
        self._boundary_s = 0.0

    # --- inspection ------------------------------------------------------------------

    @property
    def clock(self) -> SimClock:
        if self._clock is None:
            raise FleetError("the fleet is not running")
        return self._clock

    @property
    def models(self) -> Mapping[str, MeterModel]:
        """The meter models by serial (for status displays; drive meters over MQTT)."""
        return {link.agent.meter_id: link.agent.model for link in self._links}

    @property
    def scheme(self) -> TopicScheme:
        return self._scheme

    def now(self) -> datetime:
        """Simulated time now."""
        return self.clock.now(asyncio.get_running_loop().time())

    def stats(self) -> FleetStats:
        agents = [link.agent for link in self._links]
        return FleetStats(
            meters=len(self._links),
            connected=sum(link.connected.is_set() for link in self._links),
            readings=sum(a.stats.readings for a in agents),
            events=sum(a.stats.events for a in agents),
            commands=sum(a.stats.commands for a in agents),
            bad_commands=sum(a.stats.bad_commands for a in agents),
            published=sum(link.published for link in self._links),
            simulated_now=self.now(),
            lag_s=self._lag_s,
            boundary_s=self._boundary_s,
        )

    # --- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        start = self._start or datetime.now(UTC).replace(microsecond=0)
        self._clock = SimClock(start, self._speed, real_origin=loop.time())
        gate = asyncio.Semaphore(self._connect_concurrency)
        link_options: dict[str, object] = {}
        if self._wall is not None:
            link_options["wall"] = self._wall
        for config in self._configs:
            agent = MqttMeterAgent(
                MeterModel(config, start),
                self._scheme,
                interval_s=self._interval_s,
                upload_spread_s=self._upload_spread_s,
            )
            link = MeterLink(
                agent,
                self._host,
                self._port,
                clock=self._clock,
                mqtt_v5=self._mqtt_v5,
                keepalive_s=self._keepalive_s,
                connect_gate=gate,
                **link_options,  # type: ignore[arg-type]
            )
            link.send(agent.reading(start))
            self._links.append(link)
        self._tasks = [asyncio.create_task(link.run()) for link in self._links]
        try:
            await self._wait_connected()
        except BaseException:
            await self._shutdown()
            raise
        # Simulated time starts when every meter is online, however long connecting took.
        self._clock.rebase(loop.time())
        self._scheduler = asyncio.create_task(self._schedule(start))
        return self

    async def _wait_connected(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_timeout_s
        for link in self._links:
            while not link.connected.is_set():
                if link.connect_error is not None:
                    raise FleetError(
                        f"meter {link.agent.meter_id} could not connect to "
                        f"{self._host}:{self._port}: {link.connect_error}"
                    )
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise FleetError(
                        f"meters not connected after {self._connect_timeout_s} s "
                        f"({sum(x.connected.is_set() for x in self._links)}/{len(self._links)})"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(link.connected.wait(), min(remaining, 0.2))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._shutdown()

    async def _shutdown(self) -> None:
        if self._scheduler is not None:
            self._scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduler
            self._scheduler = None
        for link in self._links:
            link.stop()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=max(5.0, len(self._tasks) / 500))
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _schedule(self, start: datetime) -> None:
        loop = asyncio.get_running_loop()
        clock = self.clock
        poll = timedelta(seconds=self._poll_s)
        first = epoch_seconds(start) // self._poll_s * self._poll_s + self._poll_s
        tick = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=first)
        while True:
            delay = clock.real_at(tick) - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._lag_s = max(0.0, -delay)
            began = loop.time()
            readings_taken = False
            for index, link in enumerate(self._links):
                agent = link.agent
                if agent.next_reading_at + agent.upload_delay <= tick:
                    readings_taken = True
                    link.send(agent.due_readings(tick))
                    if agent.faults.go_offline():
                        offline = self._interval_s * agent.faults.config.offline_intervals
                        link.go_offline(tick + timedelta(seconds=offline))
                elif agent.model.may_change_before(tick):
                    link.send(agent.tick(tick))
                if index % 256 == 255:
                    await asyncio.sleep(0)  # let replies and publishes through
            if readings_taken:
                self._boundary_s = loop.time() - began
            tick += poll
