"""The audit trail as FHIR R4 AuditEvent (auditevent.html): every mapped record validates,
search matches exactly what the rendered resources say, and the REST routes are for
auditors only and audited themselves."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient
from tests.audit.conftest import Seed, SignedIn

from carechart.audit.chain import AuditRecord, StoredEvent
from carechart.audit.fhir import (
    EVENT_ACTION,
    EVENT_SUBTYPE,
    EVENT_TYPE,
    SUBTYPE_CODING,
    TYPE_DISPLAY,
    parse_search,
    search_bundle,
    to_fhir,
)
from carechart.audit.reports import EventFilters, query_events
from carechart.auth.principal import Role
from carechart.db.engine import unit_of_work
from carechart.errors import BadRequest
from carechart.fhir.validation import validate_resource

BASE = datetime(2024, 3, 1, 0, 0, tzinfo=UTC)
FHIR_BASE = "http://testserver/fhir"
ACTIONS = [
    "create",
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "search",
    "history",
    "export",
    "print",
    "ingest",
    "login",
    "logout",
    "token",
    "mfa",
    "mfa-challenge",
    "mfa-enroll",
    "lockout",
    "password-change",
    "denied",
    "break-glass",
    "configure",
]
RESOURCE_TYPES = ["Observation", "Patient", "AuditEvent", "UserAccount", "Encounter", None]
PATIENTS = ["pat-1", "pat-2", "pat-3", None]
USERS = ["user-a", "user-b", None]


def _errors(resource: dict[str, Any]) -> list[str]:
    return [
        f"{i.expression}: {i.message}" for i in validate_resource(resource) if i.severity == "error"
    ]


def _event(record: AuditRecord, index: int = 1, at: datetime = BASE) -> StoredEvent:
    return StoredEvent(index, at, record, "0" * 64, "f" * 64)


RECORDS = st.builds(
    AuditRecord,
    action=st.sampled_from(ACTIONS),
    outcome=st.sampled_from(["success", "failure", "denied"]),
    user_id=st.sampled_from(USERS),
    client_id=st.sampled_from(["web", "lab-feed", None]),
    role=st.sampled_from(["physician", "auditor", "system", None]),
    patient_id=st.sampled_from(PATIENTS),
    resource_type=st.sampled_from(RESOURCE_TYPES),
    resource_id=st.sampled_from(["obs-1", "pat-1", "user-a", "7", None]),
    data_category=st.sampled_from(["lab", "audit", None]),
    source_ip=st.sampled_from(["192.0.2.7", "2001:db8::1", "testclient", None]),
    user_agent=st.sampled_from(["pytest", None]),
    purpose_of_use=st.sampled_from(["TREAT", "BTG", "HOPERAT", "ETREAT", None]),
    correlation_id=st.sampled_from(["c-1", None]),
)


@settings(max_examples=400, deadline=None)
@given(record=RECORDS, index=st.integers(min_value=1, max_value=2**62))
def test_every_mapped_record_is_a_valid_auditevent(record: AuditRecord, index: int) -> None:
    resource = to_fhir(_event(record, index))
    assert _errors(resource) == []
    assert resource["id"] == str(index)
    assert resource["agent"]
    assert resource["source"]["observer"] == {"display": "Carechart"}


def test_a_clinical_read_maps_to_a_patient_record_access() -> None:
    record = AuditRecord(
        action="read",
        outcome="success",
        user_id="user-a",
        role="physician",
        patient_id="pat-1",
        resource_type="Observation",
        resource_id="obs-9",
        source_ip="192.0.2.7",
        purpose_of_use="TREAT",
    )
    resource = to_fhir(_event(record, 42, datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)))
    assert resource["type"] == {
        "system": "http://dicom.nema.org/resources/ontology/DCM",
        "code": "110110",
        "display": "Patient Record",
    }
    assert resource["subtype"] == [
        {"system": "http://hl7.org/fhir/restful-interaction", "code": "read", "display": "read"}
    ]
    assert (resource["action"], resource["outcome"]) == ("R", "0")
    assert resource["recorded"] == "2024-05-06T07:08:09.123456Z"
    assert resource["purposeOfEvent"] == [
        {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
            ]
        }
    ]
    (agent,) = resource["agent"]
    assert agent["who"] == {"identifier": {"system": "urn:carechart:user", "value": "user-a"}}
    assert agent["role"] == [{"text": "physician"}]
    assert agent["network"] == {"address": "192.0.2.7", "type": "2"}
    assert agent["requestor"] is True
    what = [e["what"] for e in resource["entity"]]
    assert what == [{"reference": "Observation/obs-9"}, {"reference": "Patient/pat-1"}]
    assert resource["entity"][1]["role"]["code"] == "1"


@pytest.mark.parametrize(
    ("action", "outcome", "resource_type", "expected"),
    [
        ("login", "failure", None, ("110114", "110122", "E", "8")),
        ("logout", "success", None, ("110114", "110123", "E", "0")),
        ("mfa", "denied", None, ("110114", None, "E", "4")),
        ("token", "success", None, ("110114", None, "E", "0")),
        ("read", "success", "AuditEvent", ("110101", "read", "R", "0")),
        ("read", "denied", "AuditEvent", ("110101", "read", "R", "4")),
        ("search", "success", "Observation", ("110110", "search-type", "R", "0")),
        ("history", "success", "Observation", ("110110", "history-instance", "R", "0")),
        ("create", "success", "Observation", ("110110", "create", "C", "0")),
        ("patch", "success", "Observation", ("110110", "patch", "U", "0")),
        ("delete", "success", "Observation", ("110110", "delete", "D", "0")),
        ("create", "success", "UserAccount", ("110113", "create", "C", "0")),
        ("break-glass", "success", "Patient", ("110113", "110127", "E", "0")),
        ("configure", "success", None, ("110113", "110129", "E", "0")),
        ("password-change", "success", None, ("110113", "110137", "E", "0")),
        ("export", "success", "Patient", ("110106", None, "R", "0")),
        ("ingest", "success", "Observation", ("110107", None, "C", "0")),
    ],
)
def test_event_codes_follow_dicom_and_restful_interaction(
    action: str, outcome: str, resource_type: str | None, expected: tuple[str, ...]
) -> None:
    record = AuditRecord(action=action, outcome=outcome, resource_type=resource_type)
    resource = to_fhir(_event(record))
    subtype = [s["code"] for s in resource.get("subtype", [])] or [None]
    assert (resource["type"]["code"], subtype[0], resource["action"], resource["outcome"]) == (
        expected
    )
    assert _errors(resource) == []


def test_an_unidentified_caller_and_a_backend_client_are_agents() -> None:
    nobody = to_fhir(_event(AuditRecord(action="login", outcome="failure", source_ip="testclient")))
    assert nobody["agent"] == [
        {
            "who": {"display": "unidentified"},
            "requestor": True,
            "network": {"address": "testclient", "type": "1"},
        }
    ]
    service = to_fhir(
        _event(AuditRecord(action="search", outcome="success", client_id="lab-feed", role="system"))
    )
    (client,) = service["agent"]
    assert client["who"]["identifier"] == {"system": "urn:carechart:client", "value": "lab-feed"}
    assert client["requestor"] is True


def test_the_patient_itself_is_one_entity_and_accounts_are_not_references() -> None:
    own = to_fhir(
        _event(
            AuditRecord(
                "read", "success", patient_id="p1", resource_type="Patient", resource_id="p1"
            )
        )
    )
    assert [e["what"] for e in own["entity"]] == [{"reference": "Patient/p1"}]
    account = to_fhir(
        _event(AuditRecord("create", "success", resource_type="UserAccount", resource_id="u-9"))
    )
    assert account["entity"][0]["what"] == {
        "identifier": {"system": "urn:carechart:user", "value": "u-9"}
    }


# --- search parameters ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "since", "until"),
    [
        ("2024-03-01", datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 2, tzinfo=UTC)),
        ("eq2024-03-01", datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 2, tzinfo=UTC)),
        ("ge2024-03-01", datetime(2024, 3, 1, tzinfo=UTC), None),
        ("gt2024-03-01", datetime(2024, 3, 2, tzinfo=UTC), None),
        ("sa2024-03-01", datetime(2024, 3, 2, tzinfo=UTC), None),
        ("le2024-03-01", None, datetime(2024, 3, 2, tzinfo=UTC)),
        ("lt2024-03-01", None, datetime(2024, 3, 1, tzinfo=UTC)),
        ("eb2024-03-01", None, datetime(2024, 3, 1, tzinfo=UTC)),
        (
            "ge2024-03-01T10:00:00+02:00",
            datetime(2024, 3, 1, 8, tzinfo=UTC),
            None,
        ),
        (
            "ge2024-03-01T10:00:00 02:00",
            datetime(2024, 3, 1, 8, tzinfo=UTC),
            None,
        ),
        (
            "gt2024-03-01T08:00:00Z",
            datetime(2024, 3, 1, 8, 0, 1, tzinfo=UTC),
            None,
        ),
    ],
)
def test_date_prefixes_bound_recorded(
    value: str, since: datetime | None, until: datetime | None
) -> None:
    filters = parse_search([("date", value)]).filters
    assert (filters.since, filters.until) == (since, until)


def test_repeated_dates_and_tokens_are_anded() -> None:
    search = parse_search(
        [
            ("date", "ge2024-03-01"),
            ("date", "lt2024-03-05"),
            ("date", "ge2024-03-02"),
            ("agent", "u1,u2"),
            ("agent", "u2,u3"),
            ("patient", "Patient/p1"),
            ("outcome", "0,4"),
            ("_sort", "date"),
            ("_count", "5000"),
        ],
        default_count=50,
        max_count=500,
    )
    assert search.filters.since == datetime(2024, 3, 2, tzinfo=UTC)
    assert search.filters.until == datetime(2024, 3, 5, tzinfo=UTC)
    assert search.filters.user_ids == frozenset({"u2"})
    assert search.filters.patient_ids == frozenset({"p1"})
    assert search.filters.outcomes == frozenset({"success", "denied"})
    assert (search.order, search.count) == ("asc", 500)


@pytest.mark.parametrize(
    "params",
    [
        [("name", "x")],
        [("_id", "1")],
        [("patient:missing", "true")],
        [("date", "yesterday")],
        [("date", "ne2024-01-01")],
        [("date", "2024-01-01,2024-01-02")],
        [("action", "X")],
        [("outcome", "2")],
        [("patient", "Observation/1")],
        [("patient", "")],
        [("agent", "a,,b")],
        [("_count", "0")],
        [("_count", "ten")],
        [("_sort", "agent")],
        [("_cursor", "")],
        [("_total", "accurate")],
    ],
)
def test_unknown_or_malformed_search_parameters_are_refused(params: list[tuple[str, str]]) -> None:
    with pytest.raises(BadRequest):
        parse_search(params)


def test_a_foreign_system_matches_nothing_rather_than_failing() -> None:
    search = parse_search([("type", "http://example.org|110110")])
    ((classifier, codes),) = search.filters.classes
    assert classifier is EVENT_TYPE
    assert codes == frozenset()


# --- search over the database, against the rendered resources ------------------------------


def _dataset(count: int, rng: random.Random) -> list[tuple[datetime, AuditRecord]]:
    return [
        (
            BASE + timedelta(hours=rng.randint(0, 71), minutes=rng.choice([0, 30])),
            AuditRecord(
                action=rng.choice(ACTIONS),
                outcome=rng.choice(["success", "failure", "denied"]),
                user_id=rng.choice(USERS),
                patient_id=rng.choice(PATIENTS),
                resource_type=rng.choice(RESOURCE_TYPES),
                resource_id=f"r-{n}",
                purpose_of_use=rng.choice(["TREAT", "BTG", None]),
            ),
        )
        for n in range(count)
    ]


def _bounds(text: str) -> tuple[datetime, datetime]:
    if "T" in text:
        start = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return start, start + timedelta(seconds=1)
    start = datetime.fromisoformat(text).replace(tzinfo=UTC)
    return start, start + timedelta(days=1)


def _date_ok(value: str, recorded: datetime) -> bool:
    prefix, text = (value[:2], value[2:]) if value[:2].isalpha() else ("eq", value)
    low, high = _bounds(text)
    return {
        "eq": low <= recorded < high,
        "ge": recorded >= low,
        "gt": recorded >= high,
        "sa": recorded >= high,
        "le": recorded < high,
        "lt": recorded < low,
        "eb": recorded < low,
    }[prefix]


def _matches(resource: dict[str, Any], params: list[tuple[str, str]]) -> bool:
    """The reference: each parameter read off the rendered AuditEvent."""
    patients = {
        e["what"]["reference"].removeprefix("Patient/")
        for e in resource.get("entity", [])
        if e["role"]["code"] == "1"
    }
    agents = {
        a["who"]["identifier"]["value"]
        for a in resource["agent"]
        if a["who"].get("identifier", {}).get("system") == "urn:carechart:user"
    }
    subtypes = {(s["system"], s["code"]) for s in resource.get("subtype", [])}
    recorded = datetime.fromisoformat(resource["recorded"].replace("Z", "+00:00"))
    for name, value in params:
        options = value.split(",")
        if name == "date" and not _date_ok(value, recorded):
            return False
        if name == "patient" and not patients & {o.removeprefix("Patient/") for o in options}:
            return False
        if name == "agent" and not agents & set(options):
            return False
        if name in ("action", "outcome") and resource[name] not in options:
            return False
        if name == "type" and not any(
            o.split("|")[-1] == resource["type"]["code"]
            and (("|" not in o) or o.split("|")[0] == resource["type"]["system"])
            for o in options
        ):
            return False
        if name == "subtype" and not any(
            any(
                o.split("|")[-1] == code and ("|" not in o or o.split("|")[0] == system)
                for system, code in subtypes
            )
            for o in options
        ):
            return False
    return True


def _csv(values: list[str]) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(values), min_size=1, max_size=3, unique=True).map(",".join)


_DATES = st.sampled_from(["2024-03-01", "2024-03-02", "2024-03-03", "2024-03-02T12:00:00Z"])
PARAMS = st.lists(
    st.one_of(
        st.tuples(
            st.just("date"),
            st.tuples(st.sampled_from(["", "eq", "ge", "gt", "le", "lt", "sa", "eb"]), _DATES).map(
                "".join
            ),
        ),
        st.tuples(st.just("patient"), _csv(["pat-1", "Patient/pat-2", "pat-3"])),
        st.tuples(st.just("agent"), _csv(["user-a", "user-b"])),
        st.tuples(st.just("action"), _csv(["C", "R", "U", "D", "E"])),
        st.tuples(st.just("outcome"), _csv(["0", "4", "8", "12"])),
        st.tuples(
            st.just("type"),
            _csv([*TYPE_DISPLAY, "http://dicom.nema.org/resources/ontology/DCM|110114"]),
        ),
        st.tuples(
            st.just("subtype"),
            _csv([*SUBTYPE_CODING, "http://hl7.org/fhir/restful-interaction|read", "x|read"]),
        ),
    ),
    max_size=3,
)


def _walk(
    engine: Engine, tenant: str, params: list[tuple[str, str]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every entry of every page, following the Bundle's next links; and the bundles."""
    entries: list[dict[str, Any]] = []
    bundles: list[dict[str, Any]] = []
    with unit_of_work(engine, write=False) as conn:
        current = params
        while True:
            bundle = search_bundle(conn, tenant, parse_search(current), base=FHIR_BASE)
            bundles.append(bundle)
            entries.extend(bundle.get("entry", []))
            following = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
            if not following:
                return entries, bundles
            url = urlsplit(following[0])
            assert f"{url.scheme}://{url.netloc}{url.path}" == f"{FHIR_BASE}/AuditEvent"
            current = parse_qsl(url.query, keep_blank_values=True)
            assert len(bundles) < 100


