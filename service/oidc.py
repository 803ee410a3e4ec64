"""Access tokens from an OpenID provider: discovery, a cached JWKS, and local verification.

A bearer credential with the shape of a compact JWS (three base64url parts
joined by dots) is an access token; anything else is an API key (service/auth.py).
The cryptography is PyJWT's (on `cryptography`): this module only decides which
key and which checks apply.

- `IssuerKeys` fetches `{issuer}/.well-known/openid-configuration` and the
  `jwks_uri` it names at startup, then every OIDC_JWKS_REFRESH_SECONDS in the
  background. A failed fetch keeps the keys it had (tokens signed by them keep
  working while the issuer is down). A token whose `kid` is not in the set
  triggers one fetch at most every OIDC_JWKS_MIN_REFETCH_SECONDS, shared by all
  requests waiting on it: a flood of made-up `kid`s costs the issuer one fetch
  per interval.
- `TokenVerifier` checks, in this order and without I/O: size (MAX_TOKEN_BYTES),
  header (`alg` in OIDC_ALGORITHMS, a `kid`), the key (known, and its own `alg`
  if it names one), the signature, then `iss`, `aud`, `exp`, `nbf` (with
  OIDC_LEEWAY_SECONDS) and `sub`. A verified token is remembered until it
  expires (or the key set changes), so a client that sends the same token again
  costs a dictionary lookup, not an RSA verification.

Errors: `InvalidToken` (answered 401 `invalid_token`) and `IssuerUnavailable`
(503: no key was ever fetched, so no token can be judged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from jwt import PyJWK
from jwt.exceptions import PyJWKError, PyJWKSetError, PyJWTError

from service.config import SCOPES, Settings
from service.metrics import JWKS_FETCHES

logger = logging.getLogger(__name__)

# Larger than any access token a mainstream issuer mints (Entra ID tokens with many groups reach
# about 5 kB); checked before any parsing, so an oversized token costs a length comparison.
MAX_TOKEN_BYTES = 8192
# A JWKS or discovery document larger than this is refused (a real one is a few kB).
MAX_DOCUMENT_BYTES = 256 * 1024
# Verified tokens remembered per pod; the oldest is forgotten first when full.
VERIFIED_CACHE_SIZE = 10_000


def looks_like_jwt(credential: str) -> bool:
    """True for the compact JWS shape `header.payload.signature`; API keys never contain a dot."""
    return credential.count(".") == 2


class InvalidToken(Exception):
    """The token is refused; `reason` is a short label for metrics and the client's error_description."""

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


class IssuerUnavailable(Exception):
    """No signing key was ever fetched from the issuer, so no token can be judged yet."""


@dataclass(frozen=True)
class TokenPrincipal:
    """Who a verified token speaks for: its subject (`sub`), our scopes, and when it expires (epoch s)."""

    subject: str
    scopes: frozenset[str]
    expires_at: float

    @property
    def name(self) -> str:
        # The access log's principal and the rate limiter's identity; never the token itself.
        return f"sub:{self.subject}"


