"""The CapabilityStatement at ``/fhir/metadata`` (http://hl7.org/fhir/R4/capabilitystatement.html).

It lists only what works: the interactions the router implements, for every resource type
of the release, and the search parameters the search engine indexes.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from carechart import __version__
from carechart.fhir.definitions import load_definitions
from carechart.fhir.search import supported_parameters

_TYPE_INTERACTIONS = [
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
]


@lru_cache(maxsize=1)
def _resources() -> list[dict[str, Any]]:
    definitions = load_definitions()
    resources: list[dict[str, Any]] = []
    for resource_type in sorted(definitions.resource_types):
        params = []
        for p in supported_parameters(resource_type):
            entry = {"name": p.code, "definition": p.definition, "type": p.type}
            if p.documentation:
                entry["documentation"] = p.documentation
            params.append(entry)
        resources.append(
            {
                "type": resource_type,
                "interaction": [{"code": code} for code in _TYPE_INTERACTIONS],
                "versioning": "versioned-update",
                "readHistory": True,
                "updateCreate": True,
                "conditionalCreate": True,
                "conditionalUpdate": True,
                "conditionalDelete": "single",
                "searchParam": params,
                "searchInclude": ["*"],
                "searchRevInclude": ["*"],
            }
        )
    return resources


def _server_root(base: str) -> str:
    for suffix in ("/api/v1/fhir", "/fhir"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def _security(base: str) -> dict[str, Any]:
    """SMART on FHIR (App Launch v2, conformance.html): the service code and, for clients
    that still read them here rather than from .well-known/smart-configuration, the
    oauth-uris extension."""
    root = _server_root(base)
    return {
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }
                ]
            }
        ],
        "extension": [
            {
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [
                    {"url": "authorize", "valueUri": f"{root}/oauth2/authorize"},
                    {"url": "token", "valueUri": f"{root}/oauth2/token"},
                    {"url": "introspect", "valueUri": f"{root}/oauth2/introspect"},
                ],
            }
        ],
    }


def capability_statement(base: str) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "publisher": "Carechart",
        "kind": "instance",
        "software": {"name": "Carechart", "version": __version__},
        "implementation": {"description": "Carechart FHIR R4 server", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                "security": _security(base),
                "resource": _resources(),
                "operation": [
                    {
                        "name": "everything",
                        "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                    }
                ],
                "interaction": [
                    {"code": "transaction"},
                    {"code": "batch"},
                    {"code": "history-system"},
                ],
            }
        ],
    }
