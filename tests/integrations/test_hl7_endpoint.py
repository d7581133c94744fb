"""``POST /api/v1/hl7`` on both engines: transport refusals as HTTP statuses, the message's
verdict in the ACK, and the audit trail of the calling client."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.testclient import TestClient
from tests.access.personas import bearer, system_token, user_token
from tests.integrations.hl7_support import adt, audit_rows, oru, outbox_rows, resource_counts

from carechart.auth.config import AuthComponents
from carechart.auth.principal import Role
from carechart.context import AppContext
from carechart.integrations.hl7v2.endpoints import set_hl7_service
from carechart.integrations.hl7v2.parser import parse_message
from carechart.integrations.hl7v2.service import Hl7Service

URL = "/api/v1/hl7"
HL7 = {"Content-Type": "application/hl7-v2"}


def _msa(text: str) -> tuple[str, str]:
    msa = parse_message(text).segment("MSA")
    assert msa is not None
    return msa.get(1), msa.get(2)


def test_without_a_token_the_answer_is_401(anonymous: TestClient, ctx: AppContext) -> None:
    answer = anonymous.post(URL, content=oru("H-401"), headers=HL7)
    assert answer.status_code == 401
    assert resource_counts(ctx.engine, ctx.settings.default_tenant) == {}


def test_a_client_that_may_write_none_of_the_types_gets_403(
    anonymous: TestClient, ctx: AppContext, auth_parts: AuthComponents
) -> None:
    token = system_token(ctx, auth_parts, scope=["system/Practitioner.rs", "system/Patient.rs"])
    answer = anonymous.post(URL, content=oru("H-403"), headers={**HL7, **bearer(token)})
    assert answer.status_code == 403
    tenant = ctx.settings.default_tenant
    assert resource_counts(ctx.engine, tenant) == {}
    denied = [r for r in audit_rows(ctx.engine, tenant) if r.action == "ingest"]
    assert [(r.outcome, r.role) for r in denied] == [("denied", "system")]


def test_a_user_session_is_not_an_interface(
    anonymous: TestClient, ctx: AppContext, auth_parts: AuthComponents
) -> None:
    token = user_token(anonymous, ctx, auth_parts, Role.physician, practitioner_id="dr-h")
    answer = anonymous.post(URL, content=oru("H-USER"), headers={**HL7, **bearer(token)})
    assert answer.status_code == 403
    assert resource_counts(ctx.engine, ctx.settings.default_tenant) == {}


def test_a_lab_result_from_a_registration_only_client_is_an_ae(
    anonymous: TestClient, ctx: AppContext, auth_parts: AuthComponents
) -> None:
    token = system_token(ctx, auth_parts, scope=["system/Patient.crus", "system/Encounter.crus"])
    headers = {**HL7, **bearer(token)}
    answer = anonymous.post(URL, content=oru("H-AE"), headers=headers)
    assert answer.status_code == 200
    assert _msa(answer.text) == ("AE", "H-AE")
    assert "ERR|" in answer.text
    tenant = ctx.settings.default_tenant
    assert resource_counts(ctx.engine, tenant) == {}
    registered = anonymous.post(URL, content=adt("A04", "H-ADT"), headers=headers)
    assert _msa(registered.text) == ("AA", "H-ADT")
    assert resource_counts(ctx.engine, tenant) == {"Patient": 1, "Encounter": 1}


def test_an_accepted_message_is_acknowledged_after_it_is_stored(
    client: TestClient, ctx: AppContext
) -> None:
    answer = client.post(URL, content=oru("H-AA"), headers=HL7)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/hl7-v2")
    assert answer.headers["cache-control"] == "no-store"
    assert _msa(answer.text) == ("AA", "H-AA")
    ack = parse_message(answer.text)
    assert ack.message_type == "ACK"
    assert ack.msh.get(5) == "LAB"
    tenant = ctx.settings.default_tenant
    assert resource_counts(ctx.engine, tenant)["Observation"] == 2
    (event,) = outbox_rows(ctx.engine, tenant)
    assert event.delivered_at is not None
    # Audited as the calling backend client, one record per resource written.
    rows = audit_rows(ctx.engine, tenant)
    clients = {r.client_id for r in rows if r.action in ("create", "ingest")}
    assert len(clients) == 1
    assert None not in clients
    assert sum(1 for r in rows if r.action == "create") == 6


def test_text_plain_is_accepted_and_a_redelivery_gets_the_same_ack(
    client: TestClient, ctx: AppContext
) -> None:
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    first = client.post(URL, content=oru("H-DUP"), headers=headers)
    again = client.post(URL, content=oru("H-DUP"), headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.text == again.text
    assert resource_counts(ctx.engine, ctx.settings.default_tenant)["DiagnosticReport"] == 1


def test_a_malformed_message_is_answered_with_an_ar(client: TestClient, ctx: AppContext) -> None:
    answer = client.post(
        URL, content=b"MSH|^~\\&|LAB|FAC|||20240101||ORU^R01|X1|P|9.9\r", headers=HL7
    )
    assert answer.status_code == 200
    assert _msa(answer.text) == ("AR", "X1")
    assert "203^Unsupported version id^HL70357" in answer.text
    empty = client.post(URL, content=b"", headers=HL7)
    assert empty.status_code == 200
    assert _msa(empty.text)[0] == "AR"
    assert resource_counts(ctx.engine, ctx.settings.default_tenant) == {}


def test_an_incoming_ack_is_not_acknowledged(client: TestClient) -> None:
    ack = b"MSH|^~\\&|LAB|FAC|EHR|HOSP|20240101||ACK^R01^ACK|A1|P|2.5.1\rMSA|AA|C1\r"
    answer = client.post(URL, content=ack, headers=HL7)
    assert answer.status_code == 204
    assert answer.content == b""


def test_other_media_types_get_415(client: TestClient) -> None:
    answer = client.post(URL, content=oru("H-415"), headers={"Content-Type": "application/json"})
    assert answer.status_code == 415
    missing = client.post(URL, content=oru("H-415b"))
    assert missing.status_code == 415


def test_oversized_messages_get_413(client: TestClient, app: FastAPI, service: Hl7Service) -> None:
    set_hl7_service(app, service, max_bytes=2048)
    big = oru(
        "H-413", results=[f"OBX|{i}|ST|8251-1^Comment^LN||{'x' * 100}||||||F" for i in range(40)]
    )
    answer = client.post(URL, content=big, headers=HL7)
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_the_route_is_in_the_openapi_document(client: TestClient) -> None:
    answer = client.get("/openapi.json")
    assert answer.status_code == 200, answer.text
    document = answer.json()
    operation = document["paths"]["/api/v1/hl7"]["post"]
    assert set(operation["requestBody"]["content"]) == {"application/hl7-v2", "text/plain"}
    assert {"200", "401", "403", "413", "415"} <= set(operation["responses"])
