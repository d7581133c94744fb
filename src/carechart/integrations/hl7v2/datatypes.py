"""HL7 v2 data types to FHIR R4 data types, following the HL7 v2-to-FHIR IG data type maps.

IG: https://build.fhir.org/ig/HL7/v2-to-fhir/ ("Datatype Maps": CWE/CE to
CodeableConcept, CX to Identifier, XPN to HumanName, DTM/TS to dateTime, DT to date,
HD to Identifier/Organization, SN to Quantity/Range/Ratio, XCN to Reference display).
Invalid content raises ``Hl7DataError`` with the position, so the ACK can point at it.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

from carechart.integrations.hl7v2.errors import REQUIRED_FIELD_MISSING, Hl7DataError
from carechart.integrations.hl7v2.parser import Repetition, Segment

JSON = dict[str, Any]

# HL7 table 0396 coding system names to FHIR system URIs (v2-to-FHIR IG ConceptMap
# "CodeSystem" and https://terminology.hl7.org/ for the URIs).
CODE_SYSTEMS = {
    "LN": "http://loinc.org",
    "LOINC": "http://loinc.org",
    "SCT": "http://snomed.info/sct",
    "SNM": "http://snomed.info/sct",
    "SNOMED": "http://snomed.info/sct",
    "UCUM": "http://unitsofmeasure.org",
    "ISO+": "urn:iso:std:iso:2955",
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "I10C": "http://hl7.org/fhir/sid/icd-10-cm",
    "I9C": "http://hl7.org/fhir/sid/icd-9-cm",
    "CPT": "http://www.ama-assn.org/go/cpt",
    "RXNORM": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "CDCREC": "urn:oid:2.16.840.1.113883.6.238",
    "NPI": "http://hl7.org/fhir/sid/us-npi",
}


def code_system_uri(name: str) -> str | None:
    """FHIR system for a v2 coding system name; HL7nnnn tables map to terminology.hl7.org."""
    upper = name.upper()
    if upper in CODE_SYSTEMS:
        return CODE_SYSTEMS[upper]
    if upper.startswith("HL7") and upper[3:].isdigit():
        return f"http://terminology.hl7.org/CodeSystem/v2-{upper[3:]}"
    if name.startswith("2.16.") and all(p.isdigit() for p in name.split(".")):
        return f"urn:oid:{name}"
    return None


def codeable_concept(rep: Repetition | None) -> JSON | None:
    """CWE/CE: triplets 1-3 (primary) and 4-6 (alternate), original text in CWE.9."""
    if rep is None or rep.is_empty or rep.is_null:
        return None
    codings: list[JSON] = []
    for start in (1, 4):
        code = rep.component(start)
        display = rep.component(start + 1)
        system_name = rep.component(start + 2)
        if not code and not display:
            continue
        coding: JSON = {}
        system = code_system_uri(system_name) if system_name else None
        if system:
            coding["system"] = system
        if code:
            coding["code"] = code
        if display:
            coding["display"] = display
        codings.append(coding)
    concept: JSON = {}
    if codings:
        concept["coding"] = codings
    original = rep.component(9)
    text = original or rep.component(2) or rep.component(5)
    if text:
        concept["text"] = text
    return concept or None


def _digits(value: str, what: str, segment: Segment, field: int) -> None:
    if not value.isdigit():
        raise Hl7DataError(
            f"{segment.name}-{field} is not a valid {what}",
            segment.name,
            field,
            sequence=segment.sequence,
        )


def fhir_datetime(value: str, segment: Segment, field: int) -> str | None:
    """DTM/TS ``YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]`` to a FHIR dateTime/instant string.

    FHIR requires a time zone once hours are given (R4 datatypes.html#dateTime); a v2
    time without one is local to the sender and is kept without seconds guessing: we
    refuse to invent a zone, so such values map to the date part only.
    """
    if not value or value == '""':
        return None
    main, zone = value, ""
    for sign in "+-":
        pos = value.find(sign)
        if pos > 0:
            main, zone = value[:pos], value[pos:]
            break
    fraction = ""
    if "." in main:
        main, fraction = main.split(".", 1)
        _digits(fraction, "date/time", segment, field)
    _digits(main, "date/time", segment, field)
    if len(main) not in (4, 6, 8, 10, 12, 14):
        raise Hl7DataError(
            f"{segment.name}-{field} is not a valid date/time",
            segment.name,
            field,
            sequence=segment.sequence,
        )
    if zone and (len(zone) != 5 or not zone[1:].isdigit()):
        raise Hl7DataError(
            f"{segment.name}-{field} has an invalid time zone",
            segment.name,
            field,
            sequence=segment.sequence,
        )
    year, month, day = main[:4], main[4:6], main[6:8]
    if (month and not 1 <= int(month) <= 12) or (day and not 1 <= int(day) <= 31):
        raise Hl7DataError(
            f"{segment.name}-{field} is not a valid date",
            segment.name,
            field,
            sequence=segment.sequence,
        )
    date = "-".join(p for p in (year, month, day) if p)
    if len(main) <= 8:
        return date
    if not zone:
        return date
    hour, minute, second = main[8:10], main[10:12] or "00", main[12:14] or "00"
    if int(hour) > 23 or int(minute) > 59 or int(second) > 60:
        raise Hl7DataError(
            f"{segment.name}-{field} is not a valid time",
            segment.name,
            field,
            sequence=segment.sequence,
        )
    frac = f".{fraction[:6]}" if fraction else ""
    return f"{date}T{hour}:{minute}:{second}{frac}{zone[:3]}:{zone[3:]}"


def fhir_date(value: str, segment: Segment, field: int) -> str | None:
    """DT (or the date part of a DTM, as PID-7 often carries) to a FHIR date."""
    full = fhir_datetime(value, segment, field)
    return full.split("T", 1)[0] if full else None


def decimal_value(value: str, segment: Segment, field: int) -> Decimal:
    """NM: optional sign, digits, optional decimal point (v2.5.1 section 2.A.47)."""
    text = value.strip()
    body = text[1:] if text[:1] in "+-" else text
    if not body or body.count(".") > 1 or not body.replace(".", "").isdigit():
        raise Hl7DataError(
            f"{segment.name}-{field} is not a number",
            segment.name,
            field,
            sequence=segment.sequence,
        )
    try:
        return Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - guarded by the check above
        raise Hl7DataError(
            f"{segment.name}-{field} is not a number",
            segment.name,
            field,
            sequence=segment.sequence,
        ) from exc


# Identifier systems this server mints for assigning authorities that carry no universal id
# (an OID or URI): ``urn:carechart:hl7v2:<scope>[:<namespace>]``. The scope is the sending
# facility, because a bare namespace ("MRN", "H") or no authority at all means nothing
# outside the interface that sent it: two hospitals' "MRN 1234" are different patients.
LOCAL_SYSTEM_PREFIX = "urn:carechart:hl7v2:"


def local_system(scope: str, namespace: str = "") -> str:
    """The minted system for identifiers assigned by ``namespace`` within ``scope``."""
    system = LOCAL_SYSTEM_PREFIX + quote(scope, safe=".-_")
    return f"{system}:{quote(namespace, safe='.-_')}" if namespace else system


def identifier(rep: Repetition, *, scope: str | None = None) -> JSON | None:
    """CX: ID (1), assigning authority HD (4), identifier type code (5, table 0203).

    ``scope`` (the sending facility) gives identifiers without a universal assigning
    authority a system of their own (:func:`local_system`), so that matching on
    system and value (patient MRNs, visit numbers) never joins two senders' records.
    """
    value = rep.component(1)
    if not value:
        return None
    ident: JSON = {"value": value}
    namespace, universal, universal_type = (rep.component(4, i) for i in (1, 2, 3))
    if universal and universal_type.upper() in ("URI", "URL"):
        ident["system"] = universal
    elif universal:
        ident["system"] = f"urn:oid:{universal}" if universal[:1].isdigit() else universal
    elif scope is not None:
        ident["system"] = local_system(scope, namespace)
    if namespace or universal:
        ident["assigner"] = {"display": namespace or universal}
    type_code = rep.component(5)
    if type_code:
        ident["type"] = {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": type_code}
            ]
        }
    return ident


def token_query(parameter: str, ident: JSON) -> str:
    """A search query matching ``ident`` exactly: ``parameter=system|value``, escaped per
    FHIR search section 3.1.1.4 (``\\ | , $``) and then URL-encoded, so an MRN holding
    ``&`` or ``|`` cannot change the query's meaning."""

    def escape(text: str) -> str:
        out = text.replace("\\", "\\\\")
        for ch in "|,$":
            out = out.replace(ch, "\\" + ch)
        return out

    value = escape(str(ident["value"]))
    system = ident.get("system")
    token = f"{escape(str(system))}|{value}" if system else value
    return f"{parameter}={quote(token, safe=':/|')}"


def entity_identifier(rep: Repetition) -> JSON | None:
    """EI (placer/filler numbers): entity id (1), namespace (2), universal id (3, 4)."""
    value = rep.component(1)
    if not value:
        return None
    ident: JSON = {"value": value}
    universal = rep.component(3)
    if universal:
        ident["system"] = f"urn:oid:{universal}" if universal[:1].isdigit() else universal
    namespace = rep.component(2)
    if namespace:
        ident["assigner"] = {"display": namespace}
    return ident


def human_name(rep: Repetition) -> JSON | None:
    """XPN: family (1.1), given (2), further given (3), suffix (4), prefix (5), use (7)."""
    family = rep.component(1, 1)
    given = [g for g in (rep.component(2), rep.component(3)) if g]
    if not family and not given:
        return None
    name: JSON = {}
    if family:
        name["family"] = family
    if given:
        name["given"] = given
    if rep.component(4):
        name["suffix"] = [rep.component(4)]
    if rep.component(5):
        name["prefix"] = [rep.component(5)]
    use = {"L": "official", "D": "usual", "M": "maiden", "A": "nickname", "B": "official"}.get(
        rep.component(7)
    )
    if use:
        name["use"] = use
    return name


def person_display(rep: Repetition | None) -> str | None:
    """XCN to a display string: prefix given family (the IG maps it to a Practitioner)."""
    if rep is None:
        return None
    parts = [rep.component(6), rep.component(3), rep.component(4), rep.component(2, 1)]
    shown = " ".join(p for p in parts if p)
    return shown or None


def require(segment: Segment, field: int, what: str) -> str:
    """The field's text; raises (table 0357 code 101) when it is empty.

    Coded fields count as present when any triplet (primary, alternate) or the original
    text carries something: senders put local codes in the alternate triplet only.
    """
    rep = segment.first(field)
    value = " ".join(c for c in rep.components() if c) if rep is not None else ""
    if not value:
        raise Hl7DataError(
            f"{segment.name}-{field} ({what}) is required",
            segment.name,
            field,
            sequence=segment.sequence,
            hl7_code=REQUIRED_FIELD_MISSING,
        )
    return value
