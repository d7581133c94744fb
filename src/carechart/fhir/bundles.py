"""Batch and transaction Bundles (http://hl7.org/fhir/R4/http.html#transaction).

A transaction is one unit of work: entries are processed in the spec's order (DELETE, POST,
PUT/PATCH, GET), ``urn:uuid:`` and other full URLs of created resources are resolved to the
ids the server assigns and every reference between entries is rewritten, conditional
references (``Patient?identifier=...``) are resolved by search, and any failure rolls the
whole Bundle back. A batch processes each entry in its own unit of work and reports each
entry's own status.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson

from carechart.errors import BadRequest, CarechartError, Issue, NotFound, PreconditionFailed
from carechart.fhir.model import ID_PATTERN, TYPE_PATTERN, StoredVersion, format_instant
from carechart.fhir.outcome import operation_outcome
from carechart.fhir.store import SqlResourceStore

StoreFactory = Callable[[bool], AbstractContextManager[SqlResourceStore]]

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    412: "Precondition Failed",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    500: "Internal Server Error",
}


def _status(code: int) -> str:
    return f"{code} {_REASONS.get(code, '')}".strip()


class EntryError(BadRequest):
    """A problem with one entry; names the entry so the client can find it."""


def check_shape(bundle: Any, max_entries: int) -> None:
    """The Bundle-level checks both kinds share, before anything is written."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise BadRequest("POST to the service base takes a Bundle of type batch or transaction")
    kind = bundle.get("type")
    if kind not in ("batch", "transaction"):
        raise BadRequest(f"Bundle.type {kind!r} cannot be processed; use batch or transaction")
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise BadRequest("Bundle.entry must be an array")
    if len(entries) > max_entries:
        raise BadRequest(f"the Bundle has {len(entries)} entries; the limit is {max_entries}")


@dataclass
class _Entry:
    index: int
    method: str
    url: str
    resource: dict[str, Any] | None
    full_url: str | None
    request: dict[str, Any]
    # For POST/PUT: the "Type/id" the entry's resource will have.
    target: str | None = None


def _parse_entry(index: int, raw: Any) -> _Entry:
    where = f"Bundle.entry[{index}]"
    if not isinstance(raw, dict):
        raise EntryError(f"{where} must be an object")
    request = raw.get("request")
    if not isinstance(request, dict):
        raise EntryError(f"{where}.request is required in a batch or transaction")
    method = request.get("method")
    url = request.get("url")
    if method not in _ORDER:
        raise EntryError(
            f"{where}.request.method {method!r} is not one of GET, HEAD, POST, PUT, PATCH, DELETE"
        )
    if not isinstance(url, str) or not url:
        raise EntryError(f"{where}.request.url is required")
    resource = raw.get("resource")
    if method in ("POST", "PUT") and not isinstance(resource, dict):
        raise EntryError(f"{where}: a {method} entry needs a resource")
    if method == "PATCH":
        raise EntryError(
            f"{where}: PATCH entries need a Binary JSON Patch, which is not supported here"
        )
    full_url = raw.get("fullUrl")
    if full_url is not None and not isinstance(full_url, str):
        raise EntryError(f"{where}.fullUrl must be a string")
    return _Entry(
        index,
        method,
        url.lstrip("/"),
        resource if isinstance(resource, dict) else None,
        full_url,
        request,
    )


def _split_url(url: str) -> tuple[list[str], str | None]:
    path, sep, query = url.partition("?")
    return [p for p in path.split("/") if p], (query if sep else None)


def _rewrite_references(value: Any, mapping: dict[str, str], resolve: Callable[[str], str]) -> None:
    """Rewrite, in place, Reference.reference values that name another entry or a search.

    The Bundle was parsed for this request alone, so changing it in place is safe and saves
    copying every resource of a large transaction.
    """
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, item in node.items():
                if key == "reference" and isinstance(item, str):
                    if item in mapping:
                        node[key] = mapping[item]
                    elif "?" in item and not item.startswith(("http:", "https:", "urn:")):
                        node[key] = resolve(item)
                elif isinstance(item, (dict, list)):
                    stack.append(item)
        elif isinstance(node, list):
            stack.extend(item for item in node if isinstance(item, (dict, list)))


