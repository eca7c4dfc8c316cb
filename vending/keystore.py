"""The software security module's key store: vending keys encrypted at rest.

Vending keys are stored AES-256-GCM encrypted under a key-encryption key (KEK) that never
enters the database (it comes from settings or a file). The API never returns a key and
``repr`` never shows one. Rotating the KEK re-encrypts every row in one transaction.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select
from sqlalchemy.orm import Session

from protocols.sts import BaseDate, Dkga, EncryptionAlgorithm, KeyConfig, KeyType
from vending.models import VendingKeyRecord


class KeyStoreError(Exception):
    """A key cannot be stored or used; ``code`` names the reason for the API."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class KeyEncryptionKey:
    """A 256-bit AES key that encrypts the vending keys. Never printed."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise KeyStoreError(
                "bad_kek", f"the key-encryption key must be 32 bytes, not {len(key)}"
            )
        self._aead = AESGCM(key)
        self.kek_id = hashlib.sha256(b"gridvend-kek" + key).hexdigest()[:16]

    @classmethod
    def generate(cls) -> KeyEncryptionKey:
        return cls(secrets.token_bytes(32))

    @classmethod
    def from_base64(cls, text: str) -> KeyEncryptionKey:
        try:
            return cls(base64.b64decode(text.strip(), validate=True))
        except ValueError:
            raise KeyStoreError("bad_kek", "the key-encryption key is not valid base64") from None

    @classmethod
    def load_or_create(cls, path: Path) -> KeyEncryptionKey:
        """Read a base64 KEK file, creating it (mode 0600) if absent: for the demo."""
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
        return cls.from_base64(path.read_text())

    def __repr__(self) -> str:
        return f"KeyEncryptionKey(kek_id={self.kek_id})"

    def encrypt(self, plaintext: bytes, associated: bytes) -> tuple[bytes, bytes]:
        nonce = secrets.token_bytes(12)
        return nonce, self._aead.encrypt(nonce, plaintext, associated)

    def decrypt(self, nonce: bytes, ciphertext: bytes, associated: bytes) -> bytes:
        try:
            return self._aead.decrypt(nonce, ciphertext, associated)
        except InvalidTag:
            raise KeyStoreError(
                "key_undecryptable", "a stored vending key does not decrypt under this KEK"
            ) from None


@dataclass(frozen=True, slots=True)
class VendingKeyInfo:
    """A stored vending key's public attributes (never the key itself)."""

    supply_group_code: str
    key_revision: int
    key_type: KeyType
    base_date: BaseDate
    algorithm: EncryptionAlgorithm
    dkga: Dkga
    key_expiry_number: int
    kek_id: str
    created_at: datetime
    retired_at: datetime | None


def _associated_data(supply_group_code: str, key_revision: int) -> bytes:
    return f"gridvend-vk|{supply_group_code}|{key_revision}".encode()


