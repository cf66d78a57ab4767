"""Authentication: who is connecting, decided before the connection is accepted.

An ``Authenticator`` is any callable, sync or async, that takes the token a client presented
and returns an ``Identity`` (user id, claims, expiry) or raises ``AuthenticationError``.
``JWTAuthenticator`` is the one roomcast ships, on PyJWT.  Its defaults are the safe ones:

* an explicit algorithm allow-list; ``none`` is refused when the authenticator is built, and
  so is a list mixing HMAC (``HS*``) with public-key algorithms, which is how key-confusion
  attacks work (a public key used as an HMAC secret);
* ``exp`` is required, ``aud`` and ``iss`` are checked when configured, with a small leeway;
  ``exp`` is read once, the way PyJWT reads it, and that one reading decides both whether the
  token is expired now and when a live connection holding it expires (see ``exp_seconds``);
* several keys at once (by ``kid``, or tried in turn) or a JWKS document, so keys can rotate.

Tokens come from the ``Authorization: Bearer`` header, from ``Sec-WebSocket-Protocol`` (what
browsers can send: ``["bearer", token]``), or from a ``token`` query parameter (also for
browsers; query strings end up in access logs, so prefer the others).  Error messages never
contain the token.

This module imports PyJWT (the ``jwt`` extra) only when a ``JWTAuthenticator`` is built.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote_plus

from roomcast.errors import RoomcastError

__all__ = [
    "AuthenticationError",
    "Authenticator",
    "Identity",
    "JWTAuthenticator",
    "authenticate",
    "exp_seconds",
    "expiry_with_leeway",
    "identity_of",
    "query_value",
    "token_from_request",
]

_SYMMETRIC = frozenset({"HS256", "HS384", "HS512"})
_ASYMMETRIC = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
BEARER_PROTOCOL = "bearer"
"""The ``Sec-WebSocket-Protocol`` value that announces a token as the next protocol entry."""
LATEST_EXPIRY = 253_402_300_799
"""9999-12-31T23:59:59Z, the last second ``datetime`` can hold: the latest expiry accepted.
Anything later is a token that never expires in disguise (and past ~1e308 not even a float)."""


class AuthenticationError(RoomcastError):
    """The client is not who it needs to be: no token, a bad one, an expired one.

    ``status`` is the HTTP status to refuse the upgrade with (401; 403 for a valid identity
    that is not allowed).  The message is safe to send to the client and to log.
    """

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated client.

    Attributes:
        user_id: Who it is (from the ``sub`` claim by default).
        claims: Every claim of the token (read-only).
        expires_at: When the token expires, in Unix seconds: always a finite ``float``
            (an ``int`` is converted), or None for a credential that does not expire.

    Raises:
        TypeError: ``expires_at`` is not an ``int`` or ``float`` (a ``bool`` or a numeric
            string is not either).
        ValueError: ``expires_at`` is NaN, infinite or beyond year 9999.
    """

    user_id: str
    claims: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    expires_at: float | None = None

    def __post_init__(self) -> None:
        # The expiry clocks order and subtract this value: a string would crash them and a
        # NaN would sit, never due, at the head of their heap.  So a custom authenticator's
        # mistake shows here, at connect, and not as a connection that never expires.
        expires = self.expires_at
        if expires is None:
            return
        if isinstance(expires, bool) or not isinstance(expires, int | float):
            raise TypeError(
                f"Identity.expires_at must be Unix seconds (float), not {type(expires).__name__}"
            )
        if not -LATEST_EXPIRY <= expires <= LATEST_EXPIRY:  # False for NaN too
            raise ValueError(
                f"Identity.expires_at must be finite and within year 9999, not {expires!r}"
            )
        object.__setattr__(self, "expires_at", float(expires))


Authenticator = Callable[[str], "Identity | str | Mapping[str, Any] | Awaitable[Any] | None"]
"""token -> who it is (sync or async): an ``Identity``, a user id, or the token's claims (a
mapping with ``sub``, and ``exp`` if it expires); None or ``AuthenticationError`` refuses."""


async def authenticate(authenticator: Authenticator, token: str | None) -> Identity:
    """Run a sync or async authenticator; a missing token is refused without calling it.

    Raises:
        AuthenticationError: refused (anything else the authenticator raises propagates).
    """
    if not token:
        raise AuthenticationError("a token is required")
    outcome = authenticator(token)
    if inspect.isawaitable(outcome):
        outcome = await outcome
    return identity_of(outcome)


