"""The FHIR R4 REST API (http://hl7.org/fhir/R4/http.html) over the resource store.

Endpoints are thin: negotiate, read the body, run one unit of work in a worker thread, shape
the answer. Rules live in the store and the bundle processor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from carechart import jsonio
from carechart.access.http import request_guard
from carechart.auth.dependencies import current_principal
from carechart.context import AppContext
from carechart.errors import BadRequest, NotFound
from carechart.fhir import bundles
from carechart.fhir.capability import capability_statement
from carechart.fhir.definitions import load_definitions
from carechart.fhir.http import (
    JSON_PATCH,
    fhir_response,
    is_pretty,
    negotiate,
    parse_json_body,
    prefer_strict,
    read_body,
    require_content_type,
    version_headers,
    write_response,
)
from carechart.fhir.model import ID_PATTERN, TYPE_PATTERN, StoredVersion
from carechart.fhir.outcome import information
from carechart.fhir.search import (
    blind_params,
    confirm_candidate,
    parse_include_params,
)
from carechart.fhir.store import (
    CompartmentPage,
    HistoryPage,
    SqlResourceStore,
    everything_page,
)
from carechart.fhir.summary import Shaping, shaping_from

T = TypeVar("T")

TYPE_PATH = "{resource_type}"


def _ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def base_url(request: Request) -> str:
    """The service base the request came in on (``/fhir`` or its alias ``/api/v1/fhir``)."""
    ctx = _ctx(request)
    prefix = request.scope.get("carechart.fhir_base", "/fhir")
    root = ctx.settings.base_url or str(request.base_url).rstrip("/")
    return f"{root.rstrip('/')}{prefix}"


def _check_type_syntax(resource_type: str) -> None:
    if not TYPE_PATTERN.fullmatch(resource_type):
        raise NotFound(f"{resource_type!r} is not a resource type")


def _check_id_syntax(resource_type: str, resource_id: str) -> None:
    if not ID_PATTERN.fullmatch(resource_id):
        raise NotFound(f"{resource_type}/{resource_id} is not known")


async def _in_store(request: Request, write: bool, work: Callable[[SqlResourceStore], T]) -> T:
    """One unit of work for the request, guarded by its policy point (authentication, the
    territory, the role matrix, care relationships) and audited in the same transaction."""
    ctx = _ctx(request)

    def run() -> T:
        guard = request_guard(request, write=write)
        with ctx.store(write=write, guard=guard) as store:
            return work(store)

    return await run_in_threadpool(run)


async def read_endpoint(request: Request) -> Response:
    """read (http.html#read). Also mounted as a plain route ahead of the router
    (:func:`read_route`): the hottest interaction skips the framework's parameter handling."""
    await run_in_threadpool(current_principal, request)
    resource_type: str = request.path_params["resource_type"]
    resource_id: str = request.path_params["resource_id"]
    negotiate(request)
    _check_type_syntax(resource_type)
    _check_id_syntax(resource_type, resource_id)
    shaping = shaping_from(resource_type, list(request.query_params.multi_items()))
    version = await _in_store(request, False, lambda s: s.read(resource_type, resource_id))
    body: Any = version.body if shaping.whole else _shaped(version, shaping)
    return fhir_response(body, headers=version_headers(version), pretty=is_pretty(request))


class _TypeConvertor(Convertor[str]):
    regex = "[A-Z][A-Za-z]{0,63}"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class _IdConvertor(Convertor[str]):
    # http://hl7.org/fhir/R4/datatypes.html#id: literal segments such as _history or
    # $everything can never match, so the plain route cannot shadow them.
    regex = "[A-Za-z0-9\\-.]{1,64}"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("fhir_type", _TypeConvertor())
register_url_convertor("fhir_id", _IdConvertor())


def read_route(prefix: str = "/fhir") -> Route:
    return Route(
        prefix + "/{resource_type:fhir_type}/{resource_id:fhir_id}",
        read_endpoint,
        methods=["GET"],
        include_in_schema=False,
    )


async def _json_body(request: Request) -> Any:
    require_content_type(request)
    settings = _ctx(request).settings
    data = await read_body(request, settings.max_body_bytes)
    return parse_json_body(data, settings.max_json_depth)


def _history_bundle(request: Request, page: HistoryPage) -> dict[str, Any]:
    base = base_url(request)
    entries: list[dict[str, Any]] = []
    for version in page.versions:
        entry: dict[str, Any] = {"fullUrl": f"{base}/{version.resource_type}/{version.id}"}
        if version.body is not None:
            entry["resource"] = _raw(version)
        method = version.method if version.method in ("POST", "PUT", "DELETE") else "PUT"
        entry["request"] = {
            "method": method,
            "url": version.resource_type
            if method == "POST"
            else f"{version.resource_type}/{version.id}",
        }
        status = {"POST": "201 Created", "DELETE": "204 No Content"}.get(method, "200 OK")
        entry["response"] = {
            "status": status,
            "etag": version.etag,
            "lastModified": version.last_updated.isoformat().replace("+00:00", "Z"),
        }
        entries.append(entry)
    self_url = str(request.url)
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "history"}
    if page.total is not None:
        bundle["total"] = page.total
    links = [{"relation": "self", "url": self_url}]
    if page.next_cursor is not None:
        params = [(k, v) for k, v in request.query_params.multi_items() if k != "_cursor"]
        params.append(("_cursor", str(page.next_cursor)))
        query = "&".join(f"{k}={_quote(v)}" for k, v in params)
        links.append({"relation": "next", "url": f"{str(request.url).split('?', 1)[0]}?{query}"})
    bundle["link"] = links
    bundle["entry"] = entries
    return bundle


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def _raw(version: StoredVersion) -> Any:
    """The stored bytes, embedded in a Bundle as they are (no parse, no re-serialisation)."""
    assert version.body is not None
    return orjson.Fragment(version.body)


