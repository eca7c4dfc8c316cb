"""Commissioning: the guided workflow a field technician runs on site for an installed meter.

The steps, in order (``STEPS``):

1. ``verify_communication``: the meter answers (its supply voltage is read).
2. ``nameplate``: the serial, meter number and phases the meter reports match the registry.
3. ``install_reading``: the import energy register is read and stored as the install reading.
4. ``relay_test``: open, confirm open, close, confirm closed (skipped for meters without
   a relay, which use an external contactor).
5. ``set_clock``: the meter's clock is read (its offset recorded), set to UTC now and read
   back (skipped when the meter has no clock register).
6. ``load_keys``: the key change tokens from the injected ``KeyLoader`` (vending's security
   module, adapted by the composition root) are entered and must be accepted; without a
   loader, or when the meter has no remote token entry, the step is recorded as pending
   ("pending: vending key change"); skipped for central-balance meters.
7. ``report``: the commissioning report is assembled; the meter becomes ``commissioned``.

Each step's result is committed as soon as the step ends, so a technician (or the API)
can follow the run step by step and nothing is lost if the session drops. A failed step
ends the run as failed with the step and the reason; the meter stays ``installed``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from headend.audit import AuditSink
from headend.meter_link import (
    MeterLink,
    MeterLinkError,
    Nameplate,
    NotSupported,
    modbus_rtu_link,
    modbus_tcp_link,
)
from headend.models import (
    READING_VALUE_TYPE,
    CommissioningRun,
    CommissioningStep,
    Meter,
    MeterLifecycle,
    MeterProtocol,
    PrepaidMode,
    Reading,
)
from headend.registry import RegistryError, get_meter, meter_pan, transition_meter
from protocols.quantities import Quantity

log = logging.getLogger(__name__)


class Step(StrEnum):
    VERIFY_COMMUNICATION = "verify_communication"
    NAMEPLATE = "nameplate"
    INSTALL_READING = "install_reading"
    RELAY_TEST = "relay_test"
    SET_CLOCK = "set_clock"
    LOAD_KEYS = "load_keys"
    REPORT = "report"


STEPS: tuple[Step, ...] = tuple(Step)


class StepStatus(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"  # the meter has no such function; not a failure
    PENDING = "pending"  # waits for another part of the system (vending's key change)


class RunStatus(StrEnum):
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"


# A run left "running" this long (a dropped session, a crashed process) no longer blocks a
# new run of the same meter; it is closed as abandoned when the new one starts.
STALE_RUN_AFTER = timedelta(minutes=30)
KEY_CHANGE_PENDING = "pending: vending key change"
# A clock read back further than this from the time it was set to fails the step
# (whole-second registers and a slow link account for a few seconds).
CLOCK_TOLERANCE_S = 10


class CommissioningError(ValueError):
    """A request the workflow refuses; ``code`` is machine-readable.

    Codes: ``meter_not_found``, ``meter_not_installed``, ``commissioning_in_progress``,
    ``run_not_found``, ``run_finished``, ``step_conflict``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class MeterAddress:
    """How to reach a meter, copied from the registry (no session needed to use it)."""

    meter_id: int
    serial: str
    comm_id: str
    protocol: str
    modbus_profile: str | None = None
    modbus_host: str | None = None
    modbus_port: int | None = None
    rtu_port: str | None = None
    rtu_baud: int | None = None
    rtu_parity: str | None = None
    modbus_unit: int | None = None

    @classmethod
    def of(cls, meter: Meter) -> MeterAddress:
        return cls(
            meter_id=meter.id,
            serial=meter.serial,
            comm_id=meter.comm_id,
            protocol=meter.protocol,
            modbus_profile=meter.modbus_profile,
            modbus_host=meter.modbus_host,
            modbus_port=meter.modbus_port,
            rtu_port=meter.rtu_port,
            rtu_baud=meter.rtu_baud,
            rtu_parity=meter.rtu_parity,
            modbus_unit=meter.modbus_unit,
        )


LinkFactory = Callable[[MeterAddress], AbstractAsyncContextManager[MeterLink]]


class KeyLoadUnavailable(Exception):
    """The key change tokens cannot be issued now (no key in the key store, vending
    unreachable); the load-keys step stays pending with this reason."""


