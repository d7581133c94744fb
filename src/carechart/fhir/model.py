"""Small value types shared by the store, the router and the bundle processor."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

# http://hl7.org/fhir/R4/datatypes.html#id
ID_PATTERN = re.compile(r"[A-Za-z0-9\-.]{1,64}")
TYPE_PATTERN = re.compile(r"[A-Z][A-Za-z]{0,63}")


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """One version of a resource as stored: ``body`` is the exact JSON served (None if deleted)."""

    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    body: bytes | None
    method: str = "GET"
    # The first patient of the version's Patient compartment: whose data it is (access
    # decisions and the audit trail key on it).
    patient_id: str | None = None

    @property
    def etag(self) -> str:
        return f'W/"{self.version_id}"'

    @property
    def location(self) -> str:
        return f"{self.resource_type}/{self.id}/_history/{self.version_id}"


@dataclass(frozen=True, slots=True)
class WriteResult:
    version: StoredVersion
    created: bool
    # A conditional create that matched an existing resource wrote nothing.
    existing: bool = False


def format_instant(moment: datetime) -> str:
    """FHIR instant (http://hl7.org/fhir/R4/datatypes.html#instant) in UTC, milliseconds."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def http_date(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
