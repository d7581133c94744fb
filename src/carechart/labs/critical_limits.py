"""The product's LOINC-keyed table of normal and critical ("danger") limits.

The table ships as ``labs/data/critical_limits.json``, derived by ``tools/gen_lab_limits.py``
from LHNCBC/flowsheet-lhc (U.S. National Library of Medicine); see ``labs/data/SOURCE.md``.
It is read from the package, never from a shared folder at run time. Tenants override
single entries (their lab's own limits) through a plain mapping, merged over the table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from typing import Any

TABLE_RESOURCE = "critical_limits.json"


@dataclass(frozen=True, slots=True)
class LabLimits:
    loinc: str
    name: str
    unit: str | None
    normal_low: Decimal | None = None
    normal_high: Decimal | None = None
    critical_low: Decimal | None = None
    critical_high: Decimal | None = None


def _decimal(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    return Decimal(str(value))


_FIELDS = ("normal_low", "normal_high", "critical_low", "critical_high")


def _limits_from_json(loinc: str, row: Mapping[str, Any]) -> LabLimits:
    return LabLimits(
        loinc=loinc,
        name=str(row.get("name", "")),
        unit=row.get("unit") or None,
        **{f: _decimal(row.get(f)) for f in _FIELDS},
    )


@lru_cache(maxsize=1)
def _packaged_table() -> dict[str, LabLimits]:
    raw = resources.files("carechart.labs").joinpath("data", TABLE_RESOURCE).read_text("utf-8")
    document = json.loads(raw)
    return {code: _limits_from_json(code, row) for code, row in document["limits"].items()}


def table_metadata() -> dict[str, Any]:
    raw = resources.files("carechart.labs").joinpath("data", TABLE_RESOURCE).read_text("utf-8")
    meta: dict[str, Any] = json.loads(raw)["source"]
    return meta


def load_critical_limits(
    overrides: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> dict[str, LabLimits]:
    """The packaged table with a tenant's ``overrides`` applied.

    ``overrides`` maps a LOINC code to the fields to change (``unit``, ``normal_low``,
    ``normal_high``, ``critical_low``, ``critical_high``, ``name``; a ``None`` field
    clears that limit) or to ``None`` to drop the code. Unknown codes are added.
    """
    table = dict(_packaged_table())
    for code, change in (overrides or {}).items():
        if change is None:
            table.pop(code, None)
            continue
        unknown = set(change) - {*_FIELDS, "unit", "name"}
        if unknown:
            raise ValueError(f"unknown lab limit fields: {sorted(unknown)}")
        base = table.get(code) or LabLimits(loinc=code, name="", unit=None)
        updates: dict[str, Any] = {}
        for key, value in change.items():
            updates[key] = _decimal(value) if key in _FIELDS else value
        table[code] = replace(base, **updates)
    return table