@dataclass(frozen=True, slots=True)
class KeyLoadRequest:
    """The meter and the decoder key the registry says it must hold (no secrets)."""

    meter_id: int
    serial: str
    meter_number: str  # DRN
    supply_group_code: str
    tariff_index: str
    key_revision: int
    key_type: int | None = None
    base_date: int | None = None
    key_expiry_number: int | None = None
    encryption_algorithm: str | None = None
    dkga: str | None = None


class KeyLoader(Protocol):
    """Issues key change tokens; the composition root adapts vending's security module."""

    def key_change_tokens(self, request: KeyLoadRequest) -> Sequence[str]:
        """The 20-digit key change tokens, in entry order, that move the meter from the
        key it holds to the one in ``request`` (empty if it holds it already).

        Raises:
            KeyLoadUnavailable: the tokens cannot be issued now.
        """
        ...

    def keys_loaded(
        self, request: KeyLoadRequest, tokens: Sequence[str], *, technician: str
    ) -> None:
        """The meter accepted every one of ``tokens`` (entered over its link during
        ``technician``'s commissioning run): keep the change in the meter's key history."""
        ...


@asynccontextmanager
async def open_meter_link(address: MeterAddress) -> AsyncIterator[MeterLink]:
    """The default link: Modbus TCP or RTU from the registry's address.

    Raises:
        MeterLinkError: the meter cannot be reached, or it is an MQTT meter (those need
            ``headend.meter_link_mqtt.commissioning_link_factory`` and the command queue).
    """
    protocol = MeterProtocol(address.protocol)
    if protocol is MeterProtocol.MODBUS_TCP:
        assert address.modbus_host and address.modbus_profile and address.modbus_unit
        async with modbus_tcp_link(
            address.modbus_host,
            address.modbus_port or 502,
            address.modbus_unit,
            address.modbus_profile,
        ) as link:
            yield link
    elif protocol is MeterProtocol.MODBUS_RTU:
        assert address.rtu_port and address.modbus_profile and address.modbus_unit
        async with modbus_rtu_link(
            address.rtu_port,
            address.modbus_unit,
            address.modbus_profile,
            baudrate=address.rtu_baud or 9600,
            parity=address.rtu_parity or "N",
        ) as link:
            yield link
    else:
        raise MeterLinkError(
            f"meter {address.serial} speaks {protocol.value}; this link opens Modbus only "
            "(MQTT meters are commissioned through the command queue: "
            "headend.meter_link_mqtt.commissioning_link_factory, as the API does)"
        )


@dataclass(frozen=True, slots=True)
class _MeterFacts:
    """The registry's record of the meter, as the steps compare against it."""

    meter_id: int
    serial: str
    meter_number: str | None
    phases: int
    prepaid_mode: str
    key_fields: dict[str, Any]

    @classmethod
    def of(cls, meter: Meter) -> _MeterFacts:
        return cls(
            meter_id=meter.id,
            serial=meter.serial,
            meter_number=meter.meter_number,
            phases=meter.phases,
            prepaid_mode=meter.prepaid_mode,
            key_fields={
                "supply_group_code": meter.supply_group_code,
                "tariff_index": meter.tariff_index,
                "key_revision": meter.key_revision,
                "key_type": meter.key_type,
                "base_date": meter.base_date,
                "key_expiry_number": meter.key_expiry_number,
                "encryption_algorithm": meter.encryption_algorithm,
                "dkga": meter.dkga,
            },
        )


@dataclass(frozen=True, slots=True)
class StepOutcome:
    status: StepStatus
    message: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StepResult:
    """One stored step as the API and CLI show it."""

    position: int
    step: Step
    status: StepStatus
    message: str
    detail: dict[str, Any]
    started_at: datetime
    finished_at: datetime


