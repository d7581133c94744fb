"""Helpers of the HL7 ingest tests: messages, the interface guard, what got stored."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from carechart.context import AppContext
from carechart.db.auth_schema import audit_event
from carechart.db.engine import unit_of_work
from carechart.db.integration_schema import hl7_message_log, outbox_event
from carechart.db.schema import resource
from carechart.integrations.hl7v2.service import INTERFACE_SCOPES, GuardFactory, interface_guard

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "data" / "hl7v2"
CORPUS_FILES = sorted(CORPUS.rglob("*.hl7"))


def interface(tenant: str, scopes: frozenset[str] = INTERFACE_SCOPES) -> GuardFactory:
    """The guard factory the MLLP listener uses: the interface named by MSH-3."""

    def make(application: str) -> Any:
        return interface_guard(tenant, application, scopes=scopes, source_ip="127.0.0.1")

    return make


def oru(
    control: str = "C1",
    *,
    mrn: str = "MRN-1",
    authority: str = "HOSP",
    sender: str = "LAB",
    facility: str = "LABFAC",
    version: str = "2.5.1",
    results: Sequence[str] = (
        "OBX|1|NM|2345-7^Glucose^LN||95|mg/dL^mg/dL^UCUM|70-99||||F",
        "OBX|2|NM|2823-3^Potassium^LN||4.1|mmol/L^mmol/L^UCUM|3.5-5.0||||F",
    ),
    separator: str = "\r",
    pid3: str | None = None,
) -> bytes:
    """A small ORU^R01: one patient, one order with the given OBX segments, a specimen."""
    segments = [
        f"MSH|^~\\&|{sender}|{facility}|CARECHART|HOSP|20240101120000||ORU^R01^ORU_R01|"
        f"{control}|P|{version}",
        f"PID|1||{pid3 or f'{mrn}^^^{authority}^MR'}||DOE^JANE||19800101|F",
        "OBR|1|PL-1|FL-1|24323-8^Comprehensive metabolic panel^LN|||202401011100-0500"
        "|||||||||||||||202401011200-0500|||F",
        *results,
        "SPM|1|SP-1&LAB||119297000^Blood specimen^SCT",
    ]
    return (separator.join(segments) + separator).encode()


def adt(
    event: str,
    control: str,
    *,
    mrn: str = "MRN-1",
    authority: str = "HOSP",
    family: str = "DOE",
    visit: str = "V-1",
    version: str = "2.5.1",
) -> bytes:
    pv1 = [""] * 46
    pv1[0], pv1[1], pv1[2], pv1[3] = "PV1", "1", "I", "W1^101^A"
    pv1[19] = f"{visit}^^^{authority}^VN"
    pv1[44] = "202401011000-0500"
    if event == "A03":
        pv1[45] = "202401051000-0500"
    segments = [
        f"MSH|^~\\&|ADT|HOSPFAC|CARECHART|HOSP|20240101120000||ADT^{event}^ADT_A01|{control}"
        f"|P|{version}",
        f"EVN|{event}|20240101120000",
        f"PID|1||{mrn}^^^{authority}^MR||{family}^JANE||19800101|F",
        "|".join(pv1),
    ]
    return ("\r".join(segments) + "\r").encode()


def resource_counts(engine: Engine, tenant: str) -> dict[str, int]:
    r = resource.c
    with unit_of_work(engine, write=False) as conn:
        rows = conn.execute(
            sa.select(r.resource_type, sa.func.count())
            .where(r.tenant_id == tenant, r.deleted.is_(False))
            .group_by(r.resource_type)
        ).all()
    return {str(t): int(n) for t, n in rows}


def stored(ctx: AppContext, tenant: str, resource_type: str) -> list[dict[str, Any]]:
    """Every current resource of a type, unsealed (the server's own read, unguarded)."""
    r = resource.c
    with ctx.store(write=False, tenant=tenant) as store:
        ids = list(
            store.conn.execute(
                sa.select(r.id).where(
                    r.tenant_id == tenant, r.resource_type == resource_type, r.deleted.is_(False)
                )
            ).scalars()
        )
        return [orjson.loads(v.body or b"{}") for v in store.read_many(resource_type, ids)]


def read(ctx: AppContext, tenant: str, reference: str) -> dict[str, Any]:
    resource_type, resource_id = reference.split("/", 1)
    with ctx.store(write=False, tenant=tenant) as store:
        version = store.read(resource_type, resource_id)
        body: dict[str, Any] = orjson.loads(version.body or b"{}")
        return body


def audit_rows(engine: Engine, tenant: str) -> list[Any]:
    a = audit_event.c
    with unit_of_work(engine, write=False) as conn:
        return list(
            conn.execute(
                sa.select(
                    a.action,
                    a.outcome,
                    a.client_id,
                    a.role,
                    a.resource_type,
                    a.resource_id,
                    a.patient_id,
                    a.source_ip,
                ).where(a.tenant_id == tenant)
            ).all()
        )


def outbox_rows(engine: Engine, tenant: str) -> list[Any]:
    o = outbox_event.c
    with unit_of_work(engine, write=False) as conn:
        return list(
            conn.execute(
                sa.select(o.id, o.topic, o.payload, o.delivered_at, o.attempts).where(
                    o.tenant_id == tenant
                )
            ).all()
        )


def log_rows(engine: Engine, tenant: str) -> list[Any]:
    t = hl7_message_log.c
    with unit_of_work(engine, write=False) as conn:
        return list(
            conn.execute(
                sa.select(t.sender, t.control_id, t.ack_code, t.ack, t.resources).where(
                    t.tenant_id == tenant
                )
            ).all()
        )
