"""RSA with OAEP padding (SHA-1, MGF1-SHA-1, empty label) in pure Python integers, and just
enough PEM/DER to read and write RSA keys: what caching_sha2_password's full authentication
needs on a connection without TLS, where the client encrypts its XOR'd password with the
server's public key (https://dev.mysql.com/doc/dev/mysql-server/latest/page_caching_sha2_authentication_exchanges.html;
MySQL pads with OpenSSL's ``RSA_PKCS1_OAEP_PADDING``, which is OAEP with SHA-1 as RFC 8017
§7.1 defines it: https://www.rfc-editor.org/rfc/rfc8017#section-7.1).

Why not a crypto library: the gateway depends on none, and ``cryptography`` is not among its
pinned packages. The operations are small (a password of a few dozen bytes, once per login), so
Python's ``pow`` is fast enough. What this module does *not* try to be: constant-time. The
private-key operation runs in time that depends on the key and ciphertext, as any ``pow`` on
Python integers does; the padding check returns one error for every failure so that it does not
tell an attacker which check failed (Manger's attack), but a timing side channel remains. Keep
the gateway's RSA key for this login path only, or prefer TLS.

Keys are read from PEM: ``PUBLIC KEY`` (SubjectPublicKeyInfo, what MySQL servers send),
``RSA PUBLIC KEY`` (PKCS#1), ``RSA PRIVATE KEY`` (PKCS#1) and unencrypted ``PRIVATE KEY``
(PKCS#8), the forms ``openssl genrsa``/``openssl pkey`` write
(https://www.rfc-editor.org/rfc/rfc8017#appendix-A.1, https://www.rfc-editor.org/rfc/rfc5208).
"""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
from dataclasses import dataclass
from typing import Final

__all__ = ["RSAPrivateKey", "RSAPublicKey", "generate_private_key"]

_SHA1_LEN: Final = 20
_LABEL_HASH: Final = hashlib.sha1(b"").digest()
#: rsaEncryption, 1.2.840.113549.1.1.1, DER-encoded with its tag.
_RSA_OID: Final = bytes.fromhex("06092a864886f70d010101")
_NULL: Final = b"\x05\x00"


# -- DER ---------------------------------------------------------------------------------


