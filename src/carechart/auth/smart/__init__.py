"""SMART App Launch v2 on Carechart's identity service: discovery, client registration, the
authorization-code flow with PKCE (standalone and EHR launch), the token endpoint (codes,
refresh tokens, backend services' client credentials) and token introspection.

Mount :data:`discovery_router` ahead of the FHIR routes (``/fhir/{type}/{id}`` would shadow
``/fhir/.well-known/smart-configuration``) and :data:`router` anywhere.
"""

from __future__ import annotations

from fastapi import APIRouter

from carechart.auth.smart import authorize, introspection, launch, registration, token
from carechart.auth.smart.discovery import router as discovery_router

router = APIRouter()
router.include_router(authorize.router)
router.include_router(token.router)
router.include_router(introspection.router)
router.include_router(registration.router)
router.include_router(launch.router)

__all__ = ["discovery_router", "router"]
