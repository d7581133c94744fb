"""``carechart import``: FHIR Bundles and NDJSON files into a tenant, as the operator.

What is read (http://hl7.org/fhir/R4/bundle.html, https://hl7.org/fhir/uv/bulkdata/):

- a ``.json`` file holding a Bundle of type ``transaction`` or ``batch``, processed as one
  transaction (:func:`carechart.fhir.bundles.transaction`): references between entries and
  ``urn:uuid:`` full URLs are resolved, and any bad entry refuses the whole file;
- a ``.json`` Bundle of type ``collection``: stored as a transaction of its entries, each a
  PUT of ``Type/id`` when the resource has an id (so references to it stay valid) and a POST
  otherwise;
- a ``.json`` file holding one resource, or an ``.ndjson``/``.jsonl`` file with one resource
  per line (FHIR Bulk Data's format): resources keep their ids (an id already present gets a
  new version), a bad line is reported and skipped, and the rest of the file is stored.

Each file is one unit of work with one audit record (action ``import``), committed together;
a file that fails is rolled back whole and audited as a failure. The import is the server's
own work (no access guard): it runs from the command line with the operator's keys. Nothing
read from a file is echoed: reasons are the store's messages, which never quote values.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError

from carechart import jsonio
from carechart.audit.chain import AuditRecord, append
from carechart.auth.cli import CLI_CLIENT
from carechart.context import AppContext
from carechart.errors import BadRequest, CarechartError
from carechart.fhir.bundles import check_shape, transaction
from carechart.fhir.model import ID_PATTERN
from carechart.fhir.store import SqlResourceStore
from carechart.transfer import repository

IMPORT_ACTION = "import"
NDJSON_SUFFIXES = frozenset({".ndjson", ".jsonl"})
JSON_SUFFIXES = frozenset({".json"})
EXPORT_MANIFEST = "manifest.json"
# NDJSON lines are written in chunks: one query finds which ids exist, and the store's batched
# INSERTs stay bounded in memory however long the file is.
CHUNK_LINES = 1_000
# A transaction Bundle's entries answer with these: where the created resource went.
_BASE = "urn:carechart:import"
# Conditional URLs in messages carry search values (identifiers): keep them off the console.
_QUERY = re.compile(r"\?[^\s)'\"]*")

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Rejection:
    """Something not imported: a whole file (``line`` None) or one NDJSON line."""

    file_number: int  # 1-based position in the sorted list of files
    path: Path
    line: int | None
    reason: str


@dataclass
class ImportReport:
    files: int = 0
    ignored: int = 0  # files in a directory whose names say they are not JSON or NDJSON
    created: Counter[str] = field(default_factory=Counter)
    updated: Counter[str] = field(default_factory=Counter)
    unchanged: Counter[str] = field(default_factory=Counter)  # ifNoneExist found a match
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def types(self) -> list[str]:
        return sorted(set(self.created) | set(self.updated) | set(self.unchanged))


def import_files(path: Path) -> tuple[list[Path], int]:
    """The files to import under ``path`` in a stable order, and how many were ignored."""
    if path.is_file():
        return [path], 0
    if not path.is_dir():
        raise BadRequest("the import path is neither a file nor a directory")
    found: list[Path] = []
    ignored = 0
    for candidate in sorted(path.rglob("*")):
        relative = candidate.relative_to(path)
        if not candidate.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        if candidate.name == EXPORT_MANIFEST:
            ignored += 1  # an export's manifest describes the data files; it is not data
        elif candidate.suffix.lower() in NDJSON_SUFFIXES | JSON_SUFFIXES:
            found.append(candidate)
        else:
            ignored += 1
    return found, ignored


def file_sizes(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def import_path(
    ctx: AppContext,
    path: Path,
    *,
    tenant: str | None = None,
    progress: Progress | None = None,
) -> ImportReport:
    """Import every file under ``path``; ``progress`` receives the bytes read as they are."""
    tenant = tenant or ctx.settings.default_tenant
    files, ignored = import_files(path)
    report = ImportReport(files=len(files), ignored=ignored)
    for number, file in enumerate(files, start=1):
        importer = _FileImport(ctx, tenant, report, number, file, progress)
        importer.run()
    return report


def safe_reason(error: Exception) -> str:
    if isinstance(error, CarechartError):
        return _QUERY.sub("?…", error.message)
    # Database errors carry SQL and parameters (PHI): only their kind is shown.
    return f"the database refused the file ({type(error).__name__})"


class _FileImport:
    def __init__(
        self,
        ctx: AppContext,
        tenant: str,
        report: ImportReport,
        number: int,
        path: Path,
        progress: Progress | None,
    ) -> None:
        self.ctx = ctx
        self.tenant = tenant
        self.report = report
        self.number = number
        self.path = path
        self.progress = progress

    def reject(self, reason: str, line: int | None = None) -> None:
        self.report.rejected.append(Rejection(self.number, self.path, line, reason))

    def advance(self, size: int) -> None:
        if self.progress is not None:
            self.progress(size)

    def run(self) -> None:
        try:
            if self.path.suffix.lower() in NDJSON_SUFFIXES:
                self._ndjson()
            else:
                self._json()
        except (CarechartError, DBAPIError) as error:
            # The unit of work has rolled back: nothing of this file is stored.
            self.reject(safe_reason(error))
            self.ctx.audit(self.tenant, [_record("failure")])
        except OSError as error:
            self.reject(f"the file could not be read ({error.strerror or type(error).__name__})")

    # --- one JSON document --------------------------------------------------------------

    def _json(self) -> None:
        data = self.path.read_bytes()
        self.advance(len(data))
        document = jsonio.loads(data, max_depth=self.ctx.settings.max_json_depth)
        if not isinstance(document, dict):
            raise BadRequest("the file does not hold a JSON object")
        if document.get("resourceType") != "Bundle":
            self._resources(iter([(None, document)]))
            return
        bundle = as_transaction(document)
        check_shape(bundle, self.ctx.settings.max_bundle_entries)
        created: Counter[str] = Counter()
        updated: Counter[str] = Counter()
        unchanged: Counter[str] = Counter()
        with self.ctx.store(write=True, tenant=self.tenant) as store:
            # Read before processing: the transaction rewrites references in place.
            kinds = [_entry_kind(entry) for entry in bundle.get("entry", [])]
            answer = transaction(store, bundle, _BASE)
            for (resource_type, method), entry in zip(kinds, answer["entry"], strict=True):
                status = str(entry["response"]["status"])
                if status.startswith("201"):
                    created[resource_type] += 1
                elif method == "PUT":
                    updated[resource_type] += 1
                else:
                    unchanged[resource_type] += 1
            append(store.conn, self.ctx.keyring, tenant=self.tenant, record=_record("success"))
        self.report.created.update(created)
        self.report.updated.update(updated)
        self.report.unchanged.update(unchanged)

    # --- resources one by one (NDJSON, or a file holding one resource) --------------------

    def _ndjson(self) -> None:
        with self.path.open("rb") as stream:
            self._resources(self._lines(stream))

    def _lines(self, stream: Any) -> Iterator[tuple[int | None, Any]]:
        """(line number, parsed resource or the error that line raised)."""
        for number, raw in enumerate(stream, start=1):
            self.advance(len(raw))
            if not raw.strip():
                continue
            try:
                yield number, jsonio.loads(raw, max_depth=self.ctx.settings.max_json_depth)
            except CarechartError as error:
                yield number, error

    def _resources(self, items: Iterator[tuple[int | None, Any]]) -> None:
        created: Counter[str] = Counter()
        updated: Counter[str] = Counter()
        rejected_before = len(self.report.rejected)
        with self.ctx.store(write=True, tenant=self.tenant) as store:
            seen: set[tuple[str, str]] = set()
            chunk: list[tuple[int | None, str, dict[str, Any]]] = []
            for line, item in items:
                try:
                    chunk.append((line, *_checked(store, item)))
                except CarechartError as error:
                    self._reject_item(error, line)
                    continue
                if len(chunk) >= CHUNK_LINES:
                    self._write(store, chunk, seen, created, updated)
                    chunk = []
            self._write(store, chunk, seen, created, updated)
            # A file of which nothing could be stored failed (its lines say why); its record
            # is written after this unit of work, which on SQLite holds the only write lock.
            failed = not (created or updated) and len(self.report.rejected) > rejected_before
            if not failed:
                append(store.conn, self.ctx.keyring, tenant=self.tenant, record=_record("success"))
        # Lines are refused when read or when written (a chunk later): report them in order.
        self.report.rejected[rejected_before:] = sorted(
            self.report.rejected[rejected_before:], key=lambda r: r.line or 0
        )
        if failed:
            self.ctx.audit(self.tenant, [_record("failure")])
        self.report.created.update(created)
        self.report.updated.update(updated)

    def _reject_item(self, error: CarechartError, line: int | None) -> None:
        if line is None:
            raise error  # a single-resource file: the file itself is what is rejected
        self.reject(safe_reason(error), line)

    def _write(
        self,
        store: SqlResourceStore,
        chunk: list[tuple[int | None, str, dict[str, Any]]],
        seen: set[tuple[str, str]],
        created: Counter[str],
        updated: Counter[str],
    ) -> None:
        """Create or update the chunk's resources. A resource the store refuses is refused
        before anything of it is written, so it is skipped and the unit of work goes on."""
        by_type: dict[str, set[str]] = {}
        for _, resource_type, body in chunk:
            if isinstance(body.get("id"), str):
                by_type.setdefault(resource_type, set()).add(body["id"])
        existing = {
            (resource_type, found)
            for resource_type, ids in by_type.items()
            for found in repository.existing_ids(store.conn, self.tenant, resource_type, ids)
        }
        for line, resource_type, body in chunk:
            resource_id = body.get("id")
            try:
                if not isinstance(resource_id, str):
                    store.create(resource_type, body)
                    created[resource_type] += 1
                    continue
                key = (resource_type, resource_id)
                if key in existing or key in seen:
                    # Already stored, or earlier in this file: the later content wins.
                    store.update(resource_type, resource_id, body)
                    updated[resource_type] += 1
                else:
                    store.create(resource_type, body, resource_id=resource_id)
                    created[resource_type] += 1
                seen.add(key)
            except CarechartError as error:
                self._reject_item(error, line)
        store.flush()


def _checked(store: SqlResourceStore, item: Any) -> tuple[str, dict[str, Any]]:
    """(type, resource) of a parsed line, or the reason it cannot be a resource."""
    if isinstance(item, CarechartError):
        raise item
    if not isinstance(item, dict):
        raise BadRequest("the line does not hold a JSON object")
    resource_type = item.get("resourceType")
    if not isinstance(resource_type, str):
        raise BadRequest("the resource has no resourceType")
    store.check_type(resource_type)
    resource_id = item.get("id")
    if resource_id is not None and (
        not isinstance(resource_id, str) or not ID_PATTERN.fullmatch(resource_id)
    ):
        raise BadRequest(f"the {resource_type} has an id that is not a valid FHIR id")
    return resource_type, item


def as_transaction(bundle: dict[str, Any]) -> dict[str, Any]:
    """The Bundle as a transaction to process; an import only creates and updates."""
    kind = bundle.get("type")
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise BadRequest("Bundle.entry must be an array")
    if kind == "collection":
        entries = [_collection_entry(index, entry) for index, entry in enumerate(entries)]
    elif kind not in ("transaction", "batch"):
        raise BadRequest(
            f"a Bundle of type {kind!r} cannot be imported; use transaction, batch or collection"
        )
    for index, entry in enumerate(entries):
        request = entry.get("request") if isinstance(entry, dict) else None
        method = request.get("method") if isinstance(request, dict) else None
        if method not in ("POST", "PUT"):
            raise BadRequest(
                f"Bundle.entry[{index}]: an import creates and updates only (POST or PUT), "
                f"not {method!r}"
            )
    # Batch entries are independent for a server, but a file is imported whole or not at all.
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _collection_entry(index: int, entry: Any) -> dict[str, Any]:
    resource = entry.get("resource") if isinstance(entry, dict) else None
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise BadRequest(f"Bundle.entry[{index}] has no resource")
    resource_type = resource["resourceType"]
    resource_id = resource.get("id")
    if isinstance(resource_id, str):
        request = {"method": "PUT", "url": f"{resource_type}/{resource_id}"}
    else:
        request = {"method": "POST", "url": resource_type}
    converted: dict[str, Any] = {"resource": resource, "request": request}
    if isinstance(entry.get("fullUrl"), str):
        converted["fullUrl"] = entry["fullUrl"]
    return converted


def _entry_kind(entry: dict[str, Any]) -> tuple[str, str]:
    resource = entry.get("resource")
    resource_type = resource.get("resourceType") if isinstance(resource, dict) else None
    method = entry["request"]["method"]
    if not isinstance(resource_type, str):
        resource_type = str(entry["request"].get("url", "")).split("/", 1)[0].split("?", 1)[0]
    return resource_type, str(method)


def _record(outcome: str) -> AuditRecord:
    return AuditRecord(action=IMPORT_ACTION, outcome=outcome, client_id=CLI_CLIENT.client_id)