@dataclass(frozen=True, slots=True)
class RunView:
    """A commissioning run with its stored steps and, once passed, its report."""

    run_id: int
    meter_id: int
    technician: str
    status: RunStatus
    started_at: datetime
    finished_at: datetime | None
    failed_step: str | None
    failure_reason: str
    steps: tuple[StepResult, ...]
    report: dict[str, Any] | None

    @property
    def next_step(self) -> Step | None:
        if self.status is not RunStatus.RUNNING:
            return None
        return STEPS[len(self.steps)] if len(self.steps) < len(STEPS) else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "meter_id": self.meter_id,
            "technician": self.technician,
            "status": self.status.value,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "failed_step": self.failed_step,
            "failure_reason": self.failure_reason,
            "next_step": self.next_step.value if self.next_step else None,
            "steps": [
                {
                    "position": s.position,
                    "step": s.step.value,
                    "status": s.status.value,
                    "message": s.message,
                    "detail": s.detail,
                    "started_at": s.started_at.isoformat(),
                    "finished_at": s.finished_at.isoformat(),
                }
                for s in self.steps
            ],
            "report": self.report,
        }


def _numeric_serial(serial: str) -> int | None:
    digits = "".join(ch for ch in serial if ch.isdigit())
    return int(digits) % (1 << 32) if digits else None


def _compare_nameplate(facts: _MeterFacts, plate: Nameplate) -> list[str]:
    """The differences between what the meter reports and the registry, in words."""
    mismatches: list[str] = []
    if plate.serial is not None:
        if plate.serial != facts.serial:
            mismatches.append(f"serial: meter reports {plate.serial}, registry has {facts.serial}")
    elif plate.numeric_serial is not None and plate.numeric_serial != _numeric_serial(facts.serial):
        mismatches.append(
            f"serial number: meter reports {plate.numeric_serial}, registry has {facts.serial}"
        )
    if plate.meter_number:
        try:
            reported = meter_pan(plate.meter_number)
        except ValueError as exc:
            mismatches.append(f"meter number: the meter reports an invalid number ({exc})")
        else:
            if facts.meter_number is None:
                mismatches.append(
                    f"meter number: meter reports {plate.meter_number}, registry has none"
                )
            elif reported != meter_pan(facts.meter_number):
                mismatches.append(
                    f"meter number: meter reports {plate.meter_number}, "
                    f"registry has {facts.meter_number}"
                )
    if plate.phases is not None and plate.phases != facts.phases:
        mismatches.append(f"phases: meter has {plate.phases}, registry has {facts.phases}")
    return mismatches