# Blind-index matches are confirmed against the sealed bodies before paging, so pages and
# totals are exact; this bounds how many candidates one search may confirm.
MAX_CANDIDATES = 10_000


@dataclass
class SearchPage:
    matches: list[StoredVersion]
    total: int
    unknown_params: list[str]
    included: list[StoredVersion] = field(default_factory=list)
    # When more pages follow: the whole match list, to freeze for the paging links.
    snapshot_ids: list[str] | None = None


def _confirmed_search(
    store: SqlResourceStore,
    resource_type: str,
    query: list[tuple[str, str]],
    count: int,
    offset: int,
    strict: bool,
    compartment: str | None = None,
) -> SearchPage:
    """Search with blind-indexed parameters: take every candidate (in result order), keep
    those whose unsealed body really matches, then page over the true matches."""
    result = store.search(
        resource_type,
        [*query, ("_count", str(MAX_CANDIDATES)), ("_offset", "0")],
        strict=strict,
        patient_compartment=compartment,
    )
    if result.total > MAX_CANDIDATES:
        raise BadRequest(
            f"the search matches more than {MAX_CANDIDATES} candidates; narrow it down"
        )
    confirmed = [
        v
        for v in store.read_many(resource_type, result.ids, action="search")
        if v.body is not None and confirm_candidate(resource_type, orjson.loads(v.body), query)
    ]
    page = SearchPage(confirmed[offset : offset + count], len(confirmed), result.unknown_params)
    if offset == 0 and 0 < count < len(confirmed):
        page.snapshot_ids = [v.id for v in confirmed]
    return page


def _confirmed(
    store: SqlResourceStore, resource_type: str, ids: list[str], query: list[tuple[str, str]]
) -> list[StoredVersion]:
    """Current versions of ``ids``; for blind-indexed criteria only the true matches.

    Blind tokens are candidates: at the default 32 bits a false one is about one lookup in
    four thousand at a million distinct values, so pages are taken over candidates and a rare
    false one makes a page one short; ``_total=accurate`` confirms every candidate first."""
    versions = store.read_many(resource_type, ids, action="search")
    if not blind_params(resource_type, query):
        return versions
    return [
        v
        for v in versions
        if v.body is not None and confirm_candidate(resource_type, orjson.loads(v.body), query)
    ]


def definitions_known(resource_type: str) -> bool:
    return load_definitions().is_resource_type(resource_type)


def _shaped(version: StoredVersion, shaping: Shaping) -> Any:
    """The resource as the Bundle entry carries it: the stored bytes untouched unless
    _summary/_elements ask for a subset."""
    if shaping.whole:
        return _raw(version)
    assert version.body is not None
    shaped: dict[str, Any] = shaping.apply(jsonio.loads(version.body))
    return shaped


