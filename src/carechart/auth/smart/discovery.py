"""``/.well-known/smart-configuration`` (SMART App Launch v2 conformance/discovery; public,
SECURITY B1). Apps look for it relative to the FHIR base, so ``/fhir/.well-known/...`` answers
too: mount this router ahead of the FHIR routes, whose ``/fhir/{type}/{id}`` would shadow it.

OpenID Connect is not implemented, so neither ``sso-openid-connect`` nor ``openid``/
``fhirUser`` scopes are claimed; ``fhirUser`` comes back as a token response field instead.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse

from carechart.auth.config import components_of
from carechart.auth.smart.assertions import ALGORITHMS
from carechart.auth.smart.introspection import INTROSPECT_PATH
from carechart.auth.smart.oauth import server_root
from carechart.auth.smart.scopes import LAUNCH, LAUNCH_PATIENT, OFFLINE_ACCESS, ONLINE_ACCESS
from carechart.auth.smart.token import GRANT_TYPES, TOKEN_PATH

router = APIRouter(tags=["SMART on FHIR"])

CAPABILITIES = (
    "launch-ehr",
    "launch-standalone",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-ehr-patient",
    "context-standalone-patient",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
)
SCOPES_SUPPORTED = (
    LAUNCH,
    LAUNCH_PATIENT,
    OFFLINE_ACCESS,
    ONLINE_ACCESS,
    "patient/*.cruds",
    "patient/*.rs",
    "user/*.cruds",
    "user/*.rs",
    "system/*.cruds",
    "system/*.rs",
)


def configuration(request: Request) -> dict[str, Any]:
    root = server_root(request)
    return {
        "issuer": components_of(request.app).config.issuer,
        "jwks_uri": f"{root}/.well-known/jwks.json",
        "authorization_endpoint": f"{root}/oauth2/authorize",
        "token_endpoint": f"{root}{TOKEN_PATH}",
        "introspection_endpoint": f"{root}{INTROSPECT_PATH}",
        # Registration is by administrators (a bearer token with MFA), not RFC 7591 open
        # dynamic registration.
        "registration_endpoint": f"{root}/api/v1/smart/clients",
        "grant_types_supported": list(GRANT_TYPES),
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": [
            "private_key_jwt",
            "client_secret_basic",
            "none",
        ],
        "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
        "scopes_supported": list(SCOPES_SUPPORTED),
        "capabilities": list(CAPABILITIES),
    }


@router.get("/.well-known/smart-configuration", summary="SMART configuration")
def smart_configuration(request: Request) -> JSONResponse:
    """What this authorization server supports (public)."""
    return JSONResponse(configuration(request))


@router.get(
    "/fhir/.well-known/smart-configuration",
    summary="SMART configuration (relative to the FHIR base)",
)
def fhir_smart_configuration(request: Request) -> JSONResponse:
    """The same document, where apps look for it: ``{FHIR base}/.well-known/...``."""
    return JSONResponse(configuration(request))
