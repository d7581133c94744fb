"""Ingest one HL7 v2 message end to end: receive, deduplicate, store, announce, acknowledge.

What happens to one message (acknowledgement rules: HL7 v2.5.1 chapter 2, section 2.9.2,
original mode, and table 0008):

1. ``inbound.receive`` parses it, checks the header and maps it to a FHIR transaction
   Bundle. A message that fails there is answered AR (header: type, event, version,
   processing id, control id) or AE (content), with ERR segments saying why (section
   2.15.5); nothing is written but the audit record of the attempt (SECURITY E2, C1).
2. One unit of work (``ctx.store`` with the sending interface's guard, so every resource
   written is checked by the policy point and audited as that interface, SECURITY C1/C5):
   the message log is consulted first: a message already accepted from the same sender
   with the same MSH-10 is a redelivery after a lost ACK and is answered with the ACK sent
   the first time, storing nothing (SECURITY G3); the same control id on different content
   is refused (AE, table 0357 code 205) rather than silently dropped. Otherwise the Bundle
   is processed by ``fhir.bundles.transaction`` (patients matched by MRN and assigning
   authority through conditional create / update), ``lab-result.received`` events go to
   the outbox and the message is logged, all in that same transaction.
3. The commit, and only then the AA: an ACK never acknowledges what could still roll
   back. A refusal by the store (invalid FHIR, policy 403, an identifier matching several
   patients) becomes AE with an ERR segment and nothing stored; a failure unrelated to
   the content (database unavailable, an internal error) becomes AR, which tells the
   sender to try again later (table 0008: "failed to process message for reason unrelated
   to content or format").
4. The outbox dispatcher is notified; events are delivered after the commit, at least once.

Nothing here logs message content: log lines name exception types and counts only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from carechart import jsonio
from carechart.access.policy import AccessGuard
from carechart.auth.principal import ClientInfo, Principal, Role
from carechart.context import AppContext
from carechart.db.integration_schema import hl7_message_log
from carechart.errors import CarechartError, Conflict, Forbidden, PreconditionFailed
from carechart.fhir.bundles import transaction
from carechart.fhir.store import SqlResourceStore
from carechart.integrations.events.outbox import (
    LAB_RESULT_RECEIVED,
    Event,
    OutboxDispatcher,
    write_event,
)
from carechart.integrations.hl7v2.ack import AckCode, AckError, OriginalHeader, build_ack
from carechart.integrations.hl7v2.bundle import JSON
from carechart.integrations.hl7v2.errors import (
    APPLICATION_INTERNAL_ERROR,
    DUPLICATE_KEY_IDENTIFIER,
    ErrorLocation,
)
from carechart.integrations.hl7v2.inbound import receive
from carechart.integrations.hl7v2.observation import is_abnormal, is_critical
from carechart.integrations.hl7v2.parser import DEFAULT_MAX_BYTES, HierarchicDesignator, Message
from carechart.labs.critical_limits import LabLimits, load_critical_limits

log = logging.getLogger("carechart.hl7")

DIGEST_KEY_PURPOSE = "hl7-message-digest"
# pg_advisory_xact_lock(int, int): the first int names what is locked, apart from the audit
# chain's single-bigint locks (the two forms never collide).
_LOCK_CLASS = 0x484C37  # "HL7"
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]")
_PATH = re.compile(r"[^A-Za-z0-9_.\[\]]")
_ENTRY = re.compile(r"^Bundle\.entry\[(\d{1,6})\]")

# The guard of the sending interface, given the sending application (MSH-3) it names.
GuardFactory = Callable[[str], AccessGuard]


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one message came to. ``ack`` is None only for an incoming ACK, which is never
    acknowledged (section 2.9.2)."""

    ack: str | None
    ack_code: AckCode | None
    duplicate: bool = False
    resources: tuple[str, ...] = ()
    events: tuple[Event, ...] = ()
    errors: tuple[AckError, ...] = ()

    @property
    def ack_bytes(self) -> bytes | None:
        return self.ack.encode("utf-8") if self.ack is not None else None