def _history_params(request: Request) -> tuple[datetime | None, int, int | None]:
    params = request.query_params
    settings = _ctx(request).settings
    since: datetime | None = None
    if "_since" in params:
        since = _parse_instant(params["_since"], "_since")
    count = settings.default_page_size
    if "_count" in params:
        raw = params["_count"]
        if not raw.isdigit() or int(raw) < 1:
            raise BadRequest(f"_count={raw!r} must be a positive integer")
        count = min(int(raw), settings.max_page_size)
    cursor: int | None = None
    if "_cursor" in params:
        raw = params["_cursor"]
        if not raw.isdigit():
            raise BadRequest("_cursor is not a paging cursor this server issued")
        cursor = int(raw)
    return since, count, cursor


def _parse_instant(value: str, name: str) -> datetime:
    text = value.strip().replace(" ", "+")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(
            f"{name}={value!r} is not a FHIR instant such as 2024-01-31T12:00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise BadRequest(f"{name}={value!r} needs a time zone")
    return moment


def build_public_router() -> APIRouter:
    """The one FHIR route anyone may call (SECURITY B1): what the server supports."""
    router = APIRouter(tags=["FHIR R4"])

    @router.get("/metadata", summary="CapabilityStatement")
    async def metadata(request: Request) -> Response:
        negotiate(request)
        return fhir_response(capability_statement(base_url(request)), pretty=is_pretty(request))

    return router


def build_router(*, include_in_schema: bool = True) -> APIRouter:
    # Every route here needs a verified caller before it reads a byte of the body (B1).
    protected = APIRouter(
        tags=["FHIR R4"],
        include_in_schema=include_in_schema,
        dependencies=[Depends(current_principal)],
    )

    @protected.post("", summary="batch or transaction Bundle")
    @protected.post("/", include_in_schema=False)
    async def batch_or_transaction(request: Request) -> Response:
        negotiate(request)
        body = await _json_body(request)
        base = base_url(request)
        settings = _ctx(request).settings
        bundles.check_shape(body, settings.max_bundle_entries)
        if body.get("type") == "transaction":
            result = await _in_store(
                request, True, lambda store: bundles.transaction(store, body, base)
            )
        else:
            ctx = _ctx(request)

            def run_batch() -> dict[str, Any]:
                guard = request_guard(request, write=True)
                return bundles.batch(lambda write: ctx.store(write=write, guard=guard), body, base)

            result = await run_in_threadpool(run_batch)
        return fhir_response(result, pretty=is_pretty(request))

    @protected.get("/_history", summary="system history")
    async def system_history(request: Request) -> Response:
        negotiate(request)
        since, count, cursor = _history_params(request)
        page = await _in_store(
            request, False, lambda s: s.history(None, None, since=since, count=count, cursor=cursor)
        )
        return fhir_response(_history_bundle(request, page), pretty=is_pretty(request))

    @protected.get("/" + TYPE_PATH + "/_history", summary="type history")
    async def type_history(request: Request, resource_type: str) -> Response:
        negotiate(request)
        _check_type_syntax(resource_type)
        since, count, cursor = _history_params(request)
        page = await _in_store(
            request,
            False,
            lambda s: s.history(resource_type, None, since=since, count=count, cursor=cursor),
        )
        return fhir_response(_history_bundle(request, page), pretty=is_pretty(request))

    @protected.get("/Patient/$everything", summary="Patient $everything (all patients)")
    async def everything_all(request: Request) -> Response:
        negotiate(request)
        return await _everything(request, None)

    @protected.get("/Patient/{patient_id}/$everything", summary="Patient $everything")
    async def everything_one(request: Request, patient_id: str) -> Response:
        negotiate(request)
        _check_id_syntax("Patient", patient_id)
        return await _everything(request, patient_id)

    async def _everything(request: Request, patient_id: str | None) -> Response:
        """Patient/$everything (http://hl7.org/fhir/R4/patient-operation-everything.html):
        ``_since``, ``_type`` and ``_count`` with stable keyset paging."""
        settings = _ctx(request).settings
        params = request.query_params
        since = _parse_instant(params["_since"], "_since") if "_since" in params else None
        types: list[str] | None = None
        if "_type" in params:
            types = [t.strip() for v in params.getlist("_type") for t in v.split(",") if t.strip()]
            for name in types:
                if not definitions_known(name):
                    raise BadRequest(f"_type: {name!r} is not a resource type")
        count = settings.default_page_size
        if "_count" in params:
            raw = params["_count"]
            if not raw.isdigit() or int(raw) < 1:
                raise BadRequest(f"_count={raw!r} must be a positive integer")
            count = min(int(raw), settings.max_page_size)
        cursor = params.get("_cursor")
        if cursor is not None and (
            "/" not in cursor or not ID_PATTERN.fullmatch(cursor.partition("/")[2])
        ):
            raise BadRequest("_cursor is not a paging cursor this server issued")

        def work(store: SqlResourceStore) -> CompartmentPage:
            if patient_id is not None:
                store.read("Patient", patient_id)  # 404/410 for an unknown or deleted patient
            return everything_page(
                store, patient_id, since=since, types=types, count=count, cursor=cursor
            )

        page = await _in_store(request, False, work)
        base = base_url(request)
        self_url = str(request.url)
        links = [{"relation": "self", "url": self_url}]
        if page.next_cursor is not None:
            items = [(k, v) for k, v in params.multi_items() if k != "_cursor"]
            items.append(("_cursor", page.next_cursor))
            query = "&".join(f"{k}={_quote(v)}" for k, v in items)
            links.append({"relation": "next", "url": f"{self_url.split('?', 1)[0]}?{query}"})
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": links,
            "entry": [
                {
                    "fullUrl": f"{base}/{v.resource_type}/{v.id}",
                    "resource": _raw(v),
                    "search": {"mode": "match"},
                }
                for v in page.versions
            ],
        }
        return fhir_response(bundle, pretty=is_pretty(request))

    # Read is the hottest route and matching is linear: it comes first after the routes
    # whose literal segments it would otherwise swallow (_history, $everything).
    @protected.get("/" + TYPE_PATH + "/{resource_id}", summary="read")
    async def read(request: Request, resource_type: str, resource_id: str) -> Response:
        return await read_endpoint(request)

    @protected.post("/" + TYPE_PATH, summary="create (If-None-Exist for conditional create)")
    async def create(request: Request, resource_type: str) -> Response:
        negotiate(request)
        _check_type_syntax(resource_type)
        body = await _json_body(request)
        if_none_exist = request.headers.get("if-none-exist")

        def work(store: SqlResourceStore) -> Any:
            if if_none_exist is not None:
                return store.conditional_create(resource_type, body, if_none_exist)
            return store.create(resource_type, body)

        result = await _in_store(request, True, work)
        if result.existing:
            return write_response(
                request,
                result.version,
                status=200,
                base=base_url(request),
                message="matched an existing resource",
            )
        return write_response(
            request,
            result.version,
            status=201,
            base=base_url(request),
            message=f"created {result.version.location}",
        )

    @protected.get("/" + TYPE_PATH, summary="search")
    async def search_type(request: Request, resource_type: str) -> Response:
        negotiate(request)
        _check_type_syntax(resource_type)
        params = list(request.query_params.multi_items())
        return await _search(request, resource_type, params)

    @protected.post("/" + TYPE_PATH + "/_search", summary="search (form POST)")
    async def search_post(request: Request, resource_type: str) -> Response:
        negotiate(request)
        _check_type_syntax(resource_type)
        require_content_type(request, ("application/x-www-form-urlencoded",))
        data = await read_body(request, _ctx(request).settings.max_body_bytes)
        try:
            form = parse_qsl(data.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("the _search body is not a valid form") from None
        params = list(request.query_params.multi_items()) + form
        return await _search(request, resource_type, params)

    async def _search(
        request: Request,
        resource_type: str,
        params: list[tuple[str, str]],
        compartment: str | None = None,
    ) -> Response:
        settings = _ctx(request).settings
        strict = prefer_strict(request)
        count = settings.default_page_size
        offset = 0
        total_mode = "accurate"
        snapshot: str | None = None
        query: list[tuple[str, str]] = []
        for name, value in params:
            if name in ("_format", "_pretty", "_summary", "_elements"):
                continue
            if name == "_count":
                if not value.isdigit():
                    raise BadRequest(f"_count={value!r} must be a non-negative integer")
                count = min(int(value), settings.max_page_size)
            elif name == "_offset":
                if not value.isdigit():
                    raise BadRequest(f"_offset={value!r} must be a non-negative integer")
                offset = int(value)
            elif name == "_snapshot":
                if not ID_PATTERN.fullmatch(value):
                    raise BadRequest("_snapshot is not a paging link this server issued")
                snapshot = value
            elif name == "_total":
                if value not in ("none", "estimate", "accurate"):
                    raise BadRequest(f"_total={value!r} is not one of none, estimate, accurate")
                total_mode = "accurate_requested" if value == "accurate" else value
            else:
                query.append((name, value))
        shaping = shaping_from(resource_type, params)
        if shaping.summary == "count":
            count = 0

        include_specs, revinclude_specs = parse_include_params(query)

        def run_search(store: SqlResourceStore, page_count: int, page_offset: int) -> Any:
            return store.search(
                resource_type,
                [*query, ("_count", str(page_count)), ("_offset", str(page_offset))],
                strict=strict,
                patient_compartment=compartment,
            )

        def work(store: SqlResourceStore) -> SearchPage:
            store.check_type(resource_type)
            if compartment is not None:
                store.read("Patient", compartment)  # 404/410 for an unknown or deleted patient
            if snapshot is not None:
                ids, total = store.load_snapshot(resource_type, snapshot)
                if offset < len(ids) or total <= len(ids):
                    page = SearchPage(
                        _confirmed(store, resource_type, ids[offset : offset + count], query),
                        total,
                        [],
                    )
                else:  # past what the snapshot kept: the live result, unfrozen
                    result = run_search(store, count, offset)
                    page = SearchPage(
                        _confirmed(store, resource_type, result.ids, query),
                        total,
                        result.unknown_params,
                    )
            elif blind_params(resource_type, query) and total_mode == "accurate_requested":
                page = _confirmed_search(
                    store, resource_type, query, count, offset, strict, compartment
                )
            elif offset == 0 and count > 0:
                # First page: one pass fetches the match list (up to the snapshot cap), the
                # page is its head, and the rest is frozen for the paging links.
                result = run_search(store, MAX_CANDIDATES, 0)
                page = SearchPage(
                    _confirmed(store, resource_type, result.ids[:count], query),
                    result.total,
                    result.unknown_params,
                )
                if count < result.total:
                    page.snapshot_ids = result.ids
            else:
                result = run_search(store, count, offset)
                page = SearchPage(
                    _confirmed(store, resource_type, result.ids, query),
                    result.total,
                    result.unknown_params,
                )
            if include_specs or revinclude_specs:
                page.included.extend(
                    store.included(
                        resource_type,
                        [v.id for v in page.matches],
                        include_specs,
                        revinclude_specs,
                        max_results=settings.max_page_size,
                    )
                )
            return page

        page = await _in_store(request, False, work)
        if page.snapshot_ids is not None:
            ids = page.snapshot_ids
            snapshot = await _in_store(
                request, True, lambda s: s.save_snapshot(resource_type, ids, page.total)
            )
        bundle = _searchset(request, page, count, offset, shaping, snapshot)
        if total_mode == "none" and shaping.summary != "count":
            bundle.pop("total", None)
        return fhir_response(bundle, pretty=is_pretty(request))

    def _searchset(
        request: Request,
        page: SearchPage,
        count: int,
        offset: int,
        shaping: Shaping,
        snapshot: str | None,
    ) -> dict[str, Any]:
        """A searchset Bundle (http://hl7.org/fhir/R4/bundle.html#searchset) with paging links."""
        base = base_url(request)
        page_url = str(request.url).split("?", 1)[0]
        kept = [
            (k, v)
            for k, v in request.query_params.multi_items()
            if k not in ("_offset", "_count", "_snapshot")
        ]
        frozen = [("_snapshot", snapshot)] if snapshot else []

        def link(new_offset: int) -> str:
            items = [*kept, *frozen, ("_count", str(count)), ("_offset", str(new_offset))]
            return page_url + "?" + "&".join(f"{k}={_quote(v)}" for k, v in items)

        links = [{"relation": "self", "url": link(offset)}]
        if count and offset + count < page.total:
            links.append({"relation": "next", "url": link(offset + count)})
        if count and offset > 0:
            links.append({"relation": "previous", "url": link(max(0, offset - count))})
        entries: list[dict[str, Any]] = [
            {
                "fullUrl": f"{base}/{v.resource_type}/{v.id}",
                "resource": _shaped(v, shaping),
                "search": {"mode": mode},
            }
            for mode, group in (("match", page.matches), ("include", page.included))
            for v in group
        ]
        if page.unknown_params:
            entries.append(
                {
                    "resource": information(
                        "parameters not supported and ignored: " + ", ".join(page.unknown_params)
                    ),
                    "search": {"mode": "outcome"},
                }
            )
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": page.total,
            "link": links,
            "entry": entries,
        }

    @protected.put("/" + TYPE_PATH, summary="conditional update")
    async def conditional_update(request: Request, resource_type: str) -> Response:
        negotiate(request)
        _check_type_syntax(resource_type)
        body = await _json_body(request)
        query = request.url.query
        if_match = request.headers.get("if-match")
        result = await _in_store(
            request,
            True,
            lambda s: s.conditional_update(resource_type, query, body, if_match=if_match),
        )
        return write_response(
            request,
            result.version,
            status=201 if result.created else 200,
            base=base_url(request),
            message=f"{'created' if result.created else 'updated'} {result.version.location}",
        )

    @protected.delete("/" + TYPE_PATH, summary="conditional delete")
    async def conditional_delete(request: Request, resource_type: str) -> Response:
        negotiate(request)
        _check_type_syntax(resource_type)
        query = request.url.query
        deleted = await _in_store(
            request, True, lambda s: s.conditional_delete(resource_type, query)
        )
        return fhir_response(information(f"deleted {deleted} resource(s)"), status=200)

    @protected.put("/" + TYPE_PATH + "/{resource_id}", summary="update (create-on-update allowed)")
    async def update(request: Request, resource_type: str, resource_id: str) -> Response:
        negotiate(request)
        _check_type_syntax(resource_type)
        body = await _json_body(request)
        if_match = request.headers.get("if-match")
        result = await _in_store(
            request, True, lambda s: s.update(resource_type, resource_id, body, if_match=if_match)
        )
        return write_response(
            request,
            result.version,
            status=201 if result.created else 200,
            base=base_url(request),
            message=f"{'created' if result.created else 'updated'} {result.version.location}",
        )

    @protected.patch("/" + TYPE_PATH + "/{resource_id}", summary="patch (JSON Patch)")
    async def patch(request: Request, resource_type: str, resource_id: str) -> Response:
        negotiate(request)
        _check_type_syntax(resource_type)
        _check_id_syntax(resource_type, resource_id)
        require_content_type(request, (JSON_PATCH,))
        settings = _ctx(request).settings
        operations = parse_json_body(
            await read_body(request, settings.max_body_bytes), settings.max_json_depth
        )
        if_match = request.headers.get("if-match")
        result = await _in_store(
            request,
            True,
            lambda s: s.patch(resource_type, resource_id, operations, if_match=if_match),
        )
        return write_response(
            request,
            result.version,
            status=200,
            base=base_url(request),
            message=f"patched {result.version.location}",
        )

    @protected.delete("/" + TYPE_PATH + "/{resource_id}", summary="delete (logical)")
    async def delete(request: Request, resource_type: str, resource_id: str) -> Response:
        negotiate(request)
        _check_type_syntax(resource_type)
        _check_id_syntax(resource_type, resource_id)
        version = await _in_store(request, True, lambda s: s.delete(resource_type, resource_id))
        headers = {"ETag": version.etag} if version is not None else {}
        return Response(status_code=204, headers=headers)

    @protected.get("/" + TYPE_PATH + "/{resource_id}/_history", summary="instance history")
    async def instance_history(request: Request, resource_type: str, resource_id: str) -> Response:
        negotiate(request)
        _check_type_syntax(resource_type)
        _check_id_syntax(resource_type, resource_id)
        since, count, cursor = _history_params(request)
        page = await _in_store(
            request,
            False,
            lambda s: s.history(
                resource_type, resource_id, since=since, count=count, cursor=cursor
            ),
        )
        return fhir_response(_history_bundle(request, page), pretty=is_pretty(request))

    # After instance history, which also has three segments.
    @protected.get("/Patient/{patient_id}/{resource_type}", summary="Patient compartment search")
    async def compartment_search(request: Request, patient_id: str, resource_type: str) -> Response:
        negotiate(request)
        _check_id_syntax("Patient", patient_id)
        _check_type_syntax(resource_type)
        if (
            resource_type != "Patient"
            and resource_type not in load_definitions().patient_compartment
        ):
            raise BadRequest(f"{resource_type} is not in the Patient compartment")
        return await _search(
            request, resource_type, list(request.query_params.multi_items()), compartment=patient_id
        )

    @protected.get("/" + TYPE_PATH + "/{resource_id}/_history/{version_id}", summary="vread")
    async def vread(
        request: Request, resource_type: str, resource_id: str, version_id: str
    ) -> Response:
        negotiate(request)
        _check_type_syntax(resource_type)
        _check_id_syntax(resource_type, resource_id)
        version = await _in_store(
            request, False, lambda s: s.vread(resource_type, resource_id, version_id)
        )
        return fhir_response(
            version.body, headers=version_headers(version), pretty=is_pretty(request)
        )

    return protected
