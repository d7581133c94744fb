"""SECURITY C6 over HTTP (/api/v1/audit): reports for auditors only, each read of the trail
recorded in the trail, bad requests refused before anything is read or written."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient
from tests.audit.conftest import Seed, SignedIn

from carechart.audit.chain import AuditRecord, StoredEvent
from carechart.audit.chain import verify as verify_chain
from carechart.auth.principal import Role
from carechart.context import AppContext
from carechart.db.engine import unit_of_work

START = datetime(2024, 2, 1, 12, 0, tzinfo=UTC)
ROUTES = [
    "/api/v1/audit/events",
    "/api/v1/audit/patients/pat-1",
    "/api/v1/audit/users/user-a",
    "/api/v1/audit/break-glass",
    "/api/v1/audit/failed-logins",
]
Trail = Callable[[], list[StoredEvent]]


def _sample(seed: Seed) -> list[StoredEvent]:
    def at(minutes: int) -> datetime:
        return START + timedelta(minutes=minutes)

    def rec(name: str, **fields: Any) -> AuditRecord:
        return AuditRecord(
            **{"action": "read", "outcome": "success", **fields}, correlation_id=name
        )

    return seed(
        [
            (at(0), rec("a-reads-p1", user_id="user-a", patient_id="pat-1", resource_type="Observation", purpose_of_use="TREAT")),
            (at(10), rec("b-login-fails", user_id="user-b", action="login", outcome="failure")),
            (at(20), rec("b-btg-p1", user_id="user-b", patient_id="pat-1", resource_type="Patient", purpose_of_use="BTG")),
            (at(30), rec("a-mfa-denied", user_id="user-a", action="mfa", outcome="denied")),
            (at(40), rec("c-glass-p2", user_id="user-c", action="break-glass", patient_id="pat-2")),
            (at(50), rec("a-creates-p2", user_id="user-a", action="create", patient_id="pat-2", resource_type="Observation")),
            (at(60), rec("a-login-ok", user_id="user-a", action="login")),
        ]
    )  # fmt: skip


def _names(answer: Any) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [event["correlation_id"] for event in answer.json()["data"]]


@pytest.mark.parametrize(
    ("path", "params", "expected"),
    [
        ("/api/v1/audit/events", {"order": "asc", "until": "2024-02-01T12:30:00Z"},
         ["a-reads-p1", "b-login-fails", "b-btg-p1"]),
        ("/api/v1/audit/events", {"since": "2024-02-01T13:40:00+01:00", "until": "2024-02-01T12:50:00Z"},
         ["c-glass-p2"]),
        ("/api/v1/audit/events", {"action": ["login", "mfa"], "order": "asc"},
         ["b-login-fails", "a-mfa-denied", "a-login-ok"]),
        ("/api/v1/audit/events", {"resource_type": "Observation", "user_id": "user-a"},
         ["a-creates-p2", "a-reads-p1"]),
        ("/api/v1/audit/events", {"purpose_of_use": "BTG"}, ["b-btg-p1"]),
        ("/api/v1/audit/patients/pat-1", {"until": "2024-03-01T00:00:00Z"}, ["b-btg-p1", "a-reads-p1"]),
        ("/api/v1/audit/patients/pat-2", {"action": "create"}, ["a-creates-p2"]),
        ("/api/v1/audit/users/user-a", {"order": "asc"},
         ["a-reads-p1", "a-mfa-denied", "a-creates-p2", "a-login-ok"]),
        ("/api/v1/audit/users/user-a", {"outcome": "denied"}, ["a-mfa-denied"]),
        ("/api/v1/audit/break-glass", {}, ["c-glass-p2", "b-btg-p1"]),
        ("/api/v1/audit/break-glass", {"patient_id": "pat-1"}, ["b-btg-p1"]),
        ("/api/v1/audit/failed-logins", {"order": "asc"}, ["b-login-fails", "a-mfa-denied"]),
        ("/api/v1/audit/failed-logins", {"user_id": "user-b"}, ["b-login-fails"]),
    ],
)  # fmt: skip
def test_reports_return_exactly_their_events(
    audit_client: TestClient,
    auditor: SignedIn,
    seed: Seed,
    path: str,
    params: dict[str, Any],
    expected: list[str],
) -> None:
    _sample(seed)
    if "until" not in params and "since" not in params:
        # The auditor's own sign-in and report reads are in the trail too; keep to the sample.
        params = {**params, "until": "2024-02-02T00:00:00Z"}
    assert _names(audit_client.get(path, params=params, headers=auditor.headers)) == expected


def test_an_event_carries_identifiers_and_its_place_in_the_chain(
    audit_client: TestClient, auditor: SignedIn, seed: Seed
) -> None:
    events = _sample(seed)
    answer = audit_client.get(
        "/api/v1/audit/events",
        params={"order": "asc", "limit": "1", "until": "2024-02-02T00:00:00Z"},
        headers=auditor.headers,
    )
    (first,) = answer.json()["data"]
    assert first == {
        "chain_index": events[0].chain_index,
        "recorded_at": "2024-02-01T12:00:00.000000Z",
        "action": "read",
        "outcome": "success",
        "user_id": "user-a",
        "client_id": None,
        "role": None,
        "patient_id": "pat-1",
        "resource_type": "Observation",
        "resource_id": None,
        "data_category": None,
        "source_ip": None,
        "user_agent": None,
        "purpose_of_use": "TREAT",
        "correlation_id": "a-reads-p1",
        "record_hash": events[0].record_hash,
    }


def test_paging_walks_every_event_once(
    audit_client: TestClient, auditor: SignedIn, seed: Seed
) -> None:
    names = [e.record.correlation_id for e in _sample(seed)]
    for order, expected in [("asc", names), ("desc", names[::-1])]:
        # The reads of each page are recorded now, after ``until``: the walk sees the sample.
        params = {"order": order, "limit": "2", "until": "2024-02-02T00:00:00Z"}
        seen: list[str] = []
        pages = 0
        while True:
            answer = audit_client.get(
                "/api/v1/audit/events", params=params, headers=auditor.headers
            )
            page = _names(answer)
            assert 1 <= len(page) <= 2
            seen += page
            pages += 1
            cursor = answer.json()["next_cursor"]
            if cursor is None:
                break
            params["cursor"] = cursor
        assert seen == expected
        assert pages == 4


def test_a_report_on_one_patient_is_recorded_against_that_patient(
    audit_client: TestClient, auditor: SignedIn, seed: Seed, trail: Trail
) -> None:
    _sample(seed)
    for path, params, patient in [
        ("/api/v1/audit/events", {"patient_id": "pat-2"}, "pat-2"),
        ("/api/v1/audit/break-glass", {"patient_id": "pat-1"}, "pat-1"),
        ("/api/v1/audit/users/user-a", {}, None),
        ("/fhir/AuditEvent", {"patient": "Patient/pat-2"}, "pat-2"),
        ("/fhir/AuditEvent", {"patient": "pat-1,pat-2"}, None),
    ]:
        assert audit_client.get(path, params=params, headers=auditor.headers).status_code == 200
        assert trail()[-1].record.patient_id == patient, (path, params)


def test_each_report_read_appends_its_own_record(
    audit_client: TestClient,
    auditor: SignedIn,
    seed: Seed,
    trail: Trail,
    ctx: AppContext,
) -> None:
    _sample(seed)
    for path in ROUTES:
        before = trail()
        answer = audit_client.get(
            path,
            headers={**auditor.headers, "X-Request-Id": "audit-req-1", "User-Agent": "probe/1.0"},
        )
        assert answer.status_code == 200, answer.text
        after = trail()
        assert len(after) == len(before) + 1, path
        record = after[-1].record
        assert record == AuditRecord(
            action="read",
            outcome="success",
            user_id=auditor.user_id,
            client_id=None,
            role="auditor",
            patient_id="pat-1" if "/patients/" in path else None,
            resource_type="AuditEvent",
            resource_id=None,
            data_category="audit",
            source_ip="testclient",
            user_agent="probe/1.0",
            purpose_of_use="HOPERAT",
            correlation_id="audit-req-1",
        )
    with unit_of_work(ctx.engine, write=False) as conn:
        assert verify_chain(conn, ctx.keyring, tenant=ctx.settings.default_tenant).ok


@pytest.mark.parametrize(
    "role",
    [
        Role.physician,
        Role.nurse,
        Role.front_desk,
        Role.lab_technician,
        Role.billing,
        Role.patient,
        Role.admin,
    ],
)
def test_other_roles_get_403_and_the_refusal_is_recorded(
    audit_client: TestClient,
    sign_in: Callable[[Role], SignedIn],
    seed: Seed,
    trail: Trail,
    role: Role,
) -> None:
    _sample(seed)
    caller = sign_in(role)
    for path in ROUTES:
        before = len(trail())
        answer = audit_client.get(path, headers=caller.headers)
        assert answer.status_code == 403, (path, answer.text)
        assert answer.json()["error"]["code"] == "FORBIDDEN"
        assert "data" not in answer.json()
        added = [e.record for e in trail()[before:]]
        assert [(r.action, r.outcome, r.resource_type, r.user_id, r.role) for r in added] == [
            ("read", "denied", "AuditEvent", caller.user_id, role.value)
        ]


@pytest.mark.parametrize(
    ("role", "scopes", "allowed"),
    [
        (Role.auditor, {"user/*.cruds"}, True),
        (Role.auditor, {"user/AuditEvent.rs"}, True),
        (Role.auditor, {"user/AuditEvent.read"}, True),
        (Role.auditor, {"user/Patient.rs"}, False),
        (Role.auditor, {"patient/*.rs"}, False),
        (Role.auditor, set(), False),
        (Role.admin, {"user/*.cruds"}, False),
        (Role.system, {"system/*.rs"}, False),
    ],
)
def test_the_role_and_the_token_scopes_must_both_allow_the_trail(
    role: Role, scopes: set[str], allowed: bool
) -> None:
    from carechart.audit.endpoints import _may_read_audit
    from carechart.auth.principal import Principal

    principal = Principal(
        user_id="u",
        tenant="t",
        role=role,
        patient_id=None,
        territories=(),
        scopes=frozenset(scopes),
        session_id="s",
        mfa_passed=True,
    )
    assert _may_read_audit(principal) is allowed


def test_anonymous_callers_get_401(audit_client: TestClient, seed: Seed, trail: Trail) -> None:
    _sample(seed)
    for path in ROUTES:
        for headers in ({}, {"Authorization": "Bearer not-a-token"}):
            answer = audit_client.get(path, headers=headers)
            assert answer.status_code == 401, path
            assert "data" not in answer.json()
    assert all(e.record.resource_type != "AuditEvent" for e in trail())


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("/api/v1/audit/events", {"since": "yesterday"}, "since is not an ISO 8601 date-time"),
        ("/api/v1/audit/events", {"until": "2024-02-01T12:00:00"}, "until needs a time zone"),
        ("/api/v1/audit/events", {"since": "2024-02-01"}, "since needs a time zone"),
        (
            "/api/v1/audit/events",
            {"since": "2024-02-02T00:00:00Z", "until": "2024-02-01T00:00:00Z"},
            "since must be earlier than until",
        ),
        ("/api/v1/audit/events", {"limit": "0"}, "limit must be a whole number from 1 to 500"),
        ("/api/v1/audit/events", {"limit": "501"}, "limit must be"),
        ("/api/v1/audit/events", {"limit": "ten"}, "limit must be"),
        ("/api/v1/audit/events", {"order": "newest"}, "order must be asc or desc"),
        ("/api/v1/audit/events", {"cursor": "bm90LWEtY3Vyc29y"}, "cursor is not one"),
        ("/api/v1/audit/events", {"cursor": "%%%"}, "cursor is not one"),
        ("/api/v1/audit/events", {"patient": "pat-1"}, "unknown query parameter 'patient'"),
        ("/api/v1/audit/failed-logins", {"action": "read"}, "unknown query parameter 'action'"),
        ("/api/v1/audit/patients/pat-1", {"patient_id": "pat-2"}, "unknown query parameter"),
        ("/api/v1/audit/events", {"user_id": ""}, "user_id must be between"),
        ("/api/v1/audit/users/user-a", {"since": "2024-13-01T00:00:00Z"}, "since is not"),
        ("/api/v1/audit/break-glass", {"limit": "-5"}, "limit must be"),
    ],
)
def test_bad_parameters_get_400_with_a_clear_message_and_write_nothing(
    audit_client: TestClient,
    auditor: SignedIn,
    seed: Seed,
    trail: Trail,
    path: str,
    params: dict[str, str],
    message: str,
) -> None:
    _sample(seed)
    before = len(trail())
    answer = audit_client.get(path, params=params, headers=auditor.headers)
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"]["message"]
    assert len(trail()) == before


def test_a_repeated_parameter_is_refused(
    audit_client: TestClient, auditor: SignedIn, trail: Trail
) -> None:
    before = len(trail())
    answer = audit_client.get("/api/v1/audit/events?limit=1&limit=2", headers=auditor.headers)
    assert answer.status_code == 400
    assert "more than once" in answer.json()["error"]["message"]
    assert len(trail()) == before


def test_a_cursor_from_another_query_is_refused(
    audit_client: TestClient, auditor: SignedIn, seed: Seed, trail: Trail
) -> None:
    _sample(seed)
    first = audit_client.get(
        "/api/v1/audit/events", params={"limit": "1"}, headers=auditor.headers
    ).json()
    cursor = first["next_cursor"]
    assert cursor
    before = len(trail())
    for params in ({"order": "asc"}, {"user_id": "user-a"}):
        answer = audit_client.get(
            "/api/v1/audit/events",
            params={"limit": "1", "cursor": cursor, **params},
            headers=auditor.headers,
        )
        assert answer.status_code == 400
    assert len(trail()) == before