@dataclass(frozen=True, slots=True)
class _Logged:
    ack: str
    ack_code: str
    digest: str
    resources: tuple[str, ...]


class _AlreadyLogged(Exception):
    """Another transaction logged the message first; this one must roll back."""

    def __init__(self, logged: _Logged) -> None:
        super().__init__("message already logged")
        self.logged = logged


@dataclass
class _ReportPlan:
    """A DiagnosticReport of the Bundle and what its event will name, by entry index."""

    report: int
    patient: int | str | None  # entry index, or the reference of a matched patient
    observations: list[int] = field(default_factory=list)
    abnormal: list[int] = field(default_factory=list)
    critical: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Stored:
    resources: tuple[str, ...]
    events: tuple[Event, ...]


def _clean_id(text: str, limit: int = 64) -> str:
    return _SAFE_ID.sub("_", text)[:limit] or "unknown"


def sending_application(message: Message | None, data: bytes | str) -> str:
    """MSH-3 (namespace, else universal id) as an audit-safe token, also for messages the
    parser rejected (read from the raw header)."""
    if message is not None:
        hd = message.sending_application
        return _clean_id(hd.namespace_id or hd.universal_id)
    header = OriginalHeader.salvage(data)
    parts = [p for p in header.sending_application if p]
    return _clean_id(parts[0] if parts else "")


def _hd_text(hd: HierarchicDesignator) -> str:
    return "&".join((hd.namespace_id, hd.universal_id, hd.universal_id_type)).rstrip("&")


def sender_key(message: Message) -> str:
    """MSH-3 ^ MSH-4: whose control ids MSH-10 is unique among (section 2.14.9.10)."""
    application = _hd_text(message.sending_application)
    facility = _hd_text(message.sending_facility)
    return f"{application}^{facility}"[:255]


def _normalized(message: Message) -> bytes:
    """The message as parsed, MSH-7 (time of message) left out: a resend that an engine
    re-stamped is still the same message. Segment separators and a BOM do not count."""
    lines: list[str] = []
    for segment in message.segments:
        fields = list(segment.fields)
        sep = segment.enc.field
        if segment.name == "MSH":
            if len(fields) > 7:
                fields[7] = ""
            lines.append(sep.join([fields[0], *fields[2:]]))
        else:
            lines.append(sep.join(fields))
    return "\r".join(lines).encode("utf-8", errors="surrogatepass")


def message_digest(key: bytes, message: Message) -> str:
    return hmac.new(key, _normalized(message), hashlib.sha256).hexdigest()


def _lock_key(*parts: str) -> int:
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:4], "big", signed=True)


def _advisory_locks(conn: Connection, keys: Iterable[int]) -> None:
    """Serialise, on PostgreSQL, the transactions that decide about the same identity (the
    same message, the same patient): without it two concurrent messages for a new MRN both
    find no patient and both create one. One statement takes every key in ascending order
    (PostgreSQL evaluates a volatile target list after the sort), so two transactions
    cannot each hold a key the other waits for. SQLite serialises writers already."""
    if conn.dialect.name != "postgresql":
        return
    conn.execute(
        sa.text(
            "SELECT pg_advisory_xact_lock(CAST(:c AS integer), k)"
            " FROM unnest(CAST(:keys AS integer[])) AS t(k) ORDER BY k"
        ),
        {"c": _LOCK_CLASS, "keys": sorted(set(keys))},
    )


def _conditions(bundle: JSON) -> list[tuple[str, str]]:
    """(type, search query) of each conditional entry: the identities the Bundle resolves."""
    out: list[tuple[str, str]] = []
    for entry in bundle.get("entry", []):
        request = entry["request"]
        rtype = entry["resource"]["resourceType"]
        if request.get("ifNoneExist"):
            out.append((rtype, str(request["ifNoneExist"])))
        elif request["method"] == "PUT" and "?" in request["url"]:
            out.append((rtype, str(request["url"]).split("?", 1)[1]))
    return out


