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
        # (method, type, query) -> fullUrl of the entry already holding that condition.
        self._conditional: dict[tuple[str, str, str], str] = {}

    def _entry(self, resource: JSON, request: JSON) -> str:
        full_url = f"urn:uuid:{self._id_factory()}"
        self.entries.append({"fullUrl": full_url, "resource": resource, "request": request})
        return full_url

    def add(self, resource: JSON, *, if_none_exist: str | None = None) -> str:
        """Add ``resource`` as a POST entry; return the ``urn:uuid:`` reference to it."""
        rtype = resource["resourceType"]
        request: JSON = {"method": "POST", "url": rtype}
        if if_none_exist:
            # Conditional create (http.html#ccreate): the patient of a second message
            # from the same sender resolves to the same Patient instead of a duplicate.
            # The same condition twice in one message (a PID repeated per order group)
            # must be one entry: two would both find nothing and create two patients.
            key = ("POST", rtype, if_none_exist)
            if key in self._conditional:
                return self._conditional[key]
            request["ifNoneExist"] = if_none_exist
            full_url = self._entry(resource, request)
            self._conditional[key] = full_url
            return full_url
        return self._entry(resource, request)

    def put(self, resource: JSON, query: str) -> str:
        """Add ``resource`` as a conditional update (http.html#cond-update): it replaces
        the one resource matching ``query``, or is created when none does."""
        rtype = resource["resourceType"]
        key = ("PUT", rtype, query)
        if key in self._conditional:
            return self._conditional[key]
        full_url = self._entry(resource, {"method": "PUT", "url": f"{rtype}?{query}"})
        self._conditional[key] = full_url
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
