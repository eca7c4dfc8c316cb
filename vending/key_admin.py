"""Administration of the vending key store: load, retire and re-encrypt keys, audited.

The key store (``vending.keystore``) does the cryptography; this module is what a site's
key custodian does with it. Every act is written to the audit log in the same
transaction, with the key's identity (SGC, KRN) and never its material.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from headend.audit import AuditSink
from protocols.sts import BaseDate, Dkga, EncryptionAlgorithm, KeyConfig, KeyType, StsError
from vending.keystore import KeyEncryptionKey, KeyStore, KeyStoreError, VendingKeyInfo

# A vending key is per supply group, not per meter; KeyConfig wants a tariff index anyway.
_ANY_TARIFF_INDEX = "01"


def parse_vending_key(text: str) -> bytes:
    """The vending key in ``text``: 16 (DKGA02) or 40 (DKGA04) hex digits, blanks allowed.

    Raises KeyStoreError("bad_vending_key") whose message never repeats the text: it is
    a secret even when mistyped.
    """
    cleaned = "".join(text.split()).lower().removeprefix("0x")
    try:
        raw = bytes.fromhex(cleaned)
    except ValueError:
        raise KeyStoreError("bad_vending_key", "the vending key is not hexadecimal") from None
    if len(raw) not in (8, 20):
        raise KeyStoreError(
            "bad_vending_key",
            f"the vending key must have 16 (DKGA02) or 40 (DKGA04) hex digits, not {len(cleaned)}",
        )
    return raw


def add_vending_key(
    session: Session,
    keystore: KeyStore,
    *,
    vending_key: bytes,
    supply_group_code: str,
    key_revision: int,
    key_type: KeyType,
    base_date: BaseDate,
    algorithm: EncryptionAlgorithm,
    dkga: Dkga,
    key_expiry_number: int,
    audit: AuditSink,
    actor: str,
    now: datetime,
) -> VendingKeyInfo:
    """Store a vending key encrypted and audit ``key.add``.

    Raises KeyStoreError: ``invalid_key_config`` (a field or the key length does not
    suit the algorithms), ``key_exists`` (that SGC/KRN is taken).
    """
    try:
        config = KeyConfig(
            vending_key=vending_key,
            supply_group_code=supply_group_code,
            tariff_index=_ANY_TARIFF_INDEX,
            key_revision=key_revision,
            key_type=key_type,
            base_date=base_date,
            algorithm=algorithm,
            dkga=dkga,
            key_expiry_number=key_expiry_number,
        )
    except StsError as exc:
        # The protocol's messages describe fields and lengths, never the key bytes.
        raise KeyStoreError("invalid_key_config", str(exc)) from None
    info = keystore.add_key(session, config, now=now)
    audit.record(
        session,
        actor=actor,
        action="key.add",
        subject=_subject(info.supply_group_code, info.key_revision),
        detail={
            "key_type": int(info.key_type),
            "base_date": int(info.base_date),
            "algorithm": info.algorithm.value,
            "dkga": info.dkga.value,
            "key_expiry_number": info.key_expiry_number,
            "kek_id": info.kek_id,
        },
    )
    return info


def retire_vending_key(
    session: Session,
    keystore: KeyStore,
    *,
    supply_group_code: str,
    key_revision: int,
    audit: AuditSink,
    actor: str,
    now: datetime,
    reason: str,
) -> None:
    """Retire a key: no token is issued with it afterwards. Audits ``key.retire``.

    Raises KeyStoreError ``key_not_found`` or ``key_retired`` (already retired).
    """
    keystore.retire_key(session, supply_group_code, key_revision, now)
    audit.record(
        session,
        actor=actor,
        action="key.retire",
        subject=_subject(supply_group_code, key_revision),
        detail={"reason": reason},
    )


def rotate_key_encryption_key(
    session: Session,
    keystore: KeyStore,
    new_kek: KeyEncryptionKey,
    *,
    old_kek_id: str,
    audit: AuditSink,
    actor: str,
) -> int:
    """Re-encrypt every vending key under ``new_kek`` and audit ``key.rotate_kek``.

    Returns how many keys were re-encrypted. Raises KeyStoreError("key_undecryptable")
    when a stored key is not under the current KEK (nothing changes then: the caller's
    transaction rolls back).
    """
    if new_kek.kek_id == old_kek_id:
        raise KeyStoreError("same_kek", "the new key-encryption key is the current one")
    count = keystore.rotate_kek(session, new_kek)
    audit.record(
        session,
        actor=actor,
        action="key.rotate_kek",
        subject="vending_keys",
        detail={"from_kek_id": old_kek_id, "to_kek_id": new_kek.kek_id, "keys": count},
    )
    return count


def _subject(supply_group_code: str, key_revision: int) -> str:
    return f"vending_key:{supply_group_code}/{key_revision}"
