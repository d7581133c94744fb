"""Tables of the messaging integrations (on the shared ``metadata``, one schema for both engines).

``hl7_message_log``: one row per accepted HL7 v2 message, keyed by tenant, sender (MSH-3 and
MSH-4) and message control id (MSH-10). It is the deduplication record (SECURITY G3): it
commits in the same transaction as the resources the message produced, so a redelivery after
a lost ACK finds it and is answered with the ACK already sent, and nothing is stored twice.
It holds no PHI: the ACK text carries header fields, codes and positions only (never message
values), the digest is a keyed HMAC, and the stored ids are opaque.

``outbox_event``: the transactional outbox. An event is written in the unit of work whose
commit it announces and delivered afterwards, at least once, by a dispatcher; payloads are
ids and flags only (no PHI leaves the database through an event).

``event_consumption``: what an idempotent consumer has already processed, keyed by consumer
and event id, written in the same transaction as the consumer's own effect.
"""

from __future__ import annotations

import sqlalchemy as sa

from carechart.db.schema import SEQ, TENANT, metadata

EVENT_ID = sa.String(36)  # a UUID in text form

hl7_message_log = sa.Table(
    "hl7_message_log",
    metadata,
    sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", TENANT, nullable=False),
    # MSH-3 ^ MSH-4 as hierarchic designators (namespace&universal id&type each).
    sa.Column("sender", sa.String(255), nullable=False),
    # MSH-10; ST of at most 199 characters from v2.5 on.
    sa.Column("control_id", sa.String(199), nullable=False),
    # MSH-9.1 ^ MSH-9.2, e.g. ORU^R01.
    sa.Column("message_type", sa.String(16), nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ack_code", sa.String(2), nullable=False),
    sa.Column("ack", sa.Text, nullable=False),
    # HMAC-SHA256 (tenant-derived key) of the message content: tells a redelivery from a
    # different message that reuses the control id.
    sa.Column("digest", sa.String(64), nullable=False),
    # JSON array of "Type/id" written or matched by the message.
    sa.Column("resources", sa.Text, nullable=False),
    sa.UniqueConstraint("tenant_id", "sender", "control_id"),
)

outbox_event = sa.Table(
    "outbox_event",
    metadata,
    sa.Column("id", EVENT_ID, primary_key=True),
    sa.Column("tenant_id", TENANT, nullable=False),
    sa.Column("topic", sa.String(128), nullable=False),
    # JSON object: ids and flags only.
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    # A dispatcher holds the event until then (a lease); after a failure, the retry time.
    sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
    sa.Index(None, "delivered_at", "created_at"),
)

event_consumption = sa.Table(
    "event_consumption",
    metadata,
    sa.Column("consumer", sa.String(128), primary_key=True),
    sa.Column("event_id", EVENT_ID, primary_key=True),
    sa.Column("tenant_id", TENANT, nullable=False),
    sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
)

INTEGRATION_TABLES = (hl7_message_log, outbox_event, event_consumption)
