"""The audit trail as FHIR R4 AuditEvent resources, read-only (http://hl7.org/fhir/R4/auditevent.html;
SECURITY C6; ONC 170.315(d)(2), (d)(3); IHE BALP's use of DICOM PS3.15 A.5 event codes).

Mapping of one stored record (identifiers only, no PHI):

- ``type``: DICOM (http://dicom.nema.org/resources/ontology/DCM) 110110 Patient Record for
  data access, 110114 User Authentication for sign-in events, 110101 Audit Log Used for reads
  of this trail, 110113 Security Alert for break-glass and security changes, 110106 Export,
  110107 Import; ``subtype``: the restful-interaction code of a FHIR interaction, or the DICOM
  code of the security event (110122 Login, 110123 Logout, 110127 Emergency Override ...).
- ``action``: C/R/U/D/E (auditevent.html#AuditEvent.action); ``outcome``: 0 success,
  4 denied (minor failure), 8 failure (serious failure).
- ``agent``: the user by ``who.identifier`` (``urn:carechart:user``), role as text, the
  network address; the client application as a second agent when one is recorded.
- ``entity``: the resource acted on and the patient (object-role 1 Patient).
- ``id`` is the record's ``chain_index`` in the tenant's chain.

Search (search.html; AuditEvent search parameters): ``date`` (eq/ge/gt/le/lt/sa/eb on
``recorded``), ``patient``, ``agent`` (user id), ``action``, ``outcome``, ``type``, ``subtype``,
``_count``, ``_sort`` (``date``/``-date``), paged by an opaque ``_cursor``. Searching is
strict (search.html#errors): an unknown parameter or modifier is a 400, never ignored, since
an ignored filter would widen an audit report without telling the auditor.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote, urlencode

from fastapi import APIRouter, Depends
from sqlalchemy.engine import Connection
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from carechart.audit.chain import StoredEvent, timestamp_text
from carechart.audit.endpoints import audited_read, auditor_principal, scoped_patient
from carechart.audit.reports import (
    MAX_LIMIT,
    Classifier,
    EventFilters,
    EventPage,
    Order,
    Rule,
    event_at,
    query_events,
)
from carechart.auth.config import context_of
from carechart.auth.principal import Principal
from carechart.errors import BadRequest, NotFound
from carechart.fhir.definitions import load_definitions
from carechart.fhir.http import (
    fhir_response,
    is_pretty,
    negotiate,
    read_body,
    require_content_type,
)
from carechart.fhir.model import ID_PATTERN
from carechart.fhir.router import base_url
from carechart.fhir.search.params import parse_date_value, parse_token, split_escaped, split_prefix

__all__ = ["AuditSearch", "fhir_router", "parse_search", "search_bundle", "to_fhir"]

DCM = "http://dicom.nema.org/resources/ontology/DCM"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
ACTION_SYSTEM = "http://hl7.org/fhir/audit-event-action"
OUTCOME_SYSTEM = "http://hl7.org/fhir/audit-event-outcome"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
USER_SYSTEM = "urn:carechart:user"
CLIENT_SYSTEM = "urn:carechart:client"
OBSERVER = "Carechart"

# Identity events: what the identity service records around signing in.
AUTHENTICATION_ACTIONS = frozenset({"login", "logout", "token", "mfa", "mfa-challenge", "lockout"})
SECURITY_ACTIONS = frozenset({"break-glass", "configure", "password-change", "mfa-enroll"})
ACCOUNT_RESOURCE = "UserAccount"

# (code, display) of each DICOM event type used, by precedence.
TYPE_DISPLAY = {
    "110101": "Audit Log Used",
    "110106": "Export",
    "110107": "Import",
    "110110": "Patient Record",
    "110113": "Security Alert",
    "110114": "User Authentication",
}
EVENT_TYPE = Classifier(
    "fhir-type",
    (
        Rule("110101", resource_types=frozenset({"AuditEvent"})),
        Rule("110114", actions=AUTHENTICATION_ACTIONS),
        Rule("110113", actions=SECURITY_ACTIONS),
        Rule("110113", resource_types=frozenset({ACCOUNT_RESOURCE})),
        Rule("110106", actions=frozenset({"export"})),
        Rule("110107", actions=frozenset({"ingest", "import"})),
    ),
    default="110110",
)

# code -> (system, display); codes do not collide between the two systems.
SUBTYPE_CODING = {
    "read": (RESTFUL, "read"),
    "vread": (RESTFUL, "vread"),
    "create": (RESTFUL, "create"),
    "update": (RESTFUL, "update"),
    "patch": (RESTFUL, "patch"),
    "delete": (RESTFUL, "delete"),
    "search-type": (RESTFUL, "search type"),
    "history-instance": (RESTFUL, "history instance"),
    "110122": (DCM, "Login"),
    "110123": (DCM, "Logout"),
    "110127": (DCM, "Emergency Override Started"),
    "110129": (DCM, "Security Configuration"),
    "110137": (DCM, "User Security Attributes Changed"),
}
_SUBTYPE_OF_ACTION = {
    "read": "read",
    "vread": "vread",
    "create": "create",
    "update": "update",
    "patch": "patch",
    "delete": "delete",
    "search": "search-type",
    "history": "history-instance",
    "login": "110122",
    "logout": "110123",
    "break-glass": "110127",
    "configure": "110129",
    "password-change": "110137",
    "mfa-enroll": "110137",
}
EVENT_SUBTYPE = Classifier(
    "fhir-subtype",
    tuple(Rule(code, actions=frozenset({action})) for action, code in _SUBTYPE_OF_ACTION.items()),
)

# auditevent.html#AuditEvent.action: reads include disclosures (export, print); imports create.
EVENT_ACTION = Classifier(
    "fhir-action",
    (
        Rule("C", actions=frozenset({"create", "ingest", "import"})),
        Rule("R", actions=frozenset({"read", "vread", "search", "history", "export", "print"})),
        Rule("U", actions=frozenset({"update", "patch"})),
        Rule("D", actions=frozenset({"delete"})),
    ),
    default="E",
)
ACTION_CODES = frozenset({"C", "R", "U", "D", "E"})

OUTCOME_CODE = {"success": "0", "denied": "4", "failure": "8"}
OUTCOMES_OF_CODE = {"0": {"success"}, "4": {"denied"}, "8": {"failure"}, "12": set[str]()}
OUTCOME_TEXT = {"denied": "access denied", "failure": "the action failed"}


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return coding


def _network(address: str) -> dict[str, str]:
    try:
        ipaddress.ip_address(address)
        kind = "2"  # IP address
    except ValueError:
        kind = "1"  # machine name
    return {"address": address, "type": kind}


def _agents(event: StoredEvent) -> list[dict[str, Any]]:
    record = event.record
    network = _network(record.source_ip) if record.source_ip else None
    agents: list[dict[str, Any]] = []
    if record.user_id is not None:
        user: dict[str, Any] = {
            "who": {"identifier": {"system": USER_SYSTEM, "value": record.user_id}},
            "requestor": True,
        }
        if record.role:
            user["role"] = [{"text": record.role}]
        if network:
            user["network"] = network
        agents.append(user)
    if record.client_id is not None:
        client: dict[str, Any] = {
            "type": {"coding": [_coding(DCM, "110150", "Application")]},
            "who": {"identifier": {"system": CLIENT_SYSTEM, "value": record.client_id}},
            # A client acting for itself is the requestor; one acting for a user is not.
            "requestor": record.user_id is None,
        }
        if record.user_id is None and record.role:
            client["role"] = [{"text": record.role}]
        if network and record.user_id is None:
            client["network"] = network
        agents.append(client)
    if not agents:
        # A refused sign-in for an unknown account: somebody asked, nobody was identified.
        anonymous: dict[str, Any] = {"who": {"display": "unidentified"}, "requestor": True}
        if network:
            anonymous["network"] = network
        agents.append(anonymous)
    return agents


def _what(resource_type: str, resource_id: str) -> dict[str, Any]:
    if load_definitions().is_resource_type(resource_type) and ID_PATTERN.fullmatch(resource_id):
        return {"reference": f"{resource_type}/{resource_id}"}
    # Not a FHIR resource (a user account): named, but not as a resolvable reference.
    system = USER_SYSTEM if resource_type == ACCOUNT_RESOURCE else f"urn:carechart:{resource_type}"
    return {"identifier": {"system": system, "value": resource_id}}


def _entities(event: StoredEvent) -> list[dict[str, Any]]:
    record = event.record
    patient = record.patient_id
    entities: list[dict[str, Any]] = []
    is_patient_itself = record.resource_type == "Patient" and record.resource_id == patient
    if record.resource_type and record.resource_id and not is_patient_itself:
        if record.resource_type == ACCOUNT_RESOURCE:
            role = _coding(OBJECT_ROLE, "11", "Security User Entity")
        else:
            role = _coding(OBJECT_ROLE, "4", "Domain Resource")
        entities.append(
            {
                "what": _what(record.resource_type, record.resource_id),
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
                "role": role,
            }
        )
    if patient:
        entity: dict[str, Any] = {
            "type": _coding(ENTITY_TYPE, "1", "Person"),
            "role": _coding(OBJECT_ROLE, "1", "Patient"),
        }
        if ID_PATTERN.fullmatch(patient):
            entity["what"] = {"reference": f"Patient/{patient}"}
        else:
            entity["what"] = {"identifier": {"system": "urn:carechart:patient", "value": patient}}
        entities.append(entity)
    return entities


def to_fhir(event: StoredEvent) -> dict[str, Any]:
    """One stored record as an R4 AuditEvent (auditevent.html#resource)."""
    record = event.record
    type_code = EVENT_TYPE.classify(record.action, record.resource_type)
    assert type_code is not None  # the classifier has a default
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(event.chain_index),
        "type": _coding(DCM, type_code, TYPE_DISPLAY[type_code]),
    }
    subtype = EVENT_SUBTYPE.classify(record.action, record.resource_type)
    if subtype is not None:
        system, display = SUBTYPE_CODING[subtype]
        resource["subtype"] = [_coding(system, subtype, display)]
    resource["action"] = EVENT_ACTION.classify(record.action, record.resource_type)
    resource["recorded"] = timestamp_text(event.recorded_at)
    resource["outcome"] = OUTCOME_CODE.get(record.outcome, "8")
    if record.outcome in OUTCOME_TEXT:
        resource["outcomeDesc"] = OUTCOME_TEXT[record.outcome]
    if record.purpose_of_use:
        resource["purposeOfEvent"] = [{"coding": [_coding(ACT_REASON, record.purpose_of_use)]}]
    resource["agent"] = _agents(event)
    resource["source"] = {
        "observer": {"display": OBSERVER},
        "type": [_coding(SOURCE_TYPE, "4", "Application Server")],
    }
    entities = _entities(event)
    if entities:
        resource["entity"] = entities
    return resource