def merge_patient(current: JSON, incoming: JSON) -> JSON:
    """A registration update (ADT) applied to the stored Patient: what the message carries
    replaces the stored value; what it does not carry is kept (an ADT feed knows nothing of
    the care team in ``generalPractitioner``, of contacts entered at the front desk, ...);
    identifiers are united, matched on system and value."""
    merged = {k: v for k, v in current.items() if k != "meta"}
    meta = {
        k: v
        for k, v in (current.get("meta") or {}).items()
        if k not in ("versionId", "lastUpdated")
    }
    if meta:
        merged["meta"] = meta
    for key, value in incoming.items():
        if key in ("id", "meta", "resourceType"):
            continue
        if key == "identifier":
            known = {(i.get("system"), i.get("value")) for i in merged.get("identifier", [])}
            extra = [i for i in value if (i.get("system"), i.get("value")) not in known]
            merged["identifier"] = [*merged.get("identifier", []), *extra]
        else:
            merged[key] = value
    return merged


def _merge_registrations(store: SqlResourceStore, bundle: JSON) -> None:
    """Turn each conditional Patient update of the Bundle into an update of the matched
    Patient with the message merged into it (:func:`merge_patient`)."""
    for index, entry in enumerate(bundle.get("entry", [])):
        request = entry["request"]
        url = str(request["url"])
        if request["method"] != "PUT" or not url.startswith("Patient?"):
            continue
        found = store.find("Patient", url.split("?", 1)[1])
        if len(found) > 1:
            raise PreconditionFailed(
                f"Bundle.entry[{index}]: the patient identifier matches {len(found)} patients"
            )
        if not found:
            continue  # the conditional update creates the patient
        current = store.read("Patient", found[0])
        assert current.body is not None
        merged = merge_patient(jsonio.loads(current.body), entry["resource"])
        merged["id"] = found[0]
        entry["resource"] = {"resourceType": "Patient", **merged}
        entry["request"] = {"method": "PUT", "url": f"Patient/{found[0]}"}


