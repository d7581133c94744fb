"""Validation throughput on one core: resources validated per second (median of 5 runs).

Run: ``.venv/bin/python benchmarks/bench_validation.py``

The hot path of every write is ``carechart.fhir.validation.validate_resource``; the target
is >= 5,000 validations/s for the specification's Patient-example.json.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from carechart import jsonio  # noqa: E402
from carechart.fhir.validation import validate_resource  # noqa: E402

EXAMPLES = (
    "Patient-example.json",
    "Observation-example.json",
    "Observation-blood-pressure.json",
    "MedicationRequest-medrx0302.json",
    "Encounter-example.json",
    "AllergyIntolerance-example.json",
    "Condition-example.json",
    "Questionnaire-f201.json",
    "Bundle-bundle-transaction.json",
)
RUNS = 5
TARGET = 5000


def _package() -> Path:
    spec = importlib.util.spec_from_file_location(
        "fhir_package", ROOT / "tools" / "fhir_package.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path: Path = module.ensure_package()
    return path


def _rate(resource: Any) -> float:
    """Validations per second over ~0.3 s, median of RUNS runs."""
    assert validate_resource(resource) == [], "benchmark inputs must be valid"
    start = time.perf_counter()
    calibrate = 0
    while time.perf_counter() - start < 0.05:
        validate_resource(resource)
        calibrate += 1
    number = max(1, calibrate * 6)
    rates = []
    for _ in range(RUNS):
        start = time.perf_counter()
        for _ in range(number):
            validate_resource(resource)
        rates.append(number / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    package = _package()
    started = time.perf_counter()
    validate_resource({"resourceType": "Patient"})  # loads and compiles the definitions
    print(f"definitions load + compile: {(time.perf_counter() - started) * 1000:.0f} ms")
    print(f"{'example':<40} {'bytes':>8} {'validations/s':>14}")
    for name in EXAMPLES:
        raw = (package / name).read_bytes()
        rate = _rate(jsonio.loads(raw))
        flag = "" if not name.startswith("Patient-") or rate >= TARGET else "  BELOW TARGET"
        print(f"{name:<40} {len(raw):>8} {rate:>14,.0f}{flag}")


if __name__ == "__main__":
    main()
