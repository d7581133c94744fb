"""OBX to FHIR Observation (HL7 v2-to-FHIR IG, "Segment OBX to Observation Map").

https://build.fhir.org/ig/HL7/v2-to-fhir/ConceptMap-segment-obx-to-observation.html
- OBX-2 value type selects Observation.value[x]: NM -> valueQuantity, SN -> valueQuantity
  with comparator / valueRange / valueRatio, CE/CWE/CNE -> valueCodeableConcept,
  ST/TX/FT -> valueString, DT/DTM/TS -> valueDateTime, TM -> valueTime.
- OBX-6 units (UCUM when coded so), OBX-7 reference range, OBX-8 abnormal flags
  (table 0078 -> ObservationInterpretation), OBX-11 status (table 0085), OBX-14 effective.
A value that contradicts its declared type is an error (HL7 table 0357 code 102): the
result is not stored in a form a clinician could misread.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from carechart.integrations.hl7v2.datatypes import (
    JSON,
    codeable_concept,
    decimal_value,
    fhir_datetime,
    require,
)
from carechart.integrations.hl7v2.errors import DATA_TYPE_ERROR, Hl7DataError
from carechart.integrations.hl7v2.parser import Repetition, Segment
from carechart.labs.critical_limits import LabLimits
from carechart.labs.flagging import CRITICAL, DISPLAY, INTERPRETATION_SYSTEM, interpret
from carechart.labs.reference_ranges import parse_reference_range
from carechart.labs.units import is_known_unit, normalize_unit

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"

# HL7 table 0085 -> Observation.status (v2-to-FHIR ConceptMap "table-0085").
OBSERVATION_STATUS = {
    "C": "corrected",
    "D": "entered-in-error",
    "F": "final",
    "I": "registered",
    "N": "cancelled",
    "O": "registered",
    "P": "preliminary",
    "R": "preliminary",
    "S": "preliminary",
    "U": "final",
    "W": "entered-in-error",
    "X": "cancelled",
}

# Types whose value has no components; a component separator in them is a type error.
PRIMITIVE_TYPES = frozenset({"NM", "ST", "TX", "FT", "DT", "DTM", "TM", "ID", "IS"})
TEXT_TYPES = frozenset({"ST", "TX", "FT"})
CODED_TYPES = frozenset({"CE", "CWE", "CNE", "CF"})
SN_COMPARATORS = {"<": "<", "<=": "<=", ">": ">", ">=": ">="}


def _type_error(obx: Segment, what: str) -> Hl7DataError:
    return Hl7DataError(
        f"OBX-5 {what} for value type OBX-2", "OBX", 5, sequence=obx.sequence,
        hl7_code=DATA_TYPE_ERROR,
    )  # fmt: skip


def units(obx: Segment) -> tuple[str | None, str | None]:
    """(unit as shown, UCUM code or None) from OBX-6 (CE/CWE: code ^ text ^ system).

    A unit coded in UCUM is taken as sent; an uncoded or locally coded one becomes UCUM
    only when it is a spelling ``labs.units`` recognises (``mg/dl``, ``K/uL``, ...).
    """
    code, text, system = obx.get(6, 1), obx.get(6, 2), obx.get(6, 3)
    shown = text or code or None
    if not code:
        return shown, None
    if system.upper() == "UCUM":
        return shown, code
    normalized = normalize_unit(code)
    return shown, normalized if normalized is not None and is_known_unit(normalized) else None


def _quantity(value: Decimal, obx: Segment) -> JSON:
    shown, ucum = units(obx)
    quantity: JSON = {"value": value}
    if shown:
        quantity["unit"] = shown
    if ucum:
        quantity["system"] = UCUM
        quantity["code"] = ucum
    return quantity


def _sn_value(rep: Repetition, obx: Segment) -> tuple[str, JSON, Decimal | None]:
    """SN: comparator ^ num1 ^ separator/suffix ^ num2 (v2.5.1 section 2.A.72)."""
    comparator, first, separator, second = (rep.component(i) for i in (1, 2, 3, 4))
    if comparator and comparator not in SN_COMPARATORS and comparator not in ("=", "<>"):
        raise _type_error(obx, "has an invalid SN comparator")
    num1 = decimal_value(first, obx, 5) if first else None
    num2 = decimal_value(second, obx, 5) if second else None
    if separator in ("-",) and num1 is not None and num2 is not None:
        return "valueRange", {"low": _quantity(num1, obx), "high": _quantity(num2, obx)}, None
    if separator in (":", "/") and num1 is not None and num2 is not None:
        return "valueRatio", {"numerator": {"value": num1}, "denominator": {"value": num2}}, None
    if num1 is None or separator or num2 is not None:
        raise _type_error(obx, "is not a structured numeric")
    quantity = _quantity(num1, obx)
    if comparator in SN_COMPARATORS:
        quantity["comparator"] = SN_COMPARATORS[comparator]
        return "valueQuantity", quantity, None
    return "valueQuantity", quantity, num1


def value_of(obx: Segment) -> tuple[str | None, object, Decimal | str | None]:
    """(FHIR value[x] name, value, the plain value flagging compares) for an OBX."""
    value_type = obx.get(2).upper()
    reps = obx.field(5)
    if not reps or reps[0].is_null:
        return None, None, None
    first = reps[0]
    if value_type in PRIMITIVE_TYPES and first.has_components():
        raise _type_error(obx, "has components")
    if value_type == "NM":
        number = decimal_value(first.raw, obx, 5)
        return "valueQuantity", _quantity(number, obx), number
    if value_type == "SN":
        return _sn_value(first, obx)
    if value_type in TEXT_TYPES:
        text = "\n".join(rep.component(1) for rep in reps)
        return "valueString", text, text
    if value_type in CODED_TYPES:
        concept = codeable_concept(first)
        shown = first.component(2) or first.component(1)
        return "valueCodeableConcept", concept, shown
    if value_type in ("DT", "DTM", "TS"):
        moment = fhir_datetime(first.component(1), obx, 5)
        return "valueDateTime", moment, None
    if value_type == "TM":
        raw = first.component(1)
        digits = raw.split("+")[0].split("-")[0].split(".")[0]
        if not digits.isdigit() or len(digits) not in (2, 4, 6):
            raise _type_error(obx, "is not a time")
        padded = (digits + "0000")[:6]
        return "valueTime", f"{padded[:2]}:{padded[2:4]}:{padded[4:6]}", None
    # Composite types the IG maps to other resources (XAD, XTN, CX, XPN, ED...): the
    # human-readable text keeps the information without inventing structure.
    text = " ".join(c for c in first.components() if c)
    return ("valueString", text, None) if text else (None, None, None)


# Interpretation codes that mean "outside the normal range" (an abnormal result), and the
# critical ones among them (labs.flagging.CRITICAL): what a lab-result event flags.
ABNORMAL_INTERPRETATIONS = frozenset(
    {"L", "H", "LL", "HH", "A", "AA", "<", ">", "LU", "HU", "LX", "HX", "EX", "POS", "DET", "RR"}
)


def is_abnormal(observation: JSON) -> bool:
    return bool(interpretation_codes(observation) & ABNORMAL_INTERPRETATIONS)


def is_critical(observation: JSON) -> bool:
    return bool(interpretation_codes(observation) & CRITICAL)


def interpretation_codes(observation: JSON) -> set[str]:
    """The ObservationInterpretation codes an Observation carries."""
    return {
        str(coding["code"])
        for concept in observation.get("interpretation", [])
        for coding in concept.get("coding", [])
        if coding.get("system") == INTERPRETATION_SYSTEM and coding.get("code")
    }


def _loinc_code(code: JSON | None) -> str | None:
    for coding in (code or {}).get("coding", []):
        if coding.get("system") == LOINC and coding.get("code"):
            return str(coding["code"])
    return None


def sender_interpretation(obx: Segment) -> list[JSON]:
    """OBX-8 (table 0078): same codes as ObservationInterpretation for the common flags."""
    out: list[JSON] = []
    for rep in obx.field(8):
        flag = rep.component(1).strip()
        if not flag:
            continue
        if flag in DISPLAY:
            out.append(
                {
                    "coding": [
                        {"system": INTERPRETATION_SYSTEM, "code": flag, "display": DISPLAY[flag]}
                    ]
                }
            )
        else:
            out.append({"text": flag})
    return out


def observation_from_obx(
    obx: Segment,
    *,
    subject: str | None,
    limits: Mapping[str, LabLimits],
    category: str | None = "laboratory",
) -> JSON:
    """One Observation; references (subject, specimen) are ``urn:uuid:`` strings."""
    require(obx, 3, "observation identifier")
    code = codeable_concept(obx.first(3))
    observation: JSON = {
        "resourceType": "Observation",
        "status": OBSERVATION_STATUS.get(obx.get(11).upper(), "unknown"),
    }
    if category:
        observation["category"] = [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": category,
                    }
                ]
            }
        ]
    observation["code"] = code
    if subject:
        observation["subject"] = {"reference": subject}
    effective = fhir_datetime(obx.get(14), obx, 14)
    if effective:
        observation["effectiveDateTime"] = effective
    key, value, plain = value_of(obx)
    if key is not None and value is not None:
        observation[key] = value
    loinc = _loinc_code(code)
    range_text = obx.text(7)
    normal = parse_reference_range(range_text)
    unit_text, ucum = units(obx)
    if range_text:
        observation["referenceRange"] = [
            normal.to_fhir(ucum)
            if normal is not None and normal.is_numeric
            else {"text": range_text}
        ]
    sender = sender_interpretation(obx)
    if sender:
        observation["interpretation"] = sender
    else:
        computed = interpret(
            sender_flag=None,
            value=plain,
            unit=ucum or unit_text,
            normal=normal,
            limits=limits.get(loinc) if loinc else None,
            loinc=loinc,
        )
        if computed is not None:
            observation["interpretation"] = [computed.to_fhir()]
    return observation
