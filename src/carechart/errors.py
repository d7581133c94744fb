"""One exception hierarchy; the native API and the FHIR API each render it their own way.

FHIR issue codes: http://hl7.org/fhir/R4/valueset-issue-type.html
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem, located by a FHIRPath-style expression when it concerns an element."""

    message: str
    code: str = "invalid"
    severity: str = "error"
    expression: str | None = None


class CarechartError(Exception):
    status: int = 400
    code: str = "BAD_REQUEST"
    fhir_code: str = "invalid"

    def __init__(
        self,
        message: str,
        *,
        issues: list[Issue] | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.issues = issues or [Issue(message=message, code=self.fhir_code)]
        self.details = details or {}
        self.headers = headers or {}


class BadRequest(CarechartError):
    status, code, fhir_code = 400, "BAD_REQUEST", "invalid"


class ValidationFailed(CarechartError):
    """The content is well-formed JSON but not a valid FHIR resource."""

    status, code, fhir_code = 400, "VALIDATION_ERROR", "invalid"


class Unprocessable(CarechartError):
    status, code, fhir_code = 422, "VALIDATION_ERROR", "processing"


class NotFound(CarechartError):
    status, code, fhir_code = 404, "NOT_FOUND", "not-found"


class Gone(CarechartError):
    status, code, fhir_code = 410, "GONE", "deleted"


class Forbidden(CarechartError):
    """Authenticated, but this caller may not do this (SECURITY B1, B5)."""

    status, code, fhir_code = 403, "FORBIDDEN", "forbidden"


class TerritoryMismatch(Forbidden):
    """A write addressed to a territory the caller does not work in (SECURITY B8)."""

    code = "TERRITORY_MISMATCH"


class MethodNotAllowed(CarechartError):
    status, code, fhir_code = 405, "METHOD_NOT_ALLOWED", "not-supported"


class NotAcceptable(CarechartError):
    status, code, fhir_code = 406, "NOT_ACCEPTABLE", "not-supported"


class Conflict(CarechartError):
    status, code, fhir_code = 409, "CONFLICT", "conflict"


class PreconditionFailed(CarechartError):
    status, code, fhir_code = 412, "PRECONDITION_FAILED", "conflict"


class PayloadTooLarge(CarechartError):
    status, code, fhir_code = 413, "PAYLOAD_TOO_LARGE", "too-costly"


class UnsupportedMediaType(CarechartError):
    status, code, fhir_code = 415, "UNSUPPORTED_MEDIA_TYPE", "not-supported"


class EncryptionError(CarechartError):
    """A sealed body failed to open: wrong key, or a ciphertext moved to another row."""

    status, code, fhir_code = 500, "ENCRYPTION_ERROR", "exception"


class Unavailable(CarechartError):
    """A dependency (database, key source) is down: fail closed, ask the client to retry."""

    status, code, fhir_code = 503, "SERVICE_UNAVAILABLE", "transient"

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"Retry-After": "5"})
        super().__init__(message, **kwargs)


@dataclass(slots=True)
class ErrorList:
    """Collects issues so that validation reports every problem, not just the first."""

    issues: list[Issue] = field(default_factory=list)

    def add(self, message: str, expression: str | None = None, code: str = "invalid") -> None:
        self.issues.append(Issue(message=message, code=code, expression=expression))
