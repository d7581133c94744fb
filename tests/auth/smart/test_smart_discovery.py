"""SMART discovery: ``/.well-known/smart-configuration`` at the root and under the FHIR base."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient


@pytest.mark.parametrize(
    "path",
    [
        "/.well-known/smart-configuration",
        "/fhir/.well-known/smart-configuration",
        "/api/v1/fhir/.well-known/smart-configuration",
    ],
)
def test_the_configuration_is_public_and_complete(anonymous: TestClient, path: str) -> None:
    answer = anonymous.get(path)
    assert answer.status_code == 200, answer.text
    document = answer.json()
    root = "http://testserver"
    assert document["authorization_endpoint"] == f"{root}/oauth2/authorize"
    assert document["token_endpoint"] == f"{root}/oauth2/token"
    assert document["introspection_endpoint"] == f"{root}/oauth2/introspect"
    assert document["jwks_uri"] == f"{root}/.well-known/jwks.json"
    assert document["registration_endpoint"] == f"{root}/api/v1/smart/clients"
    assert document["issuer"]
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert document["response_types_supported"] == ["code"]
    assert set(document["grant_types_supported"]) == {
        "authorization_code",
        "client_credentials",
        "refresh_token",
    }
    assert set(document["token_endpoint_auth_methods_supported"]) == {
        "private_key_jwt",
        "client_secret_basic",
        "none",
    }
    assert {"ES256", "RS384"} <= set(document["token_endpoint_auth_signing_alg_values_supported"])
    capabilities = set(document["capabilities"])
    assert {
        "launch-ehr",
        "launch-standalone",
        "client-public",
        "client-confidential-symmetric",
        "client-confidential-asymmetric",
        "context-ehr-patient",
        "context-standalone-patient",
        "permission-v2",
        "permission-patient",
        "permission-user",
    } <= capabilities
    # No OpenID Connect here, so nothing may claim it.
    assert "sso-openid-connect" not in capabilities
    assert not {"openid", "fhirUser", "profile"} & set(document["scopes_supported"])
    assert "plain" not in document["code_challenge_methods_supported"]


def test_the_jwks_it_names_is_served(anonymous: TestClient) -> None:
    document = anonymous.get("/.well-known/smart-configuration").json()
    path = document["jwks_uri"].removeprefix("http://testserver")
    keys = anonymous.get(path)
    assert keys.status_code == 200
    assert keys.json()["keys"]