class Commissioning:
    """Runs and stores commissioning for meters in the registry.

    ``link_factory`` opens a ``MeterLink`` for a meter's address (default: Modbus TCP/RTU
    from the registry); ``key_loader`` issues the key change tokens for the load-keys
    step (without one the step stays pending); ``clock`` gives the aware UTC time.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        audit: AuditSink | None = None,
        link_factory: LinkFactory = open_meter_link,
        key_loader: KeyLoader | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._session_factory = session_factory
        self._key_loader = key_loader
        self._audit = audit
        self._link_factory = link_factory
        self._clock = clock

    # --- starting and reading runs ------------------------------------------------------

    def start(self, meter_id: int, *, technician: str) -> int:
        """Open a new run for an installed meter and return its id.

        Raises:
            CommissioningError: ``meter_not_found``, ``meter_not_installed``, or
                ``commissioning_in_progress`` (another run of this meter is running).
        """
        now = self._clock()
        with self._session_factory() as session, session.begin():
            meter = self._meter(session, meter_id, lock=True)
            if meter.lifecycle != MeterLifecycle.INSTALLED.value:
                raise CommissioningError(
                    "meter_not_installed",
                    f"meter {meter.serial} is {meter.lifecycle}; only an installed meter is "
                    "commissioned",
                )
            for running in session.scalars(
                select(CommissioningRun).where(
                    CommissioningRun.meter_id == meter_id,
                    CommissioningRun.status == RunStatus.RUNNING.value,
                )
            ):
                if now - running.started_at < STALE_RUN_AFTER:
                    raise CommissioningError(
                        "commissioning_in_progress",
                        f"run {running.id} for meter {meter.serial} is still running "
                        f"(started by {running.technician})",
                    )
                running.status = RunStatus.FAILED.value
                running.finished_at = now
                running.failure_reason = "abandoned: no result before a new run started"
            run = CommissioningRun(
                meter_id=meter_id,
                technician=technician,
                status=RunStatus.RUNNING.value,
                started_at=now,
                failure_reason="",
            )
            session.add(run)
            session.flush()
            return run.id

    def get_run(self, run_id: int) -> RunView:
        """The run and its stored steps.

        Raises:
            CommissioningError: ``run_not_found``.
        """
        with self._session_factory() as session:
            return self._view(session, self._run(session, run_id))

    def runs_of(self, meter_id: int) -> list[RunView]:
        """Every run of a meter, newest first."""
        with self._session_factory() as session:
            runs = session.scalars(
                select(CommissioningRun)
                .where(CommissioningRun.meter_id == meter_id)
                .order_by(CommissioningRun.id.desc())
            )
            return [self._view(session, run) for run in runs]

    # --- running steps -----------------------------------------------------------------

    async def run_next_step(self, run_id: int) -> RunView:
        """Run the next step of ``run_id`` over a freshly opened link and store it.

        A meter that cannot be reached fails the step it was needed for.

        Raises:
            CommissioningError: ``run_not_found`` or ``run_finished``.
        """
        step, address = self._next(run_id)
        try:
            async with self._link_factory(address) as link:
                return await self._run_step(run_id, step, link)
        except MeterLinkError as exc:
            # Raised while opening the link: no step ran, so this one fails for it.
            return self._store(run_id, step, StepOutcome(StepStatus.FAILED, str(exc)), now=None)

    async def commission(self, meter_id: int, *, technician: str) -> RunView:
        """Start a run and take it through every step over one link (the CLI's way).

        Raises:
            CommissioningError: as ``start``.
        """
        run_id = self.start(meter_id, technician=technician)
        step, address = self._next(run_id)
        try:
            async with self._link_factory(address) as link:
                view = await self._run_step(run_id, step, link)
                while view.next_step is not None:
                    view = await self._run_step(run_id, view.next_step, link)
                return view
        except MeterLinkError as exc:
            return self._store(run_id, step, StepOutcome(StepStatus.FAILED, str(exc)), now=None)

    def _next(self, run_id: int) -> tuple[Step, MeterAddress]:
        with self._session_factory() as session:
            run = self._run(session, run_id)
            view = self._view(session, run)
            if view.next_step is None:
                raise CommissioningError(
                    "run_finished", f"run {run_id} has finished ({view.status.value})"
                )
            return view.next_step, MeterAddress.of(self._meter(session, run.meter_id))

    async def _run_step(self, run_id: int, step: Step, link: MeterLink) -> RunView:
        started = self._clock()
        with self._session_factory() as session:
            run = self._run(session, run_id)
            facts = _MeterFacts.of(self._meter(session, run.meter_id))
            technician = run.technician
        try:
            outcome = await self._perform(step, facts, link, technician)
        except NotSupported as exc:
            outcome = StepOutcome(StepStatus.SKIPPED, str(exc))
        except MeterLinkError as exc:
            outcome = StepOutcome(StepStatus.FAILED, str(exc))
        except Exception as exc:  # a bug must not leave the run running without a reason
            log.exception("commissioning step %s of run %s crashed", step.value, run_id)
            outcome = StepOutcome(StepStatus.FAILED, f"internal error: {exc!r}")
        return self._store(run_id, step, outcome, now=started)

    async def _perform(
        self, step: Step, facts: _MeterFacts, link: MeterLink, technician: str
    ) -> StepOutcome:
        if step is Step.VERIFY_COMMUNICATION:
            voltage = await link.read_register(Quantity.VOLTAGE_V)
            return StepOutcome(
                StepStatus.PASSED, f"meter answers; supply {voltage} V", {"voltage_v": str(voltage)}
            )
        if step is Step.NAMEPLATE:
            plate = await link.read_nameplate()
            mismatches = _compare_nameplate(facts, plate)
            detail = {"meter": plate.as_dict(), "mismatches": mismatches}
            if mismatches:
                return StepOutcome(StepStatus.FAILED, "; ".join(mismatches), detail)
            return StepOutcome(StepStatus.PASSED, "nameplate matches the registry", detail)
        if step is Step.INSTALL_READING:
            return await self._install_reading(facts, link)
        if step is Step.RELAY_TEST:
            return await _relay_test(link)
        if step is Step.SET_CLOCK:
            return await self._set_clock(link)
        if step is Step.LOAD_KEYS:
            return await _load_keys(facts, link, self._key_loader, technician)
        return StepOutcome(StepStatus.PASSED, "commissioning report produced")

    async def _set_clock(self, link: MeterLink) -> StepOutcome:
        """Read the meter's clock (its error is worth recording), set it, read it back."""
        found = await link.read_clock()
        offset_s = int((found - self._clock()).total_seconds())
        await link.set_clock(self._clock())
        after = await link.read_clock()
        error_s = int((after - self._clock()).total_seconds())
        detail = {
            "found": found.isoformat(),
            "offset_s": offset_s,
            "after": after.isoformat(),
            "error_after_s": error_s,
        }
        if abs(error_s) > CLOCK_TOLERANCE_S:
            return StepOutcome(
                StepStatus.FAILED,
                f"the meter's clock reads {after.isoformat()} after setting, {error_s} s off",
                detail,
            )
        return StepOutcome(StepStatus.PASSED, f"clock set; it was {offset_s} s off", detail)

    async def _install_reading(self, facts: _MeterFacts, link: MeterLink) -> StepOutcome:
        value = READING_VALUE_TYPE.quantize(await link.read_register(Quantity.ENERGY_IMPORT_KWH))
        if value < 0:
            return StepOutcome(
                StepStatus.FAILED, f"the import register reads {value} kWh, below zero"
            )
        at = self._clock()
        with self._session_factory() as session, session.begin():
            stored = session.scalar(
                select(Reading.value).where(
                    Reading.meter_id == facts.meter_id,
                    Reading.quantity == Quantity.ENERGY_IMPORT_KWH.value,
                    Reading.ts == at,
                )
            )
            if stored is not None and stored != value:
                return StepOutcome(
                    StepStatus.FAILED,
                    f"a reading at {at.isoformat()} is already stored as {stored} kWh; "
                    f"the meter now reads {value} kWh",
                )
            if stored is None:  # the same reading stored twice is one reading
                session.add(
                    Reading(
                        meter_id=facts.meter_id,
                        quantity=Quantity.ENERGY_IMPORT_KWH.value,
                        ts=at,
                        value=value,
                        source="commissioning",
                        received_at=at,
                    )
                )
        return StepOutcome(
            StepStatus.PASSED,
            f"install reading {value} kWh",
            {"energy_import_kwh": str(value), "read_at": at.isoformat()},
        )

    # --- storage -----------------------------------------------------------------------

    def _store(
        self, run_id: int, step: Step, outcome: StepOutcome, *, now: datetime | None
    ) -> RunView:
        finished = self._clock()
        try:
            return self._store_in_transaction(run_id, step, outcome, started=now, finished=finished)
        except IntegrityError:
            # The unique (run, step) caught a race the check below could not see (SQLite).
            raise CommissioningError(
                "step_conflict", f"{step.value} of run {run_id} was stored by another request"
            ) from None

    def _store_in_transaction(
        self,
        run_id: int,
        step: Step,
        outcome: StepOutcome,
        *,
        started: datetime | None,
        finished: datetime,
    ) -> RunView:
        with self._session_factory() as session, session.begin():
            run = self._run(session, run_id, lock=True)
            stored = self._steps(session, run_id)
            expected = self._view(session, run).next_step
            if expected is not step:
                # Two requests ran the same step of one run at once; the first one counts.
                raise CommissioningError(
                    "step_conflict",
                    f"run {run_id} has moved on (next step: "
                    f"{expected.value if expected else 'none'}); {step.value} was not stored",
                )
            position = len(stored) + 1
            if step is Step.VERIFY_COMMUNICATION and outcome.status is StepStatus.PASSED:
                session.execute(
                    update(Meter)
                    .where(
                        Meter.id == run.meter_id,
                        or_(Meter.last_seen_at.is_(None), Meter.last_seen_at < finished),
                    )
                    .values(last_seen_at=finished)
                )
            session.add(
                CommissioningStep(
                    run_id=run_id,
                    position=position,
                    step=step.value,
                    status=outcome.status.value,
                    detail=outcome.detail,
                    message=outcome.message,
                    started_at=started or finished,
                    finished_at=finished,
                )
            )
            session.flush()
            if outcome.status is StepStatus.FAILED:
                self._finish(session, run, RunStatus.FAILED, finished, step, outcome.message)
            elif step is Step.REPORT:
                self._pass(session, run, finished)
            return self._view(session, run)

    def _pass(self, session: Session, run: CommissioningRun, now: datetime) -> None:
        report = self._report(session, run, now)
        # The registry lets a meter become commissioned only after a passed run.
        run.status = RunStatus.PASSED.value
        session.flush()
        try:
            transition_meter(
                session,
                run.meter_id,
                MeterLifecycle.COMMISSIONED,
                actor=run.technician,
                reason=f"commissioning run {run.id} passed",
                audit=self._audit,
                now=now,
            )
        except RegistryError as exc:
            # Someone moved the meter while the run was going: the run cannot pass.
            self._finish(session, run, RunStatus.FAILED, now, Step.REPORT, str(exc))
            return
        run.report = report
        self._finish(session, run, RunStatus.PASSED, now, None, "")

    def _finish(
        self,
        session: Session,
        run: CommissioningRun,
        status: RunStatus,
        now: datetime,
        failed_step: Step | None,
        reason: str,
    ) -> None:
        run.status = status.value
        run.finished_at = now
        run.failed_step = failed_step.value if failed_step else None
        run.failure_reason = reason
        meter = self._meter(session, run.meter_id)
        if self._audit is not None:
            self._audit.record(
                session,
                actor=run.technician,
                action="meter.commission",
                subject=f"meter:{meter.serial}",
                detail={
                    "run_id": run.id,
                    "result": status.value,
                    "failed_step": run.failed_step,
                    "reason": reason,
                },
            )

    def _report(self, session: Session, run: CommissioningRun, now: datetime) -> dict[str, Any]:
        meter = self._meter(session, run.meter_id)
        steps = self._steps(session, run.id)
        by_step = {s.step: s for s in steps}
        reading = by_step.get(Step.INSTALL_READING.value)
        return {
            "meter": {
                "id": meter.id,
                "serial": meter.serial,
                "meter_number": meter.meter_number,
                "model": meter.model,
                "phases": meter.phases,
                "protocol": meter.protocol,
                "prepaid_mode": meter.prepaid_mode,
                "location": meter.location,
            },
            "technician": run.technician,
            "started_at": run.started_at.isoformat(),
            "finished_at": now.isoformat(),
            "install_reading_kwh": reading.detail.get("energy_import_kwh") if reading else None,
            "steps": [
                {"step": s.step, "status": s.status, "message": s.message}
                for s in steps
                if s.step != Step.REPORT.value
            ],
            "pending": [s.step for s in steps if s.status == StepStatus.PENDING.value],
        }

    # --- lookups -----------------------------------------------------------------------

    @staticmethod
    def _meter(session: Session, meter_id: int, *, lock: bool = False) -> Meter:
        if lock:
            meter = session.scalar(select(Meter).where(Meter.id == meter_id).with_for_update())
            if meter is None:
                raise CommissioningError("meter_not_found", f"no meter {meter_id}")
            return meter
        try:
            return get_meter(session, meter_id)
        except RegistryError:
            raise CommissioningError("meter_not_found", f"no meter {meter_id}") from None

    @staticmethod
    def _run(session: Session, run_id: int, *, lock: bool = False) -> CommissioningRun:
        query = select(CommissioningRun).where(CommissioningRun.id == run_id)
        run = session.scalar(query.with_for_update() if lock else query)
        if run is None:
            raise CommissioningError("run_not_found", f"no commissioning run {run_id}")
        return run

    @staticmethod
    def _steps(session: Session, run_id: int) -> list[CommissioningStep]:
        return list(
            session.scalars(
                select(CommissioningStep)
                .where(CommissioningStep.run_id == run_id)
                .order_by(CommissioningStep.position)
            )
        )

    def _view(self, session: Session, run: CommissioningRun) -> RunView:
        return RunView(
            run_id=run.id,
            meter_id=run.meter_id,
            technician=run.technician,
            status=RunStatus(run.status),
            started_at=run.started_at,
            finished_at=run.finished_at,
            failed_step=run.failed_step,
            failure_reason=run.failure_reason,
            steps=tuple(
                StepResult(
                    position=s.position,
                    step=Step(s.step),
                    status=StepStatus(s.status),
                    message=s.message,
                    detail=dict(s.detail),
                    started_at=s.started_at,
                    finished_at=s.finished_at,
                )
                for s in self._steps(session, run.id)
            ),
            report=run.report,
        )


async def _relay_test(link: MeterLink) -> StepOutcome:
    """Open, confirm, close, confirm. Any read-back that disagrees fails the step."""
    detail: dict[str, Any] = {"initially_closed": await link.read_relay()}
    await link.set_relay(False)
    detail["after_open_closed"] = opened_reads_closed = await link.read_relay()
    if opened_reads_closed:
        return StepOutcome(
            StepStatus.FAILED, "relay did not open: it still reads closed after the open", detail
        )
    try:
        await link.set_relay(True)
    except MeterLinkError as exc:
        return StepOutcome(
            StepStatus.FAILED, f"relay opened but did not close: {exc}; supply is off", detail
        )
    detail["after_close_closed"] = closed = await link.read_relay()
    if not closed:
        return StepOutcome(
            StepStatus.FAILED, "relay did not close: it reads open after the close", detail
        )
    return StepOutcome(StepStatus.PASSED, "relay opened and closed on command", detail)


async def _load_keys(
    facts: _MeterFacts, link: MeterLink, key_loader: KeyLoader | None, technician: str
) -> StepOutcome:
    """Enter the key change tokens the loader issues, or record the step as pending."""
    if facts.prepaid_mode == PrepaidMode.CENTRAL.value:
        return StepOutcome(StepStatus.SKIPPED, "central-balance meter: no STS keys to load")
    missing = [
        name
        for name in ("supply_group_code", "tariff_index", "key_revision")
        if facts.key_fields.get(name) is None
    ]
    if facts.meter_number is None:
        missing.insert(0, "meter_number")
    detail: dict[str, Any] = {"key": facts.key_fields, "missing": missing}
    if missing:
        return StepOutcome(
            StepStatus.PENDING,
            f"{KEY_CHANGE_PENDING} (registry lacks {', '.join(missing)})",
            detail,
        )
    if key_loader is None:
        return StepOutcome(StepStatus.PENDING, KEY_CHANGE_PENDING, detail)
    assert facts.meter_number is not None
    request = KeyLoadRequest(
        meter_id=facts.meter_id,
        serial=facts.serial,
        meter_number=facts.meter_number,
        **facts.key_fields,
    )
    try:
        tokens = list(key_loader.key_change_tokens(request))
    except KeyLoadUnavailable as exc:
        return StepOutcome(StepStatus.PENDING, f"{KEY_CHANGE_PENDING}: {exc}", detail)
    if not tokens:
        return StepOutcome(StepStatus.PASSED, "the meter already holds the registry's key", detail)
    answers: list[str] = []
    detail["answers"] = answers
    for index, token in enumerate(tokens, start=1):
        try:
            answer = await link.enter_token(token)
        except NotSupported as exc:
            # No remote token entry: the technician types the tokens on the keypad.
            detail["tokens"] = tokens
            return StepOutcome(
                StepStatus.PENDING,
                f"{KEY_CHANGE_PENDING}: {exc}; enter the {len(tokens)} key change tokens "
                "on the keypad",
                detail,
            )
        answers.append(answer)
        expected = "accept" if index == len(tokens) else "key_change_1st"
        if answer not in (expected, "accept"):
            return StepOutcome(
                StepStatus.FAILED,
                f"key change token {index} of {len(tokens)} answered {answer}, expected {expected}",
                detail,
            )
    if answers[-1] != "accept":
        return StepOutcome(
            StepStatus.FAILED,
            f"the meter did not accept the last key change token (answered {answers[-1]})",
            detail,
        )
    key_loader.keys_loaded(request, tokens, technician=technician)
    return StepOutcome(
        StepStatus.PASSED,
        f"{len(tokens)} key change tokens accepted: meter on SGC "
        f"{facts.key_fields['supply_group_code']} KRN {facts.key_fields['key_revision']} "
        f"TI {facts.key_fields['tariff_index']}",
        detail,
    )
