"""Reference ranges, unit conversion, flagging and the packaged critical-limits table."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carechart.labs.critical_limits import LabLimits, load_critical_limits, table_metadata
from carechart.labs.flagging import interpret, numeric_flag
from carechart.labs.reference_ranges import ReferenceRange, parse_reference_range
from carechart.labs.units import convert, normalize_unit

D = Decimal


@pytest.mark.parametrize(
    ("text", "low", "high", "low_inc", "high_inc", "unit"),
    [
        ("70-100", D(70), D(100), True, True, None),
        ("3.5 - 5.1 mmol/L", D("3.5"), D("5.1"), True, True, "mmol/L"),
        ("<5.0", None, D("5.0"), True, False, None),
        ("<=5", None, D(5), True, True, None),
        (">=40", D(40), None, True, True, None),
        ("> 40", D(40), None, False, True, None),
        ("-2 - 2", D(-2), D(2), True, True, None),
        ("0.5 to 1.0 mg/dl", D("0.5"), D("1.0"), True, True, "mg/dL"),
    ],
)
def test_numeric_ranges_as_labs_send_them(
    text: str,
    low: Decimal | None,
    high: Decimal | None,
    low_inc: bool,
    high_inc: bool,
    unit: str | None,
) -> None:
    parsed = parse_reference_range(text)
    assert parsed is not None
    assert (parsed.low, parsed.high, parsed.low_inclusive, parsed.high_inclusive, parsed.unit) == (
        low, high, low_inc, high_inc, unit,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("negative", "negative"),
        ("Negative", "negative"),
        ("Non-reactive", "non-reactive"),
        ("Not detected", "not detected"),
        ("NOT DETECTED", "not detected"),
    ],
)
def test_qualitative_normals(text: str, normal: str) -> None:
    parsed = parse_reference_range(text)
    assert parsed is not None
    assert parsed.qualitative == normal


@pytest.mark.parametrize("text", ["", "see note", "10-5", "abc-def", "<", "1:10"])
def test_unparseable_ranges_give_none(text: str) -> None:
    assert parse_reference_range(text) is None


def _reference_parse(low: Decimal, high: Decimal) -> tuple[Decimal, Decimal]:
    return low, high


@settings(max_examples=300)
@given(
    st.decimals(min_value=-1000, max_value=1000, places=2, allow_nan=False),
    st.decimals(min_value=0, max_value=1000, places=2, allow_nan=False),
    st.sampled_from(["-", " - ", " to ", "\u2013"]),
)
def test_range_parsing_matches_simple_reference(low: Decimal, width: Decimal, sep: str) -> None:
    high = low + width
    parsed = parse_reference_range(f"{low}{sep}{high}")
    assert parsed is not None
    assert (parsed.low, parsed.high) == _reference_parse(low, high)


def test_scale_conversions() -> None:
    assert convert(D("1.5"), "g/dL", "g/L") == D(15)
    assert convert(D(150), "mg/dL", "g/L") == D("1.5")
    assert convert(D("7.2"), "10*3/uL", "10*9/L") == D("7.2")
    assert convert(D("7.2"), "K/uL", "x10E9/L") == D("7.2")
    assert convert(D(1), "mg/dL", "mmol/L") is None  # needs a molar mass
    assert convert(D(212), "[degF]", "Cel") == D(100)


def test_analyte_specific_conversions() -> None:
    glucose = convert(D("180.16"), "mg/dL", "mmol/L", loinc="2345-7")
    assert glucose is not None
    assert abs(glucose - D(10)) < D("0.01")
    assert abs((convert(D(100), "mg/dL", "mmol/L", loinc="2339-0") or 0) - D("5.55")) < D("0.01")
    creat = convert(D(1), "mg/dL", "umol/L", loinc="2160-0")
    assert creat is not None
    assert abs(creat - D("88.4")) < D("0.01")
    assert convert(D(140), "meq/L", "mmol/L", loinc="2951-2") == D(140)
    assert convert(D(140), "meq/L", "mmol/L", loinc="2345-7") is None


def test_unit_spellings_normalise_to_ucum() -> None:
    assert normalize_unit("mg/dl") == "mg/dL"
    assert normalize_unit("\u00b5mol/L") == "umol/L"
    assert normalize_unit("\u03bcmol/L") == "umol/L"
    assert normalize_unit("weird") == "weird"


POTASSIUM = LabLimits("2823-3", "Potassium", "mmol/L", D("3.5"), D("5.1"), D("2.5"), D(6))


@settings(max_examples=300)
@given(st.decimals(min_value="3.5", max_value="5.1", places=2))
def test_value_inside_normal_range_is_n(value: Decimal) -> None:
    assert numeric_flag(value, "mmol/L", parse_reference_range("3.5-5.1"), POTASSIUM) == "N"


@settings(max_examples=300)
@given(st.decimals(min_value="6.01", max_value=100, places=2))
def test_value_beyond_critical_high_is_hh_even_in_other_units(value: Decimal) -> None:
    assert numeric_flag(value, "mmol/L", None, POTASSIUM) == "HH"
    assert numeric_flag(value * 1000, "umol/L", None, POTASSIUM) == "HH"


@settings(max_examples=300)
@given(st.decimals(min_value=-10, max_value="2.49", places=2))
def test_value_beyond_critical_low_is_ll(value: Decimal) -> None:
    assert numeric_flag(value, "mmol/L", parse_reference_range("3.5-5.1"), POTASSIUM) == "LL"


def test_low_high_and_exclusive_bounds() -> None:
    normal = parse_reference_range("3.5-5.1")
    assert numeric_flag(D("3.0"), "mmol/L", normal, POTASSIUM) == "L"
    assert numeric_flag(D("5.5"), "mmol/L", normal, POTASSIUM) == "H"
    assert numeric_flag(D(5), None, parse_reference_range("<5"), None) == "H"
    assert numeric_flag(D(40), None, parse_reference_range(">40"), None) == "L"
    # Units that cannot be reconciled: no flag rather than a wrong one.
    assert numeric_flag(D(5), "mg/dL", parse_reference_range("3.5-5.1 mmol/L"), None) is None


def test_sender_flag_is_kept_and_qualitative_results_are_flagged() -> None:
    kept = interpret(sender_flag="L", value=D(99), normal=parse_reference_range("1-2"))
    assert kept is not None
    assert (kept.code, kept.source) == ("L", "sender")
    negative = parse_reference_range("Negative")
    assert negative is not None
    normal = interpret(sender_flag=None, value="NEGATIVE", normal=negative)
    abnormal = interpret(sender_flag=None, value="Detected", normal=negative)
    assert normal is not None
    assert normal.code == "N"
    assert abnormal is not None
    assert abnormal.code == "A"
    assert abnormal.to_fhir()["coding"][0]["system"].endswith("v3-ObservationInterpretation")


def test_packaged_table_has_source_and_known_limits() -> None:
    meta = table_metadata()
    assert "flowsheet-lhc" in meta["url"]
    assert "licence" in meta
    table = load_critical_limits()
    glucose = table["2339-0"]
    assert (glucose.unit, glucose.critical_low, glucose.critical_high) == ("mg/dL", D(39), D(500))
    assert "1994-3" not in table  # inconsistent source row dropped


def test_tenant_overrides_change_add_and_remove_entries() -> None:
    table = load_critical_limits(
        {
            "2339-0": {"critical_low": "50"},
            "9999-9": {"unit": "mg/dL", "critical_high": 1},
            "2947-0": None,
        }
    )
    assert table["2339-0"].critical_low == D(50)
    assert table["2339-0"].critical_high == D(500)
    assert table["9999-9"].critical_high == D(1)
    assert "2947-0" not in table
    assert load_critical_limits()["2339-0"].critical_low == D(39)  # the base is untouched
    with pytest.raises(ValueError, match="unknown"):
        load_critical_limits({"2339-0": {"danger": 1}})


def test_generator_output_matches_the_shared_source() -> None:
    shared = Path(__file__).resolve().parents[3] / "shared" / "data" / "labs"
    if not shared.exists():
        pytest.skip("shared lab data not present")
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "gen_lab_limits", Path(__file__).resolve().parents[2] / "tools" / "gen_lab_limits.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    limits, _dropped = module.derive(shared)
    packaged = Path(__file__).resolve().parents[2] / "src/carechart/labs/data/critical_limits.json"
    assert json.loads(packaged.read_text("utf-8"))["limits"] == limits


def test_reference_range_to_fhir_uses_result_unit() -> None:
    parsed = parse_reference_range("70-99")
    assert isinstance(parsed, ReferenceRange)
    fhir = parsed.to_fhir("mg/dL")
    assert fhir["low"] == {
        "value": D(70),
        "unit": "mg/dL",
        "system": "http://unitsofmeasure.org",
        "code": "mg/dL",
    }
