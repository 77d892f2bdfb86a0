"""The connection phase: greetings and handshake responses from real peers (decoded and
re-encoded byte for byte), round trips, SSLRequest, auth switch; and the auth plugins'
arithmetic against independent formulas and RSA against openssl."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resmesh.protocols.mysql import auth
from resmesh.protocols.mysql.constants import Capability, ServerStatus
from resmesh.protocols.mysql.errors import MySQLRemoteError
from resmesh.protocols.mysql.handshake import (
    AuthMoreData,
    AuthSwitchRequest,
    HandshakeResponse,
    InitialHandshake,
    SSLRequest,
    decode_auth_more_data,
    decode_auth_switch_request,
    decode_client_handshake,
    decode_handshake_response,
    decode_initial_handshake,
    encode_auth_more_data,
    encode_auth_switch_request,
    encode_handshake_response,
    encode_initial_handshake,
    encode_ssl_request,
)
from resmesh.protocols.mysql.rsa import RSAPrivateKey, RSAPublicKey, generate_private_key
from tests.protocols.mysql.mysql_support import (
    BY_NAME,
    capability_names,
    ids,
    of_kind,
    payload_of,
)

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RESPONSES = of_kind("handshake_response")


def test_mariadb_greeting_vector() -> None:
    vector = BY_NAME["greeting_mariadb_10_11"]
    payload = payload_of(vector)
    greeting = decode_initial_handshake(payload)
    want = vector["decoded"]
    assert greeting.protocol_version == want["protocol_version"] == 10
    assert greeting.server_version == want["server_version"]
    assert greeting.server_version.startswith("5.5.5-10.11")
    assert greeting.connection_id == want["connection_id"]
    assert greeting.auth_plugin_data.hex() == want["scramble_hex"]
    assert len(greeting.auth_plugin_data) == 20
    assert capability_names(greeting.capabilities) == want["capabilities"]
    assert greeting.charset == want["charset"] == 45
    assert [f.name for f in ServerStatus if greeting.status & f] == want["status"]
    assert greeting.auth_plugin_name == want["auth_plugin_name"]
    assert greeting.is_mariadb
    assert greeting.capabilities & Capability.MARIADB_CACHE_METADATA
    assert encode_initial_handshake(greeting) == payload


@pytest.mark.parametrize("vector", RESPONSES, ids=ids(RESPONSES))
def test_handshake_response_vectors(vector: dict[str, Any]) -> None:
    payload = payload_of(vector)
    response = decode_client_handshake(payload)
    assert isinstance(response, HandshakeResponse)
    want = vector["decoded"]
    assert capability_names(response.capabilities) == want["capabilities"]
    assert response.max_packet_size == want["max_packet_size"]
    assert response.charset == want["charset"]
    assert response.username == want["username"] == "codec_test"
    assert response.auth_response.hex() == want["auth_response_hex"]
    assert response.database == want["database"]
    assert response.auth_plugin_name == want["auth_plugin_name"]
    assert [list(pair) for pair in response.connect_attributes or ()] == want["connect_attributes"]
    encoded = encode_handshake_response(response)
    if vector.get("canonical", True):
        assert encoded == payload
    else:  # a client's non-shortest int<lenenc>: the re-encoding is shorter, same meaning
        assert len(encoded) < len(payload)
        assert decode_handshake_response(encoded) == response


def test_real_clients_scrambles_verify_against_the_stored_hash() -> None:
    """Each real client's mysql_native_password answer verifies with SHA1(SHA1('pw')), which
    is what MariaDB stores (mysql.user shows '*D821...')."""
    stored = auth.parse_native_password_stored(auth.native_password_stored(b"pw"))
    assert auth.native_password_stored(b"pw") == "*D821809F681A40A6E379B50D0463EFAE20BDD122"
    greeting = decode_initial_handshake(payload_of(BY_NAME["greeting_mariadb_10_11"]))
    pymysql = decode_handshake_response(payload_of(BY_NAME["handshake_response_pymysql"]))
    assert auth.verify_native_password(stored, greeting.auth_plugin_data, pymysql.auth_response)
    assert not auth.verify_native_password(
        auth.native_password_hash(b"other"), greeting.auth_plugin_data, pymysql.auth_response
    )


def _independent_native(password: bytes, scramble: bytes) -> bytes:
    stage1 = hashlib.sha1(password).digest()
    mask = hashlib.sha1(scramble + hashlib.sha1(stage1).digest()).digest()
    return bytes(x ^ y for x, y in zip(stage1, mask, strict=True))


def _independent_sha2(password: bytes, scramble: bytes) -> bytes:
    p1 = hashlib.sha256(password).digest()
    p2 = hashlib.sha256(p1).digest()
    mask = hashlib.sha256(p2 + scramble).digest()
    return bytes(x ^ y for x, y in zip(p1, mask, strict=True))


def test_known_answers() -> None:
    scramble = bytes(range(1, 21))
    assert auth.native_password_scramble(b"secret", scramble).hex() == (
        _independent_native(b"secret", scramble).hex()
    )
    assert auth.native_password_scramble(b"", scramble) == b""
    assert auth.caching_sha2_scramble(b"secret", scramble) == _independent_sha2(b"secret", scramble)
    # Fixed answers (computed once with the formulas above), so a change in the formula
    # itself, not only on both sides, is caught.
    assert (
        auth.native_password_scramble(b"pw", b"A" * 20).hex()
        == "786f45cc6c20cecbf487dfdd8dce9719a408c214"
    )
    assert auth.caching_sha2_scramble(b"pw", b"A" * 20).hex() == (
        "cf087296f3cb13a2ec012a915801a42d3ea556c53189a4bdfc929aad80a84ada"
    )


@given(st.binary(max_size=40), st.binary(min_size=20, max_size=20))
@FAST
def test_server_side_checks_accept_exactly_the_password(password: bytes, scramble: bytes) -> None:
    native = auth.native_password_scramble(password, scramble)
    assert native == (_independent_native(password, scramble) if password else b"")
    assert auth.verify_native_password(auth.native_password_hash(password), scramble, native)
    assert not auth.verify_native_password(
        auth.native_password_hash(password + b"x"), scramble, native
    )
    sha2 = auth.caching_sha2_scramble(password, scramble)
    assert auth.verify_caching_sha2(auth.caching_sha2_hash(password), scramble, sha2)
    assert not auth.verify_caching_sha2(auth.caching_sha2_hash(password + b"x"), scramble, sha2)


def test_new_scramble_alphabet() -> None:
    scramble = auth.new_scramble()
    assert len(scramble) == 20
    assert b"\x00" not in scramble
    assert b"$" not in scramble
    assert max(scramble) < 128


# An RSA key and a ciphertext made by `openssl genrsa 1024` and
# `openssl pkeyutl -encrypt -pkeyopt rsa_padding_mode:oaep` (OAEP, SHA-1: what MySQL uses).
OPENSSL_KEY = """-----BEGIN PRIVATE KEY-----
MIICdgIBADANBgkqhkiG9w0BAQEFAASCAmAwggJcAgEAAoGBANRDn0w3/wrdhMc5
FGhOJBdR10fVPUQV4tTBA/OUCIDE/Cf3diSzeMAMLNLpUpXB29ePf9fdTipZSTZ/
QDbehC74LOVpz1Wur7rigTZ9ylCmRBsPR39I03EOz3Op1qP1JhsaFKXgbA7Elxth
/4USZCKjtTAUYKktRQbD6Dt2X2nLAgMBAAECgYBJXB2f//JbVPfgyq9s5STAEn7u
ypnkABRnJ1YwRscxieMEBRiF0qk25n5PXmg2bcuHEodCma+8HyOYfB47WGgiGmz/
NC41Im01fu6PX1nfj6Na5kxSGiBziLvqU/ysfeG3dh98H0sTaZwHH89ByJ2X5+DE
6bZtTXY4IpFVIXcm8QJBAOr44M2xnOPFF+iiWbt2Rvj896pqm82nMPu/4Aj3Q7cN
ql6lLePyRupzsyqmRVpxTAuiLaHqpAvcO2Tbm2mmtB8CQQDnQoMMT4cwv18uuFcY
+zC+W1dGq+wFTgxi6EzO+aMrVMHuPY3tP8TFJQyIYfqd7/vxeAWPpr6gkSvXBPFl
QvTVAkB0RNSQU9vrRQKwpW07eqph2GMA26He4GU3nVlRdnD2anesP5X2nlMC/l9g
skfNGhTkCMsFvOKRz9c/7/72B3xHAkEA2zvpolUOc38oy9DD+RHAruVGwt+fG5RX
F7jjf9+W+TAbvTAriTvH3aF21SAVh36HmO3QT9OiqfOV3Px5oCaulQJATBnwEHbT
11IYa5uk1BgVY0Q5mhhc1xrAHpE1z0Qz3dTtQKTsDdUfvOgTr92uoSUX796V7KTJ
zeG2QAGf5vkGCA==
-----END PRIVATE KEY-----
"""
OPENSSL_PUBLIC = """-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDUQ59MN/8K3YTHORRoTiQXUddH
1T1EFeLUwQPzlAiAxPwn93Yks3jADCzS6VKVwdvXj3/X3U4qWUk2f0A23oQu+Czl
ac9Vrq+64oE2fcpQpkQbD0d/SNNxDs9zqdaj9SYbGhSl4GwOxJcbYf+FEmQio7Uw
FGCpLUUGw+g7dl9pywIDAQAB
-----END PUBLIC KEY-----
"""
OPENSSL_CIPHERTEXT = bytes.fromhex(
    "5ff2e345ce480ea08db357aa7d1e68332204f70f579c8a661533cf8f48b301dd"
    "41f8d78b7d99ee1fbffbf3e75976dc3e6214c50e88a33f1012e70ee1b33431de"
    "20ad5c12e8702f70ff8af739185f770342b4266ef15912eb008937eea0bce009"
    "eee06d611f4fa00ab19bf82add73efac423c994cf1483514b6ef6ef0a11565cd"
)
#: The plaintext openssl encrypted.
OPENSSL_PLAINTEXT = b"pw-secret"


def test_rsa_key_pem_round_trip_and_openssl_public_form() -> None:
    key = RSAPrivateKey.from_pem(OPENSSL_KEY)
    assert key.n.bit_length() == 1024
    assert RSAPrivateKey.from_pem(key.to_pem()) == key
    public = key.public_key
    assert RSAPublicKey.from_pem(public.to_pem()) == public
    assert public.to_pem() == OPENSSL_PUBLIC  # byte for byte what `openssl pkey -pubout` wrote
    assert key.decrypt_oaep(OPENSSL_CIPHERTEXT) == OPENSSL_PLAINTEXT
    with pytest.raises(ValueError):
        RSAPublicKey.from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----")


def test_caching_sha2_full_auth_over_rsa() -> None:
    """Client encrypts (password XOR scramble) for the server's key; the server gets the
    password back; a wrong key or a flipped byte fails with one error."""
    key = RSAPrivateKey.from_pem(OPENSSL_KEY)
    scramble = auth.new_scramble()
    ciphertext = auth.encrypt_password_rsa(b"s3cret", scramble, key.public_key)
    assert len(ciphertext) == 128
    assert auth.decrypt_password_rsa(ciphertext, scramble, key) == b"s3cret"
    corrupt = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    with pytest.raises(ValueError, match="decryption error"):
        auth.decrypt_password_rsa(corrupt, scramble, key)
    other = generate_private_key(1024)
    with pytest.raises(ValueError, match="decryption error"):
        auth.decrypt_password_rsa(ciphertext, scramble, other)


def test_generated_key_round_trip() -> None:
    key = generate_private_key(1024)
    assert key.n.bit_length() == 1024
    message = b"x" * (128 - 42)
    assert key.decrypt_oaep(key.public_key.encrypt_oaep(message)) == message
    with pytest.raises(ValueError):
        key.public_key.encrypt_oaep(message + b"y")


# -- round trips ----------------------------------------------------------------------------

_caps = st.integers(0, 2**38 - 1).map(Capability)
_names = st.text(
    alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]), max_size=12
)


@given(
    _caps,
    st.text(max_size=30).filter(lambda t: "\x00" not in t),
    st.integers(0, 2**32 - 1),
    st.binary(min_size=8, max_size=32),
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
    _names,
)
@FAST
def test_greeting_round_trip(
    capabilities: Capability,
    version: str,
    connection_id: int,
    scramble: bytes,
    charset: int,
    status: int,
    plugin: str,
) -> None:
    capabilities |= Capability.SECURE_CONNECTION | Capability.PLUGIN_AUTH
    if capabilities & Capability.LONG_PASSWORD:
        capabilities &= Capability(0xFFFFFFFF)
    greeting = InitialHandshake(
        server_version=version,
        connection_id=connection_id,
        auth_plugin_data=scramble,
        capabilities=capabilities,
        charset=charset,
        status=ServerStatus(status),
        auth_plugin_name=plugin,
    )
    decoded = decode_initial_handshake(encode_initial_handshake(greeting))
    assert decoded.server_version == version
    assert decoded.auth_plugin_data == scramble
    assert decoded.capabilities == capabilities
    assert (decoded.connection_id, decoded.charset, decoded.status) == (
        connection_id,
        charset,
        status,
    )
    assert decoded.auth_plugin_name == plugin


@given(
    _caps,
    _names,
    st.binary(max_size=300),
    st.one_of(st.none(), _names),
    st.one_of(st.none(), _names),
    st.one_of(st.none(), st.lists(st.tuples(_names, _names), max_size=3).map(tuple)),
)
@FAST
def test_handshake_response_round_trip(
    capabilities: Capability,
    user: str,
    auth_response: bytes,
    database: str | None,
    plugin: str | None,
    attributes: tuple[tuple[str, str], ...] | None,
) -> None:
    capabilities |= Capability.PROTOCOL_41 | Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA
    capabilities &= ~Capability.ZSTD_COMPRESSION_ALGORITHM
    if capabilities & Capability.LONG_PASSWORD:
        capabilities &= Capability(0xFFFFFFFF)
    # What a decoder can tell apart: fields only where their capability is set, and a
    # database written (maybe empty) when later fields follow.
    if not capabilities & Capability.CONNECT_ATTRS:
        attributes = None
    if not capabilities & Capability.PLUGIN_AUTH:
        plugin = None
    if attributes is not None and capabilities & Capability.PLUGIN_AUTH and plugin is None:
        plugin = ""
    if not capabilities & Capability.CONNECT_WITH_DB:
        database = None
    elif database is None and (plugin is not None or attributes is not None):
        database = ""
    response = HandshakeResponse(
        capabilities=capabilities,
        username=user,
        auth_response=auth_response,
        database=database,
        auth_plugin_name=plugin,
        connect_attributes=attributes,
    )
    payload = encode_handshake_response(response)
    assert decode_client_handshake(payload) == response


def test_ssl_request_and_refusals() -> None:
    request = SSLRequest(
        capabilities=Capability.SSL | Capability.PROTOCOL_41, max_packet_size=1 << 24, charset=45
    )
    payload = encode_ssl_request(request)
    assert len(payload) == 32
    assert decode_client_handshake(payload) == request
    with pytest.raises(MySQLRemoteError) as info:
        no_ssl = SSLRequest(capabilities=Capability.PROTOCOL_41, max_packet_size=0, charset=8)
        decode_client_handshake(encode_ssl_request(no_ssl))  # 32 bytes without CLIENT_SSL
    assert info.value.error.errno == 1043
    old = HandshakeResponse(capabilities=Capability.SECURE_CONNECTION, username="u")
    with pytest.raises(MySQLRemoteError):  # pre-4.1 clients are refused
        decode_handshake_response(encode_handshake_response(old))
    with pytest.raises(MySQLRemoteError):
        decode_initial_handshake(b"\x09old")


def test_auth_switch_vector_and_forms() -> None:
    vector = BY_NAME["auth_switch_change_user"]
    payload = payload_of(vector)
    switch = decode_auth_switch_request(payload)
    assert switch.plugin_name == vector["decoded"]["plugin_name"]
    assert switch.plugin_data.hex() == vector["decoded"]["plugin_data_hex"]
    assert len(switch.scramble) == 20
    assert encode_auth_switch_request(switch) == payload
    assert decode_auth_switch_request(b"\xfe") == AuthSwitchRequest(None)
    assert encode_auth_switch_request(AuthSwitchRequest(None)) == b"\xfe"
    for marker in (b"\x03", b"\x04"):
        more = decode_auth_more_data(b"\x01" + marker)
        assert more == AuthMoreData(marker)
        assert encode_auth_more_data(more) == b"\x01" + marker