class IssuerKeys:
    """The issuer's current signing keys by `kid`, kept fresh in the background; see the module doc."""

    def __init__(
        self,
        issuer: str,
        *,
        refresh_seconds: float,
        min_refetch_seconds: float,
        timeout_seconds: float,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self.refresh_seconds = refresh_seconds
        self.min_refetch_seconds = min_refetch_seconds
        self._client = client or httpx.AsyncClient(timeout=timeout_seconds, follow_redirects=False)
        self._clock = clock
        self._keys: dict[str, SigningKey] = {}
        self._jwks_uri: str | None = None
        self._last_attempt = -float("inf")
        self._fetching: asyncio.Task[bool] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self.ever_fetched = False
        self.on_change: Callable[[], None] = lambda: None

    def get(self, kid: str) -> SigningKey | None:
        return self._keys.get(kid)

    async def start(self) -> None:
        """One fetch now (a failure is logged, not raised: the service starts), then refresh in the background."""
        await self.refresh()
        self._loop_task = asyncio.create_task(self._refresh_forever(), name="oidc-jwks-refresh")

    async def close(self) -> None:
        for task in (self._loop_task, self._fetching):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._client.aclose()

    async def refresh(self) -> bool:
        """Fetch the JWKS now (joining a fetch already running); True when the set was fetched."""
        if self._fetching is None or self._fetching.done():
            self._last_attempt = self._clock()
            self._fetching = asyncio.create_task(self._fetch(), name="oidc-jwks-fetch")
        return await asyncio.shield(self._fetching)

    async def refresh_for_unknown_kid(self) -> bool:
        """Refetch for a `kid` not in the set, unless a fetch started less than the minimum interval ago."""
        if self._fetching is not None and not self._fetching.done():
            return await asyncio.shield(self._fetching)
        if self._clock() - self._last_attempt < self.min_refetch_seconds:
            return False
        return await self.refresh()

    async def _refresh_forever(self) -> None:
        while True:
            # Until the first success, retry at the refetch interval; then at the refresh interval.
            await asyncio.sleep(self.refresh_seconds if self.ever_fetched else self.min_refetch_seconds)
            await self.refresh()

    async def _fetch(self) -> bool:
        try:
            if self._jwks_uri is None:
                self._jwks_uri = await self._discover()
            keys = _usable_keys(await self._get_json(self._jwks_uri))
        except (httpx.HTTPError, httpx.InvalidURL, ValueError, PyJWKSetError) as error:
            JWKS_FETCHES.labels("failed").inc()
            logger.warning(
                "could not fetch the issuer's signing keys; keeping the keys we have",
                extra={"issuer": self.issuer, "error": f"{type(error).__name__}: {error}", "kids": sorted(self._keys)},
            )
            return False
        JWKS_FETCHES.labels("fetched").inc()
        changed = keys.keys() != self._keys.keys()
        self._keys = keys
        self.ever_fetched = True
        if changed:
            logger.info("issuer signing keys changed", extra={"issuer": self.issuer, "kids": sorted(keys)})
            self.on_change()
        return True

    async def _discover(self) -> str:
        document = await self._get_json(self.issuer.rstrip("/") + "/.well-known/openid-configuration")
        # OpenID Connect Discovery 1.0, 4.3: the document must name exactly the issuer we asked.
        if document.get("issuer") != self.issuer:
            raise ValueError(f"discovery names issuer {document.get('issuer')!r}, not {self.issuer!r}")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise ValueError("discovery document has no usable jwks_uri")
        return jwks_uri

    async def _get_json(self, url: str) -> dict[str, Any]:
        response = await self._client.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        if len(response.content) > MAX_DOCUMENT_BYTES:
            raise ValueError(f"{url} answered {len(response.content)} bytes; more than {MAX_DOCUMENT_BYTES}")
        document = response.json()
        if not isinstance(document, dict):
            raise ValueError(f"{url} did not answer a JSON object")
        return document


@dataclass(frozen=True)
class SigningKey:
    """One published key: PyJWT's parsed key, and the `alg` the JWK restricts it to (None: any of its type)."""

    jwk: PyJWK
    algorithm: str | None


def _usable_keys(jwks: dict[str, Any]) -> dict[str, SigningKey]:
    """The signing keys of a JWKS by `kid`; keys without a kid, for encryption, or of unknown types are skipped."""
    if not isinstance(jwks.get("keys"), list):
        raise ValueError("the JWKS has no keys list")
    found: dict[str, SigningKey] = {}
    for data in jwks["keys"]:
        if not isinstance(data, dict) or not isinstance(data.get("kid"), str) or data.get("use", "sig") != "sig":
            continue
        algorithm = data.get("alg") if isinstance(data.get("alg"), str) else None
        with contextlib.suppress(PyJWKError, PyJWKSetError):
            found[data["kid"]] = SigningKey(PyJWK(data), algorithm)
    return found


class ScopeMapper:
    """Turns a token's claims into our scopes (OIDC_SCOPE_CLAIMS, OIDC_SCOPE_MAP)."""

    def __init__(self, claims: Iterable[str], mapping: Mapping[str, frozenset[str]]) -> None:
        self._paths = [claim.split(".") for claim in claims]
        self._mapping = dict(mapping)

    def scopes(self, payload: Mapping[str, Any]) -> frozenset[str]:
        granted: set[str] = set()
        for value in self._values(payload):
            if self._mapping:
                granted |= self._mapping.get(value, frozenset())
            elif value in SCOPES:
                granted.add(value)
        return frozenset(granted)

    def _values(self, payload: Mapping[str, Any]) -> Iterable[str]:
        for path in self._paths:
            node: Any = payload
            for part in path:
                node = node.get(part) if isinstance(node, Mapping) else None
            if isinstance(node, str):  # "scope" and Entra ID's "scp" are space-separated strings
                yield from node.split()
            elif isinstance(node, list):
                yield from (item for item in node if isinstance(item, str))


class TokenVerifier:
    """Verifies access tokens locally against `IssuerKeys`; see the module doc for the checks."""

    def __init__(self, settings: Settings, keys: IssuerKeys, clock: Callable[[], float] = time.time) -> None:
        if not (settings.oidc_issuer_url and settings.oidc_audience):
            raise ValueError("a TokenVerifier needs OIDC_ISSUER_URL and OIDC_AUDIENCE")
        self.keys = keys
        self._issuer = settings.oidc_issuer_url
        self._audience = settings.oidc_audience
        self._algorithms = frozenset(settings.oidc_algorithms)
        self._leeway = settings.oidc_leeway_seconds
        self._mapper = ScopeMapper(settings.oidc_scope_claims, settings.oidc_scope_map)
        self._clock = clock
        self._verified: dict[str, TokenPrincipal] = {}
        keys.on_change = self._verified.clear  # a removed key's tokens must be checked again

    def verify(self, token: str) -> TokenPrincipal:
        """The token's principal; InvalidToken, `KeyNotFound` (kid not in the set) or IssuerUnavailable otherwise."""
        principal = self._verified.get(token)
        if principal is not None:
            if self._clock() < principal.expires_at + self._leeway:
                return principal
            del self._verified[token]
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidToken("too_large", f"the token is longer than {MAX_TOKEN_BYTES} bytes")
        key, algorithm = self._key_for(token)
        principal = self._check(token, key, algorithm)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = principal
        return principal

    async def authenticate(self, token: str) -> TokenPrincipal:
        """`verify`, refetching the JWKS once (rate-limited) when the token names an unknown key.

        Also when no key was ever fetched (the issuer was down at startup): the first token
        after it is back fetches the keys instead of waiting for the background retry.
        """
        try:
            return self.verify(token)
        except (KeyNotFound, IssuerUnavailable):
            refreshed = await self.keys.refresh_for_unknown_kid()
            if not refreshed and not self.keys.ever_fetched:
                raise IssuerUnavailable from None
        try:
            return self.verify(token)
        except KeyNotFound as missing:
            raise InvalidToken("unknown_key", f"the issuer publishes no key {_short(missing.kid)}") from None

    def _key_for(self, token: str) -> tuple[SigningKey, str]:
        try:
            header = jwt.get_unverified_header(token)
        except PyJWTError:
            raise InvalidToken("malformed", "the token is not a well-formed JWT") from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in self._algorithms:
            accepted = ", ".join(sorted(self._algorithms))
            raise InvalidToken("algorithm", f"alg {_short(algorithm)} is not accepted (accepted: {accepted})")
        if not isinstance(kid, str):
            raise InvalidToken("malformed", "the token's header names no key (kid)")
        if not self.keys.ever_fetched:
            raise IssuerUnavailable
        key = self.keys.get(kid)
        if key is None:
            raise KeyNotFound(kid)
        # A key that names its algorithm may be used with that one only (RFC 7517, 4.4).
        if key.algorithm is not None and key.algorithm != algorithm:
            raise InvalidToken("algorithm", f"key {_short(kid)} is for {key.algorithm}, not {algorithm}")
        return key, algorithm

    def _check(self, token: str, key: SigningKey, algorithm: str) -> TokenPrincipal:
        try:
            payload = jwt.decode(
                token,
                key=key.jwk.key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud", "sub"], "strict_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("expired", "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("not_yet_valid", "the token is not valid yet (nbf or iat in the future)") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("issuer", "the token was issued by another issuer") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("audience", "the token is meant for another audience") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("signature", "the token's signature does not verify") from None
        except PyJWTError as error:
            raise InvalidToken("invalid", f"the token is not valid: {error}") from None
        subject = payload["sub"]
        if not isinstance(subject, str) or not subject:
            raise InvalidToken("invalid", "the token's sub is not a string")
        return TokenPrincipal(subject, self._mapper.scopes(payload), float(payload["exp"]))


class KeyNotFound(Exception):
    def __init__(self, kid: str) -> None:
        super().__init__(kid)
        self.kid = kid


def _short(value: object) -> str:
    """A header value the client chose, quoted and cut to 40 characters: it is echoed in our answer."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


async def start_verifier(settings: Settings) -> TokenVerifier | None:
    """The verifier for OIDC_* settings (None when no issuer is set), its keys fetched once and kept fresh."""
    if not settings.oidc_issuer_url:
        return None
    keys = IssuerKeys(
        settings.oidc_issuer_url,
        refresh_seconds=settings.oidc_jwks_refresh_seconds,
        min_refetch_seconds=settings.oidc_jwks_min_refetch_seconds,
        timeout_seconds=settings.oidc_http_timeout_seconds,
    )
    await keys.start()
    return TokenVerifier(settings, keys)
