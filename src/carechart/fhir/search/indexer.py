"""Maintaining index rows and the Patient compartment on write.

The index of a resource is replaced as a whole on every write (http://hl7.org/fhir/R4/
search.html: search reflects the current version only); a delete removes it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from carechart.crypto.blind import blind_token
from carechart.crypto.keys import KeyRing
from carechart.db.search_schema import INDEX_TABLES, search_blind
from carechart.fhir.definitions import load_definitions
from carechart.fhir.search.buckets import DEFAULT_BITS, truncate_token
from carechart.fhir.search.buckets import blind_bits as recorded_bits
from carechart.fhir.search.extract import extract, plan_for, reference_parts

__all__ = [
    "BLIND_BITS",
    "blind_key",
    "blind_token_bits",
    "compartment_patients",
    "delete_index",
    "index_resource",
    "index_rows",
]

#: Bits kept of each blind-index HMAC unless planned otherwise (:mod:`.buckets`). At 32 bits a lookup's chance of a false candidate is
#: (distinct values of the parameter in the tenant) / 2**32: about 1 in 4,300 for a million
#: distinct values. What the index leaks to a database reader: which rows share a value of
#: a parameter (equality) and how often a value occurs (frequency), never the value.
BLIND_BITS = DEFAULT_BITS

BitsSource = Mapping[str, int] | Callable[[], Mapping[str, int]]


def blind_key(keyring: KeyRing, tenant: str, resource_type: str, code: str) -> bytes:
    """The per-tenant, per-parameter HMAC key ("blind:Patient.family")."""
    return keyring.derived(tenant, f"blind:{resource_type}.{code}")


def blind_token_bits(key: bytes, value: str, bits: int) -> str:
    """The ``bits``-bit blind token of ``value`` (the leading bits of the 32-bit token)."""
    token = blind_token(key, value, BLIND_BITS)
    return token if bits == BLIND_BITS else truncate_token(token, BLIND_BITS, bits)


def compartment_patients(resource: dict[str, Any]) -> list[str]:
    """Ids of the Patients whose compartment holds ``resource``, in first-seen order.

    From the Patient CompartmentDefinition (http://hl7.org/fhir/R4/compartmentdefinition-
    patient.html): the resource is in Patient X's compartment when one of the listed
    parameters references "Patient/X" (relative references only); a Patient is in its own.
    """
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        return []
    found: list[str] = []
    if resource_type == "Patient" and isinstance(resource.get("id"), str):
        found.append(resource["id"])
    codes = load_definitions().patient_compartment.get(resource_type, ())
    plans = plan_for(resource_type)
    for code in codes:
        plan = plans.get(code)
        if plan is None or plan.type != "reference":
            continue
        for value in plan.path.values(resource):
            ref = value.get("reference") if isinstance(value, dict) else None
            if not isinstance(ref, str) or "://" in ref:
                continue
            rtype, rid, _url = reference_parts(ref)
            if rtype == "Patient" and rid is not None:
                found.append(rid)
    return list(dict.fromkeys(found))


def index_rows(
    keyring: KeyRing,
    tenant: str,
    resource_type: str,
    resource_id: str,
    resource: dict[str, Any],
    *,
    blind_bits: BitsSource | None = None,
) -> dict[sa.Table, list[dict[str, Any]]]:
    """The index rows of one resource, per table, ready for a multi-row INSERT.

    ``blind_bits``: the recorded bits per blind parameter code of this type
    (:func:`carechart.fhir.search.buckets.blind_bits`), or a function returning them, called
    only when the resource has blind-indexed values. None: every code at
    :data:`BLIND_BITS`, which is right only while no bits were recorded for the type.
    """
    owner = {"tenant_id": tenant, "resource_type": resource_type, "resource_id": resource_id}
    rows, blind = extract(resource_type, resource)
    out: dict[sa.Table, list[dict[str, Any]]] = {}
    for kind, kind_rows in rows.items():
        if kind_rows:
            out[INDEX_TABLES[kind]] = [{**owner, **row} for row in kind_rows]
    blind_rows: list[dict[str, Any]] = []
    widths: Mapping[str, int] = {}
    if blind and blind_bits is not None:
        widths = blind_bits() if callable(blind_bits) else blind_bits
    for code, keys in blind.items():
        key = blind_key(keyring, tenant, resource_type, code)
        bits = widths.get(code, BLIND_BITS)
        tokens = {blind_token_bits(key, k, bits) for k in keys}
        blind_rows.extend({**owner, "code": code, "token": t} for t in sorted(tokens))
    if blind_rows:
        out[search_blind] = blind_rows
    return out


def delete_index(conn: Connection, tenant: str, resource_type: str, resource_id: str) -> None:
    for table in INDEX_TABLES.values():
        conn.execute(
            table.delete().where(
                table.c.tenant_id == tenant,
                table.c.resource_type == resource_type,
                table.c.resource_id == resource_id,
            )
        )


def index_resource(
    conn: Connection,
    keyring: KeyRing,
    tenant: str,
    resource_type: str,
    resource_id: str,
    resource: dict[str, Any] | None,
) -> None:
    """Replace the index rows of one resource (``None``: it was deleted, drop them).

    One DELETE per index table, then one executemany INSERT per table that has rows. Blind
    tokens use the bits recorded for the type (read only when the resource has any).
    """
    delete_index(conn, tenant, resource_type, resource_id)
    if resource is None:
        return
    rows_by_table = index_rows(
        keyring,
        tenant,
        resource_type,
        resource_id,
        resource,
        blind_bits=lambda: recorded_bits(conn, tenant, resource_type),
    )
    for table, rows in rows_by_table.items():
        conn.execute(sa.insert(table), rows)
