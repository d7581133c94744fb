"""The specification's example resources are found by every search parameter they have a
value for (the search issue's acceptance criterion), over HTTP on every engine.

For each example and each parameter :func:`carechart.fhir.search.supported_parameters`
lists, the parameter's FHIRPath (the engine's compiled path) selects the example's values;
a query value is then derived from the first value *the way a client would write it*
(http://hl7.org/fhir/R4/search.html §3.1.1.5: a token as system|code, a string as a prefix,
a date as its own text with ``eq``, a reference as Type/id, a quantity as
number|system|code, a composite as its components joined by ``$``, with §3.1.1.4 escaping)
and the search goes through the whole stack: HTTP parsing, the index tables or blind
indexes (confirmed against the body by the router), paging. The example's id must be
among the matches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from carechart import jsonio
from carechart.fhir.search import supported_parameters
from carechart.fhir.search.extract import composite_plans, plan_for
from carechart.fhir.search.fhirpath import Node

FHIR = {"Content-Type": "application/fhir+json", "Prefer": "handling=strict"}
PACKAGE = Path.home() / ".cache" / "carechart" / "hl7.fhir.r4.examples-4.0.1" / "package"

#: The clinical core first, then every other type with examples that the validator takes.
# AuditEvent is absent: the server writes the audit trail itself and nobody may create one
# (its search is tested in tests/audit).
TYPES = (
    "Patient", "Observation", "Condition", "Encounter", "MedicationRequest",
    "AllergyIntolerance", "Immunization", "Procedure", "DiagnosticReport",
    "Practitioner", "Organization", "Location", "PractitionerRole", "RelatedPerson",
    "CarePlan", "CareTeam", "Goal", "ServiceRequest", "Specimen", "Device",
    "Medication", "MedicationStatement", "MedicationAdministration", "Appointment",
    "Coverage", "DocumentReference", "Composition", "QuestionnaireResponse",
    "Account", "ActivityDefinition", "AdverseEvent", "AppointmentResponse",
    "Basic", "BodyStructure", "ChargeItem", "Claim", "ClaimResponse",
    "ClinicalImpression", "Communication", "CommunicationRequest", "Consent",
    "Contract", "CoverageEligibilityRequest", "DetectedIssue", "DeviceRequest",
    "Endpoint", "EpisodeOfCare", "ExplanationOfBenefit",
    "FamilyMemberHistory", "Flag", "Group", "HealthcareService", "ImagingStudy",
    "ImmunizationRecommendation", "Invoice", "Library", "List", "Measure",
    "MeasureReport", "Media", "MedicationDispense", "MolecularSequence",
    "NutritionOrder", "Person", "PlanDefinition", "Provenance", "Questionnaire",
    "ResearchStudy", "ResearchSubject", "RiskAssessment", "Schedule", "Slot",
    "Substance", "SupplyDelivery", "SupplyRequest", "Task", "VisionPrescription",
)  # fmt: skip

#: Official examples that break the R4 definitions (the validator refuses them with 400).
INVALID_OFFICIAL = {
    "MedicationRequest-medrx0301": "dispenseRequest.performer references a Practitioner",
    "Observation-clinical-gender": "performer references an Encounter",
    "Questionnaire-qs1": "nested items lack the required linkId",
}

#: Kinds of value that no R4 search syntax can name, so they are counted, not searched.
#: Each kind is recognised by :func:`query_for` from the value itself.
UNSEARCHABLE = {
    "contained": "a reference to a contained resource (#id): R4 reaches contained "
    "resources through _contained, not through the reference",
    "display-only": "a Reference with only a display names no resource or identifier",
    "free-text date": "a date parameter over a string choice (occurrenceString "
    '"January 2012", scheduledString "daily") holds no date',
    "rules-only timing": "a Timing of repeat rules alone (3 per week) has no date",
    "text-only code in a composite": "a composite component takes no modifier, and a "
    "CodeableConcept of text alone is matched only by :text",
    "sampled data": "SampledData (a series of readings) has no one quantity to compare",
    "other datatype": "the expression selects a datatype the parameter type cannot name "
    "(Consent.source as an Attachment for a reference, Group.characteristic.value as a "
    "Reference for a token)",
    "empty identifier": "an Identifier with neither system nor value (only use) identifies nothing",
    "no soundex": "Soundex is defined over Latin letters; a name in Han characters has no code",
}


def _example_files(resource_type: str) -> list[Path]:
    if not PACKAGE.exists():
        from tools.fhir_package import ensure_package

        ensure_package()
    return sorted(PACKAGE.glob(f"{resource_type}-*.json"))


# -- deriving a query value from a value -------------------------------------------------


def escape(text: str) -> str:
    """§3.1.1.4: a literal ``\\`` ``,`` ``$`` ``|`` in a value is backslash-escaped."""
    for ch in "\\,$|":
        text = text.replace(ch, "\\" + ch)
    return text


def _number_text(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return None
    text = getattr(value, "text", None)
    return text if isinstance(text, str) else str(value)


_CONTACT_SYSTEMS = {"phone", "fax", "email", "pager", "url", "sms", "other"}


def _token_query(value: Any) -> tuple[str, str] | None:
    """(modifier, value) for a token: code, Coding, CodeableConcept, Identifier,
    ContactPoint or boolean (§3.1.1.5.5)."""
    if isinstance(value, bool):
        return "", "true" if value else "false"
    if isinstance(value, str):
        return ("", escape(value)) if value.strip() else None
    number = _number_text(value)
    if number is not None:
        return "", number
    if not isinstance(value, dict):
        return None
    codings = value.get("coding")
    if isinstance(codings, list):  # CodeableConcept
        for coding in codings:
            found = _token_query(coding) if isinstance(coding, dict) else None
            if found is not None:
                return found
        # No coding has a code: :text matches CodeableConcept.text or a Coding.display.
        displays = [c.get("display") for c in codings if isinstance(c, dict)]
        text = next((t for t in (value.get("text"), *displays) if isinstance(t, str)), None)
        return ("text", escape(text[:12].rstrip())) if text else None
    if "text" in value and len(value) == 1:  # a CodeableConcept of text alone
        return "text", escape(str(value["text"])[:12].rstrip())
    system = value.get("system")
    if "value" in value and system in _CONTACT_SYSTEMS:  # ContactPoint
        return "", escape(str(value["value"]))
    code = value.get("code", value.get("value"))  # Coding, Identifier
    if not isinstance(code, str):
        # Only a system (an Identifier's namespace with no value): "system|".
        return ("", escape(system) + "|") if isinstance(system, str) else None
    if isinstance(system, str):
        return "", f"{escape(system)}|{escape(code)}"
    return "", escape(code)


_NAME_PARTS = ("family", "given", "text", "prefix", "suffix")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")


def _string_query(value: Any) -> str | None:
    """A prefix of the value's first part (HumanName: the family name first; Address: the
    first line first), §3.1.1.5.7."""
    text: Any = value
    if isinstance(value, dict):
        text = None
        for key in (*_NAME_PARTS, *_ADDRESS_PARTS, "display"):
            part = value.get(key)
            part = part[0] if isinstance(part, list) and part else part
            if isinstance(part, str) and part.strip():
                text = part
                break
    if not isinstance(text, str) or not text.strip():
        return None
    return escape(text.strip()[:8].rstrip())


def _date_queries(value: Any, value_type: str | None) -> list[str] | str | None:
    """eq of a date/dateTime/instant's own text; a Period or Timing by ge its start and le
    its end (eq would need the search range to contain the whole period), §3.1.1.5.1."""
    if isinstance(value, str):
        return "free-text date" if value_type == "string" else ["eq" + value]
    if not isinstance(value, dict):
        return None
    if "start" in value or "end" in value:
        out = []
        if isinstance(value.get("start"), str):
            out.append("ge" + value["start"])
        if isinstance(value.get("end"), str):
            out.append("le" + value["end"])
        return out or None
    events = [e for e in value.get("event", ()) if isinstance(e, str)]
    if events:
        return ["ge" + min(events), "le" + max(events)]
    bounds = (value.get("repeat") or {}).get("boundsPeriod")
    if isinstance(bounds, dict):
        return _date_queries(bounds, "Period")
    return "rules-only timing" if "repeat" in value else None


def _reference_query(value: Any) -> tuple[str, str] | str | None:
    """(modifier, value): Type/id for a relative reference, the URL for an absolute one or a
    canonical, ``:identifier`` for a logical reference, §3.1.1.5.6."""
    ref = value.get("reference") if isinstance(value, dict) else value
    if isinstance(ref, str) and ref.startswith("#"):
        return "contained"
    if isinstance(ref, str) and ref:
        if "://" in ref or ref.startswith("urn:"):
            url, bar, version = ref.partition("|")
            return "", escape(url) + bar + escape(version)
        parts = ref.split("/")
        return "", "/".join(parts[:2])
    identifier = value.get("identifier") if isinstance(value, dict) else None
    if isinstance(identifier, dict):
        found = _token_query(identifier)
        if found is not None:
            return "identifier", found[1]
    return "display-only" if isinstance(value, dict) and "display" in value else None


def _quantity_queries(value: Any) -> list[str] | str | None:
    """number|system|code (Money: its currency in ISO 4217); a Range by ge its low and le
    its high; a comparator quantity by the matching prefix, §3.1.1.5.4."""
    if not isinstance(value, dict):
        return None
    if "low" in value or "high" in value:
        out = []
        for end, prefix in (("low", "ge"), ("high", "le")):
            found = _quantity_queries(value.get(end))
            if isinstance(found, list) and found:
                out.append(prefix + found[0].removeprefix("eq"))
        return out or None
    number = _number_text(value.get("value"))
    if number is None:
        return "sampled data" if "data" in value or "origin" in value else None
    prefix = {"<": "le", "<=": "le", ">": "ge", ">=": "ge"}.get(value.get("comparator", ""), "eq")
    if "currency" in value:
        return [f"{prefix}{number}|urn:iso:std:iso:4217|{escape(value['currency'])}"]
    system, code, unit = value.get("system"), value.get("code"), value.get("unit")
    if isinstance(system, str) and isinstance(code, str):
        return [f"{prefix}{number}|{escape(system)}|{escape(code)}"]
    if isinstance(unit, str):
        return [f"{prefix}{number}||{escape(unit)}"]
    return [prefix + number]


@dataclass(frozen=True)
class Query:
    """The parameters (AND-ed) that must find the example."""

    params: tuple[tuple[str, str], ...]


def query_for(param_type: str, code: str, value: Any, value_type: str | None) -> Query | str | None:
    """The search a client would write to find a resource holding ``value`` in ``code``;
    an :data:`UNSEARCHABLE` kind when none can; None when ``value`` has no content."""
    if param_type == "token":
        if value_type == "Reference":
            return "other datatype"
        if isinstance(value, dict) and set(value) <= {"use", "type", "period", "assigner"}:
            return "empty identifier"
        token = _token_query(value)
        if token is None:
            return None
        modifier, text = token
        return Query(((f"{code}:{modifier}" if modifier else code, text),))
    if param_type == "string" and code == "phonetic":
        # Phonetic matching compares sound codes of whole names, not prefixes.
        name = _phonetic_name(value)
        if name is None:
            return None
        if not any("a" <= ch.lower() <= "z" for ch in name):
            return "no soundex"
        return Query(((code, escape(name)),))
    if param_type == "string":
        prefix = _string_query(value)
        return None if prefix is None else Query(((code, prefix),))
    if param_type == "date":
        dates = _date_queries(value, value_type)
        if isinstance(dates, str):
            return dates
        return None if not dates else Query(tuple((code, d) for d in dates))
    if param_type == "reference":
        if value_type == "Attachment":
            return "other datatype"
        ref = _reference_query(value)
        if ref is None or isinstance(ref, str):
            return ref
        modifier, text = ref
        return Query(((f"{code}:{modifier}" if modifier else code, text),))
    if param_type == "quantity":
        quantities = _quantity_queries(value)
        if isinstance(quantities, str):
            return quantities
        return None if not quantities else Query(tuple((code, q) for q in quantities))
    if param_type == "number":
        number = _number_text(value)
        return None if number is None else Query(((code, number),))
    if param_type == "uri":
        return Query(((code, escape(value)),)) if isinstance(value, str) and value else None
    raise AssertionError(f"no query rule for a {param_type} parameter")


def _phonetic_name(value: Any) -> str | None:
    """The family name, else the first given name, else the first word of the text."""
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        return None
    given = value.get("given")
    text = value.get("text")
    for name in (
        value.get("family"),
        given[0] if isinstance(given, list) and given else None,
        text.split()[0] if isinstance(text, str) and text.split() else None,
    ):
        if isinstance(name, str) and name.strip():
            return name
    return None


def _component_value(param_type: str, value: Any, value_type: str | None) -> str | None:
    """One composite component (§3.1.1.5.8): the component's own syntax, without modifiers
    or AND-ed parts (a Period or Range component is searched by its start or low)."""
    query = query_for(param_type, "c", value, value_type)
    if not isinstance(query, Query) or query.params[0][0] != "c":
        return None
    # A Period or Range component is searched by its start or low (ge...).
    return query.params[0][1]


def queries_for(
    resource_type: str, body: dict[str, Any]
) -> Iterator[tuple[str, Query | str | None]]:
    """(parameter, query) for every supported parameter with a value in ``body``; instead
    of a query, the :data:`UNSEARCHABLE` kind of the value, or None when a value was
    selected but this test cannot tell how to search for it (a failure)."""
    plans = plan_for(resource_type)
    composites = composite_plans(resource_type)
    for param in supported_parameters(resource_type):
        if param.code == "_id":
            yield "_id", Query((("_id", body["id"]),))
        elif param.composite:
            composite = composites[param.code]
            present, query = _composite_query(composite, composite.path.evaluate(body), body)
            if present:
                yield param.code, query
        else:
            nodes = plans[param.code].path.evaluate(body)
            if nodes:
                yield param.code, _first_query(param.type, param.code, nodes)


def _first_query(param_type: str, code: str, nodes: list[Node]) -> Query | str | None:
    """The query for the first searchable value, else the kind of the first unsearchable."""
    kinds: list[str] = []
    for value, value_type in nodes:
        query = query_for(param_type, code, value, value_type)
        if isinstance(query, Query):
            return query
        if query is not None:
            kinds.append(query)
    return kinds[0] if kinds else None


def _composite_query(
    composite: Any, focuses: list[Node], body: Any
) -> tuple[bool, Query | str | None]:
    """(whether some focus has every component, the query for the first such focus whose
    components all have a searchable value, else the :data:`UNSEARCHABLE` kind found)."""
    complete = False
    for focus, _type in focuses:
        selected = [c.path.evaluate(focus, body) for c in composite.components]
        if not all(selected):
            continue
        complete = True
        parts = [
            next((v for v in (_component_value(c.type, v, t) for v, t in nodes) if v), None)
            for c, nodes in zip(composite.components, selected, strict=True)
        ]
        if all(parts):
            return True, Query(((composite.code, "$".join(p for p in parts if p)),))
        for component, nodes in zip(composite.components, selected, strict=True):
            kinds = [query_for(component.type, "c", v, t) for v, t in nodes]
            if kinds and all(isinstance(k, str) for k in kinds):
                return True, str(kinds[0])
            modifiers = [(_token_query(v) or ("", ""))[0] for v, _t in nodes]
            if component.type == "token" and all(m == "text" for m in modifiers):
                return True, "text-only code in a composite"
    return complete, None


# -- the test ------------------------------------------------------------------------------


def _matching_ids(client: TestClient, resource_type: str, query: Query) -> list[str] | str:
    """Every matching id, following the searchset's next links; an error's text if any."""
    response = client.get(
        f"/fhir/{resource_type}", params=[*query.params, ("_elements", "id")], headers=FHIR
    )
    ids: list[str] = []
    while True:
        if response.status_code != 200:
            return f"{response.status_code}: {response.text[:300]}"
        bundle = response.json()
        ids += [
            e["resource"]["id"] for e in bundle.get("entry", ()) if e["search"]["mode"] == "match"
        ]
        following = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not following:
            return ids
        response = client.get(following[0], headers=FHIR)


@pytest.mark.parametrize("resource_type", TYPES)
def test_spec_examples_are_found_by_every_parameter_they_have_a_value_for(
    client: TestClient, resource_type: str
) -> None:
    stored: list[tuple[str, dict[str, Any]]] = []
    for path in _example_files(resource_type):
        body = jsonio.loads(path.read_bytes())
        if body.get("resourceType") != resource_type:
            continue
        response = client.put(
            f"/fhir/{resource_type}/{body['id']}", content=path.read_bytes(), headers=FHIR
        )
        if path.stem in INVALID_OFFICIAL:
            assert response.status_code == 400, response.text
            continue
        assert response.status_code in (200, 201), f"{path.stem}: {response.text}"
        # The indexed resource is the stored one (meta.lastUpdated is the server's).
        served = client.get(f"/fhir/{resource_type}/{body['id']}")
        stored.append((path.stem, jsonio.loads(served.content)))
    assert stored

    failures: list[str] = []
    searched = 0
    for stem, body in stored:
        for code, query in queries_for(resource_type, body):
            if isinstance(query, str):
                assert query in UNSEARCHABLE, f"{stem} {code}: {query}"
                continue
            if query is None:
                failures.append(f"{stem} {code}: a value is selected but no query expresses it")
                continue
            searched += 1
            found = _matching_ids(client, resource_type, query)
            if isinstance(found, str) or body["id"] not in found:
                outcome = found if isinstance(found, str) else f"{len(found)} other matches"
                failures.append(f"{stem} {code}: {list(query.params)} -> {outcome}")
    assert not failures, "\n".join(failures)
    # Every example was searched at least by _id and by some parameter of its content.
    assert searched > 2 * len(stored)


# -- regressions the examples found ------------------------------------------------------


def _put(client: TestClient, body: dict[str, Any]) -> None:
    response = client.put(
        f"/fhir/{body['resourceType']}/{body['id']}", content=jsonio.dumps(body), headers=FHIR
    )
    assert response.status_code in (200, 201), response.text


def _ids(client: TestClient, resource_type: str, *params: tuple[str, str]) -> set[str]:
    found = _matching_ids(client, resource_type, Query(params))
    assert not isinstance(found, str), found
    return set(found)


def test_deceased_false_finds_a_patient_without_a_deceased_element(client: TestClient) -> None:
    # Patient.deceased.exists() and Patient.deceased != false is false without the element;
    # extraction skipped the expression because the resource lacks "deceased".
    _put(client, {"resourceType": "Patient", "id": "alive", "gender": "female"})
    _put(client, {"resourceType": "Patient", "id": "dead", "deceasedBoolean": True})
    assert _ids(client, "Patient", ("deceased", "false")) == {"alive"}
    assert _ids(client, "Patient", ("deceased", "true")) == {"dead"}


def test_document_relationship_composite_types_code_as_token_and_target_as_reference(
    client: TestClient,
) -> None:
    # R4 lists the components crosswise (code -> relatesto, target -> relation).
    components = composite_plans("DocumentReference")["relationship"].components
    assert [(c.type, c.path.expression) for c in components] == [
        ("token", "code"),
        ("reference", "target"),
    ]
    _put(
        client,
        {
            "resourceType": "DocumentReference",
            "id": "d2",
            "status": "current",
            "content": [{"attachment": {"url": "http://example.org/d2"}}],
            "relatesTo": [{"code": "appends", "target": {"reference": "DocumentReference/d1"}}],
        },
    )
    found = _ids(client, "DocumentReference", ("relationship", "appends$DocumentReference/d1"))
    assert found == {"d2"}
    assert not _ids(client, "DocumentReference", ("relationship", "replaces$DocumentReference/d1"))


def test_an_element_named_like_a_choice_is_not_the_choice() -> None:
    # performerType is its own element, not a performer[x]: performer selects nothing.
    request = {"resourceType": "ServiceRequest", "performerType": {"text": "Nurse"}}
    assert plan_for("ServiceRequest")["performer"].path.evaluate(request) == []
    observation = {"resourceType": "Observation", "valueQuantity": {"value": 1}}
    assert plan_for("Observation")["value-quantity"].path.evaluate(observation) == [
        ({"value": 1}, "Quantity")
    ]


def test_a_number_finer_than_a_double_equals_itself(client: TestClient) -> None:
    # 66.899999999999991 +- 5e-16 rounds to the stored double at both ends of the range.
    _put(
        client,
        {
            "resourceType": "Observation",
            "id": "height",
            "status": "final",
            "code": {"text": "height"},
            "valueQuantity": {"value": jsonio.loads(b"66.899999999999991"), "unit": "in"},
        },
    )
    assert _ids(client, "Observation", ("value-quantity", "66.899999999999991")) == {"height"}
    assert _ids(client, "Observation", ("value-quantity", "66.9")) == {"height"}
    assert not _ids(client, "Observation", ("value-quantity", "66.8"))


def test_an_identifier_with_a_system_and_no_value_is_found_by_system(client: TestClient) -> None:
    _put(
        client,
        {
            "resourceType": "RelatedPerson",
            "id": "r1",
            "patient": {"reference": "Patient/p1"},
            "identifier": [{"system": "urn:oid:2.16.840.1.113883.2.4.6.3"}],
        },
    )
    assert _ids(client, "RelatedPerson", ("identifier", "urn:oid:2.16.840.1.113883.2.4.6.3|")) == {
        "r1"
    }


def test_phonetic_uses_the_words_of_a_name_given_only_as_text(client: TestClient) -> None:
    _put(
        client,
        {
            "resourceType": "Practitioner",
            "id": "pr1",
            "name": [{"text": "Juri van Gelder"}],
        },
    )
    assert _ids(client, "Practitioner", ("phonetic", "Geldar")) == {"pr1"}
    assert not _ids(client, "Practitioner", ("phonetic", "Smith"))


def test_text_modifier_matches_a_coding_given_only_by_display(client: TestClient) -> None:
    _put(
        client,
        {
            "resourceType": "HealthcareService",
            "id": "hs1",
            "characteristic": [{"coding": [{"display": "Wheelchair access"}]}],
        },
    )
    assert _ids(client, "HealthcareService", ("characteristic:text", "wheelchair")) == {"hs1"}


def test_a_canonical_given_as_a_bare_id_is_found_by_that_id(client: TestClient) -> None:
    _put(
        client,
        {
            "resourceType": "Library",
            "id": "lib2",
            "status": "active",
            "type": {"coding": [{"code": "logic-library"}]},
            "relatedArtifact": [{"type": "predecessor", "resource": "lib1"}],
        },
    )
    assert _ids(client, "Library", ("predecessor", "lib1")) == {"lib2"}
