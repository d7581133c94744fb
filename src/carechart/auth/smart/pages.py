"""The sign-in page of the authorization endpoint and its error page (SECURITY B10).

Every value that reaches the page is escaped with :func:`html.escape` (quotes included, since
values land in attributes); nothing is ever put in a script, URL or style context. The page
may not be framed (clickjacking) and loads nothing: the content security policy allows no
source at all, inline styles aside, and forms may post only to us (and, for the redirect that
follows a sign-in, to the app's registered redirect origin).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from html import escape
from urllib.parse import urlsplit

from starlette.responses import HTMLResponse

BASE_CSP = "default-src 'none'; form-action 'self'; style-src 'unsafe-inline'"
_ORIGIN = re.compile(r"^[a-z][a-z0-9+.\-]*://[A-Za-z0-9.\-]+(:[0-9]{1,5})?$")
_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem}"
    "label{display:block;margin-top:1rem}input{width:100%;padding:.4rem;box-sizing:border-box}"
    "button{margin-top:1.5rem;padding:.5rem 1.5rem}.error{color:#a00}code{font-size:.85rem}"
)


def redirect_origin(redirect_uri: str) -> str | None:
    """The origin of a (registered, validated) redirect URI, for ``form-action``; None when it
    does not look like a plain origin (then the policy names none)."""
    parts = urlsplit(redirect_uri)
    origin = f"{parts.scheme}://{parts.netloc}"
    return origin if _ORIGIN.fullmatch(origin) else None


def security_headers(form_origin: str | None = None) -> dict[str, str]:
    csp = (
        BASE_CSP
        if form_origin is None
        else BASE_CSP.replace("form-action 'self'", f"form-action 'self' {form_origin}")
    )
    return {
        "Content-Security-Policy": csp,
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def _page(title: str, body: str, *, status: int, headers: dict[str, str]) -> HTMLResponse:
    document = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>\n"
    )
    return HTMLResponse(document, status_code=status, headers=headers)


def error_page(
    message: str, *, status: int = 400, headers: dict[str, str] | None = None
) -> HTMLResponse:
    """A refusal shown to the user, never a redirect (the app could not be trusted with it)."""
    body = f'<h1>Sign-in cannot continue</h1><p class="error">{escape(message)}</p>'
    return _page(
        "Carechart sign-in", body, status=status, headers={**security_headers(), **(headers or {})}
    )


def sign_in_page(
    *,
    client_name: str,
    scopes: Iterable[str],
    hidden: Mapping[str, str],
    ask_patient: bool,
    message: str | None = None,
    status: int = 200,
    form_origin: str | None = None,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    fields = "".join(
        f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'
        for name, value in hidden.items()
    )
    scope_items = "".join(f"<li><code>{escape(scope)}</code></li>" for scope in scopes)
    notice = f'<p class="error" role="alert">{escape(message)}</p>' if message else ""
    patient = (
        "<label>Patient id (staff: the patient to open the app for)"
        '<input name="patient" autocomplete="off" maxlength="64"></label>'
        if ask_patient
        else ""
    )
    body = (
        "<h1>Sign in to Carechart</h1>"
        f"<p><strong>{escape(client_name)}</strong> asks for access:</p><ul>{scope_items}</ul>"
        f"{notice}"
        f'<form method="post" action="/oauth2/authorize">{fields}'
        '<label>E-mail<input name="email" type="email" autocomplete="username" required'
        ' maxlength="254"></label>'
        '<label>Password<input name="password" type="password" autocomplete="current-password"'
        ' required maxlength="1024"></label>'
        '<label>Authentication code (if you use one)<input name="totp" inputmode="numeric"'
        ' autocomplete="one-time-code" maxlength="16"></label>'
        f"{patient}"
        '<button type="submit">Sign in and allow</button></form>'
    )
    return _page(
        "Carechart sign-in",
        body,
        status=status,
        headers={**security_headers(form_origin), **(headers or {})},
    )
