"""Scenario 1: validation rate, by running ``benchmarks/bench_validation.py`` (one core).

That script is maintained separately; this module runs it in a subprocess, keeps its table
verbatim and picks out the Patient figure (target >= 5,000 Patients/s).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

import benchlib as b

TARGET = 5000


@dataclass
class ValidationResult:
    output: str
    patient_rate: float
    error: str = ""


def run() -> ValidationResult:
    try:
        done = subprocess.run(
            [b.PYTHON, str(b.BENCH_DIR / "bench_validation.py")],
            cwd=b.ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
    except subprocess.SubprocessError as exc:
        detail = getattr(exc, "stderr", "") or ""
        return ValidationResult("", float("nan"), f"{exc}\n{detail[-2000:]}")
    m = re.search(r"^Patient-example\.json\s+\d+\s+([\d,]+)", done.stdout, re.M)
    rate = float(m.group(1).replace(",", "")) if m else float("nan")
    b.log(f"validation: {b.fmt(rate)} Patients/s")
    return ValidationResult(done.stdout.rstrip(), rate)


def report(r: ValidationResult) -> list[str]:
    lines = ["## 1. Validation rate (one core, `benchmarks/bench_validation.py`)", ""]
    if r.error:
        return [*lines, f"bench_validation.py failed: `{r.error.strip()[:500]}`", ""]
    ok = r.patient_rate >= TARGET
    return [
        *lines,
        f"Patient-example.json: **{b.fmt(r.patient_rate)} validations/s** "
        f"(target ≥ {TARGET:,}: {'met' if ok else 'MISSED'}); median of 5 runs.",
        "",
        "```",
        r.output,
        "```",
        "",
    ]
