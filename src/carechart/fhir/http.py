"""HTTP details of the FHIR API: content negotiation, bodies, Prefer, and response shaping.

R4 http page sections: #mime-type (formats), #parameters (_format, _pretty), #ops (Prefer),
#versioning (ETag, Last-Modified), #create (Location).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from carechart import jsonio
from carechart.errors import BadRequest, NotAcceptable, PayloadTooLarge, UnsupportedMediaType
from carechart.fhir.model import StoredVersion, http_date
from carechart.fhir.outcome import information

FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
_JSON_TYPES = {FHIR_JSON, "application/json", "json", "text/json"}
_ACCEPT_ANY = {"*/*", "application/*", FHIR_JSON, "application/json", "text/json"}
_XML_OR_OTHER = {"xml", "text/xml", "application/xml", "application/fhir+xml", "ttl", "text/turtle"}


def _media_types(header: str) -> list[str]:
    types = []
    for part in header.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media:
            types.append(media)
    return types


def negotiate(request: Request) -> None:
    """Only FHIR JSON is served; _format overrides Accept (http.html#mime-type)."""
    fmt = request.query_params.get("_format")
    if fmt is not None:
        media = fmt.split(";", 1)[0].strip().lower()
        if media in _JSON_TYPES:
            return
        raise NotAcceptable(f"_format={fmt} is not supported; this server speaks {FHIR_JSON}")
    accept = request.headers.get("accept")
    if not accept:
        return
    types = _media_types(accept)
    if not types or any(media in _ACCEPT_ANY or media.endswith("+json") for media in types):
        return
    raise NotAcceptable(f"Accept {accept!r} cannot be satisfied; this server speaks {FHIR_JSON}")


def require_content_type(
    request: Request, allowed: tuple[str, ...] = (FHIR_JSON, "application/json")
) -> None:
    content_type = request.headers.get("content-type")
    if content_type is None:
        raise UnsupportedMediaType(f"a body needs a Content-Type: {' or '.join(allowed)}")
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in allowed:
        raise UnsupportedMediaType(
            f"Content-Type {media!r} is not supported here; use {' or '.join(allowed)}"
        )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("Content-Length is not a number")
        if int(declared) > limit:
            raise PayloadTooLarge(f"the body is larger than the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is larger than the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_body(data: bytes, max_depth: int) -> Any:
    if not data.strip():
        raise BadRequest("the request needs a JSON body")
    return jsonio.loads(data, max_depth=max_depth)


def is_pretty(request: Request) -> bool:
    return request.query_params.get("_pretty", "false").lower() == "true"


def prefer_return(request: Request) -> str:
    """Prefer: return=minimal | representation | OperationOutcome (http.html#ops)."""
    for part in request.headers.get("prefer", "").split(";"):
        for token in part.split(","):
            name, _, value = token.strip().partition("=")
            if name.strip().lower() == "return":
                value = value.strip().strip('"')
                if value in ("minimal", "representation", "OperationOutcome"):
                    return value
    return "representation"


def prefer_strict(request: Request) -> bool:
    return "handling=strict" in request.headers.get("prefer", "").replace(" ", "").lower()


def fhir_response(
    body: bytes | dict[str, Any] | None,
    *,
    status: int = 200,
    pretty: bool = False,
    headers: dict[str, str] | None = None,
) -> Response:
    if isinstance(body, dict):
        content: bytes = jsonio.dumps(body, pretty=pretty)
    elif body is not None and pretty:
        content = jsonio.dumps(jsonio.loads(body, max_depth=1_000), pretty=True)
    else:
        content = body or b""
    response = Response(
        content=content,
        status_code=status,
        media_type=f"{FHIR_JSON}; charset=utf-8" if body is not None else None,
        headers=headers,
    )
    return response


def version_headers(version: StoredVersion) -> dict[str, str]:
    return {"ETag": version.etag, "Last-Modified": http_date(version.last_updated)}


def write_response(
    request: Request, version: StoredVersion, *, status: int, base: str, message: str
) -> Response:
    """Shape a create/update/patch answer according to Prefer: return."""
    headers = version_headers(version)
    if status == 201:
        headers["Location"] = f"{base}/{version.location}"
    preference = prefer_return(request)
    if preference == "minimal":
        return fhir_response(None, status=status, headers=headers)
    if preference == "OperationOutcome":
        return fhir_response(
            information(message), status=status, headers=headers, pretty=is_pretty(request)
        )
    return fhir_response(version.body, status=status, headers=headers, pretty=is_pretty(request))
