"""OAuth 2.0 plumbing shared by the SMART endpoints: form bodies, RFC 6749 error answers and
the URLs this server answers on."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import JSONResponse

from carechart.auth.config import context_of
from carechart.fhir.http import read_body

FORM = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 64 * 1024
MAX_FORM_FIELDS = 50
MAX_VALUE_LENGTH = 16_384
FHIR_PREFIXES = ("/fhir", "/api/v1/fhir")
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class FormError(ValueError):
    """A body that is not one well-formed form (RFC 6749 3.2: no parameter twice)."""


def _pairs_to_dict(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    result: dict[str, str] = {}
    for name, value in pairs:
        if name in result:
            raise FormError("a parameter is given more than once")
        if len(value) > MAX_VALUE_LENGTH:
            raise FormError("a parameter value is too long")
        result[name] = value
    return result


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as a dict; :class:`FormError` when it is
    not one; 413 past :data:`MAX_FORM_BYTES`."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != FORM:
        raise FormError(f"the body must be {FORM}")
    data = await read_body(request, MAX_FORM_BYTES)
    try:
        text = data.decode("ascii")
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise FormError("the body is not a well-formed form") from None
    return _pairs_to_dict(pairs)


def query_dict(request: Request) -> dict[str, str]:
    """The query parameters, each at most once."""
    items = request.query_params.multi_items()
    if len(items) > MAX_FORM_FIELDS:
        raise FormError("too many parameters")
    return _pairs_to_dict(items)


def oauth_error(
    error: str, description: str, *, status: int = 400, headers: dict[str, str] | None = None
) -> JSONResponse:
    """RFC 6749 5.2. The description is ours, never the caller's input echoed back."""
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status,
        headers={**NO_STORE, **(headers or {})},
    )


def oauth_json(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, headers=dict(NO_STORE))


def server_root(request: Request) -> str:
    """The public root of this server (``CARECHART_BASE_URL``, else the request's)."""
    configured = context_of(request.app).settings.base_url
    return (configured or str(request.base_url)).rstrip("/")


def fhir_bases(request: Request) -> frozenset[str]:
    """The FHIR base URLs an app may name as ``aud`` (the base and its alias)."""
    root = server_root(request)
    return frozenset(root + prefix for prefix in FHIR_PREFIXES)


def endpoint(request: Request, path: str) -> str:
    return server_root(request) + path


def with_query(uri: str, params: dict[str, str]) -> str:
    """``uri`` with ``params`` appended to its query (a registered redirect URI may have one)."""
    parts = urlsplit(uri)
    extra = urlencode(params)
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))
