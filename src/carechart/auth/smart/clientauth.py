"""Client authentication at the token and introspection endpoints (RFC 6749 2.3, RFC 7523 2.2,
SMART App Launch v2 client-confidential-symmetric/-asymmetric, client-public).

Exactly one method per request: ``private_key_jwt`` (a signed assertion; confidential clients
with a registered JWKS and backend services), ``client_secret_basic`` (confidential clients with
a secret, stored as argon2id only), or none (public clients name themselves with
``client_id``). Every failure is ``invalid_client`` with a generic description; the reason
goes to the audit trail only.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote_plus

from carechart.auth import clients
from carechart.auth.service import IdentityService
from carechart.auth.smart import repository
from carechart.auth.smart.assertions import (
    ASSERTION_TYPE,
    AssertionRefused,
    InvalidJwks,
    claimed_client,
    parse_jwks,
    verify_assertion,
)
from carechart.auth.tokens import CLOCK_LEEWAY

Method = Literal["private_key_jwt", "client_secret_basic", "none"]


class ClientAuthError(Exception):
    """``error`` is ``invalid_client`` or ``invalid_request``; ``reason`` is for the audit."""

    def __init__(self, error: str, reason: str, *, basic: bool = False) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason
        self.basic = basic  # the client tried HTTP Basic: answer with WWW-Authenticate
        self.client_id: str | None = None


@dataclass(frozen=True, slots=True)
class AuthenticatedClient:
    client: clients.OAuthClient
    method: Method


def _basic(header: str | None) -> tuple[str, str] | None:
    if header is None:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):  # binascii.Error, non-ASCII text
        raise ClientAuthError("invalid_client", "basic-malformed", basic=True) from None
    client_id, colon, secret = decoded.partition(":")
    if not colon or not client_id or not secret:
        raise ClientAuthError("invalid_client", "basic-malformed", basic=True)
    # RFC 6749 2.3.1: both are form-encoded before they are joined.
    return unquote_plus(client_id), unquote_plus(secret)


def _refuse(reason: str, client_id: str | None, *, basic: bool = False) -> ClientAuthError:
    error = ClientAuthError("invalid_client", reason, basic=basic)
    error.client_id = client_id
    return error


def authenticate_client(
    service: IdentityService,
    form: Mapping[str, str],
    authorization: str | None,
    *,
    audiences: frozenset[str],
) -> AuthenticatedClient:
    """The registered, active client that this request authenticates, or
    :class:`ClientAuthError`. A verified assertion's jti is recorded (replay is refused)."""
    basic = _basic(authorization)
    assertion = form.get("client_assertion")
    assertion_type = form.get("client_assertion_type")
    named = form.get("client_id") or None
    if "client_secret" in form:
        raise _refuse("client-secret-post", named)  # not offered: secrets go in the header
    used = (basic is not None) + (assertion is not None or assertion_type is not None)
    if used > 1:
        raise ClientAuthError("invalid_request", "several-client-auth-methods")
    conn, tenant, now = service.conn, service.tenant, service.now

    if assertion is not None or assertion_type is not None:
        if assertion_type != ASSERTION_TYPE or not assertion:
            raise _refuse("assertion-type", named)
        claimed = claimed_client(assertion)
        if claimed is None or (named is not None and named != claimed):
            raise _refuse("assertion-issuer", named)
        client = clients.by_id(conn, tenant=tenant, client_id=claimed)
        if client is None or not client.active or client.kind == "public" or not client.jwks:
            raise _refuse("assertion-client", claimed)
        try:
            keys = parse_jwks(client.jwks)
            verified = verify_assertion(
                assertion, keys, client_id=client.client_id, audiences=audiences, now=now
            )
        except (InvalidJwks, AssertionRefused) as refusal:
            reason = refusal.reason if isinstance(refusal, AssertionRefused) else "jwks"
            raise _refuse(f"assertion-{reason}", client.client_id) from None
        if not repository.remember_jti(
            conn,
            tenant=tenant,
            client_id=client.client_id,
            jti=verified.jti,
            expires_at=verified.expires_at,
            now=now,
            keep_for=CLOCK_LEEWAY,
        ):
            raise _refuse("assertion-replay", client.client_id)
        return AuthenticatedClient(client, "private_key_jwt")

    if basic is not None:
        client_id, secret = basic
        if named is not None and named != client_id:
            raise ClientAuthError("invalid_request", "client-id-mismatch", basic=True)
        client = clients.by_id(conn, tenant=tenant, client_id=client_id)
        hasher = service.parts.hasher
        if client is None or client.secret_hash is None:
            hasher.verify_unknown_user(secret)  # the same time either way
            raise _refuse("basic-client", client_id, basic=True)
        if not hasher.verify(client.secret_hash, secret) or not client.active:
            raise _refuse("basic-secret", client_id, basic=True)
        if client.kind != "confidential":
            raise _refuse("basic-kind", client_id, basic=True)
        return AuthenticatedClient(client, "client_secret_basic")

    if named is None:
        raise _refuse("no-client", None)
    client = clients.by_id(conn, tenant=tenant, client_id=named)
    if client is None or not client.active or client.kind != "public":
        # A confidential client or a backend service must prove itself.
        raise _refuse("public-client", named)
    return AuthenticatedClient(client, "none")