def _rewrite(value: Any, mapping: Mapping[str, str]) -> None:
    """Replace, in place, ``reference`` values found in ``mapping``."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, item in node.items():
                if key == "reference" and isinstance(item, str) and item in mapping:
                    node[key] = mapping[item]
                elif isinstance(item, dict | list):
                    stack.append(item)
        elif isinstance(node, list):
            stack.extend(item for item in node if isinstance(item, dict | list))


def _resolve_conditional_creates(store: SqlResourceStore, bundle: JSON) -> dict[str, str]:
    """Apply If-None-Exist (http.html#ccreate) to the Bundle's conditional creates before
    the transaction: a match is referenced instead of created (its entry leaves the Bundle
    and references to it are rewritten), no match is created, several are an error (412).

    Same semantics as leaving ``ifNoneExist`` to the bundle processor, which searches twice
    per such entry (to assign targets, then to run it); deciding here searches once, under
    the identity lock (so the plain create that follows cannot race another message).
    Returns the ``fullUrl`` -> ``Type/id`` of the matches."""
    entries = bundle.get("entry", [])
    matched: dict[str, str] = {}
    for index, entry in enumerate(entries):
        request = entry["request"]
        query = request.get("ifNoneExist")
        if request["method"] != "POST" or not query:
            continue
        rtype = str(entry["resource"]["resourceType"])
        found = store.find(rtype, str(query))
        if len(found) > 1:
            raise PreconditionFailed(
                f"Bundle.entry[{index}]: ifNoneExist matched {len(found)} resources"
            )
        if found:
            matched[entry["fullUrl"]] = f"{rtype}/{found[0]}"
    for entry in entries:
        entry["request"].pop("ifNoneExist", None)
    if matched:
        kept = [e for e in entries if e["fullUrl"] not in matched]
        for entry in kept:
            _rewrite(entry["resource"], matched)
        bundle["entry"] = kept
    return matched


def _plan_results(bundle: JSON) -> list[_ReportPlan]:
    """What each DiagnosticReport's event will say, read before the transaction rewrites
    the ``urn:uuid:`` references in place."""
    entries = bundle.get("entry", [])
    index_of = {entry["fullUrl"]: i for i, entry in enumerate(entries)}
    plans: list[_ReportPlan] = []
    for i, entry in enumerate(entries):
        resource = entry["resource"]
        if resource["resourceType"] != "DiagnosticReport":
            continue
        subject = resource.get("subject", {}).get("reference")
        patient: int | str | None = None
        if isinstance(subject, str):
            patient = index_of.get(subject, subject if subject.startswith("Patient/") else None)
        plan = _ReportPlan(report=i, patient=patient)
        for ref in resource.get("result", []):
            j = index_of.get(ref.get("reference"))
            if j is None:
                continue
            plan.observations.append(j)
            observation = entries[j]["resource"]
            if is_abnormal(observation):
                plan.abnormal.append(j)
            if is_critical(observation):
                plan.critical.append(j)
        plans.append(plan)
    return plans


def _references(response: JSON, base: str) -> list[str]:
    """ "Type/id" of each transaction-response entry, in Bundle entry order."""
    out: list[str] = []
    for entry in response.get("entry", []):
        location = str(entry.get("response", {}).get("location", ""))
        path = location.removeprefix(base).lstrip("/")
        parts = path.split("/")
        out.append(f"{parts[0]}/{parts[1]}" if len(parts) >= 2 else "")
    return out


def _find_logged(conn: Connection, tenant: str, sender: str, control_id: str) -> _Logged | None:
    t = hl7_message_log.c
    row = conn.execute(
        sa.select(t.ack, t.ack_code, t.digest, t.resources).where(
            t.tenant_id == tenant, t.sender == sender, t.control_id == control_id
        )
    ).first()
    if row is None:
        return None
    return _Logged(row.ack, row.ack_code, row.digest, tuple(json.loads(row.resources)))


def _insert_log(conn: Connection, row: dict[str, Any]) -> bool:
    """Insert the log row unless the key exists (ON CONFLICT DO NOTHING: on PostgreSQL a
    concurrent insert of the same key waits for the other transaction's outcome)."""
    statement: Any
    if conn.dialect.name == "postgresql":
        statement = postgresql.insert(hl7_message_log).on_conflict_do_nothing()
    else:
        statement = sqlite.insert(hl7_message_log).on_conflict_do_nothing()
    # RETURNING, not rowcount: psycopg reports -1 for a statement that inserted nothing.
    inserted = conn.execute(statement.returning(hl7_message_log.c.seq), row).first()
    return inserted is not None


def _entry_type(message: str, bundle: JSON) -> str | None:
    """The resource type of the entry a bundle error names (``Bundle.entry[n] ...``)."""
    match = _ENTRY.match(message)
    entries = bundle.get("entry", [])
    if match is None or int(match.group(1)) >= len(entries):
        return None
    return str(entries[int(match.group(1))]["resource"]["resourceType"])


def refusal_error(exc: CarechartError, bundle: JSON) -> AckError:
    """ERR for a store refusal. The text is composed here from the error's kind, the entry's
    type and an element path: never the store's message, which may quote values."""
    what = _entry_type(exc.message, bundle) or "a resource"
    if isinstance(exc, Forbidden):
        text = f"the sending interface is not permitted to store {what}"
    elif isinstance(exc, PreconditionFailed):
        text = f"an identifier of {what} matches more than one stored record"
    elif exc.status in (400, 422):
        paths = [i.expression for i in exc.issues if i.expression]
        where = f" at {_PATH.sub('', paths[0])[:120]}" if paths else ""
        text = f"{what} mapped from the message is not valid FHIR{where}"
    else:
        text = f"{what} could not be stored"
    return AckError(APPLICATION_INTERNAL_ERROR, text)


class Hl7Service:
    """Ingests HL7 v2 messages for the MLLP listener and ``POST /api/v1/hl7``.

    Thread-safe: each call works in its own unit of work.
    """

    def __init__(
        self,
        ctx: AppContext,
        *,
        dispatcher: OutboxDispatcher | None = None,
        limits: Mapping[str, LabLimits] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        base: str = "",
    ) -> None:
        self.ctx = ctx
        self.dispatcher = dispatcher
        # Loaded once: the flagging table is the same for every message.
        self.limits = load_critical_limits() if limits is None else limits
        self.max_bytes = max_bytes
        self.base = base

    # --- the one entry point ----------------------------------------------------------

    def ingest(
        self, data: bytes | str, guard_for: GuardFactory, *, notify: bool = True
    ) -> IngestResult:
        """Process one message and return the ACK to send (after the commit).

        ``notify=False``: the caller tells the dispatcher itself (the HTTP route does, once
        the response is sent, so that delivery never delays the ACK)."""
        inbound = receive(data, limits=self.limits, max_bytes=self.max_bytes)
        if inbound.ack_code is None:
            return IngestResult(None, None)
        guard = guard_for(sending_application(inbound.message, data))
        message = inbound.message
        if inbound.ack_code is not AckCode.ACCEPT or message is None or inbound.bundle is None:
            self._audit_failure(guard)
            return IngestResult(inbound.ack, inbound.ack_code, errors=tuple(inbound.errors))
        assert inbound.ack is not None
        tenant = guard.tenant
        sender = sender_key(message)
        digest = message_digest(self.ctx.keyring.derived(tenant, DIGEST_KEY_PURPOSE), message)
        bundle = inbound.bundle
        try:
            stored = self._store(guard, message, bundle, inbound.ack, sender, digest)
        except _AlreadyLogged as known:
            return self._redelivery(known.logged, digest, message)
        except CarechartError as exc:
            if exc.status >= 500 or isinstance(exc, Conflict):
                return self._internal_failure(guard, message, exc)
            error = refusal_error(exc, bundle)
            self._audit_failure(guard)
            ack = build_ack(message, AckCode.ERROR, [error])
            return IngestResult(ack, AckCode.ERROR, errors=(error,))
        except Exception as exc:  # database down, a bug: unrelated to the content
            return self._internal_failure(guard, message, exc)
        if notify and self.dispatcher is not None and stored.events:
            self.dispatcher.notify()
        return IngestResult(
            inbound.ack,
            AckCode.ACCEPT,
            resources=stored.resources,
            events=stored.events,
            errors=tuple(inbound.errors),
        )

    # --- storage ----------------------------------------------------------------------

    def _store(
        self, guard: AccessGuard, message: Message, bundle: JSON, ack: str, sender: str, digest: str
    ) -> _Stored:
        tenant = guard.tenant
        control_id = message.control_id[:199]  # the column's width (MSH-10 is ST 199)
        with self.ctx.store(write=True, guard=guard) as store:
            conn = store.conn
            _advisory_locks(
                conn,
                [
                    _lock_key("message", tenant, sender, control_id),
                    *(_lock_key("identity", tenant, t, q) for t, q in _conditions(bundle)),
                ],
            )
            logged = _find_logged(conn, tenant, sender, control_id)
            if logged is not None:
                raise _AlreadyLogged(logged)
            if message.message_type == "ADT":
                _merge_registrations(store, bundle)
            matched = _resolve_conditional_creates(store, bundle)
            plans = _plan_results(bundle)
            response = transaction(store, bundle, self.base)
            refs = _references(response, self.base)
            now = datetime.now(UTC)
            events = tuple(
                write_event(
                    conn,
                    tenant=tenant,
                    topic=LAB_RESULT_RECEIVED,
                    payload=self._result_payload(plan, refs),
                    now=now,
                )
                for plan in plans
            )
            resources = tuple(dict.fromkeys([*matched.values(), *(r for r in refs if r)]))
            patients = [r for r in resources if r.startswith("Patient/")]
            # The message itself, as the sending interface's act (SECURITY C1: HL7 ingest);
            # each resource it wrote has its own record from the store.
            guard.record("ingest", None, None, patients[0].split("/", 1)[1] if patients else None)
            inserted = _insert_log(
                conn,
                {
                    "tenant_id": tenant,
                    "sender": sender,
                    "control_id": control_id,
                    "message_type": f"{message.message_type}^{message.trigger_event}"[:16],
                    "received_at": now,
                    "ack_code": AckCode.ACCEPT.value,
                    "ack": ack,
                    "digest": digest,
                    "resources": json.dumps(list(resources)),
                },
            )
            if not inserted:
                # Only reachable without the advisory lock's protection (a concurrent
                # insert of the same key): the other transaction won, this one rolls back.
                logged = _find_logged(conn, tenant, sender, control_id)
                assert logged is not None
                raise _AlreadyLogged(logged)
        return _Stored(resources, events)

    @staticmethod
    def _result_payload(plan: _ReportPlan, refs: list[str]) -> dict[str, Any]:
        return {
            "report": refs[plan.report],
            "patient": refs[plan.patient] if isinstance(plan.patient, int) else plan.patient,
            "observations": [refs[i] for i in plan.observations],
            "abnormal": bool(plan.abnormal),
            "critical": bool(plan.critical),
            "abnormal_observations": [refs[i] for i in plan.abnormal],
            "critical_observations": [refs[i] for i in plan.critical],
        }

    # --- answers other than AA ----------------------------------------------------------

    def _redelivery(self, logged: _Logged, digest: str, message: Message) -> IngestResult:
        if hmac.compare_digest(logged.digest, digest):
            return IngestResult(
                logged.ack, AckCode(logged.ack_code), duplicate=True, resources=logged.resources
            )
        # Same sender, same MSH-10, different content: not a redelivery. Answering with the
        # first message's AA would tell the sender this one was stored when it was not.
        error = AckError(
            DUPLICATE_KEY_IDENTIFIER,
            "MSH-10 message control id was already used by this sender for another message",
            ErrorLocation("MSH", 1, 10),
        )
        ack = build_ack(message, AckCode.ERROR, [error])
        return IngestResult(ack, AckCode.ERROR, duplicate=True, errors=(error,))

    def _internal_failure(
        self, guard: AccessGuard, message: Message, exc: Exception
    ) -> IngestResult:
        log.error("HL7 message not stored: %s", type(exc).__name__)
        error = AckError(
            APPLICATION_INTERNAL_ERROR,
            "the message could not be processed now; send it again later",
        )
        self._audit_failure(guard)
        ack = build_ack(message, AckCode.REJECT, [error])
        return IngestResult(ack, AckCode.REJECT, errors=(error,))

    def _audit_failure(self, guard: AccessGuard) -> None:
        """Audit a message that stored nothing. What the guard logged inside a unit of work
        that rolled back did not happen and is dropped (its refusals were audited by the
        unit of work itself)."""
        guard.take_records(outcomes=("success",))
        guard.record("ingest", None, None, None, "failure")
        try:
            self.ctx.audit(guard.tenant, guard.take_records(outcomes=("failure",)))
        except Exception as exc:  # the message is refused anyway; keep its answer
            log.error("could not audit a refused HL7 message: %s", type(exc).__name__)


def interface_guard(
    tenant: str,
    application: str,
    *,
    scopes: frozenset[str],
    source_ip: str | None = None,
    now: datetime | None = None,
) -> AccessGuard:
    """The guard of an interface client that is not an OAuth client (the MLLP listener):
    a system principal named ``hl7:<sending application>`` with the configured scopes, so
    that every message is checked and audited as the interface that sent it."""
    client_id = f"hl7:{_clean_id(application)}"
    principal = Principal(
        user_id=None,
        tenant=tenant,
        role=Role.system,
        patient_id=None,
        territories=(tenant,),
        scopes=scopes,
        session_id=None,
        mfa_passed=False,
        client_id=client_id,
    )
    return AccessGuard(
        principal,
        tenant,
        client=ClientInfo(source_ip=source_ip, client_id=client_id, user_agent="MLLP"),
        now=now or datetime.now(UTC),
    )


# The resource types HL7 ingest writes; the MLLP interface's default scopes.
INTERFACE_TYPES = (
    "Patient",
    "Encounter",
    "ServiceRequest",
    "Specimen",
    "Observation",
    "DiagnosticReport",
)
# Create, read, update, search: matching needs search and read, registrations update.
INTERFACE_SCOPES = frozenset(f"system/{t}.crus" for t in INTERFACE_TYPES)
