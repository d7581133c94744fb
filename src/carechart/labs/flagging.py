"""Result interpretation flags (N, L, H, LL, HH, A, AA).

Codes are from FHIR ObservationInterpretation,
http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation (HL7 v2 table 0078
uses the same codes). Rules:
- the sender's own flag (OBX-8) wins: the performing lab knows its method and population;
- otherwise critical limits first (beyond them: LL/HH, or AA for qualitative), then the
  normal range (L/H/N, or A/N for qualitative results);
- values are compared in the range's unit, converting only where ``labs.units`` knows a
  safe conversion; when units cannot be reconciled no flag is set rather than a wrong one.
Critical limits are exclusive: a value equal to the limit is not critical (flowsheet and
most lab policies state critical values as "< low" and "> high").
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from carechart.labs.critical_limits import LabLimits
from carechart.labs.reference_ranges import QUALITATIVE_NORMALS, ReferenceRange, qualitative_key
from carechart.labs.units import convert

INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"

DISPLAY = {
    "N": "Normal",
    "L": "Low",
    "H": "High",
    "LL": "Critical low",
    "HH": "Critical high",
    "A": "Abnormal",
    "AA": "Critical abnormal",
    "<": "Off scale low",
    ">": "Off scale high",
    "LU": "Significantly low",
    "HU": "Significantly high",
    "U": "Significant change up",
    "D": "Significant change down",
    "B": "Better",
    "W": "Worse",
    "S": "Susceptible",
    "R": "Resistant",
    "I": "Intermediate",
    "MS": "moderately susceptible",
    "VS": "very susceptible",
    "NEG": "Negative",
    "POS": "Positive",
    "IND": "Indeterminate",
    "DET": "Detected",
    "ND": "Not detected",
    "E": "Equivocal",
    "NR": "Non-reactive",
    "RR": "Reactive",
    "EX": "outside threshold",
    "HX": "above high threshold",
    "LX": "below low threshold",
    "IE": "Insufficient evidence",
    "SDD": "Susceptible-dose dependent",
    "SYN-R": "Synergy - resistant",
    "SYN-S": "Synergy - susceptible",
    "NS": "Non-susceptible",
    "TOX": "Cytotoxic substance present",
    "QCF": "Quality control failure",
}

CRITICAL = frozenset({"LL", "HH", "AA"})


@dataclass(frozen=True, slots=True)
class Interpretation:
    code: str
    source: str  # "sender" or "computed"

    @property
    def is_critical(self) -> bool:
        return self.code in CRITICAL

    def to_fhir(self) -> dict[str, Any]:
        coding: dict[str, Any] = {"system": INTERPRETATION_SYSTEM, "code": self.code}
        if self.code in DISPLAY:
            coding["display"] = DISPLAY[self.code]
        return {"coding": [coding]}


def numeric_flag(
    value: Decimal,
    unit: str | None,
    normal: ReferenceRange | None,
    limits: LabLimits | None,
    *,
    loinc: str | None = None,
) -> str | None:
    """The computed flag for a numeric result, or ``None`` when nothing applies."""
    if limits is not None:
        in_limit_unit = convert(value, unit, limits.unit, loinc=loinc)
        if in_limit_unit is not None:
            if limits.critical_low is not None and in_limit_unit < limits.critical_low:
                return "LL"
            if limits.critical_high is not None and in_limit_unit > limits.critical_high:
                return "HH"
    if normal is not None and normal.is_numeric:
        in_range_unit = convert(value, unit, normal.unit or unit, loinc=loinc)
        if in_range_unit is None:
            return None
        if normal.contains(in_range_unit):
            return "N"
        return "L" if normal.low is not None and in_range_unit <= normal.low else "H"
    if limits is not None and (limits.normal_low is not None or limits.normal_high is not None):
        in_limit_unit = convert(value, unit, limits.unit, loinc=loinc)
        if in_limit_unit is None:
            return None
        if limits.normal_low is not None and in_limit_unit < limits.normal_low:
            return "L"
        if limits.normal_high is not None and in_limit_unit > limits.normal_high:
            return "H"
        return "N"
    return None


def qualitative_flag(value: str, normal: ReferenceRange | None) -> str | None:
    """``N`` when a coded/text result equals the qualitative normal, else ``A``."""
    if normal is None or normal.qualitative is None:
        return None
    observed = QUALITATIVE_NORMALS.get(qualitative_key(value))
    if observed is None:
        return "A"
    return "N" if observed == normal.qualitative else "A"


def interpret(
    *,
    sender_flag: str | None,
    value: Decimal | str | None,
    unit: str | None = None,
    normal: ReferenceRange | None = None,
    limits: LabLimits | None = None,
    loinc: str | None = None,
) -> Interpretation | None:
    """Keep the sender's flag when given; otherwise compute one from range and limits."""
    if sender_flag:
        return Interpretation(sender_flag, "sender")
    if value is None:
        return None
    code = (
        numeric_flag(value, unit, normal, limits, loinc=loinc)
        if isinstance(value, Decimal)
        else qualitative_flag(value, normal)
    )
    return Interpretation(code, "computed") if code else None