def _entry_response(version: StoredVersion | None, status: int, base: str) -> dict[str, Any]:
    response: dict[str, Any] = {"status": _status(status)}
    if version is not None:
        response["location"] = f"{base}/{version.location}" if status == 201 else version.location
        response["etag"] = version.etag
        response["lastModified"] = format_instant(version.last_updated)
    return {"response": response}


def _read_entry(store: SqlResourceStore, entry: _Entry, base: str) -> dict[str, Any]:
    parts, query = _split_url(entry.url)
    if query is not None or len(parts) == 1:
        if not parts or not TYPE_PATTERN.fullmatch(parts[0]):
            raise EntryError(f"Bundle.entry[{entry.index}]: {entry.url!r} is not a search URL")
        result = store.search(parts[0], parse_qsl(query or "", keep_blank_values=True))
        versions = store.read_many(parts[0], result.ids, action="search")
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": result.total,
            "entry": [
                {
                    "fullUrl": f"{base}/{v.resource_type}/{v.id}",
                    "resource": orjson.Fragment(v.body or b"{}"),
                }
                for v in versions
            ],
        }
        return {"resource": bundle, **_entry_response(None, 200, base)}
    if len(parts) == 2:
        version = store.read(parts[0], parts[1])
    elif len(parts) == 4 and parts[2] == "_history":
        version = store.vread(parts[0], parts[1], parts[3])
    else:
        raise EntryError(
            f"Bundle.entry[{entry.index}]: GET {entry.url!r} is not supported in a Bundle"
        )
    assert version.body is not None
    return {"resource": orjson.Fragment(version.body), **_entry_response(version, 200, base)}


def _run_entry(store: SqlResourceStore, entry: _Entry, base: str) -> dict[str, Any]:
    """Perform one entry whose references have already been rewritten."""
    parts, query = _split_url(entry.url)
    where = f"Bundle.entry[{entry.index}]"
    if entry.method in ("GET", "HEAD"):
        return _read_entry(store, entry, base)
    if not parts or not TYPE_PATTERN.fullmatch(parts[0]):
        raise EntryError(f"{where}.request.url {entry.url!r} does not start with a resource type")
    resource_type = parts[0]
    if entry.method == "POST":
        assert entry.resource is not None
        if len(parts) != 1:
            raise EntryError(f"{where}: POST goes to a resource type, not {entry.url!r}")
        if_none_exist = entry.request.get("ifNoneExist")
        if isinstance(if_none_exist, str) and if_none_exist:
            found = store.find(resource_type, if_none_exist)
            if len(found) > 1:
                raise PreconditionFailed(f"{where}: ifNoneExist matched {len(found)} resources")
            if found:
                return _entry_response(store.read(resource_type, found[0]), 200, base)
        new_id = entry.target.split("/", 1)[1] if entry.target else None
        result = store.create(resource_type, entry.resource, resource_id=new_id)
        return _entry_response(result.version, 201, base)
    if entry.method == "PUT":
        assert entry.resource is not None
        if_match = entry.request.get("ifMatch")
        if query is not None and len(parts) == 1:
            result = store.conditional_update(
                resource_type, query, entry.resource, if_match=if_match
            )
        elif len(parts) == 2:
            result = store.update(resource_type, parts[1], entry.resource, if_match=if_match)
        else:
            raise EntryError(f"{where}: PUT needs Type/id or Type?criteria, not {entry.url!r}")
        return _entry_response(result.version, 201 if result.created else 200, base)
    # DELETE
    if query is not None and len(parts) == 1:
        store.conditional_delete(resource_type, query)
        return _entry_response(None, 204, base)
    if len(parts) != 2:
        raise EntryError(f"{where}: DELETE needs Type/id or Type?criteria, not {entry.url!r}")
    store.delete(resource_type, parts[1])
    return _entry_response(None, 204, base)


