"""The pure parts: PKCE, scope arithmetic, assertion verification (each refusal's reason)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
from tests.auth.smart.smart_kit import ClientKeyPair, assertion_claims, b64url

from carechart.auth.principal import Role
from carechart.auth.smart import pkce, scopes
from carechart.auth.smart.assertions import (
    AssertionRefused,
    InvalidJwks,
    parse_jwks,
    verify_assertion,
)

AUD = "https://ehr.example/oauth2/token"


def test_pkce_s256_known_answer() -> None:
    # RFC 7636 appendix B.
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce.challenge_of(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    assert pkce.verifies(verifier, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")
    assert not pkce.verifies(verifier + "x", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")
    # plain: the verifier as its own challenge never passes.
    assert not pkce.verifies(verifier, verifier)
    assert not pkce.verifies("short", pkce.challenge_of("short"))


@pytest.mark.parametrize(
    ("requested", "allowed", "expected"),
    [
        ("user/*.cruds", "user/*.rs", ["user/*.rs"]),
        (
            "user/*.cruds",
            "user/Observation.rs user/Patient.c",
            ["user/Observation.rs", "user/Patient.c"],
        ),
        ("user/Observation.read", "user/*.cruds", ["user/Observation.rs"]),
        ("patient/*.rs", "user/*.cruds", []),
        ("patient/*.rs launch/patient openid", "patient/*.r", ["patient/*.r", "launch/patient"]),
        ("offline_access patient/*.r", "patient/*.r", ["patient/*.r"]),
        (
            "offline_access patient/*.r",
            "patient/*.r offline_access",
            ["offline_access", "patient/*.r"],
        ),
        ("patient/Observation.rs?category=laboratory", "patient/*.rs", []),
    ],
)
def test_scopes_are_intersected(requested: str, allowed: str, expected: list[str]) -> None:
    assert scopes.within(scopes.split_scope(requested), allowed.split()) == expected


def test_scopes_fit_the_user() -> None:
    granted = ["launch/patient", "patient/*.rs", "user/*.rs", "system/*.rs"]
    assert scopes.for_user(granted, Role.patient, patient_context=True) == [
        "launch/patient",
        "patient/*.rs",
    ]
    assert scopes.for_user(granted, Role.nurse, patient_context=False) == ["user/*.rs"]
    assert scopes.for_user(granted, Role.nurse, patient_context=True) == [
        "launch/patient",
        "patient/*.rs",
        "user/*.rs",
    ]


@pytest.mark.parametrize("text", ['a"b', "a\\b", "é", " ".join(["x"] * 101)])
def test_malformed_scope_parameters(text: str) -> None:
    with pytest.raises(scopes.ScopeError):
        scopes.split_scope(text)


def _verify(key: ClientKeyPair, token: str, **kwargs: Any) -> str:
    keys = parse_jwks({"keys": [key.jwk()]})
    try:
        verify_assertion(
            token,
            keys,
            client_id="app",
            audiences=frozenset({AUD}),
            now=datetime.now(UTC),
            **kwargs,
        )
    except AssertionRefused as refused:
        return refused.reason
    return "accepted"


@pytest.mark.parametrize("make", [ClientKeyPair.es256, ClientKeyPair.rs384])
def test_assertion_refusals_name_their_reason(make: Any) -> None:
    key = make()
    now = time.time()
    good = assertion_claims("app", AUD, now=now)
    assert _verify(key, key.sign(good)) == "accepted"
    # Exactly five minutes ahead is fine; past the clock leeway beyond that is not.
    assert _verify(key, key.sign({**good, "exp": int(now) + 300})) == "accepted"
    assert _verify(key, key.sign({**good, "exp": int(now) + 331})) == "lifetime"
    assert _verify(key, key.sign({**good, "exp": int(now) - 31})) == "expired"
    assert _verify(key, key.sign({**good, "exp": "soon"})) == "claim-exp"
    assert _verify(key, key.sign({**good, "exp": True})) == "claim-exp"
    assert _verify(key, key.sign({**good, "aud": "https://other.example/token"})) == "audience"
    assert _verify(key, key.sign({**good, "aud": ["x", AUD]})) == "accepted"
    assert _verify(key, key.sign({**good, "iss": "other"})) == "issuer"
    assert _verify(key, key.sign({**good, "sub": "other"})) == "issuer"
    assert _verify(key, key.sign({**good, "jti": ""})) == "jti"
    assert _verify(key, key.sign({**good, "nbf": int(now) + 600})) == "claim-nbf"
    assert _verify(key, key.sign(good, kid="other")) == "key"
    assert _verify(key, key.sign(good, crit=["exp"])) == "header"
    assert _verify(key, key.sign(good, jku="https://evil.example/jwks")) == "header"
    assert _verify(key, key.sign(good, alg="none")) == "algorithm"
    assert _verify(key, key.sign(good, alg="RS256")) == "algorithm"
    wrong_alg = "ES256" if key.alg == "RS384" else "RS384"
    assert _verify(key, key.sign(good, alg=wrong_alg)) == "key"
    token = key.sign(good)
    head, payload, signature = token.split(".")
    assert _verify(key, f"{head}.{payload}.{b64url(b'x' * 64)}") == "signature"
    assert _verify(key, f"{head}.{b64url(b'{}')}.{signature}") == "signature"
    assert _verify(key, f"{head}.{payload}") == "malformed"
    assert _verify(key, f"{head}=.{payload}.{signature}") == "malformed"
    stranger = make()
    stranger.kid = key.kid
    assert _verify(key, stranger.sign(good)) == "signature"


def test_duplicate_claims_are_refused() -> None:
    key = ClientKeyPair.es256()
    token = key.sign(assertion_claims("app", AUD))
    head, _, _ = token.split(".")
    payload = b64url(b'{"iss":"app","iss":"evil"}')
    assert _verify(key, f"{head}.{payload}.AAAA") == "malformed"


def test_small_rsa_keys_are_not_registrable() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    small = ClientKeyPair(
        "k", "RS384", rsa.generate_private_key(public_exponent=65537, key_size=1024)
    )
    with pytest.raises(InvalidJwks):
        parse_jwks({"keys": [small.jwk()]})
    with pytest.raises(InvalidJwks):
        parse_jwks({"keys": [ClientKeyPair.es256().jwk()] * 2})  # duplicate kid
    with pytest.raises(InvalidJwks):
        parse_jwks({"keys": []})


@pytest.mark.parametrize("header", ["Basic é", "Basic " + "QQ==" * 3, "Basic Og==", "Basic"])
def test_malformed_basic_credentials_are_invalid_client(header: str) -> None:
    from carechart.auth.smart.clientauth import ClientAuthError, _basic

    with pytest.raises(ClientAuthError) as refused:
        _basic(header)
    assert refused.value.error == "invalid_client"
