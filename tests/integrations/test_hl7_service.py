"""HL7 ingest end to end on both engines: every corpus message gets the right ACK and, when
accepted, the right resources; redeliveries are answered again and stored once; matching,
flags, refusals and the audit trail of the sending interface."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.integrations.hl7_support import (
    CORPUS,
    CORPUS_FILES,
    adt,
    audit_rows,
    interface,
    log_rows,
    oru,
    outbox_rows,
    read,
    resource_counts,
    stored,
)

from carechart.context import AppContext
from carechart.fhir.store import SqlResourceStore
from carechart.integrations.events.outbox import TOPIC_KEYS, Event, InProcessBus
from carechart.integrations.hl7v2 import service as service_module
from carechart.integrations.hl7v2.ack import AckCode
from carechart.integrations.hl7v2.errors import Hl7ParseError
from carechart.integrations.hl7v2.inbound import receive
from carechart.integrations.hl7v2.parser import Message, parse_message
from carechart.integrations.hl7v2.service import Hl7Service

pytestmark = pytest.mark.skipif(not CORPUS_FILES, reason="shared HL7 corpus not present")

LAB_TYPES = ("ServiceRequest", "DiagnosticReport", "Observation", "Specimen")


def _id(path: Path) -> str:
    return str(path.relative_to(CORPUS))


def _msa(ack: str | None) -> tuple[str, str]:
    assert ack is not None
    msa = parse_message(ack).segment("MSA")
    assert msa is not None
    return msa.get(1), msa.get(2)


def _expected_counts(message: Message) -> dict[str, int]:
    """What an accepted message must leave behind, counted from its segments."""
    names = [s.name for s in message.segments]
    after_order = names[names.index("OBR") :] if "OBR" in names else []
    pids = message.all("PID")
    patients = len({pid.raw(3) or pid.raw(2) or f"unidentified-{pid.index}" for pid in pids})
    kind = message.message_type
    if kind == "ADT":
        visit = message.segment("PV1") is not None and message.trigger_event != "A31"
        return {"Patient": 1, **({"Encounter": 1} if visit else {})}
    counts = {
        "Patient": patients,
        "ServiceRequest": names.count("OBR"),
        "Observation": after_order.count("OBX"),
        "Specimen": after_order.count("SPM"),
    }
    if kind == "ORU":
        counts["DiagnosticReport"] = names.count("OBR")
    return {k: v for k, v in counts.items() if v}


@pytest.mark.parametrize("path", CORPUS_FILES, ids=_id)
def test_corpus_message_gets_its_ack_and_its_resources(
    path: Path, ctx: AppContext, service: Hl7Service, tenant: str
) -> None:
    data = path.read_bytes()
    expected_code = receive(data).ack_code  # what the library corpus test pins (79/23/29/1)
    before = resource_counts(ctx.engine, tenant)
    result = service.ingest(data, interface(tenant))
    after = resource_counts(ctx.engine, tenant)
    assert result.ack_code == expected_code
    if expected_code is None:  # an ACK is not acknowledged, and stores nothing
        assert result.ack is None
        assert after == before
        return
    code, control = _msa(result.ack)
    assert code == expected_code.value
    try:
        message: Message | None = parse_message(data)
    except Hl7ParseError:
        message = None
    if message is not None:
        assert control == message.control_id
    if expected_code is not AckCode.ACCEPT:
        assert after == before, "a rejected message stores nothing"
        assert parse_message(result.ack or "").all("ERR")
        assert not outbox_rows(ctx.engine, tenant)
        assert [(r.action, r.outcome) for r in audit_rows(ctx.engine, tenant)] == [
            ("ingest", "failure")
        ]
        return
    assert message is not None
    assert after == _expected_counts(message)
    assert sorted(result.resources) == sorted(set(result.resources))
    reports = after.get("DiagnosticReport", 0)
    assert len(outbox_rows(ctx.engine, tenant)) == reports
    # Every stored resource was audited as created (or matched) by the sending interface.
    rows = audit_rows(ctx.engine, tenant)
    client = f"hl7:{service_module.sending_application(message, data)}"
    assert {r.client_id for r in rows} == {client}
    created = {(r.resource_type, r.resource_id) for r in rows if r.action == "create"}
    for reference in result.resources:
        assert tuple(reference.split("/", 1)) in created
    assert [r.action for r in rows].count("ingest") == 1


def test_redelivery_is_acknowledged_again_and_stored_once(
    ctx: AppContext, service: Hl7Service, tenant: str
) -> None:
    first = service.ingest(oru("R-1"), interface(tenant))
    counts = resource_counts(ctx.engine, tenant)
    events = outbox_rows(ctx.engine, tenant)
    again = service.ingest(oru("R-1"), interface(tenant))
    assert first.ack_code is AckCode.ACCEPT
    assert not first.duplicate
    assert again.duplicate
    assert again.ack == first.ack  # the very ACK sent the first time (MSA-2 = R-1)
    assert again.resources == first.resources
    assert resource_counts(ctx.engine, tenant) == counts
    assert len(outbox_rows(ctx.engine, tenant)) == len(events) == 1
    assert len(log_rows(ctx.engine, tenant)) == 1


def test_redelivery_tolerates_a_restamped_header_and_other_segment_ends(
    ctx: AppContext, service: Hl7Service, tenant: str
) -> None:
    first = service.ingest(oru("R-2"), interface(tenant))
    resent = oru("R-2", separator="\r\n").replace(b"20240101120000", b"20240101130000", 1)
    again = service.ingest(b"\xef\xbb\xbf" + resent, interface(tenant))
    assert again.duplicate
    assert again.ack == first.ack
    assert resource_counts(ctx.engine, tenant)["Observation"] == 2


def test_concurrent_redelivery_stores_exactly_once(
    ctx: AppContext, service: Hl7Service, tenant: str
) -> None:
    barrier = threading.Barrier(2)
    results: list[Any] = []
    errors: list[BaseException] = []

    def send() -> None:
        try:
            barrier.wait(5)
            results.append(service.ingest(oru("RACE-1"), interface(tenant)))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert [r.ack_code for r in results] == [AckCode.ACCEPT, AckCode.ACCEPT]
    assert sorted(r.duplicate for r in results) == [False, True]
    assert results[0].ack == results[1].ack
    counts = resource_counts(ctx.engine, tenant)
    assert counts == {
        "Patient": 1,
        "ServiceRequest": 1,
        "DiagnosticReport": 1,
        "Observation": 2,
        "Specimen": 1,
    }
    assert len(outbox_rows(ctx.engine, tenant)) == 1


def test_concurrent_messages_for_a_new_patient_create_one_patient(
    ctx: AppContext, service: Hl7Service, tenant: str
) -> None:
    barrier = threading.Barrier(3)
    results: list[Any] = []

    def send(control: str) -> None:
        barrier.wait(5)
        results.append(service.ingest(oru(control, mrn="NEW-7"), interface(tenant)))

    threads = [threading.Thread(target=send, args=(f"P-{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.ack_code for r in results] == [AckCode.ACCEPT] * 3
    counts = resource_counts(ctx.engine, tenant)
    assert counts["Patient"] == 1
    assert counts["DiagnosticReport"] == 3


def test_same_control_id_from_another_sender_is_another_message(
    ctx: AppContext, service: Hl7Service, tenant: str
) -> None:
    a = service.ingest(oru("SAME-1", sender="LAB_A"), interface(tenant))
    b = service.ingest(oru("SAME-1", sender="LAB_B"), interface(tenant))
    c = service.ingest(oru("SAME-1", sender="LAB_A", facility="OTHERFAC"), interface(tenant))
    assert [r.duplicate for r in (a, b, c)] == [False, False, False]
    assert resource_counts(ctx.engine, tenant)["DiagnosticReport"] == 3
    assert len(log_rows(ctx.engine, tenant)) == 3


def test_reused_control_id_on_different_content_is_refused_not_dropped(
    ctx: AppContext, service: Hl7Service, tenant: str
) -> None:
    service.ingest(oru("REUSE-1"), interface(tenant))
    counts = resource_counts(ctx.engine, tenant)
    other = oru("REUSE-1", results=["OBX|1|NM|2345-7^Glucose^LN||180|mg/dL^mg/dL^UCUM|70-99||||F"])
    result = service.ingest(other, interface(tenant))
    assert result.ack_code is AckCode.ERROR
    assert "|205^Duplicate key identifier^HL70357|" in (result.ack or "")
    assert "ERR||MSH^1^10|" in (result.ack or "")
    assert resource_counts(ctx.engine, tenant) == counts


def test_flags_from_the_lab_library_when_the_sender_gave_none(
    ctx: AppContext, service: Hl7Service, bus: InProcessBus, tenant: str
) -> None:
    received: list[Event] = []
    bus.subscribe(
        "lab-result.received", lambda e: received.append(e) if e.tenant == tenant else None
    )
    message = oru(
        "FLAG-1",
        results=[
            # pCO2 60 mm[Hg]: beyond the critical high (54) of the packaged table.
            "OBX|1|NM|11557-6^pCO2^LN||60|mm[Hg]^mm[Hg]^UCUM|||||F",
            # 45 mm[Hg]: above normal (38-42), not critical.
            "OBX|2|NM|11557-6^pCO2^LN||45|mm[Hg]^mm[Hg]^UCUM|||||F",
            # The sender says L although the number is high: the sender's flag is kept.
            "OBX|3|NM|2345-7^Glucose^LN||180|mg/dL^mg/dL^UCUM|70-99|L|||F",
            "OBX|4|NM|2345-7^Glucose^LN||85|mg/dL^mg/dL^UCUM|70-99||||F",
        ],
    )
    result = service.ingest(message, interface(tenant))
    assert result.ack_code is AckCode.ACCEPT
    observations = [r for r in result.resources if r.startswith("Observation/")]
    codes = [
        [c["code"] for i in read(ctx, tenant, ref)["interpretation"] for c in i["coding"]]
        for ref in observations
    ]
    assert codes == [["HH"], ["H"], ["L"], ["N"]]
    (event,) = received
    assert event.payload["abnormal"] is True
    assert event.payload["critical"] is True
    assert event.payload["critical_observations"] == observations[:1]
    assert event.payload["abnormal_observations"] == observations[:3]
    assert set(event.payload) <= TOPIC_KEYS["lab-result.received"]


def test_normal_results_publish_an_event_without_flags(
    ctx: AppContext, service: Hl7Service, bus: InProcessBus, tenant: str
) -> None:
    received: list[Event] = []
    bus.subscribe("*", lambda e: received.append(e) if e.tenant == tenant else None)
    result = service.ingest(oru("NORMAL-1"), interface(tenant))
    (event,) = received
    assert event.topic == "lab-result.received"
    assert event.tenant == tenant
    report = next(r for r in result.resources if r.startswith("DiagnosticReport/"))
    patient = next(r for r in result.resources if r.startswith("Patient/"))
    assert event.payload == {
        "report": report,
        "patient": patient,
        "observations": [r for r in result.resources if r.startswith("Observation/")],
        "abnormal": False,
        "critical": False,
        "abnormal_observations": [],
        "critical_observations": [],
    }
    # Delivered after the commit, and marked so.
    (row,) = outbox_rows(ctx.engine, tenant)
    assert row.delivered_at is not None
    assert row.attempts == 1


def test_a_second_adt_for_the_same_mrn_updates_the_patient_and_keeps_the_rest(
    ctx: AppContext, service: Hl7Service, tenant: str
) -> None:
    first = service.ingest(adt("A01", "ADT-1"), interface(tenant))
    assert first.ack_code is AckCode.ACCEPT
    (patient,) = stored(ctx, tenant, "Patient")
    # The care team is set elsewhere (not by the ADT feed); an update must not erase it.
    with ctx.store(write=True, tenant=tenant) as store:
        store.update(
            "Patient",
            patient["id"],
            {**patient, "generalPractitioner": [{"reference": "Practitioner/dr-a"}]},
        )
    second = service.ingest(adt("A08", "ADT-2", family="SMITH"), interface(tenant))
    assert second.ack_code is AckCode.ACCEPT
    (updated,) = stored(ctx, tenant, "Patient")
    assert updated["id"] == patient["id"]
    assert updated["meta"]["versionId"] == "3"
    assert updated["name"][0]["family"] == "SMITH"
    assert updated["generalPractitioner"] == [{"reference": "Practitioner/dr-a"}]
    assert len(updated["identifier"]) == 1
    # A03 discharges the same visit: one Encounter, now finished.
    third = service.ingest(adt("A03", "ADT-3"), interface(tenant))
    assert third.ack_code is AckCode.ACCEPT
    (encounter,) = stored(ctx, tenant, "Encounter")
    assert encounter["status"] == "finished"
    assert encounter["subject"]["reference"] == f"Patient/{patient['id']}"
    assert resource_counts(ctx.engine, tenant) == {"Patient": 1, "Encounter": 1}


def test_patients_are_matched_by_mrn_and_assigning_authority(
    ctx: AppContext, service: Hl7Service, tenant: str
) -> None:
    authority = "HOSP&2.16.840.1.113883.19.5&ISO"
    service.ingest(adt("A04", "M-1", mrn="4711", authority=authority), interface(tenant))
    lab = service.ingest(oru("M-2", mrn="4711", authority=authority), interface(tenant))
    other = service.ingest(oru("M-3", mrn="4711", authority="OTHER"), interface(tenant))
    assert lab.ack_code is other.ack_code is AckCode.ACCEPT
    patients = {p["id"]: p for p in stored(ctx, tenant, "Patient")}
    assert len(patients) == 2
    lab_patient = next(r for r in lab.resources if r.startswith("Patient/"))
    registered = next(
        p for p in patients.values() if p["identifier"][0]["system"].startswith("urn:oid:")
    )
    assert lab_patient == f"Patient/{registered['id']}"
    for ref in lab.resources:
        if ref.startswith("Observation/"):
            assert read(ctx, tenant, ref)["subject"]["reference"] == lab_patient


def test_a_store_refusal_is_an_ae_and_stores_nothing(
    ctx: AppContext, service: Hl7Service, tenant: str
) -> None:
    # An interface allowed registrations only: its lab result is refused by the policy.
    scopes = frozenset({"system/Patient.crus", "system/Encounter.crus"})
    result = service.ingest(oru("DENY-1"), interface(tenant, scopes))
    assert result.ack_code is AckCode.ERROR
    assert "not permitted to store ServiceRequest" in (result.ack or "")
    assert "ERR||" in (result.ack or "")
    assert resource_counts(ctx.engine, tenant) == {}
    assert not outbox_rows(ctx.engine, tenant)
    assert not log_rows(ctx.engine, tenant)
    outcomes = {(r.action, r.outcome) for r in audit_rows(ctx.engine, tenant)}
    assert ("ingest", "failure") in outcomes
    assert ("create", "denied") in outcomes
    assert ("create", "success") not in outcomes  # rolled back: never happened
    # The same interface may register patients.
    assert service.ingest(adt("A04", "DENY-2"), interface(tenant, scopes)).ack_code is (
        AckCode.ACCEPT
    )


def test_an_ambiguous_patient_identifier_is_an_ae(
    ctx: AppContext, service: Hl7Service, tenant: str
) -> None:
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": "DUP"}],
    }
    with ctx.store(write=True, tenant=tenant) as store:
        store.create("Patient", dict(patient))
        store.create("Patient", dict(patient))
    authority = "HOSP&2.16.840.1.113883.19.5&ISO"
    result = service.ingest(oru("AMB-1", mrn="DUP", authority=authority), interface(tenant))
    assert result.ack_code is AckCode.ERROR
    assert "matches more than one stored record" in (result.ack or "")
    assert resource_counts(ctx.engine, tenant) == {"Patient": 2}


def test_an_internal_failure_is_an_ar_and_stores_nothing(
    ctx: AppContext, service: Hl7Service, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(store: SqlResourceStore, bundle: dict[str, Any], base: str) -> dict[str, Any]:
        store.create("Patient", {"resourceType": "Patient"})
        raise OSError("disk on fire")

    monkeypatch.setattr(service_module, "transaction", broken)
    result = service.ingest(oru("FAIL-1"), interface(tenant))
    assert result.ack_code is AckCode.REJECT
    assert "207^Application internal error^HL70357" in (result.ack or "")
    assert resource_counts(ctx.engine, tenant) == {}


def test_events_roll_back_with_the_message(
    ctx: AppContext, service: Hl7Service, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse_log(*_args: Any) -> bool:
        raise RuntimeError("log unavailable")

    monkeypatch.setattr(service_module, "_insert_log", refuse_log)
    result = service.ingest(oru("ROLL-1"), interface(tenant))
    assert result.ack_code is AckCode.REJECT
    assert outbox_rows(ctx.engine, tenant) == []
    assert resource_counts(ctx.engine, tenant) == {}


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8"])
def test_versions_2_3_to_2_8_are_taken(
    ctx: AppContext, service: Hl7Service, tenant: str, version: str
) -> None:
    result = service.ingest(oru(f"V-{version}", version=version), interface(tenant))
    assert result.ack_code is AckCode.ACCEPT
    ack = parse_message(result.ack or "")
    assert ack.version == version
    assert resource_counts(ctx.engine, tenant)["Observation"] == 2


def test_bom_line_feeds_escapes_and_repetitions(
    ctx: AppContext, service: Hl7Service, tenant: str
) -> None:
    message = b"\xef\xbb\xbf" + oru(
        "ESC-1",
        pid3="A\\T\\B^^^HOSP^MR~SECOND^^^OTHER^PI",
        results=[
            "OBX|1|ST|8251-1^Service comment^LN||Hemolysed \\T\\ lipemic \\F\\ icteric||||||F",
            "NTE|1|L|first line~second line",
        ],
        separator="\n",
    )
    result = service.ingest(message, interface(tenant))
    assert result.ack_code is AckCode.ACCEPT
    (observation,) = stored(ctx, tenant, "Observation")
    assert observation["valueString"] == "Hemolysed & lipemic | icteric"
    assert observation["note"] == [{"text": "first line\nsecond line"}]
    (patient,) = stored(ctx, tenant, "Patient")
    assert [i["value"] for i in patient["identifier"]] == ["A&B", "SECOND"]
    # Matched again by the unescaped MRN (the query escapes "&" itself).
    again = service.ingest(
        b"\xef\xbb\xbf" + message[3:].replace(b"ESC-1", b"ESC-2"), interface(tenant)
    )
    assert again.ack_code is AckCode.ACCEPT
    assert resource_counts(ctx.engine, tenant)["Patient"] == 1


def test_no_phi_in_the_message_log_or_the_outbox(
    ctx: AppContext, service: Hl7Service, tenant: str
) -> None:
    service.ingest(oru("PHI-1", mrn="CANARY-MRN-31337"), interface(tenant))
    for row in log_rows(ctx.engine, tenant):
        text = " ".join(str(v) for v in row)
        assert "CANARY" not in text
        assert "DOE" not in text
        assert "JANE" not in text
    for row in outbox_rows(ctx.engine, tenant):
        payload = orjson.loads(row.payload)
        assert set(payload) <= TOPIC_KEYS[row.topic]
        assert "CANARY" not in row.payload
        assert "DOE" not in row.payload


def test_a_log_insert_that_loses_a_race_answers_with_the_winners_ack(
    ctx: AppContext, service: Hl7Service, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = service.ingest(oru("LOST-1"), interface(tenant))
    counts = resource_counts(ctx.engine, tenant)
    real = service_module._find_logged
    calls: list[int] = []

    def miss_once(*args: Any) -> Any:
        calls.append(1)
        # The first look happens before the winner's commit would be visible.
        return None if len(calls) == 1 else real(*args)

    monkeypatch.setattr(service_module, "_find_logged", miss_once)
    again = service.ingest(oru("LOST-1"), interface(tenant))
    assert again.duplicate
    assert again.ack == first.ack
    assert resource_counts(ctx.engine, tenant) == counts
    assert len(calls) == 2


def test_an_overlong_control_id_is_still_deduplicated(
    ctx: AppContext, service: Hl7Service, tenant: str
) -> None:
    control = "L" * 250  # longer than MSH-10 allows (199): kept as far as the log can
    first = service.ingest(oru(control), interface(tenant))
    again = service.ingest(oru(control), interface(tenant))
    assert first.ack_code is AckCode.ACCEPT
    assert again.duplicate
    assert resource_counts(ctx.engine, tenant)["DiagnosticReport"] == 1
