"""A FHIR R4 transaction Bundle under construction, with ``urn:uuid:`` references.

Spec: https://hl7.org/fhir/R4/http.html#transaction and bundle.html#references: entries
reference each other by ``fullUrl`` ``urn:uuid:...`` and the server rewrites them to the
ids it assigns, so a whole HL7 message lands in one transaction (all or nothing).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from carechart.integrations.hl7v2.ack import AckError

JSON = dict[str, Any]


def new_uuid() -> str:
    return str(uuid.uuid4())


class TransactionBuilder:
    def __init__(self, id_factory: Callable[[], str] = new_uuid) -> None:
        self._id_factory = id_factory
        self.entries: list[JSON] = []

    def add(self, resource: JSON, *, if_none_exist: str | None = None) -> str:
        """Add ``resource`` as a POST entry; return the ``urn:uuid:`` reference to it."""
        full_url = f"urn:uuid:{self._id_factory()}"
        request: JSON = {"method": "POST", "url": resource["resourceType"]}
        if if_none_exist:
            # Conditional create (http.html#ccreate): the patient of a second message
            # from the same sender resolves to the same Patient instead of a duplicate.
            request["ifNoneExist"] = if_none_exist
        self.entries.append({"fullUrl": full_url, "resource": resource, "request": request})
        return full_url

    def resources(self, resource_type: str) -> list[JSON]:
        return [
            e["resource"] for e in self.entries if e["resource"]["resourceType"] == resource_type
        ]

    def bundle(self) -> JSON:
        return {"resourceType": "Bundle", "type": "transaction", "entry": self.entries}


@dataclass(slots=True)
class MappingResult:
    """A message mapped to FHIR: the transaction to post and non-fatal findings."""

    bundle: JSON
    warnings: list[AckError] = field(default_factory=list)

    def resources(self, resource_type: str) -> list[JSON]:
        return [
            e["resource"]
            for e in self.bundle["entry"]
            if e["resource"]["resourceType"] == resource_type
        ]
