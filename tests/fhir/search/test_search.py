"""Query semantics of http://hl7.org/fhir/R4/search.html, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from carechart.crypto.keys import KeyRing
from carechart.db.search_schema import INDEX_TABLES
from carechart.errors import BadRequest
from carechart.fhir.search import confirm_blind_match, search, search_ids_for_condition

Put = Callable[..., str]


@pytest.fixture
def find(conn: Connection, keyring: KeyRing, tenant: str) -> Any:
    def _find(rtype: str, query: str, **kwargs: Any) -> set[str]:
        params = [tuple(p.split("=", 1)) for p in query.split("&")] if query else []
        return set(search(conn, keyring, tenant, rtype, params, **kwargs).ids)  # type: ignore[arg-type]

    return _find


def obs(code: str = "718-7", system: str = "http://loinc.org", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": system, "code": code}]},
        **extra,
    }


def test_string_default_exact_and_contains(put: Put, find: Any) -> None:
    a = put({"resourceType": "Organization", "name": "Hôpital Saint-Éloi"})
    b = put({"resourceType": "Organization", "name": "Saint Mary"})
    assert find("Organization", "name=hopital") == {a}
    assert find("Organization", "name=SAINT") == {b}
    assert find("Organization", "name:contains=eloi") == {a}
    assert find("Organization", "name:exact=Saint Mary") == {b}
    assert find("Organization", "name:exact=saint mary") == set()
    assert find("Organization", "name=50%") == set()  # LIKE wildcards are literal
    assert find("Organization", "name=hop,saint") == {a, b}  # OR
    assert find("Organization", "name=saint&name:contains=mar") == {b}  # AND


def test_token_forms_and_modifiers(put: Put, find: Any) -> None:
    a = put(
        obs(
            "718-7",
            identifier=[
                {
                    "system": "urn:ids",
                    "value": "X1",
                    "type": {"coding": [{"system": "urn:t", "code": "MR"}]},
                }
            ],
        )
    )
    b = put(obs("718-7", system="urn:local", code_text="x"))
    c = put(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"code": "nosys"}], "text": "Hémoglobine totale"},
        }
    )
    assert find("Observation", "code=718-7") == {a, b}
    assert find("Observation", "code=http://loinc.org|718-7") == {a}
    assert find("Observation", "code=|nosys") == {c}
    assert find("Observation", "code=urn:local|") == {b}
    assert find("Observation", "code:not=http://loinc.org|718-7") == {b, c}
    assert find("Observation", "code:text=hemoglobine") == {c}
    assert find("Observation", "identifier:of-type=urn:t|MR|X1") == {a}
    assert find("Observation", "identifier:missing=true") == {b, c}
    assert find("Observation", "identifier:missing=false") == {a}
    assert find("Observation", f"_id={a},{c}") == {a, c}


def test_date_prefixes(put: Put, find: Any) -> None:
    day = put(obs(effectiveDateTime="2020-05-01"))
    instant = put(obs(effectiveDateTime="2020-05-01T10:30:00+02:00"))
    period = put(obs(effectivePeriod={"start": "2020-04-15", "end": "2020-05-20"}))
    later = put(obs(effectiveDateTime="2021-01-01"))
    assert find("Observation", "date=2020-05-01") == {day, instant}
    assert find("Observation", "date=2020-05") == {day, instant}
    assert find("Observation", "date=2020") == {day, instant, period}
    assert find("Observation", "date=2020-05-01T08:30:00Z") == {instant}
    assert find("Observation", "date=ne2020-05-01") == {period, later}
    assert find("Observation", "date=gt2020-12-31") == {later}
    assert find("Observation", "date=lt2020-05-01") == {period}
    assert find("Observation", "date=ge2021") == {later}
    assert find("Observation", "date=le2020-05-01") == {day, instant, period}
    assert find("Observation", "date=sa2020-05-01") == {later}
    assert find("Observation", "date=eb2020-05-01") == set()
    assert find("Observation", "date=eb2020-06") == {day, instant, period}
    assert later in find("Observation", "date=ap2021-01-02")
    # The period overlaps both sides, so it satisfies ge (ends after) and lt (starts before).
    assert find("Observation", "date=ge2020-05-01&date=lt2020-05-02") == {day, instant, period}
    with pytest.raises(BadRequest, match="date"):
        find("Observation", "date=2020-13-01")


def test_number_and_quantity(put: Put, find: Any) -> None:
    low = put(
        {
            "resourceType": "RiskAssessment",
            "status": "final",
            "subject": {"reference": "Patient/p"},
            "prediction": [{"probabilityDecimal": 0.25}],
        }
    )
    high = put(
        {
            "resourceType": "RiskAssessment",
            "status": "final",
            "subject": {"reference": "Patient/p"},
            "prediction": [{"probabilityDecimal": 0.9}],
        }
    )
    assert find("RiskAssessment", "probability=0.25") == {low}
    assert find("RiskAssessment", "probability=0.3") == {low}  # [0.25, 0.35)
    assert find("RiskAssessment", "probability=gt0.5") == {high}
    assert find("RiskAssessment", "probability=le0.25") == {low}
    assert find("RiskAssessment", "probability=ap1") == {high}
    mg = put(
        obs(
            valueQuantity={
                "value": 5.4,
                "unit": "mg",
                "system": "http://unitsofmeasure.org",
                "code": "mg",
            }
        )
    )
    g = put(
        obs(
            valueQuantity={
                "value": 5.4,
                "unit": "g",
                "system": "http://unitsofmeasure.org",
                "code": "g",
            }
        )
    )
    assert find("Observation", "value-quantity=5.4") == {mg, g}
    assert find("Observation", "value-quantity=5.4|http://unitsofmeasure.org|mg") == {mg}
    assert find("Observation", "value-quantity=gt5||g") == {g}
    assert find("Observation", "value-quantity=lt5") == set()
    with pytest.raises(BadRequest, match="value-quantity"):
        find("Observation", "value-quantity=abc")


def test_reference_forms(put: Put, find: Any) -> None:
    a = put(obs(subject={"reference": "Patient/p1"}))
    b = put(obs(subject={"reference": "Group/p1"}))
    c = put(obs(subject={"reference": "http://other.org/fhir/Patient/p9"}))
    assert find("Observation", "subject=p1") == {a, b}
    assert find("Observation", "subject=Patient/p1") == {a}
    assert find("Observation", "subject:Group=p1") == {b}
    assert find("Observation", "subject=http://other.org/fhir/Patient/p9") == {c}
    assert find("Observation", "patient=p1") == {a}
    assert find("Observation", "subject:missing=true") == set()
    with pytest.raises(BadRequest, match="subject"):
        find("Observation", "subject:Basic=p1")


def test_uri_below_and_above(put: Put, find: Any) -> None:
    a = put(
        {"resourceType": "ValueSet", "status": "active", "url": "http://acme.org/fhir/ValueSet/a"}
    )
    b = put({"resourceType": "ValueSet", "status": "active", "url": "http://acme.org/fhir"})
    assert find("ValueSet", "url=http://acme.org/fhir") == {b}
    assert find("ValueSet", "url:below=http://acme.org/fhir") == {a, b}
    assert find("ValueSet", "url:above=http://acme.org/fhir/ValueSet/a/x") == {a, b}


def test_resource_level_parameters(put: Put, find: Any) -> None:
    a = put(
        obs(
            meta={
                "tag": [{"system": "urn:tags", "code": "vip"}],
                "profile": ["http://p/x"],
                "security": [{"system": "urn:sec", "code": "R"}],
                "source": "urn:src",
            }
        )
    )
    b = put(obs())
    assert find("Observation", "_tag=urn:tags|vip") == {a}
    assert find("Observation", "_profile=http://p/x") == {a}
    assert find("Observation", "_security=R") == {a}
    assert find("Observation", "_source=urn:src") == {a}
    assert find("Observation", "_lastUpdated=ge2024-01-01") == {a, b}
    assert find("Observation", "_lastUpdated=lt2000") == set()


def test_deleted_resources_and_other_tenants_never_match(
    other_tenant: str, put: Put, find: Any, conn: Connection, keyring: KeyRing, store_resource: Any
) -> None:
    alive = put(obs())
    put(obs(), deleted=True)
    store_resource(conn, keyring, other_tenant, obs())
    assert find("Observation", "code=718-7") == {alive}


def test_sort_count_offset_and_total(
    put: Put, conn: Connection, keyring: KeyRing, tenant: str
) -> None:
    ids = {d: put(obs(effectiveDateTime=d)) for d in ["2020-03-01", "2020-01-01", "2020-02-01"]}
    none = put(obs())
    result = search(conn, keyring, tenant, "Observation", [("_sort", "date")])
    assert result.ids == [ids["2020-01-01"], ids["2020-02-01"], ids["2020-03-01"], none]
    result = search(conn, keyring, tenant, "Observation", [("_sort", "-date,_id")])
    assert result.ids == [ids["2020-03-01"], ids["2020-02-01"], ids["2020-01-01"], none]
    page = search(
        conn, keyring, tenant, "Observation", [("_sort", "date"), ("_count", "2"), ("_offset", "1")]
    )
    assert page.ids == [ids["2020-02-01"], ids["2020-03-01"]]
    assert page.total == 4
    default = search(conn, keyring, tenant, "Observation", [])
    assert default.ids == [*ids.values(), none]  # by last_updated, then id
    assert search(conn, keyring, tenant, "Observation", [("_count", "0")]).ids == []
    with pytest.raises(BadRequest, match="_sort"):
        search(conn, keyring, tenant, "Observation", [("_sort", "nope")])
    with pytest.raises(BadRequest, match="_count"):
        search(conn, keyring, tenant, "Observation", [("_count", "-1")])


def test_unknown_parameters_reported_or_rejected(
    put: Put, conn: Connection, keyring: KeyRing, tenant: str
) -> None:
    a = put(obs())
    result = search(
        conn,
        keyring,
        tenant,
        "Observation",
        [("bogus", "1"), ("subject.bogus", "x"), ("code", "718-7"), ("_summary", "count")],
    )
    assert result.ids == [a]
    assert result.unknown_params == ["bogus", "subject.bogus"]
    with pytest.raises(BadRequest, match="bogus"):
        search(conn, keyring, tenant, "Observation", [("bogus", "1")], strict=True)
    with pytest.raises(BadRequest, match="code"):
        search(conn, keyring, tenant, "Observation", [("code:below", "1")])


def test_conditional_criteria(put: Put, conn: Connection, keyring: KeyRing, tenant: str) -> None:
    a = put({"resourceType": "Patient", "identifier": [{"system": "http://x", "value": "123"}]})
    put({"resourceType": "Patient", "identifier": [{"system": "http://x", "value": "124"}]})
    assert search_ids_for_condition(
        conn, keyring, tenant, "Patient", "identifier=http://x|123"
    ) == [a]
    assert search_ids_for_condition(
        conn, keyring, tenant, "Patient", "?identifier=http%3A%2F%2Fx%7C123"
    ) == [a]
    with pytest.raises(BadRequest):
        search_ids_for_condition(conn, keyring, tenant, "Patient", "nonsense=1")


CANARY_FAMILY = "Zqxwvutsky"
CANARY_GIVEN = "Quentinella"
CANARY_PHONE = "+1 555 867 5309"
CANARY_SSN = "987-65-4329"
CANARY_EMAIL = "canary.bird@example.org"


def canary_patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "name": [
            {
                "family": CANARY_FAMILY,
                "given": [CANARY_GIVEN],
                "text": f"{CANARY_GIVEN} {CANARY_FAMILY}",
            }
        ],
        "telecom": [
            {"system": "phone", "value": CANARY_PHONE},
            {"system": "email", "value": CANARY_EMAIL},
        ],
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": CANARY_SSN}],
        "birthDate": "1961-04-12",
        "address": [{"line": ["42 Canaryweg"], "city": "Vogelstadt", "postalCode": "99999"}],
        "gender": "female",
    }


def test_blind_index_holds_no_phi_plaintext(put: Put, conn: Connection, tenant: str) -> None:
    put(canary_patient())
    owner = {"tenant_id", "resource_type", "resource_id"}
    dump = []
    for kind, table in INDEX_TABLES.items():
        for row in conn.execute(sa.select(table).where(table.c.tenant_id == tenant)).mappings():
            if kind == "blind":
                assert re.fullmatch(r"[0-9a-f]{8}", row["token"])  # 32-bit HMAC, nothing else
                continue
            dump.append(" ".join(str(v) for k, v in row.items() if k not in owner))
    text = "\n".join(dump).casefold()
    assert "female" in text  # a non-PHI token stays searchable in plaintext
    squeezed = text.replace("-", "").replace(" ", "").replace("+", "")
    for canary in [CANARY_FAMILY, CANARY_GIVEN, CANARY_EMAIL, "canaryweg", "vogelstadt", "1961"]:
        assert canary.casefold() not in text
    for number in ["5558675309", "987654329", "99999", "19610412"]:
        assert number not in squeezed
    for prefix in ["zqx", "quent"]:
        assert prefix not in text


def test_blind_parameters_search_by_prefix_equality_and_phonetics(put: Put, find: Any) -> None:
    a = put(canary_patient())
    other = put({"resourceType": "Patient", "name": [{"family": "Smith"}], "birthDate": "1961"})
    assert find("Patient", "family=zqx") == {a}
    assert find("Patient", "name=QUENT") == {a}
    assert find("Patient", f"family:exact={CANARY_FAMILY}") == {a}
    assert find("Patient", "given=zqx") == set()
    assert find("Patient", "phone=+15558675309") == {a}
    assert find("Patient", f"email={CANARY_EMAIL.upper()}") == {a}
    assert find("Patient", f"identifier=http://hl7.org/fhir/sid/us-ssn|{CANARY_SSN}") == {a}
    assert find("Patient", "identifier=http://hl7.org/fhir/sid/us-ssn|") == {a}
    assert find("Patient", "birthdate=1961-04-12") == {a}
    assert find("Patient", "birthdate=1961") == {a, other}
    assert find("Patient", "address-city=vogel") == {a}
    assert find("Patient", "phonetic=Smyth") == {other}
    assert find("Patient", "family:missing=true") == set()
    assert find("Patient", "gender=female") == {a}
    with pytest.raises(BadRequest, match="family"):
        find("Patient", "family:contains=xw")
    with pytest.raises(BadRequest, match="birthdate"):
        find("Patient", "birthdate=ge1960")
    with pytest.raises(BadRequest, match="blind"):
        find("Patient", "_sort=family")


def test_confirm_blind_match_checks_the_body_exactly() -> None:
    body = canary_patient()
    assert confirm_blind_match("Patient", body, "family", "zqxw")
    assert not confirm_blind_match("Patient", body, "family", "zqxa")
    assert confirm_blind_match("Patient", body, "family", CANARY_FAMILY + "")
    assert not confirm_blind_match("Patient", body, "family", CANARY_FAMILY + "abcdefghijk")
    assert confirm_blind_match("Patient", body, "phone", "15558675309,+15558675309")
    assert confirm_blind_match("Patient", body, "birthdate", "1961-04")
    assert not confirm_blind_match(
        "Patient", body, "identifier:not", f"http://hl7.org/fhir/sid/us-ssn|{CANARY_SSN}"
    )