def _der_read(data: bytes, pos: int, tag: int) -> tuple[bytes, int]:
    """The value of the TLV at ``pos`` (which must have ``tag``) and the offset after it."""
    if pos + 2 > len(data) or data[pos] != tag:
        raise ValueError("malformed DER: unexpected tag")
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise ValueError("malformed DER: bad length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("malformed DER: truncated")
    return data[pos : pos + length], pos + length


def _der_ints(data: bytes, count: int) -> list[int]:
    """``count`` INTEGERs at the start of a SEQUENCE's contents."""
    values = []
    pos = 0
    for _ in range(count):
        raw, pos = _der_read(data, pos, 0x02)
        values.append(int.from_bytes(raw, "big", signed=True))
    return values


def _der(tag: int, value: bytes) -> bytes:
    size = len(value)
    if size < 0x80:
        head = bytes((tag, size))
    else:
        raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
        head = bytes((tag, 0x80 | len(raw))) + raw
    return head + value


def _der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def _pem_blocks(text: str | bytes) -> tuple[str, bytes]:
    """The label and DER bytes of the first PEM block in ``text``."""
    if isinstance(text, bytes):
        text = text.decode("ascii")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines or not lines[0].startswith("-----BEGIN ") or not lines[0].endswith("-----"):
        raise ValueError("not a PEM block")
    label = lines[0][len("-----BEGIN ") : -len("-----")]
    end = f"-----END {label}-----"
    if end not in lines:
        raise ValueError("PEM block without its END line")
    body = "".join(lines[1 : lines.index(end)])
    return label, base64.b64decode(body, validate=True)


def _pem(label: str, der: bytes) -> str:
    body = base64.b64encode(der).decode("ascii")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----", ""])


def _mgf1(seed: bytes, length: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.sha1(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return bytes(out[:length])


def _xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right, strict=True))


# -- keys --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RSAPublicKey:
    """An RSA public key: modulus ``n`` and exponent ``e``."""

    n: int
    e: int

    @property
    def size(self) -> int:
        """The modulus length in bytes (the ciphertext length)."""
        return (self.n.bit_length() + 7) // 8

    @classmethod
    def from_pem(cls, pem: str | bytes) -> RSAPublicKey:
        """Read a ``PUBLIC KEY`` or ``RSA PUBLIC KEY`` PEM block.

        Raises:
            ValueError: not an RSA public key in one of those forms.
        """
        label, der = _pem_blocks(pem)
        if label == "RSA PUBLIC KEY":
            body, _ = _der_read(der, 0, 0x30)
        elif label == "PUBLIC KEY":
            spki, _ = _der_read(der, 0, 0x30)
            algorithm, pos = _der_read(spki, 0, 0x30)
            if not algorithm.startswith(_RSA_OID):
                raise ValueError("not an RSA key")
            bits, _ = _der_read(spki, pos, 0x03)
            if not bits or bits[0] != 0:
                raise ValueError("malformed DER: bit string")
            body, _ = _der_read(bits[1:], 0, 0x30)
        else:
            raise ValueError(f"not a public key PEM block: {label}")
        n, e = _der_ints(body, 2)
        if n <= 0 or e <= 0:
            raise ValueError("not an RSA public key")
        return cls(n, e)

    def to_pem(self) -> str:
        """The key as a ``PUBLIC KEY`` (SubjectPublicKeyInfo) PEM block, as MySQL sends it."""
        body = _der(0x30, _der_int(self.n) + _der_int(self.e))
        algorithm = _der(0x30, _RSA_OID + _NULL)
        return _pem("PUBLIC KEY", _der(0x30, algorithm + _der(0x03, b"\x00" + body)))

    def encrypt_oaep(self, message: bytes) -> bytes:
        """RSAES-OAEP-ENCRYPT with SHA-1 and an empty label (RFC 8017 §7.1.1).

        Raises:
            ValueError: ``message`` is longer than ``size - 42`` bytes.
        """
        k = self.size
        if len(message) > k - 2 * _SHA1_LEN - 2:
            raise ValueError("message too long for this RSA key")
        padding = b"\x00" * (k - len(message) - 2 * _SHA1_LEN - 2)
        block = _LABEL_HASH + padding + b"\x01" + message
        seed = secrets.token_bytes(_SHA1_LEN)
        masked_block = _xor(block, _mgf1(seed, k - _SHA1_LEN - 1))
        masked_seed = _xor(seed, _mgf1(masked_block, _SHA1_LEN))
        encoded = int.from_bytes(b"\x00" + masked_seed + masked_block, "big")
        return pow(encoded, self.e, self.n).to_bytes(k, "big")


@dataclass(frozen=True, slots=True)
class RSAPrivateKey:
    """An RSA private key with its CRT parameters (PKCS#1 ``RSAPrivateKey``)."""

    n: int
    e: int
    d: int
    p: int
    q: int
    dp: int
    dq: int
    qinv: int

    @property
    def public_key(self) -> RSAPublicKey:
        """The matching public key."""
        return RSAPublicKey(self.n, self.e)

    @classmethod
    def from_pem(cls, pem: str | bytes) -> RSAPrivateKey:
        """Read an ``RSA PRIVATE KEY`` (PKCS#1) or unencrypted ``PRIVATE KEY`` (PKCS#8) block.

        Raises:
            ValueError: not an unencrypted RSA private key in one of those forms.
        """
        label, der = _pem_blocks(pem)
        if label == "RSA PRIVATE KEY":
            body, _ = _der_read(der, 0, 0x30)
        elif label == "PRIVATE KEY":
            info, _ = _der_read(der, 0, 0x30)
            _, pos = _der_read(info, 0, 0x02)
            algorithm, pos = _der_read(info, pos, 0x30)
            if not algorithm.startswith(_RSA_OID):
                raise ValueError("not an RSA key")
            octets, _ = _der_read(info, pos, 0x04)
            body, _ = _der_read(octets, 0, 0x30)
        else:
            raise ValueError(f"not an unencrypted private key PEM block: {label}")
        version, n, e, d, p, q, dp, dq, qinv = _der_ints(body, 9)
        if version != 0 or p * q != n:
            raise ValueError("not a two-prime RSA private key")
        return cls(n, e, d, p, q, dp, dq, qinv)

    def to_pem(self) -> str:
        """The key as an ``RSA PRIVATE KEY`` (PKCS#1) PEM block."""
        fields = (0, self.n, self.e, self.d, self.p, self.q, self.dp, self.dq, self.qinv)
        return _pem("RSA PRIVATE KEY", _der(0x30, b"".join(_der_int(v) for v in fields)))

    def decrypt_oaep(self, ciphertext: bytes) -> bytes:
        """RSAES-OAEP-DECRYPT with SHA-1 and an empty label (RFC 8017 §7.1.2).

        Raises:
            ValueError: "decryption error" for any failure (one message for all, per the RFC).
        """
        k = (self.n.bit_length() + 7) // 8
        if len(ciphertext) != k or k < 2 * _SHA1_LEN + 2:
            raise ValueError("decryption error")
        value = int.from_bytes(ciphertext, "big")
        if value >= self.n:
            raise ValueError("decryption error")
        m1 = pow(value, self.dp, self.p)
        m2 = pow(value, self.dq, self.q)
        encoded = (m2 + self.q * ((self.qinv * (m1 - m2)) % self.p)).to_bytes(k, "big")
        masked_seed = encoded[1 : 1 + _SHA1_LEN]
        masked_block = encoded[1 + _SHA1_LEN :]
        seed = _xor(masked_seed, _mgf1(masked_block, _SHA1_LEN))
        block = _xor(masked_block, _mgf1(seed, k - _SHA1_LEN - 1))
        rest = block[_SHA1_LEN:].lstrip(b"\x00")
        good = encoded[0] == 0 and block[:_SHA1_LEN] == _LABEL_HASH and rest[:1] == b"\x01"
        if not good:
            raise ValueError("decryption error")
        return rest[1:]


# -- key generation ----------------------------------------------------------------------

_SMALL_PRIMES: Final = tuple(
    n for n in range(3, 2000, 2) if all(n % d for d in range(3, math.isqrt(n) + 1, 2))
)


def _probably_prime(n: int, rounds: int = 40) -> bool:
    """Miller-Rabin with random bases (error below 4**-rounds)."""
    if n < 2:
        return False
    for prime in _SMALL_PRIMES:
        if n % prime == 0:
            return n == prime
    d = n - 1
    shift = 0
    while d % 2 == 0:
        d //= 2
        shift += 1
    for _ in range(rounds):
        x = pow(secrets.randbelow(n - 3) + 2, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(shift - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _random_prime(bits: int, e: int) -> int:
    while True:
        candidate = secrets.randbits(bits) | (3 << (bits - 2)) | 1
        if math.gcd(candidate - 1, e) == 1 and _probably_prime(candidate):
            return candidate


def generate_private_key(bits: int = 2048, e: int = 65537) -> RSAPrivateKey:
    """A new two-prime RSA key of ``bits`` bits (2048, MySQL's default; about a second here).

    Raises:
        ValueError: ``bits`` below 512 (OAEP with SHA-1 would leave no room for a password).
    """
    if bits < 512:
        raise ValueError("RSA keys for caching_sha2_password need at least 512 bits")
    while True:
        p = _random_prime(bits // 2, e)
        q = _random_prime(bits - bits // 2, e)
        n = p * q
        if p != q and n.bit_length() == bits:
            break
    if p < q:
        p, q = q, p
    d = pow(e, -1, (p - 1) * (q - 1) // math.gcd(p - 1, q - 1))
    return RSAPrivateKey(n, e, d, p, q, d % (p - 1), d % (q - 1), pow(q, -1, p))
