from __future__ import annotations

import secrets
from datetime import UTC, datetime

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from protocols.sts import (
    BaseDate,
    CreditType,
    Dkga,
    EncryptionAlgorithm,
    KeyConfig,
    KeyType,
    SetMaximumPowerLimitToken,
    TokenStatus,
    decode_token,
    derive_decoder_key,
    new_meter_state,
    parse_meter_number,
    process_token,
)
from vending.keystore import KeyEncryptionKey, KeyStore, KeyStoreError
from vending.models import VendingKeyRecord
from vending.security_module import MeterKeyRef, SoftwareSecurityModule

PAN = "600727000000000009"
NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def _config(krn: int = 1, sgc: str = "123457", dkga: Dkga = Dkga.DKGA04) -> KeyConfig:
    return KeyConfig(
        vending_key=secrets.token_bytes(20 if dkga is Dkga.DKGA04 else 8),
        supply_group_code=sgc,
        tariff_index="01",
        key_revision=krn,
        key_type=KeyType.DUTK,
        base_date=BaseDate.Y2014,
        algorithm=EncryptionAlgorithm.STA,
        dkga=dkga,
    )


@pytest.fixture
def kek() -> KeyEncryptionKey:
    return KeyEncryptionKey.generate()


def test_a_stored_vending_key_comes_back_only_under_its_kek(
    session_factory: sessionmaker[Session], kek: KeyEncryptionKey
) -> None:
    config = _config()
    with session_factory() as session, session.begin():
        KeyStore(kek).add_key(session, config)
    with session_factory() as session:
        record = session.query(VendingKeyRecord).one()
        assert config.vending_key not in record.ciphertext
        assert (
            KeyStore(kek).key_config(session, "123457", 1, "01").vending_key == config.vending_key
        )
        with pytest.raises(KeyStoreError) as error:
            KeyStore(KeyEncryptionKey.generate()).key_config(session, "123457", 1, "01")
    assert error.value.code == "key_undecryptable"


def test_a_ciphertext_moved_to_another_key_row_does_not_decrypt(
    session_factory: sessionmaker[Session], kek: KeyEncryptionKey
) -> None:
    store = KeyStore(kek)
    with session_factory() as session, session.begin():
        store.add_key(session, _config(krn=1))
        store.add_key(session, _config(krn=2))
    with session_factory() as session, session.begin():
        first = session.query(VendingKeyRecord).filter_by(key_revision=1).one()
        session.execute(
            update(VendingKeyRecord)
            .where(VendingKeyRecord.key_revision == 2)
            .values(nonce=first.nonce, ciphertext=first.ciphertext)
        )
    with session_factory() as session, pytest.raises(KeyStoreError) as error:
        store.key_config(session, "123457", 2, "01")
    assert error.value.code == "key_undecryptable"


def test_rotating_the_kek_re_encrypts_every_key(
    session_factory: sessionmaker[Session], kek: KeyEncryptionKey
) -> None:
    configs = [_config(krn=1), _config(krn=2, dkga=Dkga.DKGA02)]
    store = KeyStore(kek)
    with session_factory() as session, session.begin():
        for config in configs:
            store.add_key(session, config)
    new_kek = KeyEncryptionKey.generate()
    with session_factory() as session, session.begin():
        assert store.rotate_kek(session, new_kek) == 2
    with session_factory() as session:
        fresh = KeyStore(new_kek)
        assert [
            fresh.key_config(session, "123457", c.key_revision, "01").vending_key for c in configs
        ] == [c.vending_key for c in configs]


def test_a_second_key_for_the_same_revision_is_refused(
    session_factory: sessionmaker[Session], kek: KeyEncryptionKey
) -> None:
    store = KeyStore(kek)
    with session_factory() as session, session.begin():
        store.add_key(session, _config())
    with session_factory() as session, pytest.raises(KeyStoreError) as error:
        store.add_key(session, _config())
    assert error.value.code == "key_exists"


def test_the_kek_and_keys_never_show_in_their_repr(kek: KeyEncryptionKey) -> None:
    config = _config()
    assert config.vending_key.hex() not in repr(config)
    assert "kek_id" in repr(kek)


def test_software_module_tokens_are_accepted_by_the_meter_they_were_made_for(
    session_factory: sessionmaker[Session], kek: KeyEncryptionKey
) -> None:
    config = _config()
    store = KeyStore(kek)
    with session_factory() as session, session.begin():
        store.add_key(session, config)
    module = SoftwareSecurityModule(store, session_factory)
    meter = MeterKeyRef(PAN, "123457", "01", 1)
    credit = module.credit_token(meter, credit_type=CreditType.ELECTRICITY, amount=253, tid=1000)
    limit = module.management_token(meter, SetMaximumPowerLimitToken(tid=1001, watts=5000))

    decoder_key = derive_decoder_key(config, parse_meter_number(PAN))
    decoded = decode_token(credit.digits, decoder_key)
    assert (decoded.amount, decoded.tid) == (253, 1000)  # type: ignore[union-attr]
    assert credit.grouped.count(" ") == 4

    state = new_meter_state(
        decoder_key, supply_group_code="123457", key_revision=1, tariff_index="01"
    )
    for issued in (credit, limit):
        result = process_token(state, issued.digits, NOW)
        assert result.status is TokenStatus.ACCEPT
        state = result.state
