"""Commissioning's key loader: vending's security module behind the head-end's KeyLoader.

The head-end asks for the key change tokens that put the registry's decoder key into a
meter (``headend.commissioning.KeyLoader``); vending's security module issues them from a
current and a new key. What the head-end cannot know is which key a new meter holds: that
is the key the utility has its meters delivered with (the "delivery key", set in the
settings as SGC/TI/KRN, its vending key in the key store). Without one, loading stays
pending with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from gridvend.audit import AuditLog
from gridvend.settings import Settings
from headend.commissioning import KeyLoadRequest, KeyLoadUnavailable
from protocols.sts import StsError
from vending.key_changes import record_loaded_key_change
from vending.keystore import KeyStoreError
from vending.security_module import MeterKeyRef, SecurityModule

ACTOR = "commissioning"
_DELIVERY_KEY = re.compile(r"(?P<sgc>[0-9]{6})/(?P<ti>[0-9]{2})/(?P<krn>[1-9])")


@dataclass(frozen=True, slots=True)
class DeliveryKey:
    """The decoder key meters leave the factory with: supply group, tariff index, KRN."""

    supply_group_code: str
    tariff_index: str
    key_revision: int

    @classmethod
    def parse(cls, text: str) -> DeliveryKey:
        """``"600727/01/1"`` -> DeliveryKey; ValueError if it is not SGC/TI/KRN."""
        found = _DELIVERY_KEY.fullmatch(text.strip())
        if found is None:
            raise ValueError(f"a delivery key is SGC/TI/KRN (6 digits/2 digits/1..9), got {text!r}")
        return cls(found["sgc"], found["ti"], int(found["krn"]))

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryKey | None:
        """GRIDVEND_COMMISSIONING_DELIVERY_KEY, or None when it is not set."""
        text = settings.commissioning_delivery_key
        return cls.parse(text) if text else None

    def __str__(self) -> str:
        return f"{self.supply_group_code}/{self.tariff_index}/{self.key_revision}"


class SecurityModuleKeyLoader:
    """A ``headend.commissioning.KeyLoader`` issuing tokens from the delivery key to the
    registry's key with vending's security module; every issue is audited."""

    def __init__(
        self,
        security_module: SecurityModule,
        delivery_key: DeliveryKey | None,
        session_factory: sessionmaker[Session],
        audit: AuditLog,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._security_module = security_module
        self._delivery_key = delivery_key
        self._session_factory = session_factory
        self._audit = audit
        self._clock = clock

    def key_change_tokens(self, request: KeyLoadRequest) -> Sequence[str]:
        """The section tokens in entry order (empty if the delivery key is the registry's).

        Raises:
            KeyLoadUnavailable: no delivery key is set, a key is not in the key store (or
                retired), the registry's key attributes disagree with the key store's, or
                STS cannot change between the two keys.
        """
        delivery = self._delivery_key
        if delivery is None:
            raise KeyLoadUnavailable(
                "no delivery key is set (GRIDVEND_COMMISSIONING_DELIVERY_KEY=SGC/TI/KRN): "
                "which key the meter holds now is unknown"
            )
        current, new = _refs(delivery, request)
        if current == new:
            return []
        try:
            self._check_registry_matches_key_store(request, new)
            issued = self._security_module.key_change_tokens(current, new)
        except (KeyStoreError, StsError) as exc:
            raise KeyLoadUnavailable(str(exc)) from None
        with self._session_factory() as session, session.begin():
            self._audit.record(
                session,
                actor=ACTOR,
                action="sts.key_change_issued",
                subject=f"meter:{request.serial}",
                detail={
                    "from": str(delivery),
                    "to": f"{new.supply_group_code}/{new.tariff_index}/{new.key_revision}",
                    "tokens": len(issued),
                },
            )
        return [token.digits for token in issued]

    def keys_loaded(
        self, request: KeyLoadRequest, tokens: Sequence[str], *, technician: str
    ) -> None:
        """Keep the change from the delivery key in the meter's key change history
        (``key_changes``, completed by the technician; audited ``key_change.loaded``)."""
        assert self._delivery_key is not None  # tokens were issued from it
        current, new = _refs(self._delivery_key, request)
        with self._session_factory() as session, session.begin():
            record_loaded_key_change(
                session,
                request.meter_id,
                current,
                new,
                tokens,
                security_module=self._security_module,
                audit=self._audit,
                actor=technician,
                reason=f"loaded at commissioning over the delivery key {self._delivery_key}",
                now=self._clock(),
            )

    def _check_registry_matches_key_store(self, request: KeyLoadRequest, new: MeterKeyRef) -> None:
        # The tokens carry the key store's attributes; a registry that says otherwise
        # would describe a key the meter never gets.
        attributes = self._security_module.key_attributes(new)
        stored = {
            "base_date": int(attributes.base_date),
            "key_expiry_number": attributes.key_expiry_number,
            "encryption_algorithm": str(attributes.algorithm.value),
        }
        registry = {
            "base_date": request.base_date,
            "key_expiry_number": request.key_expiry_number,
            "encryption_algorithm": request.encryption_algorithm,
        }
        differing = [
            f"{name} {registry[name]} (key store: {stored[name]})"
            for name in stored
            if registry[name] is not None and registry[name] != stored[name]
        ]
        if differing:
            raise KeyLoadUnavailable(
                "the registry's key attributes disagree with the key store: " + ", ".join(differing)
            )


def _refs(delivery: DeliveryKey, request: KeyLoadRequest) -> tuple[MeterKeyRef, MeterKeyRef]:
    """The meter's key as delivered, and the registry's key for it."""
    current = MeterKeyRef(
        request.meter_number,
        delivery.supply_group_code,
        delivery.tariff_index,
        delivery.key_revision,
    )
    new = MeterKeyRef(
        request.meter_number,
        request.supply_group_code,
        request.tariff_index,
        request.key_revision,
    )
    return current, new