def identity_of(outcome: object) -> Identity:
    """What an authenticator returned, as an ``Identity``.

    Raises:
        AuthenticationError: None (the authenticator refused the token).
        TypeError: anything else that names no user (an empty id, claims without ``sub``).
    """
    if isinstance(outcome, Identity):
        return outcome
    if outcome is None:
        raise AuthenticationError("the token was refused")
    if isinstance(outcome, str) and outcome:
        return Identity(outcome)
    if isinstance(outcome, Mapping):
        subject = outcome.get("sub")
        if not isinstance(subject, str) or not subject:
            raise TypeError("authenticator returned claims without a string 'sub'")
        expires = outcome.get("exp")
        expires_at = None if expires is None else exp_seconds(expires)
        return Identity(subject, MappingProxyType(dict(outcome)), expires_at)
    raise TypeError(
        f"authenticator returned {type(outcome).__name__}: return an Identity, a user id or "
        "the claims (with 'sub'), or None to refuse"
    )


def expiry_with_leeway(expires_at: float | None, authenticator: object) -> float | None:
    """When a connection's token counts as expired: its ``exp`` moved by the clock skew the
    authenticator tolerates at connect (``JWTAuthenticator.leeway``; none for others)."""
    leeway = getattr(authenticator, "leeway", 0.0)
    if expires_at is None or not isinstance(leeway, int | float):
        return expires_at
    return expires_at + leeway


def token_from_request(
    headers: Iterable[tuple[str, str]], query: str = "", *, allow_query: bool = True
) -> tuple[str | None, str | None]:
    """The token a client presented, and the subprotocol to accept if it came that way.

    Looks at ``Authorization: Bearer <token>``, then ``Sec-WebSocket-Protocol: bearer,
    <token>``, then ``?token=`` (if ``allow_query``).  Header names are case-insensitive.
    """
    protocols: list[str] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == "authorization":
            scheme, _, credentials = value.strip().partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip(), None
        elif lowered == "sec-websocket-protocol":
            protocols += [part.strip() for part in value.split(",")]
    if BEARER_PROTOCOL in protocols:
        index = protocols.index(BEARER_PROTOCOL)
        if index + 1 < len(protocols) and protocols[index + 1]:
            return protocols[index + 1], BEARER_PROTOCOL
    if allow_query and query:
        token = query_value(query, "token")
        if token:
            return token, None
    return None, None


def exp_seconds(value: Any) -> float:
    """The ``exp`` claim as Unix seconds, read exactly as PyJWT 2.x checks it: ``int(value)``.

    So ``1700000000``, ``1700000000.9`` (truncated, as PyJWT truncates it) and the numeric
    string ``"1700000000"`` all give ``1700000000.0``.  Reading it any other way lets a token
    pass the check at connect and then never expire on the live connection (a string was
    once skipped).  Refused although ``int()`` takes them: booleans (``true`` would mean
    1970) and times beyond ``LATEST_EXPIRY``; NaN, infinities and strings that are not whole
    numbers are refused as PyJWT refuses them, with a message that names the claim.

    Raises:
        AuthenticationError: the claim is not a usable time (401).
    """
    if isinstance(value, bool):
        raise AuthenticationError("the 'exp' claim is a boolean, not a time")
    if isinstance(value, float) and not math.isfinite(value):
        raise AuthenticationError("the 'exp' claim is not a finite time")
    try:
        seconds = int(value)
    except (TypeError, ValueError, OverflowError):
        raise AuthenticationError("the 'exp' claim is not a number of seconds") from None
    if not -LATEST_EXPIRY <= seconds <= LATEST_EXPIRY:
        raise AuthenticationError("the 'exp' claim is out of range (past year 9999)")
    return float(seconds)


def query_value(query: str, name: str) -> str | None:
    """The first non-empty value of ``name`` in a query string, decoded as ``parse_qs`` would
    (``+`` is a space); None if absent.  A split and a prefix test instead of ``parse_qs``,
    which builds a dict of lists on every upgrade."""
    prefix = name + "="
    for part in query.split("&"):
        if part.startswith(prefix) and len(part) > len(prefix):
            return unquote_plus(part[len(prefix) :])
    return None


