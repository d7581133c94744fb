"""Tables of identity, sessions and audit (on the shared ``metadata``, one schema for both engines).

No secret is stored in clear (SECURITY A3): token-signing keys are sealed under the master key,
TOTP seeds under a tenant-derived key, refresh tokens are kept only as SHA-256 digests.

``audit_event`` is append-only (SECURITY C3): triggers installed with the table refuse UPDATE
and DELETE (and TRUNCATE on PostgreSQL). The same SQL is in :data:`AUDIT_TRIGGER_SQL` for the
Alembic migration, which autogenerate cannot see.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy import DDL, event

from carechart.db.schema import RID, SEQ, TENANT, metadata

USER_ID = sa.String(64)
DIGEST = sa.String(64)  # hex SHA-256 / HMAC-SHA256

# ES256 keys that sign access tokens and audit checkpoints. Server-wide, not per tenant: the
# issuer is the server. Retired keys stay published in the JWKS until tokens they signed expire.
token_signing_key = sa.Table(
    "token_signing_key",
    metadata,
    sa.Column("kid", sa.String(64), primary_key=True),
    sa.Column("master_key_id", sa.String(32), nullable=False),
    # PKCS#8 DER sealed with AES-256-GCM under the master key, bound to the kid.
    sa.Column("sealed_private_key", sa.LargeBinary, nullable=False),
    sa.Column("public_jwk", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
)

# One login session = one refresh-token family (SECURITY A6).
auth_session = sa.Table(
    "auth_session",
    metadata,
    sa.Column("session_id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", TENANT, nullable=False),
    sa.Column("user_id", USER_ID, nullable=False),
    sa.Column("client_id", sa.String(128), nullable=True),
    sa.Column("mfa_passed", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_active_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("revoked_reason", sa.String(32), nullable=True),
    sa.Index(None, "tenant_id", "user_id"),
)

refresh_token = sa.Table(
    "refresh_token",
    metadata,
    sa.Column("token_hash", DIGEST, primary_key=True),
    sa.Column("session_id", sa.String(64), nullable=False),
    sa.Column("tenant_id", TENANT, nullable=False),
    sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
    # Set when the token is exchanged; a second exchange is a reuse (RFC 9700 4.14.2).
    sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(["session_id"], ["auth_session.session_id"]),
    sa.Index(None, "session_id"),
)

totp_credential = sa.Table(
    "totp_credential",
    metadata,
    sa.Column("tenant_id", TENANT, primary_key=True),
    sa.Column("user_id", USER_ID, primary_key=True),
    sa.Column("sealed_secret", sa.LargeBinary, nullable=False),
    # Highest RFC 6238 time step accepted so far: a code at or below it is a replay (A5).
    sa.Column("last_step", sa.BigInteger, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

login_lockout = sa.Table(
    "login_lockout",
    metadata,
    sa.Column("tenant_id", TENANT, primary_key=True),
    # Canonical username (NFKC + casefold), so "Alice" and "alice" share one counter.
    sa.Column("account", sa.String(254), primary_key=True),
    sa.Column("consecutive_failures", sa.Integer, nullable=False),
    sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=True),
)

# ASTM E2147 / SECURITY C1 content; the HMAC chain (C4) links each record to its predecessor in
# the same tenant. ``chain_index`` is dense per tenant and unique, so two concurrent appends can
# never both extend the same head: one of them fails rather than forking the chain.
audit_event = sa.Table(
    "audit_event",
    metadata,
    sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", TENANT, nullable=False),
    sa.Column("chain_index", sa.BigInteger, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("user_id", USER_ID, nullable=True),
    sa.Column("client_id", sa.String(128), nullable=True),
    sa.Column("role", sa.String(64), nullable=True),
    sa.Column("patient_id", RID, nullable=True),
    sa.Column("resource_type", sa.String(64), nullable=True),
    sa.Column("resource_id", RID, nullable=True),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("data_category", sa.String(64), nullable=True),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("source_ip", sa.String(64), nullable=True),
    sa.Column("user_agent", sa.String(512), nullable=True),
    sa.Column("purpose_of_use", sa.String(64), nullable=True),
    sa.Column("correlation_id", sa.String(128), nullable=True),
    sa.Column("prev_hash", DIGEST, nullable=False),
    sa.Column("record_hash", DIGEST, nullable=False),
    sa.UniqueConstraint("tenant_id", "chain_index"),
    sa.Index(None, "tenant_id", "patient_id", "recorded_at"),
    sa.Index(None, "tenant_id", "user_id", "recorded_at"),
    sa.Index(None, "tenant_id", "recorded_at"),
)

# People who sign in (SECURITY A1). Nothing here is readable in a dump (A3, D2): the username
# is kept only as a keyed blind index (HMAC of the canonical form under a per-tenant key), which
# is what login looks up and what the uniqueness constraint holds; the e-mail address and full
# name (PHI for patient users) are sealed together with AES-256-GCM, bound to tenant and id.
user_account = sa.Table(
    "user_account",
    metadata,
    sa.Column("tenant_id", TENANT, primary_key=True),
    sa.Column("id", USER_ID, primary_key=True),
    sa.Column("username_index", DIGEST, nullable=False),
    sa.Column("sealed_profile", sa.LargeBinary, nullable=False),
    sa.Column("role", sa.String(32), nullable=False),
    # argon2id PHC string; NULL for accounts that never sign in with a password (system).
    sa.Column("password_hash", sa.String(256), nullable=True),
    sa.Column("must_change_password", sa.Boolean, nullable=False),
    # The Patient resource a patient user is (role ``patient`` only).
    sa.Column("patient_id", RID, nullable=True),
    # The Practitioner resource a clinician is: care relationships (CareTeam, Encounter,
    # Appointment, general practitioner) name it, and SMART's fhirUser points at it.
    sa.Column("practitioner_id", RID, nullable=True),
    # Territories (sites, departments) the user works in; a JSON list of codes.
    sa.Column("territories", sa.JSON, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("password_changed_at", sa.DateTime(timezone=True), nullable=True),
    sa.UniqueConstraint("tenant_id", "username_index"),
)

# Registered OAuth 2.0 clients (SMART apps and backend services, SECURITY A3, A7, B7). A
# confidential client's secret is kept only as an argon2id hash; a backend service authenticates
# with a JWT signed by a key from its registered JWKS (private_key_jwt), so nothing secret is
# stored for it at all.
oauth_client = sa.Table(
    "oauth_client",
    metadata,
    sa.Column("tenant_id", TENANT, primary_key=True),
    sa.Column("client_id", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    # public (PKCE only), confidential (secret + PKCE) or backend (client_credentials).
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("secret_hash", sa.String(256), nullable=True),
    sa.Column("jwks", sa.JSON, nullable=True),
    sa.Column("redirect_uris", sa.JSON, nullable=False),
    # The most the client may ever be granted, as a space-separated scope string.
    sa.Column("scope", sa.Text, nullable=False),
    # Territories a backend service works in (a JSON list of codes, like user_account's).
    sa.Column("territories", sa.JSON, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("created_by", USER_ID, nullable=True),
)

# Break-glass grants (SECURITY B9): one user, one patient, a reason, a hard expiry. The reason
# is free text that may name clinical facts, so it is sealed like PHI.
break_glass_grant = sa.Table(
    "break_glass_grant",
    metadata,
    sa.Column("tenant_id", TENANT, primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("user_id", USER_ID, nullable=False),
    sa.Column("patient_id", RID, nullable=False),
    sa.Column("sealed_reason", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index(None, "tenant_id", "user_id", "expires_at"),
)

AUTH_TABLES = (
    token_signing_key,
    auth_session,
    refresh_token,
    totp_credential,
    login_lockout,
    audit_event,
    user_account,
    oauth_client,
    break_glass_grant,
)

# The exact statements, per dialect, that make audit_event append-only. Kept as data so the
# Alembic migration can run the very same SQL (op.execute) that create_all installs.
AUDIT_TRIGGER_SQL: dict[str, tuple[str, ...]] = {
    "sqlite": (
        "CREATE TRIGGER audit_event_no_update BEFORE UPDATE ON audit_event "
        "BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END",
        "CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON audit_event "
        "BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END",
    ),
    "postgresql": (
        "CREATE OR REPLACE FUNCTION audit_event_append_only() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE EXCEPTION 'audit_event is append-only' USING ERRCODE = 'insufficient_privilege'; "
        "END; $$",
        "CREATE TRIGGER audit_event_no_update_delete BEFORE UPDATE OR DELETE ON audit_event "
        "FOR EACH ROW EXECUTE FUNCTION audit_event_append_only()",
        "CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_event "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_event_append_only()",
    ),
}

for _dialect, _statements in AUDIT_TRIGGER_SQL.items():
    for _statement in _statements:
        # DDL's constructor is unannotated in SQLAlchemy 2.1.
        ddl = DDL(_statement)  # type: ignore[no-untyped-call]
        event.listen(audit_event, "after_create", ddl.execute_if(dialect=_dialect))


def as_utc(moment: datetime) -> datetime:
    """A stored timestamp as an aware UTC datetime: SQLite hands them back naive, and every
    timestamp in these tables is written in UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