# --- search ---------------------------------------------------------------------------------

SEARCH_PARAMETERS = frozenset({"date", "patient", "agent", "action", "outcome", "type", "subtype"})
RESULT_PARAMETERS = frozenset({"_count", "_sort", "_cursor", "_format", "_pretty"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class AuditSearch:
    filters: EventFilters
    count: int
    order: Order
    cursor: str | None
    # The parameters as given, minus the cursor: what the paging links repeat.
    params: tuple[tuple[str, str], ...]


def _or_values(name: str, value: str) -> list[str]:
    values = split_escaped(value, ",")
    if any(not v for v in values):
        raise BadRequest(f"search parameter {name}: empty value")
    return values


def _narrow(current: frozenset[str] | None, values: Iterable[str]) -> frozenset[str]:
    wanted = frozenset(values)
    return wanted if current is None else current & wanted


def _token_codes(name: str, value: str, systems: dict[str, str]) -> set[str]:
    """The codes an OR list of tokens asks for; ``systems`` maps each known code to its
    system. A code under another system is a valid token that matches nothing."""
    codes: set[str] = set()
    for text in _or_values(name, value):
        token = parse_token(name, text)
        if token.code is None or not token.code:
            raise BadRequest(f"search parameter {name}: a code is required")
        if token.system is None or token.system == systems.get(token.code):
            codes.add(token.code)
    return codes


def _patient_ids(value: str) -> set[str]:
    ids: set[str] = set()
    for text in _or_values("patient", value):
        kind, slash, rest = text.rpartition("/")
        # "Patient/123" or "123"; an absolute URL ends the same way.
        if slash and not (kind == "Patient" or kind.endswith("/Patient")):
            raise BadRequest("search parameter patient: refers to Patient only")
        patient = rest if slash else text
        if not ID_PATTERN.fullmatch(patient):
            raise BadRequest("search parameter patient: not a resource id")
        ids.add(patient)
    return ids


def _agent_ids(value: str) -> set[str]:
    ids = set(_or_values("agent", value))
    if any(len(i) > 128 for i in ids):
        raise BadRequest("search parameter agent: not a user id")
    return ids


def _date_bounds(value: str) -> tuple[datetime | None, datetime | None]:
    """search.html#date for a point in time (``recorded``): the bounds ``[since, until)``."""
    if len(split_escaped(value, ",")) != 1:
        raise BadRequest("search parameter date: one value per parameter (repeat it to AND)")
    # A '+' left unencoded in a query string arrives as a space.
    prefix, text = split_prefix(value.strip().replace(" ", "+"))
    found = parse_date_value("date", text)
    start = _EPOCH + timedelta(milliseconds=found.low)
    end = _EPOCH + timedelta(milliseconds=found.high + 1)
    if prefix == "eq":
        return start, end
    if prefix == "ge":
        return start, None
    if prefix in ("gt", "sa"):
        return end, None
    if prefix == "le":
        return None, end
    if prefix in ("lt", "eb"):
        return None, start
    raise BadRequest(f"search parameter date: prefix {prefix} is not supported here")


def _count(value: str, max_count: int) -> int:
    if not value.isdigit() or int(value) < 1:
        raise BadRequest("_count must be a positive integer")
    # search.html#count: a server may return fewer than asked.
    return min(int(value), max_count)


def parse_search(
    params: Sequence[tuple[str, str]], *, default_count: int = 50, max_count: int = MAX_LIMIT
) -> AuditSearch:
    """Check and translate AuditEvent search parameters; any problem is a 400 naming it."""
    filters = EventFilters()
    count = min(default_count, max_count)
    order: Order = "desc"
    cursor: str | None = None
    seen_sort = False
    for name, value in params:
        if name in RESULT_PARAMETERS:
            if name == "_count":
                count = _count(value, max_count)
            elif name == "_sort":
                if seen_sort or value not in ("date", "-date"):
                    raise BadRequest("_sort: AuditEvent sorts by date or -date only")
                seen_sort = True
                order = "asc" if value == "date" else "desc"
            elif name == "_cursor":
                if cursor is not None or not value:
                    raise BadRequest("_cursor is not a paging link this server issued")
                cursor = value
            continue
        base, colon, _modifier = name.partition(":")
        if base not in SEARCH_PARAMETERS:
            raise BadRequest(
                f"unknown search parameter {name[:40]!r} for AuditEvent; supported: "
                + ", ".join(sorted(SEARCH_PARAMETERS | {"_count", "_sort"}))
            )
        if colon:
            raise BadRequest(f"search parameter {base}: modifiers are not supported here")
        if not value:
            raise BadRequest(f"search parameter {base}: empty value")
        if base == "date":
            since, until = _date_bounds(value)
            if since is not None:
                filters = replace(
                    filters, since=since if filters.since is None else max(since, filters.since)
                )
            if until is not None:
                filters = replace(
                    filters, until=until if filters.until is None else min(until, filters.until)
                )
        elif base == "patient":
            filters = replace(
                filters, patient_ids=_narrow(filters.patient_ids, _patient_ids(value))
            )
        elif base == "agent":
            filters = replace(filters, user_ids=_narrow(filters.user_ids, _agent_ids(value)))
        elif base == "action":
            codes = _token_codes(base, value, dict.fromkeys(ACTION_CODES, ACTION_SYSTEM))
            if codes - ACTION_CODES:
                raise BadRequest("search parameter action: codes are C, R, U, D and E")
            filters = filters.narrowed_to_class(EVENT_ACTION, codes)
        elif base == "outcome":
            codes = _token_codes(base, value, dict.fromkeys(OUTCOMES_OF_CODE, OUTCOME_SYSTEM))
            if codes - OUTCOMES_OF_CODE.keys():
                raise BadRequest("search parameter outcome: codes are 0, 4, 8 and 12")
            outcomes = {o for code in codes for o in OUTCOMES_OF_CODE[code]}
            filters = replace(filters, outcomes=_narrow(filters.outcomes, outcomes))
        elif base == "type":
            codes = _token_codes(base, value, dict.fromkeys(TYPE_DISPLAY, DCM))
            filters = filters.narrowed_to_class(EVENT_TYPE, codes)
        else:
            systems = {code: system for code, (system, _) in SUBTYPE_CODING.items()}
            codes = _token_codes(base, value, systems)
            filters = filters.narrowed_to_class(EVENT_SUBTYPE, codes)
    kept = tuple((n, v) for n, v in params if n != "_cursor")
    return AuditSearch(filters, count, order, cursor, kept)


def _link(base: str, params: Iterable[tuple[str, str]]) -> str:
    query = urlencode(list(params), quote_via=quote)
    return f"{base}/AuditEvent" + (f"?{query}" if query else "")


def search_bundle(
    conn: Connection, tenant: str, search: AuditSearch, *, base: str
) -> dict[str, Any]:
    """A searchset Bundle of one page (bundle.html#searchset), with self and next links.

    ``base`` is the service base the client used (``.../fhir``)."""
    page: EventPage = query_events(
        conn, tenant, search.filters, limit=search.count, cursor=search.cursor, order=search.order
    )
    self_params = [*search.params]
    if search.cursor is not None:
        self_params.append(("_cursor", search.cursor))
    links = [{"relation": "self", "url": _link(base, self_params)}]
    if page.next_cursor is not None:
        links.append(
            {
                "relation": "next",
                "url": _link(base, [*search.params, ("_cursor", page.next_cursor)]),
            }
        )
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "link": links}
    if page.events:
        # bundle.html: an empty page has no entry array (empty arrays are not valid JSON FHIR).
        bundle["entry"] = [
            {
                "fullUrl": f"{base}/AuditEvent/{event.chain_index}",
                "resource": to_fhir(event),
                "search": {"mode": "match"},
            }
            for event in page.events
        ]
    return bundle


# --- routes ---------------------------------------------------------------------------------

fhir_router = APIRouter(prefix="/fhir", tags=["audit"])
Auditor = Annotated[Principal, Depends(auditor_principal)]
_MAX_CHAIN_INDEX = 2**63 - 1


def _search(request: Request, principal: Principal, params: list[tuple[str, str]]) -> Response:
    settings = context_of(request.app).settings
    search = parse_search(
        params,
        default_count=settings.default_page_size,
        max_count=min(settings.max_page_size, MAX_LIMIT),
    )
    base = base_url(request)
    bundle = audited_read(
        request,
        principal,
        lambda conn, tenant: search_bundle(conn, tenant, search, base=base),
        action="search",
        patient_id=scoped_patient(search.filters),
    )
    return fhir_response(bundle, pretty=is_pretty(request))


@fhir_router.get("/AuditEvent", summary="search AuditEvent (auditors only)")
async def search_audit_events(request: Request, principal: Auditor) -> Response:
    negotiate(request)
    params = list(request.query_params.multi_items())
    return await run_in_threadpool(_search, request, principal, params)


@fhir_router.post("/AuditEvent/_search", summary="search AuditEvent (form POST)")
async def search_audit_events_post(request: Request, principal: Auditor) -> Response:
    negotiate(request)
    require_content_type(request, ("application/x-www-form-urlencoded",))
    data = await read_body(request, context_of(request.app).settings.max_body_bytes)
    try:
        form = parse_qsl(data.decode("utf-8"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the _search body is not a valid form") from None
    params = list(request.query_params.multi_items()) + form
    return await run_in_threadpool(_search, request, principal, params)


def _read(request: Request, principal: Principal, event_id: str) -> Response:
    if not event_id.isdigit() or not 0 < int(event_id) <= _MAX_CHAIN_INDEX:
        raise NotFound(f"AuditEvent/{event_id[:64]} is not known")
    index = int(event_id)

    def work(conn: Connection, tenant: str) -> StoredEvent:
        found = event_at(conn, tenant, index)
        if found is None:
            # Raised inside the unit of work: nothing read, nothing recorded.
            raise NotFound(f"AuditEvent/{index} is not known")
        return found

    event = audited_read(request, principal, work, resource_id=str(index))
    return fhir_response(to_fhir(event), pretty=is_pretty(request))


@fhir_router.get("/AuditEvent/{event_id}", summary="read AuditEvent (auditors only)")
async def read_audit_event(request: Request, principal: Auditor, event_id: str) -> Response:
    negotiate(request)
    return await run_in_threadpool(_read, request, principal, event_id)
