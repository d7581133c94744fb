"""The resource store: every FHIR interaction on stored data goes through here.

Implements the storage side of the R4 RESTful API (http://hl7.org/fhir/R4/http.html):
create, read, vread, update, patch, delete (logical) and history, with versioning, the
Patient compartment and search indexes maintained on write, and every body sealed with
AES-256-GCM bound to (tenant, type, id, version). One instance serves one unit of work: it
receives the transaction's connection and never commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import parse_qsl

import jsonpatch
import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from carechart import jsonio
from carechart.access.policy import AccessGuard
from carechart.crypto.aead import open_sealed, resource_ad, seal
from carechart.crypto.keys import KeyRing
from carechart.db.engine import bulk_insert
from carechart.db.schema import (
    resource,
    resource_compartment,
    resource_history,
    search_snapshot,
)
from carechart.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    NotFound,
    PreconditionFailed,
    Unprocessable,
    ValidationFailed,
)
from carechart.fhir.definitions import load_definitions
from carechart.fhir.model import ID_PATTERN, StoredVersion, WriteResult, as_utc, format_instant
from carechart.fhir.search import (
    blind_bits,
    blind_params,
    compartment_patients,
    confirm_candidate,
    index_resource,
    index_rows,
    search_ids_for_condition,
)
from carechart.fhir.search.include import IncludeSpec, includes
from carechart.fhir.search.query import Restriction, SearchResult, search
from carechart.fhir.validation import validate_resource

SNAPSHOT_LIFETIME = timedelta(hours=1)

# Built once: a read is the hottest path, and building a SELECT costs more than running it.
_CURRENT_ROW = sa.select(
    resource.c.version_id,
    resource.c.last_updated,
    resource.c.deleted,
    resource.c.key_version,
    resource.c.body,
    resource.c.patient_id,
).where(
    resource.c.tenant_id == sa.bindparam("tenant"),
    resource.c.resource_type == sa.bindparam("rtype"),
    resource.c.id == sa.bindparam("rid"),
)
_CURRENT_ROW_FOR_UPDATE = _CURRENT_ROW.with_for_update()


@dataclass(frozen=True, slots=True)
class HistoryPage:
    versions: list[StoredVersion]
    # Keyset cursor for the next (older) page; None on the last page.
    next_cursor: int | None
    total: int | None


class ResourceStore(Protocol):
    """What the FHIR router needs from storage (medplum's repository shape)."""

    def create(self, resource_type: str, body: dict[str, Any]) -> WriteResult: ...
    def read(self, resource_type: str, resource_id: str) -> StoredVersion: ...
    def vread(self, resource_type: str, resource_id: str, version_id: str) -> StoredVersion: ...
    def update(
        self, resource_type: str, resource_id: str, body: dict[str, Any], *, if_match: str | None
    ) -> WriteResult: ...
    def patch(
        self, resource_type: str, resource_id: str, operations: Any, *, if_match: str | None
    ) -> WriteResult: ...
    def delete(self, resource_type: str, resource_id: str) -> StoredVersion | None: ...
    def history(
        self,
        resource_type: str | None,
        resource_id: str | None,
        *,
        since: datetime | None,
        count: int,
        cursor: int | None,
    ) -> HistoryPage: ...


def current_version(
    keyring: KeyRing, tenant: str, resource_type: str, resource_id: str, row: Any
) -> StoredVersion:
    """read (http.html#read) from a current-row record (version_id, last_updated, deleted,
    key_version, body): 404 unknown, 410 deleted, otherwise the unsealed body."""
    if row is None:
        raise NotFound(f"{resource_type}/{resource_id} is not known")
    if row.deleted:
        raise Gone(f"{resource_type}/{resource_id} was deleted")
    key = keyring.version(tenant, row.key_version)
    ad = resource_ad(tenant, resource_type, resource_id, row.version_id)
    return StoredVersion(
        resource_type=resource_type,
        id=resource_id,
        version_id=row.version_id,
        last_updated=as_utc(row.last_updated),
        deleted=False,
        body=open_sealed(key.key, row.body, ad),
        patient_id=row.patient_id,
    )


def parse_etag(value: str) -> int:
    """``W/"3"`` or ``"3"`` or ``3`` -> 3 (http.html#concurrency)."""
    text = value.strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    if not text.isdigit():
        raise BadRequest(f'If-Match {value!r} is not a version ETag such as W/"1"')
    return int(text)


def _server_meta(
    body: dict[str, Any], resource_id: str, version: int, now: datetime
) -> dict[str, Any]:
    """The body as stored: client content kept in order, id and meta set by the server.

    Clients cannot set server-owned fields (SECURITY B6): id on create, meta.versionId and
    meta.lastUpdated are always the server's.
    """
    meta = dict(body.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = format_instant(now)
    stored: dict[str, Any] = {"resourceType": body["resourceType"], "id": resource_id, "meta": meta}
    for key, value in body.items():
        if key not in stored:
            stored[key] = value
    return stored


class SqlResourceStore:
    """One implementation for SQLite and PostgreSQL; dialect specifics stay in ``db``."""

    def __init__(
        self,
        conn: Connection,
        keyring: KeyRing,
        tenant: str,
        guard: AccessGuard | None = None,
    ) -> None:
        """``guard`` is the request's policy decision point; None only for the server's own
        work (migrations, maintenance commands, seeding), never for a request."""
        self.conn = conn
        self.keyring = keyring
        self.tenant = tenant
        self.guard = guard
        if guard is not None:
            guard.bind(conn)
        self.definitions = load_definitions()
        self._pending: dict[sa.Table, list[dict[str, Any]]] = {
            resource: [],
            resource_history: [],
            resource_compartment: [],
        }
        self._pending_count = 0
        self._bits: dict[str, dict[str, int]] = {}

    # --- checks -----------------------------------------------------------------------

    def check_type(self, resource_type: str) -> None:
        if not self.definitions.is_resource_type(resource_type):
            raise NotFound(f"resource type {resource_type!r} is not known")

    def _check_body(self, resource_type: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object holding a FHIR resource")
        actual = body.get("resourceType")
        if actual != resource_type:
            raise BadRequest(
                f"resourceType {actual!r} in the body does not match {resource_type!r} in the URL"
            )
        issues = validate_resource(body)
        errors = [issue for issue in issues if issue.severity in ("error", "fatal")]
        if errors:
            raise ValidationFailed(
                f"{resource_type} is not valid: {errors[0].message}"
                + (f" (at {errors[0].expression})" if errors[0].expression else ""),
                issues=errors,
            )
        return body

    # --- sealing ----------------------------------------------------------------------

    def _seal(
        self, resource_type: str, resource_id: str, version: int, data: bytes
    ) -> tuple[int, bytes]:
        key = self.keyring.active(self.tenant)
        ad = resource_ad(self.tenant, resource_type, resource_id, version)
        return key.version, seal(key.key, data, ad)

    def version_from_row(
        self, resource_type: str, resource_id: str, row: Any, *, deleted: bool = False
    ) -> StoredVersion:
        """A stored version from a row with version_id, last_updated, key_version, body
        (and method, when the row has one); deleted versions carry no body."""
        return StoredVersion(
            resource_type=resource_type,
            id=resource_id,
            version_id=row.version_id,
            last_updated=as_utc(row.last_updated),
            deleted=deleted,
            body=None
            if deleted
            else self.open_body(
                resource_type, resource_id, row.version_id, row.key_version, row.body
            ),
            method=getattr(row, "method", "GET"),
            patient_id=getattr(row, "patient_id", None),
        )

    def open_body(
        self, resource_type: str, resource_id: str, version: int, key_version: int, sealed: bytes
    ) -> bytes:
        key = self.keyring.version(self.tenant, key_version)
        return open_sealed(
            key.key, sealed, resource_ad(self.tenant, resource_type, resource_id, version)
        )

    # --- access (the policy point's questions, asked where the data is) -----------------

    def visible(
        self, resource_type: str, resource_id: str, patient_id: str | None, action: str
    ) -> bool:
        """Whether a stored resource may be shown; logged for the audit trail either way."""
        guard = self.guard
        if guard is None:
            return True
        if guard.admits(resource_type, patient_id, "r"):
            guard.record(action, resource_type, resource_id, patient_id)
            return True
        guard.record(action, resource_type, resource_id, patient_id, "denied")
        return False

    def _check_write(
        self,
        resource_type: str,
        resource_id: str,
        version: int,
        deleting: bool,
        action: str | None,
        before: str | None,
        after: str | None,
    ) -> None:
        """Writes are checked before and after (B4): the version replaced must be the
        caller's to change, and so must the result (no moving a record to another patient
        outside one's reach). A refusal rolls the whole unit of work back."""
        guard = self.guard
        if guard is None:
            return
        letter = "d" if deleting else ("c" if version == 1 else "u")
        action = action or {"c": "create", "u": "update", "d": "delete"}[letter]
        allowed = (version == 1 or guard.admits(resource_type, before, letter)) and (
            deleting or guard.admits(resource_type, after, letter)
        )
        patient = before if deleting else after
        if not allowed:
            guard.record(action, resource_type, resource_id, patient, "denied")
            raise Forbidden(f"you may not {action} this {resource_type}")
        guard.record(action, resource_type, resource_id, patient)

    def _require(self, resource_type: str, letters: str, action: str) -> None:
        """Type-level permission, checked before the body is even looked at: a caller who may
        not write this type at all learns nothing from validation messages."""
        guard = self.guard
        if guard is None or any(guard.allows(resource_type, letter) for letter in letters):
            return
        guard.record(action, resource_type, None, None, "denied")
        raise Forbidden(f"you may not {action} {resource_type} resources")

    def _restriction(self) -> Restriction | None:
        guard = self.guard
        if guard is None:
            return None

        def restrict(resource_type: str, patient_column: Any) -> Any:
            if not guard.allows(resource_type, "s"):
                guard.record("search", resource_type, None, None, "denied")
                raise Forbidden(f"you may not search {resource_type}")
            return guard.search_condition(resource_type, patient_column)

        return restrict

    def search(
        self,
        resource_type: str,
        params: list[tuple[str, str]],
        *,
        strict: bool = False,
        patient_compartment: str | None = None,
    ) -> SearchResult:
        """A search over what the caller may see: the policy's restriction applies to the
        searched type and to every type a chain or ``_has`` passes through (B3)."""
        self.check_type(resource_type)
        self.flush()
        return search(
            self.conn,
            self.keyring,
            self.tenant,
            resource_type,
            params,
            strict=strict,
            patient_compartment=patient_compartment,
            restrict=self._restriction(),
        )

    def included(
        self,
        resource_type: str,
        match_ids: Sequence[str],
        include_specs: Sequence[IncludeSpec],
        revinclude_specs: Sequence[IncludeSpec],
        *,
        max_results: int,
    ) -> list[StoredVersion]:
        """The _include/_revinclude resources of a page, only those the caller may see."""
        self.flush()
        pairs = includes(
            self.conn,
            self.keyring,
            self.tenant,
            resource_type,
            match_ids,
            include_specs,
            revinclude_specs,
            max_results=max_results,
        )
        by_type: dict[str, list[str]] = {}
        for pair_type, pair_id in pairs:
            by_type.setdefault(pair_type, []).append(pair_id)
        found = {
            (v.resource_type, v.id): v
            for pair_type, ids in by_type.items()
            for v in self.read_many(pair_type, ids, action="search")
        }
        return [found[p] for p in pairs if p in found]

    # --- writes -----------------------------------------------------------------------

    def _write_version(
        self,
        resource_type: str,
        resource_id: str,
        body: dict[str, Any] | None,
        version: int,
        method: str,
        *,
        deferrable: bool = False,
        action: str | None = None,
        previous_patient: str | None = None,
    ) -> StoredVersion:
        """Write one version. ``previous_patient``: whose data the version it replaces was
        (a deletion stays that patient's, so its history entry is guarded like the rest)."""
        clock = datetime.now(UTC)
        # FHIR instants carry milliseconds; storing the same precision keeps _since exact.
        now = clock.replace(microsecond=clock.microsecond // 1000 * 1000)
        data: bytes | None = None
        sealed: bytes | None = None
        patients: list[str] = []
        if body is not None:
            stored = _server_meta(body, resource_id, version, now)
            data = jsonio.dumps(stored)
            key_version, sealed = self._seal(resource_type, resource_id, version, data)
            patients = compartment_patients(stored)
        else:
            key_version = self.keyring.active(self.tenant).version
            stored = None
        patient = patients[0] if patients else (previous_patient if body is None else None)
        self._check_write(
            resource_type, resource_id, version, body is None, action, previous_patient, patient
        )
        row = {
            "tenant_id": self.tenant,
            "resource_type": resource_type,
            "id": resource_id,
            "version_id": version,
            "last_updated": now,
            "deleted": body is None,
            "patient_id": patient,
            "key_version": key_version,
            "body": sealed,
        }
        if version == 1 and deferrable and stored is not None:
            # A brand-new resource with a server-assigned id: nothing can conflict with it,
            # so its rows wait for one batched INSERT per table at flush().
            self._pending[resource].append(row)
            self._pending[resource_history].append({**row, "method": method})
            self._pending[resource_compartment].extend(
                self._compartment_rows(resource_type, resource_id, patients)
            )
            for table, rows in index_rows(
                self.keyring,
                self.tenant,
                resource_type,
                resource_id,
                stored,
                blind_bits=self._blind_bits_of(resource_type),
            ).items():
                self._pending.setdefault(table, []).extend(rows)
            self._pending_count += 1
        else:
            self.flush()
            self._write_now(row, method, patients, stored)
        return StoredVersion(
            resource_type=resource_type,
            id=resource_id,
            version_id=version,
            last_updated=now,
            deleted=body is None,
            body=data,
            method=method,
            patient_id=patient,
        )

    def _write_now(
        self, row: dict[str, Any], method: str, patients: list[str], stored: dict[str, Any] | None
    ) -> None:
        resource_type, resource_id, version = row["resource_type"], row["id"], row["version_id"]
        if version == 1:
            self.conn.execute(resource.insert(), row)
        else:
            updated = self.conn.execute(
                resource.update()
                .where(
                    resource.c.tenant_id == self.tenant,
                    resource.c.resource_type == resource_type,
                    resource.c.id == resource_id,
                    resource.c.version_id == version - 1,
                )
                .values(
                    **{
                        k: v
                        for k, v in row.items()
                        if k not in ("tenant_id", "resource_type", "id")
                    }
                )
            )
            if updated.rowcount != 1:
                # Someone else wrote version N first (the WHERE re-checks after their commit).
                raise PreconditionFailed(
                    f"{resource_type}/{resource_id} was changed concurrently; version {version - 1} is stale"
                )
        self.conn.execute(resource_history.insert(), {**row, "method": method})
        if version > 1:
            self.conn.execute(
                resource_compartment.delete().where(
                    resource_compartment.c.tenant_id == self.tenant,
                    resource_compartment.c.resource_type == resource_type,
                    resource_compartment.c.resource_id == resource_id,
                )
            )
        compartment = self._compartment_rows(resource_type, resource_id, patients)
        if compartment:
            self.conn.execute(resource_compartment.insert(), compartment)
        index_resource(self.conn, self.keyring, self.tenant, resource_type, resource_id, stored)

    def _compartment_rows(
        self, resource_type: str, resource_id: str, patients: list[str]
    ) -> list[dict[str, Any]]:
        return [
            {
                "tenant_id": self.tenant,
                "patient_id": patient,
                "resource_type": resource_type,
                "resource_id": resource_id,
            }
            for patient in dict.fromkeys(patients)
        ]

    def _blind_bits_of(self, resource_type: str) -> dict[str, int]:
        """Blind-index widths recorded for the type, read once per unit of work."""
        bits = self._bits.get(resource_type)
        if bits is None:
            bits = blind_bits(self.conn, self.tenant, resource_type)
            self._bits[resource_type] = bits
        return bits

    def flush(self) -> None:
        """Write the batched rows of new resources (one multi-row INSERT per table).

        Every query flushes first, so a unit of work always reads its own writes; the unit of
        work flushes before it commits.
        """
        if not self._pending_count:
            return
        # resource first: the other tables describe rows of it.
        for table, rows in self._pending.items():
            if rows:
                bulk_insert(self.conn, table, rows)
                rows.clear()
        self._pending_count = 0

    def _current_row(self, resource_type: str, resource_id: str, *, lock: bool = False) -> Any:
        self.flush()
        statement = _CURRENT_ROW_FOR_UPDATE if lock else _CURRENT_ROW
        return self.conn.execute(
            statement, {"tenant": self.tenant, "rtype": resource_type, "rid": resource_id}
        ).first()

    def create(
        self, resource_type: str, body: dict[str, Any], *, resource_id: str | None = None
    ) -> WriteResult:
        """create (http.html#create): the server assigns the id; a client id is ignored."""
        self.check_type(resource_type)
        self._require(resource_type, "c", "create")
        self._check_body(resource_type, body)
        # Ids come from the server (a fresh UUID here, or one the transaction processor drew
        # the same way), so the insert cannot collide and may be batched.
        new_id = resource_id or str(uuid.uuid4())
        version = self._write_version(resource_type, new_id, body, 1, "POST", deferrable=True)
        return WriteResult(version=version, created=True)

    def conditional_create(
        self, resource_type: str, body: dict[str, Any], if_none_exist: str
    ) -> WriteResult:
        """If-None-Exist (http.html#ccreate): 0 matches create, 1 returns it, more is 412."""
        self.check_type(resource_type)
        self._check_body(resource_type, body)
        matches = self.find(resource_type, if_none_exist)
        if len(matches) > 1:
            raise PreconditionFailed(
                f"If-None-Exist matched {len(matches)} {resource_type} resources; it must match at most one"
            )
        if matches:
            return WriteResult(
                version=self.read(resource_type, matches[0]), created=False, existing=True
            )
        return self.create(resource_type, body)

    def find(self, resource_type: str, query: str) -> list[str]:
        """Ids matching a search query string, for conditional interactions."""
        query = query.lstrip("?")
        if not query:
            raise BadRequest("a conditional interaction needs search criteria")
        self.flush()
        ids = search_ids_for_condition(
            self.conn, self.keyring, self.tenant, resource_type, query, self._restriction()
        )
        params = parse_qsl(query, keep_blank_values=True)
        if ids and (self.guard is not None or blind_params(resource_type, params)):
            # Blind indexes give candidates; a conditional write must act on true matches only.
            check = blind_params(resource_type, params)
            ids = [
                version.id
                for version in self.read_many(resource_type, ids, action="search")
                if version.body is not None
                and (
                    not check
                    or confirm_candidate(resource_type, orjson.loads(version.body), params)
                )
            ]
        return ids

    def update(
        self,
        resource_type: str,
        resource_id: str,
        body: dict[str, Any],
        *,
        if_match: str | None = None,
        action: str | None = None,
    ) -> WriteResult:
        """update (http.html#update), with create-on-update for a new client-chosen id."""
        self.check_type(resource_type)
        self._require(resource_type, "uc", action or "update")
        if not ID_PATTERN.fullmatch(resource_id):
            raise BadRequest(f"{resource_id!r} is not a valid resource id")
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object holding a FHIR resource")
        if "id" not in body:
            raise BadRequest("an update body must carry the resource id")
        if body.get("id") != resource_id:
            raise BadRequest(
                f"id {body.get('id')!r} in the body does not match {resource_id!r} in the URL"
            )
        self._check_body(resource_type, body)
        current = self._current_row(resource_type, resource_id, lock=True)
        expected = parse_etag(if_match) if if_match is not None else None
        if current is None:
            if expected is not None:
                raise PreconditionFailed(
                    f"{resource_type}/{resource_id} does not exist; If-Match cannot hold"
                )
            try:
                version = self._write_version(resource_type, resource_id, body, 1, "PUT")
            except IntegrityError:
                # Another transaction created the same id first; this one is aborted.
                raise Conflict(f"{resource_type}/{resource_id} was created concurrently") from None
            return WriteResult(version=version, created=True)
        if expected is not None and expected != current.version_id:
            raise PreconditionFailed(
                f"If-Match version {expected} is stale: {resource_type}/{resource_id} is at version {current.version_id}"
            )
        version = self._write_version(
            resource_type,
            resource_id,
            body,
            current.version_id + 1,
            "PUT",
            action=action,
            previous_patient=current.patient_id,
        )
        return WriteResult(version=version, created=False)

    def conditional_update(
        self, resource_type: str, query: str, body: dict[str, Any], *, if_match: str | None = None
    ) -> WriteResult:
        """Conditional update (http.html#cond-update)."""
        self.check_type(resource_type)
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object holding a FHIR resource")
        matches = self.find(resource_type, query)
        if len(matches) > 1:
            raise PreconditionFailed(
                f"the conditional update matched {len(matches)} resources; it must match at most one"
            )
        if matches:
            if "id" in body and body["id"] != matches[0]:
                raise BadRequest(
                    f"id {body['id']!r} in the body does not match the resource found ({matches[0]})"
                )
            return self.update(
                resource_type, matches[0], {**body, "id": matches[0]}, if_match=if_match
            )
        if "id" in body:
            return self.update(resource_type, str(body["id"]), body, if_match=if_match)
        return self.create(resource_type, body)

    def patch(
        self, resource_type: str, resource_id: str, operations: Any, *, if_match: str | None = None
    ) -> WriteResult:
        """patch with JSON Patch (http.html#patch, RFC 6902)."""
        self.check_type(resource_type)
        self._require(resource_type, "u", "patch")
        if not isinstance(operations, list) or not all(isinstance(op, dict) for op in operations):
            raise BadRequest("a JSON Patch body must be an array of operation objects")
        current = self.read(resource_type, resource_id, action="patch")
        assert current.body is not None
        expected = parse_etag(if_match) if if_match is not None else None
        if expected is not None and expected != current.version_id:
            raise PreconditionFailed(
                f"If-Match version {expected} is stale: {resource_type}/{resource_id} is at version {current.version_id}"
            )
        document = jsonio.loads(current.body)
        try:
            patched = jsonpatch.JsonPatch(operations).apply(document)
        except jsonpatch.JsonPatchTestFailed as exc:
            raise Unprocessable(f"JSON Patch test failed: {exc}") from None
        except (
            jsonpatch.JsonPatchException,
            jsonpatch.JsonPointerException,
            TypeError,
            KeyError,
        ) as exc:
            raise Unprocessable(f"JSON Patch could not be applied: {exc}") from None
        if not isinstance(patched, dict) or patched.get("id") != resource_id:
            raise Unprocessable("a patch may not change the resource id")
        if patched.get("resourceType") != resource_type:
            raise Unprocessable("a patch may not change the resourceType")
        return self.update(
            resource_type, resource_id, patched, if_match=str(current.version_id), action="patch"
        )

    def delete(self, resource_type: str, resource_id: str) -> StoredVersion | None:
        """Logical delete (http.html#delete): a new, empty version; history is kept.

        Deleting a resource that is already deleted changes nothing (idempotent).
        """
        self.check_type(resource_type)
        self._require(resource_type, "d", "delete")
        current = self._current_row(resource_type, resource_id, lock=True)
        if current is None or (
            self.guard is not None and not self.guard.admits(resource_type, current.patient_id, "r")
        ):
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        if current.deleted:
            return None
        return self._write_version(
            resource_type,
            resource_id,
            None,
            current.version_id + 1,
            "DELETE",
            previous_patient=current.patient_id,
        )

    def conditional_delete(self, resource_type: str, query: str) -> int:
        """Conditional delete (http.html#cdelete): zero or one match deleted; more is 412."""
        self.check_type(resource_type)
        matches = self.find(resource_type, query)
        if len(matches) > 1:
            raise PreconditionFailed(
                f"the conditional delete matched {len(matches)} resources; it must match at most one"
            )
        for match in matches:
            self.delete(resource_type, match)
        return len(matches)

    # --- maintenance ------------------------------------------------------------------

    def reindex_batch(
        self, resource_type: str | None, after: tuple[str, str] | None, batch: int
    ) -> tuple[int, tuple[str, str] | None]:
        """Rebuild the search index and compartment rows of up to ``batch`` current resources
        after ``after`` (type, id); returns how many and where to resume (None when done)."""
        self.flush()
        r = resource.c
        conditions: list[Any] = [r.tenant_id == self.tenant, r.deleted.is_(False)]
        if resource_type is not None:
            conditions.append(r.resource_type == resource_type)
        if after is not None:
            conditions.append(sa.tuple_(r.resource_type, r.id) > sa.tuple_(*after))
        rows = self.conn.execute(
            sa.select(r.resource_type, r.id, r.version_id, r.key_version, r.body)
            .where(*conditions)
            .order_by(r.resource_type, r.id)
            .limit(batch)
        ).all()
        for row in rows:
            body = jsonio.loads(
                self.open_body(
                    row.resource_type, row.id, row.version_id, row.key_version, row.body
                ),
                max_depth=1_000,
            )
            patients = compartment_patients(body)
            self.conn.execute(
                resource.update()
                .where(
                    r.tenant_id == self.tenant, r.resource_type == row.resource_type, r.id == row.id
                )
                .values(patient_id=patients[0] if patients else None)
            )
            self.conn.execute(
                resource_compartment.delete().where(
                    resource_compartment.c.tenant_id == self.tenant,
                    resource_compartment.c.resource_type == row.resource_type,
                    resource_compartment.c.resource_id == row.id,
                )
            )
            compartment = self._compartment_rows(row.resource_type, row.id, patients)
            if compartment:
                self.conn.execute(resource_compartment.insert(), compartment)
            index_resource(self.conn, self.keyring, self.tenant, row.resource_type, row.id, body)
        last = (rows[-1].resource_type, rows[-1].id) if len(rows) == batch else None
        return len(rows), last

    def tenants(self) -> list[str]:
        return list(
            self.conn.execute(
                sa.select(resource.c.tenant_id).distinct().order_by(resource.c.tenant_id)
            ).scalars()
        )

    # --- paging snapshots ---------------------------------------------------------------

    def save_snapshot(self, resource_type: str, ids: Sequence[str], total: int) -> str:
        """Keep a search's matching ids so its paging links survive concurrent writes."""
        now = datetime.now(UTC)
        self.conn.execute(
            search_snapshot.delete().where(search_snapshot.c.created_at < now - SNAPSHOT_LIFETIME)
        )
        snapshot_id = str(uuid.uuid4())
        self.conn.execute(
            search_snapshot.insert().values(
                tenant_id=self.tenant,
                id=snapshot_id,
                resource_type=resource_type,
                created_at=now,
                total=total,
                ids=",".join(ids),
            )
        )
        return snapshot_id

    def load_snapshot(self, resource_type: str, snapshot_id: str) -> tuple[list[str], int]:
        row = self.conn.execute(
            sa.select(
                search_snapshot.c.ids,
                search_snapshot.c.total,
                search_snapshot.c.created_at,
                search_snapshot.c.resource_type,
            ).where(search_snapshot.c.tenant_id == self.tenant, search_snapshot.c.id == snapshot_id)
        ).first()
        if row is None or row.resource_type != resource_type:
            raise Gone("the paging link is unknown or has expired; repeat the search")
        if as_utc(row.created_at) < datetime.now(UTC) - SNAPSHOT_LIFETIME:
            raise Gone("the paging link has expired; repeat the search")
        return ([i for i in row.ids.split(",") if i], row.total)

    # --- reads ------------------------------------------------------------------------

    def exists(self, resource_type: str, resource_id: str) -> bool:
        """Whether a current (not deleted) resource has this id; reveals nothing else."""
        row = self._current_row(resource_type, resource_id)
        return row is not None and not row.deleted

    def read(self, resource_type: str, resource_id: str, *, action: str = "read") -> StoredVersion:
        """read (http.html#read). A resource the caller may not see is answered exactly as
        one that does not exist (SECURITY B2)."""
        self.check_type(resource_type)
        row = self._current_row(resource_type, resource_id)
        if row is not None and not self.visible(resource_type, resource_id, row.patient_id, action):
            row = None
        return current_version(self.keyring, self.tenant, resource_type, resource_id, row)

    def read_many(
        self, resource_type: str, ids: Sequence[str], *, action: str = "read"
    ) -> list[StoredVersion]:
        """Current versions of ``ids`` in the given order; missing, deleted or forbidden ones
        are skipped."""
        if not ids:
            return []
        self.flush()
        rows = self.conn.execute(
            sa.select(
                resource.c.id,
                resource.c.version_id,
                resource.c.last_updated,
                resource.c.key_version,
                resource.c.body,
                resource.c.patient_id,
            ).where(
                resource.c.tenant_id == self.tenant,
                resource.c.resource_type == resource_type,
                resource.c.id.in_(list(ids)),
                resource.c.deleted.is_(False),
            )
        ).all()
        by_id = {
            row.id: self.version_from_row(resource_type, row.id, row)
            for row in rows
            if self.visible(resource_type, row.id, row.patient_id, action)
        }
        return [by_id[i] for i in ids if i in by_id]

    def vread(self, resource_type: str, resource_id: str, version_id: str) -> StoredVersion:
        self.check_type(resource_type)
        if not version_id.isdigit():
            raise NotFound(f"{resource_type}/{resource_id} has no version {version_id!r}")
        self.flush()
        row = self.conn.execute(
            sa.select(
                resource_history.c.version_id,
                resource_history.c.last_updated,
                resource_history.c.deleted,
                resource_history.c.key_version,
                resource_history.c.body,
                resource_history.c.method,
                resource_history.c.patient_id,
            ).where(
                resource_history.c.tenant_id == self.tenant,
                resource_history.c.resource_type == resource_type,
                resource_history.c.id == resource_id,
                resource_history.c.version_id == int(version_id),
            )
        ).first()
        if row is not None and not self.visible(
            resource_type, resource_id, row.patient_id, "vread"
        ):
            row = None
        if row is None:
            raise NotFound(f"{resource_type}/{resource_id} has no version {version_id}")
        if row.deleted:
            raise Gone(f"version {version_id} of {resource_type}/{resource_id} is a deletion")
        return self.version_from_row(resource_type, resource_id, row)

    def history(
        self,
        resource_type: str | None,
        resource_id: str | None,
        *,
        since: datetime | None = None,
        count: int = 50,
        cursor: int | None = None,
    ) -> HistoryPage:
        """history (http.html#history): newest first; keyset paging on the history sequence,
        so pages stay stable while new versions are written."""
        self.flush()
        h = resource_history
        conditions: list[Any] = [h.c.tenant_id == self.tenant]
        if resource_type is not None:
            self.check_type(resource_type)
            conditions.append(h.c.resource_type == resource_type)
        if resource_id is not None:
            conditions.append(h.c.id == resource_id)
        if since is not None:
            conditions.append(h.c.last_updated >= since)
        total: int | None = None
        if resource_id is not None and resource_type is not None:
            current = self._current_row(resource_type, resource_id)
            if current is None or (
                self.guard is not None
                and not self.visible(resource_type, resource_id, current.patient_id, "history")
            ):
                raise NotFound(f"{resource_type}/{resource_id} is not known")
            total = self.conn.execute(sa.select(sa.func.count()).where(*conditions)).scalar_one()
        if cursor is not None:
            conditions.append(h.c.seq < cursor)
        rows = self.conn.execute(
            sa.select(
                h.c.seq,
                h.c.resource_type,
                h.c.id,
                h.c.version_id,
                h.c.last_updated,
                h.c.deleted,
                h.c.key_version,
                h.c.body,
                h.c.method,
                h.c.patient_id,
            )
            .where(*conditions)
            .order_by(h.c.seq.desc())
            .limit(count + 1)
        ).all()
        more = len(rows) > count
        rows = rows[:count]
        versions = [
            self.version_from_row(row.resource_type, row.id, row, deleted=row.deleted)
            for row in rows
            if self.visible(row.resource_type, row.id, row.patient_id, "history")
        ]
        return HistoryPage(
            versions=versions, next_cursor=rows[-1].seq if more and rows else None, total=total
        )


@dataclass(frozen=True, slots=True)
class CompartmentPage:
    versions: list[StoredVersion]
    # Keyset cursor "Type/id" of the last entry when more follow.
    next_cursor: str | None


def everything_page(
    store: SqlResourceStore,
    patient_id: str | None,
    *,
    since: datetime | None,
    types: Sequence[str] | None,
    count: int,
    cursor: str | None,
) -> CompartmentPage:
    """One page of Patient/$everything (http://hl7.org/fhir/R4/patient-operation-everything.html):
    the current resources in the patient's compartment (every patient's with ``patient_id``
    None), ordered by type and id so pages are stable and the whole need not sit in memory."""
    store.flush()
    r, c = resource, resource_compartment
    membership = sa.select(c.c.resource_id).where(
        c.c.tenant_id == store.tenant,
        c.c.resource_type == r.c.resource_type,
        c.c.resource_id == r.c.id,
    )
    if patient_id is not None:
        membership = membership.where(c.c.patient_id == patient_id)
    conditions: list[Any] = [
        r.c.tenant_id == store.tenant,
        r.c.deleted.is_(False),
        membership.exists(),
    ]
    if since is not None:
        conditions.append(r.c.last_updated >= since)
    if types:
        conditions.append(r.c.resource_type.in_(list(types)))
    if cursor is not None:
        after_type, _, after_id = cursor.partition("/")
        conditions.append(sa.tuple_(r.c.resource_type, r.c.id) > sa.tuple_(after_type, after_id))
    rows = store.conn.execute(
        sa.select(
            r.c.resource_type,
            r.c.id,
            r.c.version_id,
            r.c.last_updated,
            r.c.key_version,
            r.c.body,
            r.c.patient_id,
        )
        .where(*conditions)
        .order_by(r.c.resource_type, r.c.id)
        .limit(count + 1)
    ).all()
    more = len(rows) > count
    rows = rows[:count]
    versions = [
        store.version_from_row(row.resource_type, row.id, row)
        for row in rows
        if store.visible(row.resource_type, row.id, row.patient_id, "export")
    ]
    next_cursor = f"{rows[-1].resource_type}/{rows[-1].id}" if more and rows else None
    return CompartmentPage(versions=versions, next_cursor=next_cursor)