class JWTAuthenticator:
    """Verifies JSON Web Tokens with PyJWT.

    Args:
        keys: Verification keys: one key, a list (each tried), or a mapping ``kid -> key``
            (picked by the token's ``kid`` header).  HMAC secrets as ``str``/``bytes``;
            public keys as PEM text or ``cryptography`` key objects.
        jwks: A JWKS document (``{"keys": [...]}``) instead of, or besides, ``keys``.
        algorithms: The allowed algorithms (never ``none``; not HMAC and public-key mixed).
        audience: Required ``aud`` (one value or any of several), if set.
        issuer: Required ``iss``, if set.
        leeway: Seconds of clock skew tolerated on ``exp``/``nbf``/``iat``.
        user_claim: The claim holding the user id.
        required_claims: Claims that must be present (``exp`` and the user claim always are).
    """

    def __init__(
        self,
        keys: Any = None,
        *,
        jwks: Mapping[str, Any] | None = None,
        algorithms: Sequence[str] = ("HS256",),
        audience: str | Sequence[str] | None = None,
        issuer: str | None = None,
        leeway: float = 30.0,
        user_claim: str = "sub",
        required_claims: Sequence[str] = (),
    ) -> None:
        import jwt

        self._jwt = jwt
        allowed = list(algorithms)
        if not allowed:
            raise ValueError("at least one algorithm must be allowed")
        if any(alg.lower() == "none" for alg in allowed):
            raise ValueError("the 'none' algorithm is never allowed")
        unknown = [alg for alg in allowed if alg not in _SYMMETRIC | _ASYMMETRIC]
        if unknown:
            raise ValueError(f"unsupported algorithms: {unknown}")
        if set(allowed) & _SYMMETRIC and set(allowed) & _ASYMMETRIC:
            raise ValueError(
                "mixing HMAC and public-key algorithms allows key confusion; use two "
                "authenticators if you must accept both"
            )
        self._algorithms = allowed
        self._by_kid: dict[str, Any] = {}
        self._anonymous: list[Any] = []
        if isinstance(keys, Mapping):
            self._by_kid.update(keys)
        elif isinstance(keys, list | tuple):
            self._anonymous.extend(keys)
        elif keys is not None:
            self._anonymous.append(keys)
        if jwks is not None:
            for jwk in jwt.PyJWKSet.from_dict(dict(jwks)).keys:
                if jwk.key_id is None:
                    self._anonymous.append(jwk.key)
                else:
                    self._by_kid[jwk.key_id] = jwk.key
        if not self._by_kid and not self._anonymous:
            raise ValueError("JWTAuthenticator needs keys or a JWKS document")
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway
        self._user_claim = user_claim
        self._required = sorted({"exp", user_claim, *required_claims})

    @property
    def algorithms(self) -> frozenset[str]:
        """The algorithms a token may be signed with."""
        return frozenset(self._algorithms)

    @property
    def leeway(self) -> float:
        """Seconds of clock skew tolerated; a connection's expiry is moved by as much."""
        return self._leeway

    def __call__(self, token: str) -> Identity:
        """Verify ``token``; the identity it proves.

        Raises:
            AuthenticationError: malformed, wrong signature or algorithm, expired, not yet
                valid, wrong audience or issuer, a required claim missing.
        """
        jwt = self._jwt
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthenticationError("malformed token") from None
        algorithm = header.get("alg")
        if algorithm not in self._algorithms:
            raise AuthenticationError(f"token algorithm {str(algorithm)[:16]!r} is not allowed")
        kid = header.get("kid")
        if kid is not None and kid in self._by_kid:
            candidates = [self._by_kid[kid]]
        elif kid is not None and not self._anonymous:
            raise AuthenticationError("unknown key id")
        else:
            candidates = self._anonymous or list(self._by_kid.values())
        for key in candidates:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=self._algorithms,
                    audience=self._audience,
                    issuer=self._issuer,
                    leeway=self._leeway,
                    # exp is checked by _identity, from the same reading that arms the
                    # connection's expiry, so that the two can never disagree.
                    options={"require": self._required, "verify_exp": False},
                )
            except jwt.InvalidSignatureError:
                continue  # maybe the next key (rotation)
            except jwt.InvalidAudienceError:
                raise AuthenticationError("token audience not accepted") from None
            except jwt.InvalidIssuerError:
                raise AuthenticationError("token issuer not accepted") from None
            except jwt.MissingRequiredClaimError as exc:
                raise AuthenticationError(f"token lacks the {exc.claim!r} claim") from None
            except jwt.ImmatureSignatureError:
                raise AuthenticationError("token not valid yet") from None
            except jwt.exceptions.InvalidSubjectError:
                raise AuthenticationError("the 'sub' claim is not a user id") from None
            except (jwt.PyJWTError, ValueError, TypeError):
                # InvalidKeyError (e.g. a public key offered as an HMAC secret), bad
                # encoding, unsupported key: all refusals, never a crash.
                raise AuthenticationError("token rejected") from None
            return self._identity(claims)
        raise AuthenticationError("token signature does not verify")

    def _identity(self, claims: dict[str, Any]) -> Identity:
        expires_at = exp_seconds(claims["exp"])  # present: "exp" is always required
        # PyJWT's own test, on the one reading: expired at exp itself, give or take leeway.
        if expires_at <= time.time() - self._leeway:
            raise AuthenticationError("token expired")
        user_id = claims.get(self._user_claim)
        if not isinstance(user_id, str) or not user_id:
            raise AuthenticationError(f"the {self._user_claim!r} claim is not a user id")
        return Identity(user_id, MappingProxyType(claims), expires_at)
