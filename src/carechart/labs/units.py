"""Lab unit normalisation and conversion (UCUM, https://ucum.org/ucum).

Two kinds of conversion:
- scale conversions inside one dimension (g/L <-> g/dL <-> mg/dL, 10*3/uL <-> 10*9/L,
  mmol/L <-> umol/L): always safe;
- mass <-> substance concentration (mg/dL <-> mmol/L): needs the analyte's molar mass,
  so it is done only for analytes listed in ``MOLAR_MASS_BY_LOINC`` (e.g. glucose
  180.16 g/mol: 18.016 mg/dL per mmol/L; creatinine 113.12 g/mol: 88.4 umol/L per mg/dL).
Anything else is "not comparable" (``None``), never a guess: a wrong conversion would
mis-flag a result, which is worse than not flagging it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import NamedTuple


class UnitInfo(NamedTuple):
    dimension: str
    factor: Decimal  # multiply a value in this unit by factor to get the base unit


_D = Decimal
_UNITS: dict[str, UnitInfo] = {
    # mass concentration, base g/L
    "g/L": UnitInfo("mass/vol", _D(1)),
    "g/dL": UnitInfo("mass/vol", _D(10)),
    "g/mL": UnitInfo("mass/vol", _D(1000)),
    "mg/L": UnitInfo("mass/vol", _D("0.001")),
    "mg/dL": UnitInfo("mass/vol", _D("0.01")),
    "mg/mL": UnitInfo("mass/vol", _D(1)),
    "ug/L": UnitInfo("mass/vol", _D("1e-6")),
    "ug/dL": UnitInfo("mass/vol", _D("1e-5")),
    "ug/mL": UnitInfo("mass/vol", _D("0.001")),
    "ng/L": UnitInfo("mass/vol", _D("1e-9")),
    "ng/dL": UnitInfo("mass/vol", _D("1e-8")),
    "ng/mL": UnitInfo("mass/vol", _D("1e-6")),
    "pg/mL": UnitInfo("mass/vol", _D("1e-9")),
    # substance concentration, base mol/L
    "mol/L": UnitInfo("mol/vol", _D(1)),
    "mmol/L": UnitInfo("mol/vol", _D("0.001")),
    "umol/L": UnitInfo("mol/vol", _D("1e-6")),
    "nmol/L": UnitInfo("mol/vol", _D("1e-9")),
    "pmol/L": UnitInfo("mol/vol", _D("1e-12")),
    # equivalents: equal to mmol/L only for monovalent ions, see _VALENCE_ONE
    "meq/L": UnitInfo("eq/vol", _D("0.001")),
    # number concentration (cell counts), base /L
    "/L": UnitInfo("num/vol", _D(1)),
    "/uL": UnitInfo("num/vol", _D("1e6")),
    "/nL": UnitInfo("num/vol", _D("1e9")),
    "10*3/uL": UnitInfo("num/vol", _D("1e9")),
    "10*6/uL": UnitInfo("num/vol", _D("1e12")),
    "10*9/L": UnitInfo("num/vol", _D("1e9")),
    "10*12/L": UnitInfo("num/vol", _D("1e12")),
    # catalytic activity
    "U/L": UnitInfo("activity/vol", _D(1)),
    "[IU]/L": UnitInfo("iu/vol", _D(1)),
    "[IU]/mL": UnitInfo("iu/vol", _D(1000)),
    "m[IU]/L": UnitInfo("iu/vol", _D("0.001")),
    "u[IU]/mL": UnitInfo("iu/vol", _D("0.001")),
    # fractions
    "%": UnitInfo("fraction", _D("0.01")),
    "1": UnitInfo("fraction", _D(1)),
    # pressure
    "mm[Hg]": UnitInfo("pressure", _D(1)),
    # time, rate
    "s": UnitInfo("time", _D(1)),
    "min": UnitInfo("time", _D(60)),
    "/min": UnitInfo("rate", _D(1)),
    # mass
    "g": UnitInfo("mass", _D(1)),
    "kg": UnitInfo("mass", _D(1000)),
    "mg": UnitInfo("mass", _D("0.001")),
    "[lb_av]": UnitInfo("mass", _D("453.59237")),
}

# Spellings labs actually send (OBX-6 text, range text) -> UCUM code.
_ALIASES: dict[str, str] = {
    "mg/dl": "mg/dL",
    "g/dl": "g/dL",
    "g/l": "g/L",
    "mg/l": "mg/L",
    "ug/dl": "ug/dL",
    "µg/dl": "ug/dL",
    "mcg/dl": "ug/dL",
    "ug/ml": "ug/mL",
    "mcg/ml": "ug/mL",
    "ng/ml": "ng/mL",
    "ng/dl": "ng/dL",
    "pg/ml": "pg/mL",
    "mmol/l": "mmol/L",
    "umol/l": "umol/L",
    "µmol/l": "umol/L",
    "μmol/l": "umol/L",
    "nmol/l": "nmol/L",
    "pmol/l": "pmol/L",
    "mol/l": "mol/L",
    "meq/l": "meq/L",
    "u/l": "U/L",
    "units/l": "U/L",
    "iu/l": "[IU]/L",
    "miu/l": "m[IU]/L",
    "uiu/ml": "u[IU]/mL",
    "µiu/ml": "u[IU]/mL",
    "k/ul": "10*3/uL",
    "k/mcl": "10*3/uL",
    "thou/ul": "10*3/uL",
    "x10e3/ul": "10*3/uL",
    "10^3/ul": "10*3/uL",
    "10*3/ul": "10*3/uL",
    "10e3/ul": "10*3/uL",
    "x10(3)/ul": "10*3/uL",
    "m/ul": "10*6/uL",
    "mil/ul": "10*6/uL",
    "x10e6/ul": "10*6/uL",
    "10^6/ul": "10*6/uL",
    "10*6/ul": "10*6/uL",
    "x10e9/l": "10*9/L",
    "10^9/l": "10*9/L",
    "10*9/l": "10*9/L",
    "x10e12/l": "10*12/L",
    "10^12/l": "10*12/L",
    "10*12/l": "10*12/L",
    "/ul": "/uL",
    "/mm3": "/uL",
    "cells/ul": "/uL",
    "mm hg": "mm[Hg]",
    "mmhg": "mm[Hg]",
    "percent": "%",
    "sec": "s",
    "seconds": "s",
    "/min": "/min",
    "{beats}/min": "/min",
    "{breaths}/min": "/min",
    "beats/min": "/min",
    "bpm": "/min",
    "degf": "[degF]",
    "deg f": "[degF]",
    "[degf]": "[degF]",
    "f": "[degF]",
    "°f": "[degF]",
    "degc": "Cel",
    "deg c": "Cel",
    "cel": "Cel",
    "c": "Cel",
    "°c": "Cel",
    "lb": "[lb_av]",
    "lbs": "[lb_av]",
}

# Molar masses (g/mol) for analytes whose mass and substance units labs mix, keyed by
# LOINC code of the result. Values: IUPAC standard atomic weights / PubChem.
_GLUCOSE = Decimal("180.16")
_CREATININE = Decimal("113.12")
_UREA_NITROGEN = Decimal("28.014")  # BUN is reported as the nitrogen of urea (2 N)
_CALCIUM = Decimal("40.078")
_MAGNESIUM = Decimal("24.305")
_PHOSPHORUS = Decimal("30.974")
_BILIRUBIN = Decimal("584.66")
_CHOLESTEROL = Decimal("386.65")
_TRIGLYCERIDE = Decimal("885.7")  # as triolein, the convention behind 88.57 mg/dL per mmol/L
_URIC_ACID = Decimal("168.11")
MOLAR_MASS_BY_LOINC: dict[str, Decimal] = {
    **dict.fromkeys(
        ("2345-7", "2339-0", "1558-6", "2340-8", "41653-7", "32016-8", "14749-6", "15074-8"),
        _GLUCOSE,
    ),
    **dict.fromkeys(("2160-0", "38483-4", "2161-8", "14682-9", "35203-9"), _CREATININE),
    **dict.fromkeys(("3094-0", "6299-2", "14937-7"), _UREA_NITROGEN),
    **dict.fromkeys(("17861-6", "2000-8", "49765-1"), _CALCIUM),
    **dict.fromkeys(("17863-2", "1994-3", "1995-0"), _CALCIUM),
    **dict.fromkeys(("19123-9", "2601-3", "2593-1"), _MAGNESIUM),
    **dict.fromkeys(("2777-1", "14879-1"), _PHOSPHORUS),
    **dict.fromkeys(("1975-2", "1968-7", "14631-6", "14629-0"), _BILIRUBIN),
    **dict.fromkeys(("2093-3", "14647-2", "2085-9", "14646-4", "2089-1", "13457-7"), _CHOLESTEROL),
    **dict.fromkeys(("2571-8", "14927-8"), _TRIGLYCERIDE),
    **dict.fromkeys(("3084-1", "14933-6"), _URIC_ACID),
}

# Monovalent ions: 1 meq/L == 1 mmol/L (sodium, potassium, chloride, bicarbonate).
_VALENCE_ONE = frozenset(
    ("2951-2", "2947-0", "2823-3", "6298-4", "2075-0", "2069-3", "1963-8", "1959-6", "2028-9")
)


def normalize_unit(unit: str | None) -> str | None:
    """The UCUM code for a unit as labs write it; unknown units come back trimmed."""
    if unit is None:
        return None
    text = unit.strip()
    if not text:
        return None
    if text in _UNITS or text in ("[degF]", "Cel"):
        return text
    key = text.lower()
    # Micro appears as U+00B5 (micro sign), U+03BC (Greek mu) or "u" (UCUM).
    return (
        _ALIASES.get(key) or _ALIASES.get(key.replace("\u03bc", "u").replace("\u00b5", "u")) or text
    )


def is_known_unit(code: str) -> bool:
    """True for the UCUM codes this module can convert."""
    return code in _UNITS or code in ("[degF]", "Cel")


def _temperature(value: Decimal, source: str, target: str) -> Decimal | None:
    if source == target:
        return value
    if source == "[degF]" and target == "Cel":
        return (value - 32) * 5 / 9
    if source == "Cel" and target == "[degF]":
        return value * 9 / 5 + 32
    return None


def convert(
    value: Decimal, from_unit: str | None, to_unit: str | None, *, loinc: str | None = None
) -> Decimal | None:
    """``value`` in ``from_unit`` expressed in ``to_unit``; ``None`` when not comparable."""
    source, target = normalize_unit(from_unit), normalize_unit(to_unit)
    if source is None or target is None:
        return value if source == target else None
    if source == target:
        return value
    if {source, target} <= {"[degF]", "Cel"}:
        return _temperature(value, source, target)
    a, b = _UNITS.get(source), _UNITS.get(target)
    if a is None or b is None:
        return None
    base = value * a.factor
    if a.dimension == b.dimension:
        return base / b.factor
    dims = {a.dimension, b.dimension}
    if dims == {"mol/vol", "eq/vol"} and loinc in _VALENCE_ONE:
        return base / b.factor
    molar_mass = MOLAR_MASS_BY_LOINC.get(loinc or "")
    if molar_mass is None or dims != {"mass/vol", "mol/vol"}:
        return None
    if a.dimension == "mass/vol":
        return base / molar_mass / b.factor
    return base * molar_mass / b.factor


def comparable(from_unit: str | None, to_unit: str | None, *, loinc: str | None = None) -> bool:
    return convert(Decimal(1), from_unit, to_unit, loinc=loinc) is not None
