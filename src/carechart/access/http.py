"""From an HTTP request to the policy point: who calls, in which territory (SECURITY B1, B8).

Every route that touches resources obtains its :class:`AccessGuard` here, so authentication,
the territory rule and the guard are the same for the FHIR API, bundles and the native API.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from starlette.requests import Request

from carechart.access.policy import AccessGuard
from carechart.audit.chain import AuditRecord
from carechart.auth.config import context_of
from carechart.auth.dependencies import client_info, current_principal
from carechart.auth.principal import Principal
from carechart.errors import BadRequest, NotFound, TerritoryMismatch

TERRITORY_HEADER = "territory-id"
_TERRITORY = re.compile(r"^[A-Za-z0-9_\-.]{1,64}$")


def territories_of(principal: Principal, default: str) -> tuple[str, ...]:
    """The territories a caller works in; the first is where its requests go by default."""
    return principal.territories or (default,)


def request_guard(request: Request, *, write: bool) -> AccessGuard:
    """The request's guard, built once: 401 without a valid token; a territory the caller
    does not work in is 403 TERRITORY_MISMATCH for writes and simply not found for reads,
    and either way the attempt is audited where the caller works."""
    cached = getattr(request.state, "access_guard", None)
    if isinstance(cached, AccessGuard):
        return cached
    principal = current_principal(request)
    client = client_info(request)
    territory = request_territory(request, principal, write=write)
    guard = AccessGuard(principal, territory, client=client, now=datetime.now(UTC))
    request.state.access_guard = guard
    return guard


def request_territory(request: Request, principal: Principal, *, write: bool) -> str:
    """The territory (the data tenant) a request addresses: the ``Territory-Id`` header, else
    the caller's first territory. One the caller does not work in is refused (and audited)."""
    ctx = context_of(request.app)
    client = client_info(request)
    territories = territories_of(principal, ctx.settings.default_tenant)
    header = request.headers.get(TERRITORY_HEADER)
    if header is not None and not _TERRITORY.fullmatch(header):
        raise BadRequest("the Territory-Id header must be a territory code (letters, digits, -_.)")
    territory = territories[0] if header is None else header
    if territory not in territories:
        # The foreign territory is never opened (not even its key is touched).
        ctx.audit(
            territories[0],
            [
                AuditRecord(
                    action="territory",
                    outcome="denied",
                    user_id=principal.user_id,
                    client_id=principal.client_id,
                    role=principal.role.value,
                    source_ip=client.source_ip,
                    user_agent=client.user_agent,
                    correlation_id=client.correlation_id,
                )
            ],
        )
        if write:
            raise TerritoryMismatch("you do not work in the territory this request names")
        raise NotFound("not known in this territory")
    return territory
