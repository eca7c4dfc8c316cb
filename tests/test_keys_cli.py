"""`gridvend keys`: vending keys loaded, listed, retired and re-encrypted on the real
database, every act audited, the key itself never printed nor logged."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from gridvend.audit import AuditEntry, verify_chain
from gridvend.cli import app
from protocols.sts import Dkga
from vending.keystore import KeyEncryptionKey, KeyStore, KeyStoreError
from vending.models import VendingKeyRecord

SGC = "600123"
DKGA04_KEY = "0123456789abcdef0123456789abcdef01234567"
DKGA02_KEY = "abcdef0123456789"


@pytest.fixture
def kek_b64(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    kek = base64.b64encode(secrets.token_bytes(32)).decode()
    monkeypatch.setenv("GRIDVEND_DATABASE_URL", database_url)
    monkeypatch.setenv("GRIDVEND_KEY_ENCRYPTION_KEY", kek)
    monkeypatch.setenv("USER", "custodian")
    return kek


def _keys(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["keys", *args], input=input)
    return result.exit_code, result.output


def _audit(session_factory: sessionmaker[Session]) -> list[AuditEntry]:
    with session_factory() as session:
        return list(session.scalars(select(AuditEntry).order_by(AuditEntry.id)))


def test_a_key_from_stdin_is_stored_encrypted_and_usable_and_never_printed(
    kek_b64: str, session_factory: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    code, output = _keys(
        "add", "--sgc", SGC, "--krn", "1", "--dkga", "DKGA04", "--key-file", "-", input=DKGA04_KEY
    )
    assert code == 0, output
    assert DKGA04_KEY not in output and DKGA04_KEY not in caplog.text
    with session_factory() as session:
        record = session.scalars(select(VendingKeyRecord)).one()
        assert DKGA04_KEY.encode() not in record.ciphertext
        config = KeyStore(KeyEncryptionKey.from_base64(kek_b64)).key_config(session, SGC, 1, "01")
    assert config.vending_key == bytes.fromhex(DKGA04_KEY)
    assert config.dkga is Dkga.DKGA04
    [entry] = _audit(session_factory)
    assert (entry.actor, entry.action, entry.subject) == (
        "cli:custodian",
        "key.add",
        f"vending_key:{SGC}/1",
    )
    assert DKGA04_KEY not in str(entry.detail)


def test_a_key_from_a_file_with_its_attributes_is_listed_without_its_material(
    kek_b64: str, tmp_path: Path
) -> None:
    key_file = tmp_path / "vk.hex"
    key_file.write_text(DKGA02_KEY + "\n")
    code, output = _keys(
        "add",
        *("--sgc", SGC, "--krn", "2", "--key-file", str(key_file)),
        *("--dkga", "02", "--algorithm", "EA09", "--base-date", "2035", "--ken", "7"),
    )
    assert code == 0, output
    code, listing = _keys("list")
    assert code == 0, listing
    row = next(line for line in listing.splitlines() if SGC in line)
    for shown in ("DUTK", "2035", "7", "EA09", "DKGA02", "active"):
        assert shown in row
    assert DKGA02_KEY not in listing
    assert "1 keys" in listing


def test_a_key_on_the_command_line_is_not_accepted(kek_b64: str) -> None:
    code, output = _keys("add", "--sgc", SGC, "--krn", "1", "--vending-key", DKGA04_KEY)
    assert code != 0
    assert "No such option" in output


def test_a_mistyped_key_is_refused_without_echoing_it(
    kek_b64: str, session_factory: sessionmaker[Session]
) -> None:
    typo = DKGA04_KEY[:-1] + "g"
    code, output = _keys("add", "--sgc", SGC, "--krn", "1", "--key-file", "-", input=typo)
    assert code == 1
    assert "bad_vending_key" in output and typo not in output
    code, output = _keys(
        "add", "--sgc", SGC, "--krn", "1", "--dkga", "02", "--key-file", "-", input=DKGA04_KEY
    )
    assert code == 1
    assert "invalid_key_config" in output and DKGA04_KEY not in output
    assert _audit(session_factory) == []


def test_a_second_key_for_the_same_revision_is_refused(
    kek_b64: str, session_factory: sessionmaker[Session]
) -> None:
    assert _keys("add", "--sgc", SGC, "--krn", "1", "--key-file", "-", input=DKGA04_KEY)[0] == 0
    code, output = _keys("add", "--sgc", SGC, "--krn", "1", "--key-file", "-", input=DKGA04_KEY)
    assert code == 1 and "key_exists" in output
    assert len(_audit(session_factory)) == 1


def test_a_retired_key_issues_nothing_and_cannot_be_retired_twice(
    kek_b64: str, session_factory: sessionmaker[Session]
) -> None:
    assert _keys("add", "--sgc", SGC, "--krn", "1", "--key-file", "-", input=DKGA04_KEY)[0] == 0
    code, output = _keys("retire", "--sgc", SGC, "--krn", "1", "--reason", "KMC compromise")
    assert code == 0, output
    store = KeyStore(KeyEncryptionKey.from_base64(kek_b64))
    with session_factory() as session, pytest.raises(KeyStoreError) as refused:
        store.key_config(session, SGC, 1, "01")
    assert refused.value.code == "key_retired"
    assert "retired" in _keys("list")[1]
    again, output = _keys("retire", "--sgc", SGC, "--krn", "1", "--reason", "again")
    assert again == 1 and "key_retired" in output
    unknown, output = _keys("retire", "--sgc", SGC, "--krn", "5", "--reason", "none")
    assert unknown == 1 and "key_not_found" in output
    entries = _audit(session_factory)
    assert [e.action for e in entries] == ["key.add", "key.retire"]
    assert entries[1].detail == {"reason": "KMC compromise"}


def test_rotating_the_kek_re_encrypts_every_key_under_the_new_one(
    kek_b64: str, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    for krn in ("1", "2"):
        add = _keys("add", "--sgc", SGC, "--krn", krn, "--key-file", "-", input=DKGA04_KEY)
        assert add[0] == 0
    new_file = tmp_path / "new-kek.b64"
    code, output = _keys("rotate-kek", "--new-kek-file", str(new_file))
    assert code == 0, output
    assert "2 vending keys re-encrypted" in output
    assert new_file.stat().st_mode & 0o077 == 0
    new_kek = KeyEncryptionKey.from_base64(new_file.read_text())
    old_kek = KeyEncryptionKey.from_base64(kek_b64)
    with session_factory() as session:
        assert KeyStore(new_kek).key_config(session, SGC, 2, "01").vending_key == bytes.fromhex(
            DKGA04_KEY
        )
        with pytest.raises(KeyStoreError) as stale:
            KeyStore(old_kek).key_config(session, SGC, 1, "01")
        assert stale.value.code == "key_undecryptable"
        assert verify_chain(session).intact
    rotation = _audit(session_factory)[-1]
    assert rotation.action == "key.rotate_kek"
    assert rotation.detail == {
        "from_kek_id": old_kek.kek_id,
        "to_kek_id": new_kek.kek_id,
        "keys": 2,
    }


def test_rotating_to_the_current_kek_is_refused(
    kek_b64: str, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    same = tmp_path / "same.b64"
    same.write_text(kek_b64)
    code, output = _keys("rotate-kek", "--new-kek-file", str(same))
    assert code == 1 and "same_kek" in output
    assert _audit(session_factory) == []


def test_key_admin_refuses_fields_the_protocol_refuses(
    kek_b64: str, session_factory: sessionmaker[Session]
) -> None:
    code, output = _keys("add", "--sgc", "12", "--krn", "1", "--key-file", "-", input=DKGA04_KEY)
    assert code == 1 and "invalid_key_config" in output
    code, output = _keys(
        "add", "--sgc", SGC, "--krn", "1", "--key-type", "9", "--key-file", "-", input=DKGA04_KEY
    )
    assert code == 1 and "invalid_key_config" in output
    assert _audit(session_factory) == []
