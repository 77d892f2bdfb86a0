"""Authentication plugins' arithmetic, as pure functions on bytes (``hashlib`` only).

- ``mysql_native_password`` (https://mariadb.com/kb/en/connection/#mysql_native_password-plugin,
  https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase_authentication_methods_native_password_authentication.html):
  the client sends ``SHA1(password) XOR SHA1(scramble + SHA1(SHA1(password)))``; the server
  stores only ``SHA1(SHA1(password))`` (``mysql.user``'s ``*HEX`` string) and checks the reply by
  undoing the XOR and hashing once more.
- ``caching_sha2_password`` (https://dev.mysql.com/doc/dev/mysql-server/latest/page_caching_sha2_authentication_exchanges.html):
  the fast path sends ``SHA256(password) XOR SHA256(SHA256(SHA256(password)) + scramble)``; the
  server answers AuthMoreData 0x03 if its cache holds ``SHA256(SHA256(password))`` and the
  reply matches, else 0x04 ("perform full authentication"): the client then sends the password
  in clear over TLS, or XOR'd with the scramble and RSA-OAEP encrypted with the server's public
  key (requested with a 0x02 byte) on a plain connection. The RSA part is in :mod:`.rsa`.

Why the server-side checks take the *stored* hash, not the password: that is what a real server
keeps, so the gateway can verify clients against hashes from its config without holding
passwords. Comparisons use :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

from .rsa import RSAPrivateKey, RSAPublicKey

__all__ = [
    "SCRAMBLE_LENGTH",
    "caching_sha2_hash",
    "caching_sha2_scramble",
    "decrypt_password_rsa",
    "encrypt_password_rsa",
    "native_password_hash",
    "native_password_scramble",
    "native_password_stored",
    "new_scramble",
    "parse_native_password_stored",
    "verify_caching_sha2",
    "verify_native_password",
    "xor_password",
]

#: Scramble (nonce) length in the greeting and in an AuthSwitchRequest.
SCRAMBLE_LENGTH: Final = 20
#: MySQL's scramble bytes are 7-bit, never NUL (the greeting NUL-terminates part 2) nor '$'.
_SCRAMBLE_ALPHABET: Final = bytes(b for b in range(1, 128) if b != ord("$"))


def new_scramble(length: int = SCRAMBLE_LENGTH) -> bytes:
    """A fresh random scramble, from the same alphabet MySQL servers use."""
    return bytes(secrets.choice(_SCRAMBLE_ALPHABET) for _ in range(length))


def _xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right, strict=True))


def _sha1(data: bytes) -> bytes:
    return hashlib.sha1(data).digest()


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# -- mysql_native_password -----------------------------------------------------------------


def native_password_scramble(password: bytes, scramble: bytes) -> bytes:
    """The client's reply: ``SHA1(password) XOR SHA1(scramble + SHA1(SHA1(password)))``; an
    empty password gives an empty reply (as every client sends)."""
    if not password:
        return b""
    stage1 = _sha1(password)
    return _xor(stage1, _sha1(scramble[:SCRAMBLE_LENGTH] + _sha1(stage1)))


def native_password_hash(password: bytes) -> bytes:
    """``SHA1(SHA1(password))``, what the server stores (20 bytes; empty for no password)."""
    return _sha1(_sha1(password)) if password else b""


def native_password_stored(password: bytes) -> str:
    """The stored hash as ``mysql.user`` shows it: ``*`` and 40 uppercase hex digits."""
    return "*" + native_password_hash(password).hex().upper() if password else ""


def parse_native_password_stored(stored: str) -> bytes:
    """``*HEX`` back to the 20-byte hash (``""`` → ``b""``: no password).

    Raises:
        ValueError: not the ``*`` + 40 hex digits form.
    """
    if not stored:
        return b""
    if len(stored) != 41 or not stored.startswith("*"):
        raise ValueError("a mysql_native_password hash is '*' and 40 hex digits")
    return bytes.fromhex(stored[1:])


def verify_native_password(stored_hash: bytes, scramble: bytes, response: bytes) -> bool:
    """Check a client's reply against ``SHA1(SHA1(password))``.

    ``SHA1(scramble + stored) XOR response`` is the client's ``SHA1(password)`` if it knew the
    password; hashing that once more must give ``stored_hash``.
    """
    if not stored_hash:
        return not response
    if len(response) != len(stored_hash):
        return False
    candidate = _xor(response, _sha1(scramble[:SCRAMBLE_LENGTH] + stored_hash))
    return hmac.compare_digest(_sha1(candidate), stored_hash)


# -- caching_sha2_password -----------------------------------------------------------------


def caching_sha2_scramble(password: bytes, scramble: bytes) -> bytes:
    """The fast-path reply: ``SHA256(password) XOR SHA256(SHA256(SHA256(password)) + scramble)``;
    empty for an empty password."""
    if not password:
        return b""
    stage1 = _sha256(password)
    return _xor(stage1, _sha256(_sha256(stage1) + scramble[:SCRAMBLE_LENGTH]))


def caching_sha2_hash(password: bytes) -> bytes:
    """``SHA256(SHA256(password))``, what the server's cache holds after a full login."""
    return _sha256(_sha256(password)) if password else b""


def verify_caching_sha2(cached_hash: bytes, scramble: bytes, response: bytes) -> bool:
    """Check a fast-path reply against the cached ``SHA256(SHA256(password))``."""
    if not cached_hash:
        return not response
    if len(response) != len(cached_hash):
        return False
    candidate = _xor(response, _sha256(cached_hash + scramble[:SCRAMBLE_LENGTH]))
    return hmac.compare_digest(_sha256(candidate), cached_hash)


def xor_password(password: bytes, scramble: bytes) -> bytes:
    """``(password + NUL) XOR scramble`` (the scramble repeated): what is RSA-encrypted in
    caching_sha2 and sha256_password full authentication."""
    return _xor_cycle(password + b"\x00", scramble)


def _xor_cycle(data: bytes, scramble: bytes) -> bytes:
    nonce = scramble[:SCRAMBLE_LENGTH] or b"\x00"
    size = len(nonce)
    return bytes(byte ^ nonce[i % size] for i, byte in enumerate(data))


def encrypt_password_rsa(password: bytes, scramble: bytes, public_key: RSAPublicKey) -> bytes:
    """Client side of full authentication on a plain connection: the XOR'd password,
    RSA-OAEP (SHA-1) encrypted with the server's public key."""
    return public_key.encrypt_oaep(xor_password(password, scramble))


def decrypt_password_rsa(ciphertext: bytes, scramble: bytes, private_key: RSAPrivateKey) -> bytes:
    """Server side: the password (without its NUL) from the client's encrypted reply.

    Raises:
        ValueError: the ciphertext does not decrypt (wrong key, corrupt padding).
    """
    data = _xor_cycle(private_key.decrypt_oaep(ciphertext), scramble)
    return data[:-1] if data.endswith(b"\x00") else data