class KeyStore:
    def __init__(self, kek: KeyEncryptionKey) -> None:
        self._kek = kek

    def add_key(
        self,
        session: Session,
        config: KeyConfig,
        *,
        now: datetime | None = None,
    ) -> VendingKeyInfo:
        """Store ``config``'s vending key for its supply group and key revision.

        ``config.tariff_index`` is not part of a vending key (it is per meter) and is
        ignored. Raises KeyStoreError("key_exists") if that SGC/KRN already has a key.
        """
        if _find(session, config.supply_group_code, config.key_revision) is not None:
            raise KeyStoreError(
                "key_exists",
                f"supply group {config.supply_group_code} already has key revision "
                f"{config.key_revision}; use a new revision",
            )
        nonce, ciphertext = self._kek.encrypt(
            config.vending_key, _associated_data(config.supply_group_code, config.key_revision)
        )
        record = VendingKeyRecord(
            supply_group_code=config.supply_group_code,
            key_revision=config.key_revision,
            key_type=int(config.key_type),
            base_date=int(config.base_date),
            algorithm=config.algorithm.value,
            dkga=config.dkga.value,
            key_expiry_number=config.key_expiry_number,
            kek_id=self._kek.kek_id,
            nonce=nonce,
            ciphertext=ciphertext,
            created_at=now or datetime.now(UTC),
        )
        session.add(record)
        session.flush()
        return _info(record)

    def list_keys(self, session: Session) -> list[VendingKeyInfo]:
        rows = session.scalars(
            select(VendingKeyRecord).order_by(
                VendingKeyRecord.supply_group_code, VendingKeyRecord.key_revision
            )
        )
        return [_info(r) for r in rows]

    def key_config(
        self, session: Session, supply_group_code: str, key_revision: int, tariff_index: str
    ) -> KeyConfig:
        """The full key configuration for a meter on this SGC/KRN and tariff index.

        Raises KeyStoreError("key_not_found") or ("key_retired").
        """
        record = _find(session, supply_group_code, key_revision)
        if record is None:
            raise KeyStoreError(
                "key_not_found",
                f"no vending key for supply group {supply_group_code} revision {key_revision}",
            )
        if record.retired_at is not None:
            raise KeyStoreError(
                "key_retired",
                f"the vending key for supply group {supply_group_code} revision {key_revision} "
                "is retired: move the meter to a current key revision",
            )
        if record.kek_id != self._kek.kek_id:
            raise KeyStoreError(
                "key_undecryptable",
                f"the key was stored under KEK {record.kek_id}, this server has {self._kek.kek_id}",
            )
        vending_key = self._kek.decrypt(
            record.nonce, record.ciphertext, _associated_data(supply_group_code, key_revision)
        )
        return KeyConfig(
            vending_key=vending_key,
            supply_group_code=supply_group_code,
            tariff_index=tariff_index,
            key_revision=key_revision,
            key_type=KeyType(record.key_type),
            base_date=BaseDate(record.base_date),
            algorithm=EncryptionAlgorithm(record.algorithm),
            dkga=Dkga(record.dkga),
            key_expiry_number=record.key_expiry_number,
        )

    def retire_key(
        self, session: Session, supply_group_code: str, key_revision: int, now: datetime
    ) -> None:
        """Mark a key retired; KeyStoreError("key_not_found") or ("key_retired")."""
        record = _find(session, supply_group_code, key_revision)
        if record is None:
            raise KeyStoreError("key_not_found", f"no key {supply_group_code}/{key_revision}")
        if record.retired_at is not None:
            raise KeyStoreError(
                "key_retired", f"key {supply_group_code}/{key_revision} is already retired"
            )
        record.retired_at = now

    def rotate_kek(self, session: Session, new_kek: KeyEncryptionKey) -> int:
        """Re-encrypt every vending key under ``new_kek`` (in the caller's transaction).

        Returns the number of keys re-encrypted; this store then uses ``new_kek``.
        """
        count = 0
        for record in session.scalars(select(VendingKeyRecord)):
            associated = _associated_data(record.supply_group_code, record.key_revision)
            plaintext = self._kek.decrypt(record.nonce, record.ciphertext, associated)
            record.nonce, record.ciphertext = new_kek.encrypt(plaintext, associated)
            record.kek_id = new_kek.kek_id
            count += 1
        session.flush()
        self._kek = new_kek
        return count


def _find(session: Session, supply_group_code: str, key_revision: int) -> VendingKeyRecord | None:
    return session.scalar(
        select(VendingKeyRecord).where(
            VendingKeyRecord.supply_group_code == supply_group_code,
            VendingKeyRecord.key_revision == key_revision,
        )
    )


def _info(record: VendingKeyRecord) -> VendingKeyInfo:
    return VendingKeyInfo(
        supply_group_code=record.supply_group_code,
        key_revision=record.key_revision,
        key_type=KeyType(record.key_type),
        base_date=BaseDate(record.base_date),
        algorithm=EncryptionAlgorithm(record.algorithm),
        dkga=Dkga(record.dkga),
        key_expiry_number=record.key_expiry_number,
        kek_id=record.kek_id,
        created_at=record.created_at,
        retired_at=record.retired_at,
    )