def test_search_matches_exactly_what_the_resources_say(
    audit_engine: Engine, tenant: str, seed: Seed
) -> None:
    events = seed(_dataset(60, random.Random(11)))
    rendered = [to_fhir(e) for e in events]

    @settings(
        max_examples=50,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    @given(
        params=PARAMS,
        count=st.integers(min_value=2, max_value=25),
        sort=st.sampled_from([None, "date", "-date"]),
    )
    def check(params: list[tuple[str, str]], count: int, sort: str | None) -> None:
        query = [*params, ("_count", str(count))] + ([("_sort", sort)] if sort else [])
        entries, bundles = _walk(audit_engine, tenant, query)
        expected = [r["id"] for r in rendered if _matches(r, params)]
        if sort != "date":
            expected.reverse()
        assert [e["resource"]["id"] for e in entries] == expected
        for entry in entries:
            assert entry["fullUrl"] == f"{FHIR_BASE}/AuditEvent/{entry['resource']['id']}"
            assert entry["resource"] == rendered[int(entry["resource"]["id"]) - 1]
        assert all(len(b.get("entry", [])) <= count for b in bundles)

    check()


def test_sql_classification_agrees_with_the_python_one(
    audit_engine: Engine, tenant: str, seed: Seed
) -> None:
    records = [
        AuditRecord(action=action, outcome="success", resource_type=resource_type)
        for action in [*ACTIONS, "something-new"]
        for resource_type in RESOURCE_TYPES
    ]
    events = seed([(BASE, record) for record in records])
    with unit_of_work(audit_engine, write=False) as conn:
        for classifier in (EVENT_TYPE, EVENT_SUBTYPE, EVENT_ACTION):
            codes = {classifier.classify(r.action, r.resource_type) for r in records}
            for code in codes - {None}:
                assert code is not None
                filters = EventFilters().narrowed_to_class(classifier, {code})
                page = query_events(conn, tenant, filters, limit=500, order="asc")
                assert [e.chain_index for e in page.events] == [
                    e.chain_index
                    for e in events
                    if classifier.classify(e.record.action, e.record.resource_type) == code
                ], (classifier.name, code)


def test_a_searchset_bundle_validates(audit_engine: Engine, tenant: str, seed: Seed) -> None:
    seed(_dataset(5, random.Random(3)))
    with unit_of_work(audit_engine, write=False) as conn:
        bundle = search_bundle(conn, tenant, parse_search([("_count", "2")]), base=FHIR_BASE)
    assert _errors(bundle) == []
    assert [link["relation"] for link in bundle["link"]] == ["self", "next"]
    assert bundle["link"][0]["url"] == f"{FHIR_BASE}/AuditEvent?_count=2"


# --- the REST routes ------------------------------------------------------------------------

FHIR_JSON = "application/fhir+json"


def _records(trail: Callable[[], list[StoredEvent]]) -> list[AuditRecord]:
    return [e.record for e in trail()]


def _seed_sample(seed: Seed) -> list[StoredEvent]:
    return seed(
        [
            (BASE, AuditRecord("read", "success", user_id="user-a", patient_id="pat-1",
                               resource_type="Observation", resource_id="o1")),
            (BASE + timedelta(hours=1), AuditRecord("login", "failure", user_id="user-b")),
            (BASE + timedelta(hours=2), AuditRecord("read", "success", user_id="user-b",
                                                    patient_id="pat-1", resource_type="Patient",
                                                    resource_id="pat-1", purpose_of_use="BTG")),
        ]
    )  # fmt: skip


def test_auditor_searches_audit_events_and_each_search_is_recorded(
    audit_client: TestClient,
    auditor: SignedIn,
    seed: Seed,
    trail: Callable[[], list[StoredEvent]],
) -> None:
    ids = [str(e.chain_index) for e in _seed_sample(seed)]
    before = len(trail())
    answer = audit_client.get(
        "/fhir/AuditEvent",
        params={"patient": "pat-1", "date": "lt2024-03-02", "_count": "1", "_sort": "date"},
        headers={**auditor.headers, "X-Request-Id": "req-42"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith(FHIR_JSON)
    bundle = answer.json()
    assert _errors(bundle) == []
    assert [e["resource"]["id"] for e in bundle["entry"]] == [ids[0]]
    (next_url,) = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
    second = audit_client.get(next_url, headers=auditor.headers).json()
    assert [e["resource"]["id"] for e in second["entry"]] == [ids[2]]
    assert not [link for link in second["link"] if link["relation"] == "next"]
    records = _records(trail)[before:]
    assert len(records) == 2
    first = records[0]
    assert (first.action, first.outcome, first.resource_type, first.data_category) == (
        "search",
        "success",
        "AuditEvent",
        "audit",
    )
    assert (first.user_id, first.role, first.correlation_id) == (
        auditor.user_id,
        "auditor",
        "req-42",
    )


def test_auditor_reads_one_audit_event_and_the_read_is_recorded(
    audit_client: TestClient,
    auditor: SignedIn,
    seed: Seed,
    trail: Callable[[], list[StoredEvent]],
) -> None:
    events = _seed_sample(seed)
    wanted = str(events[1].chain_index)
    answer = audit_client.get(f"/fhir/AuditEvent/{wanted}", headers=auditor.headers)
    assert answer.status_code == 200, answer.text
    assert answer.json() == to_fhir(events[1])
    assert _errors(answer.json()) == []
    last = _records(trail)[-1]
    assert (last.action, last.resource_type, last.resource_id) == ("read", "AuditEvent", wanted)
    alias = audit_client.get("/api/v1/fhir/AuditEvent", headers=auditor.headers).json()
    assert alias["entry"][0]["fullUrl"].startswith("http://testserver/api/v1/fhir/AuditEvent/")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/fhir/AuditEvent/999999", 404),
        ("/fhir/AuditEvent/abc", 404),
        ("/fhir/AuditEvent/0", 404),
        ("/fhir/AuditEvent?unknown=1", 400),
        ("/fhir/AuditEvent?date=soon", 400),
        ("/fhir/AuditEvent?_cursor=bm9wZQ", 400),
    ],
)
def test_fhir_errors_are_operation_outcomes_and_write_nothing(
    audit_client: TestClient,
    auditor: SignedIn,
    seed: Seed,
    trail: Callable[[], list[StoredEvent]],
    path: str,
    status: int,
) -> None:
    _seed_sample(seed)
    before = len(trail())
    answer = audit_client.get(path, headers=auditor.headers)
    assert answer.status_code == status, answer.text
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert len(trail()) == before


def test_fhir_search_by_form_post_and_xml_is_not_acceptable(
    audit_client: TestClient, auditor: SignedIn, seed: Seed
) -> None:
    events = _seed_sample(seed)
    posted = audit_client.post(
        "/fhir/AuditEvent/_search",
        content="outcome=8&date=lt2024-03-02",
        headers={**auditor.headers, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert posted.status_code == 200, posted.text
    assert [e["resource"]["id"] for e in posted.json()["entry"]] == [str(events[1].chain_index)]
    xml = audit_client.get(
        "/fhir/AuditEvent", headers={**auditor.headers, "Accept": "application/fhir+xml"}
    )
    assert xml.status_code == 406


def test_non_auditors_get_403_and_anonymous_401_over_fhir(
    audit_client: TestClient,
    sign_in: Callable[[Role], SignedIn],
    seed: Seed,
    trail: Callable[[], list[StoredEvent]],
) -> None:
    _seed_sample(seed)
    nurse = sign_in(Role.nurse)
    for path in ("/fhir/AuditEvent", "/fhir/AuditEvent/1"):
        refused = audit_client.get(path, headers=nurse.headers)
        assert refused.status_code == 403
        assert refused.json()["resourceType"] == "OperationOutcome"
        anonymous = audit_client.get(path)
        assert anonymous.status_code == 401
        assert anonymous.json()["resourceType"] == "OperationOutcome"
    denials = [r for r in _records(trail) if r.outcome == "denied" and r.user_id == nurse.user_id]
    assert len(denials) == 2