def _assign_targets(store: SqlResourceStore, entries: list[_Entry]) -> dict[str, str]:
    """Decide every created or updated resource's identity before anything is written, so
    references between entries can point at it (http.html#trules)."""
    mapping: dict[str, str] = {}
    for entry in entries:
        parts, query = _split_url(entry.url)
        if entry.method == "POST" and entry.resource is not None and len(parts) == 1:
            if_none_exist = entry.request.get("ifNoneExist")
            target_id = str(uuid.uuid4())
            if (
                isinstance(if_none_exist, str)
                and if_none_exist
                and TYPE_PATTERN.fullmatch(parts[0])
            ):
                store.check_type(parts[0])
                found = store.find(parts[0], if_none_exist)
                if len(found) == 1:
                    target_id = found[0]
            entry.target = f"{parts[0]}/{target_id}"
        elif entry.method == "PUT" and len(parts) == 2 and query is None:
            entry.target = f"{parts[0]}/{parts[1]}"
        elif entry.method == "PUT" and len(parts) == 1 and query is not None:
            store.check_type(parts[0])
            found = store.find(parts[0], query)
            if len(found) == 1:
                entry.target = f"{parts[0]}/{found[0]}"
            elif not found and entry.resource is not None:
                entry.target = f"{parts[0]}/{entry.resource.get('id') or uuid.uuid4()}"
        if entry.target and entry.full_url:
            if entry.full_url in mapping:
                raise EntryError(
                    f"Bundle.entry[{entry.index}].fullUrl {entry.full_url!r} appears twice"
                )
            mapping[entry.full_url] = entry.target
    return mapping


def transaction(store: SqlResourceStore, bundle: dict[str, Any], base: str) -> dict[str, Any]:
    entries = [_parse_entry(i, raw) for i, raw in enumerate(bundle.get("entry", []))]
    mapping = _assign_targets(store, entries)

    def resolve(reference: str) -> str:
        resource_type, _, query = reference.partition("?")
        if not TYPE_PATTERN.fullmatch(resource_type):
            raise BadRequest(
                f"conditional reference {reference!r} does not start with a resource type"
            )
        store.check_type(resource_type)
        found = store.find(resource_type, query)
        if len(found) != 1:
            raise PreconditionFailed(
                f"conditional reference {reference!r} matched {len(found)} resources; it must match exactly one"
            )
        return f"{resource_type}/{found[0]}"

    responses: list[dict[str, Any] | None] = [None] * len(entries)
    for entry in sorted(entries, key=lambda e: _ORDER[e.method]):
        try:
            if entry.resource is not None:
                _rewrite_references(entry.resource, mapping, resolve)
                if entry.method == "PUT" and entry.target and "?" in entry.url:
                    entry.resource = {**entry.resource, "id": entry.target.split("/", 1)[1]}
            responses[entry.index] = _run_entry(store, entry, base)
        except CarechartError as error:
            # Name the entry; the exception unwinds the unit of work, so nothing is kept.
            error.message = (
                f"Bundle.entry[{entry.index}] ({entry.method} {entry.url}): {error.message}"
            )
            error.issues = [
                Issue(
                    message=f"Bundle.entry[{entry.index}]: {i.message}",
                    code=i.code,
                    severity=i.severity,
                    expression=f"Bundle.entry[{entry.index}].resource.{i.expression.split('.', 1)[1]}"
                    if i.expression and "." in i.expression
                    else i.expression,
                )
                for i in error.issues
            ]
            raise
    return {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [r for r in responses if r is not None],
    }


def batch(open_store: StoreFactory, bundle: dict[str, Any], base: str) -> dict[str, Any]:
    """Each entry in its own unit of work; one entry's failure does not affect the others."""
    responses: list[dict[str, Any]] = []
    for index, raw in enumerate(bundle.get("entry", [])):
        try:
            entry = _parse_entry(index, raw)
            with open_store(entry.method not in ("GET", "HEAD")) as store:
                if entry.method == "POST":
                    parts, _ = _split_url(entry.url)
                    entry.target = f"{parts[0]}/{uuid.uuid4()}" if len(parts) == 1 else None
                responses.append(_run_entry(store, entry, base))
        except CarechartError as error:
            responses.append(
                {
                    "response": {
                        "status": _status(error.status),
                        "outcome": operation_outcome(error.issues),
                    }
                }
            )
    return {"resourceType": "Bundle", "type": "batch-response", "entry": responses}


def is_valid_id(value: str) -> bool:
    return bool(ID_PATTERN.fullmatch(value))


__all__ = ["NotFound", "batch", "check_shape", "is_valid_id", "transaction"]
