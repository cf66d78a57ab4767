"""Authentication: the JWT authenticator against real PyJWT tokens, and token extraction."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from roomcast.auth import (
    AuthenticationError,
    Identity,
    JWTAuthenticator,
    authenticate,
    token_from_request,
)

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret"


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": int(time.time()) + 7 * 86400, **extra}  # (collected early)


def hs(payload: dict[str, Any], key: str = SECRET, **headers: Any) -> str:
    return jwt.encode(payload, key, algorithm="HS256", headers=headers or None)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_a_valid_hs256_token_gives_the_identity() -> None:
    """sub becomes the user id; claims and expiry come along."""
    identity = JWTAuthenticator(SECRET)(hs(claims(role="admin")))
    assert identity.user_id == "alice"
    assert identity.claims["role"] == "admin"
    assert identity.expires_at is not None and identity.expires_at > time.time()


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (hs(claims(exp=int(time.time()) - 120)), "expired"),
        (hs(claims(), key="another-secret-another-secret-xx"), "does not verify"),
        (hs({"sub": "alice"}), "'exp'"),
        (hs({"exp": int(time.time()) + 7 * 86400}), "'sub'"),
        (hs(claims(sub=42)), "not a user id"),
        (hs(claims(nbf=int(time.time()) + 86400)), "not valid yet"),
        ("not.a.token", "malformed"),
        ("", "malformed"),
    ],
)
def test_bad_tokens_are_refused_with_a_reason(token: str, why: str) -> None:
    """Expired, forged, incomplete, premature and malformed tokens raise
    AuthenticationError (status 401) whose message says why and never quotes the token."""
    with pytest.raises(AuthenticationError, match=why) as refused:
        JWTAuthenticator(SECRET)(token)
    assert refused.value.status == 401
    if token:
        assert token not in str(refused.value)


def test_alg_none_is_refused_and_cannot_be_allowed() -> None:
    """An unsigned token is refused; an allow-list with 'none' is refused at construction."""
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=")
    unsigned = (header + b"." + body + b".").decode()
    with pytest.raises(AuthenticationError, match="not allowed"):
        JWTAuthenticator(SECRET)(unsigned)
    with pytest.raises(ValueError, match="never allowed"):
        JWTAuthenticator(SECRET, algorithms=["HS256", "none"])


def test_hmac_and_public_key_algorithms_cannot_be_mixed(rsa_key: rsa.RSAPrivateKey) -> None:
    """Key confusion: a token 'signed' with HS256 using the RSA public key as the secret is
    refused by an RS256 authenticator, and an HS+RS allow-list is refused outright."""
    pem = public_pem(rsa_key)
    with pytest.raises(ValueError, match="key confusion"):
        JWTAuthenticator(pem, algorithms=["RS256", "HS256"])
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=")
    signature = hmac.new(pem, header + b"." + body, hashlib.sha256).digest()
    forged = (
        header + b"." + body + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")
    ).decode()
    with pytest.raises(AuthenticationError, match="not allowed"):
        JWTAuthenticator(pem, algorithms=["RS256"])(forged)


def test_rs256_and_es256_with_public_keys(rsa_key: rsa.RSAPrivateKey) -> None:
    """Public-key algorithms verify with PEM text or key objects."""
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert JWTAuthenticator(public_pem(rsa_key), algorithms=["RS256"])(token).user_id == "alice"
    ec_key = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(claims(sub="bob"), ec_key, algorithm="ES256")
    authenticator = JWTAuthenticator(ec_key.public_key(), algorithms=["ES256"])
    assert authenticator(token).user_id == "bob"


def test_audience_issuer_and_leeway() -> None:
    """aud and iss are enforced when configured; leeway tolerates small clock skew."""
    authenticator = JWTAuthenticator(SECRET, audience="chat", issuer="https://id.example")
    good = hs(claims(aud="chat", iss="https://id.example"))
    assert authenticator(good).user_id == "alice"
    with pytest.raises(AuthenticationError, match="audience"):
        authenticator(hs(claims(aud="billing", iss="https://id.example")))
    with pytest.raises(AuthenticationError, match="issuer"):
        authenticator(hs(claims(aud="chat", iss="https://evil.example")))
    just_expired = hs(claims(exp=int(time.time()) - 5))
    assert JWTAuthenticator(SECRET, leeway=30)(just_expired).user_id == "alice"
    with pytest.raises(AuthenticationError, match="expired"):
        JWTAuthenticator(SECRET, leeway=0)(just_expired)


def test_key_rotation_by_kid_by_list_and_by_jwks(rsa_key: rsa.RSAPrivateKey) -> None:
    """Keys are picked by kid, tried in turn without one, or read from a JWKS document; an
    unknown kid is refused."""
    old, new = SECRET, "n3w-s3cret-n3w-s3cret-n3w-s3cret-xx"
    by_kid = JWTAuthenticator({"2025": old, "2026": new})
    assert by_kid(hs(claims(), key=new, kid="2026")).user_id == "alice"
    assert by_kid(hs(claims(), key=old, kid="2025")).user_id == "alice"
    with pytest.raises(AuthenticationError, match="unknown key id"):
        by_kid(hs(claims(), key=new, kid="1999"))
    assert JWTAuthenticator([old, new])(hs(claims(), key=new)).user_id == "alice"
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    jwk.update(kid="rsa1", alg="RS256", use="sig")
    from_jwks = JWTAuthenticator(jwks={"keys": [jwk]}, algorithms=["RS256"])
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa1"})
    assert from_jwks(token).user_id == "alice"
    with pytest.raises(ValueError, match="needs keys"):
        JWTAuthenticator(algorithms=["HS256"])
    with pytest.raises(ValueError, match="unsupported"):
        JWTAuthenticator(SECRET, algorithms=["HS999"])


def test_token_sources_in_order_of_preference() -> None:
    """Authorization header first, then the bearer subprotocol, then ?token= (if allowed)."""
    assert token_from_request([("Authorization", "Bearer abc")], "token=q") == ("abc", None)
    assert token_from_request([("sec-websocket-protocol", "bearer, xyz")]) == ("xyz", "bearer")
    assert token_from_request([("Sec-WebSocket-Protocol", "chat")], "token=q") == ("q", None)
    assert token_from_request([], "token=q", allow_query=False) == (None, None)
    assert token_from_request([("Authorization", "Basic Zm9v")]) == (None, None)
    assert token_from_request([("Sec-WebSocket-Protocol", "bearer")]) == (None, None)


async def test_authenticate_runs_sync_and_async_authenticators() -> None:
    """Both kinds work; no token is refused without calling it; an authenticator may say who
    it is as an Identity, a user id or the claims, and refuse with None; anything else that
    names nobody is a bug."""

    async def async_authenticator(token: str) -> Identity:
        return Identity(user_id=token.upper())

    assert (await authenticate(async_authenticator, "ann")).user_id == "ANN"
    assert (await authenticate(JWTAuthenticator(SECRET), hs(claims()))).user_id == "alice"
    with pytest.raises(AuthenticationError, match="required"):
        await authenticate(async_authenticator, None)
    assert await authenticate(lambda token: "alice", "t") == Identity("alice")
    claimed = await authenticate(lambda token: {"sub": "bob", "exp": 2e9, "role": "x"}, "t")
    assert (claimed.user_id, claimed.expires_at, claimed.claims["role"]) == ("bob", 2e9, "x")
    with pytest.raises(AuthenticationError, match="refused"):
        await authenticate(lambda token: None, "t")
    for nobody in ("", {"name": "no sub"}, 42):
        with pytest.raises(TypeError):
            await authenticate(lambda token, nobody=nobody: nobody, "t")  # type: ignore[misc]


def test_an_unusable_key_refuses_instead_of_crashing(rsa_key: rsa.RSAPrivateKey) -> None:
    """A key that cannot verify the algorithm (not a PEM for RS256) is a refusal, not an
    exception escaping to the server."""
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    with pytest.raises(AuthenticationError, match="rejected"):
        JWTAuthenticator("not a pem key", algorithms=["RS256"])(token)


@pytest.mark.parametrize(
    "query",
    [
        "user_id=ann",
        "a=1&user_id=b%20c&user_id=x",
        "user_id=a+b",
        "user_id=&x=1",
        "x=1",
        "",
        "user_idx=1",
        "user_id=%E2%9C%93",
    ],
)
def test_query_value_agrees_with_parse_qs(query: str) -> None:
    """The fast query lookup gives what parse_qs would (first non-empty value)."""
    from urllib.parse import parse_qs

    from roomcast.auth import query_value

    expected = parse_qs(query).get("user_id")
    assert query_value(query, "user_id") == (expected[0] if expected else None)


def signed(payload: str, key: str = SECRET) -> str:
    """An HS256 token over ``payload`` exactly as written: JSON that ``json.dumps`` would not
    produce (``1e400``, a 400-digit number), or that PyJWT would reject on encoding."""
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(payload.encode()).rstrip(b"=")
    signature = hmac.new(key.encode(), header + b"." + body, hashlib.sha256).digest()
    return (header + b"." + body + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()


AHEAD = int(time.time()) + 7 * 86400  # (collected early: a long run must not outlive it)


@pytest.mark.parametrize(
    "exp",
    [AHEAD, AHEAD + 0.9, str(AHEAD), f" {AHEAD}\n", f"+{AHEAD}"],
    ids=["int", "float", "numeric-string", "padded-string", "signed-string"],
)
def test_every_exp_pyjwt_accepts_gives_one_float_expiry(exp: Any) -> None:
    """Whatever form of exp PyJWT's int() takes, expires_at is that int as a float, the
    time a live connection is warned at (a numeric string once gave None: never)."""
    identity = JWTAuthenticator(SECRET)(hs(claims(exp=exp)))
    assert identity.expires_at == float(AHEAD)
    assert type(identity.expires_at) is float


@pytest.mark.parametrize(
    ("exp", "why"),
    [
        ("true", "boolean"),
        ("false", "boolean"),
        ("NaN", "not a finite time"),
        ("Infinity", "not a finite time"),
        ("-Infinity", "not a finite time"),
        ("1e400", "not a finite time"),
        (str(10**30), "out of range"),
        (str(10**400), "out of range"),
        ('"1000000000000000000000000000000"', "out of range"),
        (f"-{10**30}", "out of range"),
        (f'"{AHEAD}.5"', "not a number of seconds"),
        ('"1e10"', "not a number of seconds"),
        ('"soon"', "not a number of seconds"),
        ('""', "not a number of seconds"),
        (f"[{AHEAD}]", "not a number of seconds"),
        (f'{{"at": {AHEAD}}}', "not a number of seconds"),
        ("null", "lacks the 'exp' claim"),
        (f'"{int(time.time()) - 120}"', "token expired"),
    ],
)
def test_an_exp_that_is_not_a_usable_time_is_refused(exp: str, why: str) -> None:
    """Booleans, NaN, infinities, times past year 9999, non-integer strings and
    containers are refused with a 401 that names the claim; an expired string is expired."""
    with pytest.raises(AuthenticationError, match=why) as refused:
        JWTAuthenticator(SECRET, leeway=0)(signed(f'{{"sub": "alice", "exp": {exp}}}'))
    assert refused.value.status == 401


def test_leeway_applies_to_a_string_exp_as_to_a_number() -> None:
    """A numeric-string exp a little in the past passes within the leeway, not beyond it."""
    just_expired = hs(claims(exp=str(int(time.time()) - 5)))
    assert JWTAuthenticator(SECRET, leeway=30)(just_expired).expires_at is not None
    with pytest.raises(AuthenticationError, match="expired"):
        JWTAuthenticator(SECRET, leeway=0)(just_expired)


def test_identity_holds_a_finite_float_expiry_or_none() -> None:
    """An int expiry becomes a float; strings, booleans, NaN, infinities and times past
    year 9999 are refused when the Identity is built (a custom authenticator's bug)."""
    assert Identity("a").expires_at is None
    converted = Identity("a", expires_at=1_700_000_000)
    assert converted.expires_at == 1_700_000_000.0 and type(converted.expires_at) is float
    for wrong_type in ("1700000000", True):
        with pytest.raises(TypeError, match="expires_at"):
            Identity("a", expires_at=wrong_type)  # type: ignore[arg-type]
    for wrong_value in (float("nan"), float("inf"), -float("inf"), 1e300, 10**400):
        with pytest.raises(ValueError, match="expires_at"):
            Identity("a", expires_at=wrong_value)


def test_a_connections_expiry_moves_by_the_authenticators_leeway() -> None:
    """The skew tolerated at connect is tolerated at expiry: exp + leeway (none for an
    authenticator without one, and None stays None)."""
    from roomcast.auth import expiry_with_leeway

    assert expiry_with_leeway(1000.0, JWTAuthenticator(SECRET, leeway=30)) == 1030.0
    assert expiry_with_leeway(1000.0, JWTAuthenticator(SECRET, leeway=0)) == 1000.0
    assert expiry_with_leeway(1000.0, lambda token: "ann") == 1000.0
    assert expiry_with_leeway(None, JWTAuthenticator(SECRET)) is None
