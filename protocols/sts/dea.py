"""EA09 (DEA) and the DES step of DKGA02: single DES, ECB, one 64-bit block.

``cryptography`` offers DES only as TripleDES; with the same 8-byte key repeated three
times (K1 = K2 = K3), encrypt-decrypt-encrypt is exactly single DES. The 24-byte form is
used because the 8-byte form is deprecated (it warns) in the installed version.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes


@lru_cache(maxsize=1024)
def _cipher(key: bytes) -> Cipher[modes.ECB]:
    return Cipher(TripleDES(key * 3), modes.ECB())


def des_encrypt_bytes(key: bytes, data: bytes) -> bytes:
    """Single-DES ECB encryption of one 8-byte block with an 8-byte key (parity ignored)."""
    encryptor = _cipher(key).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def des_decrypt_bytes(key: bytes, data: bytes) -> bytes:
    """Single-DES ECB decryption of one 8-byte block with an 8-byte key (parity ignored)."""
    decryptor = _cipher(key).decryptor()
    return decryptor.update(data) + decryptor.finalize()


def dea_encrypt(key: int, block: int) -> int:
    """EA09: encrypt a 64-bit block (big-endian integer) with a 64-bit DES decoder key."""
    out = des_encrypt_bytes(key.to_bytes(8, "big"), block.to_bytes(8, "big"))
    return int.from_bytes(out, "big")


def dea_decrypt(key: int, block: int) -> int:
    """EA09: decrypt a 64-bit block (big-endian integer) with a 64-bit DES decoder key."""
    out = des_decrypt_bytes(key.to_bytes(8, "big"), block.to_bytes(8, "big"))
    return int.from_bytes(out, "big")
