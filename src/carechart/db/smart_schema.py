"""Tables of SMART App Launch (on the shared ``metadata``; SECURITY A3, A7).

Nothing a caller could present is stored in clear: authorization codes and launch ids are kept
as SHA-256 digests (full-entropy values, so a fast hash suffices, as for refresh tokens), and
assertion ``jti`` values as digests too (fixed width, whatever the client sends).
"""

from __future__ import annotations

import sqlalchemy as sa

from carechart.db.schema import RID, TENANT, metadata

DIGEST = sa.String(64)  # hex SHA-256
USER_ID = sa.String(64)
CLIENT_ID = sa.String(128)
SESSION_ID = sa.String(64)

# Single-use authorization codes (RFC 6749 4.1.2, RFC 7636): five minutes at most.
smart_authorization_code = sa.Table(
    "smart_authorization_code",
    metadata,
    sa.Column("code_hash", DIGEST, primary_key=True),
    sa.Column("tenant_id", TENANT, nullable=False),
    sa.Column("client_id", CLIENT_ID, nullable=False),
    sa.Column("user_id", USER_ID, nullable=False),
    # The session the sign-in opened; a replayed code revokes it.
    sa.Column("session_id", SESSION_ID, nullable=False),
    sa.Column("redirect_uri", sa.Text, nullable=False),
    sa.Column("scope", sa.Text, nullable=False),
    # BASE64URL(SHA256(code_verifier)), RFC 7636 4.2; S256 is the only method accepted.
    sa.Column("code_challenge", sa.String(64), nullable=False),
    sa.Column("patient_id", RID, nullable=True),
    # The session's first refresh token, sealed (AES-256-GCM, bound to the code digest), only
    # when offline_access or online_access was granted; wiped when the code is exchanged.
    sa.Column("sealed_refresh", sa.LargeBinary, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
    sa.Index(None, "expires_at"),
)

# EHR launch (SMART "launch-ehr"): an opaque launch id names the patient a clinician opened
# an app for. Only the clinician who created it may use it, once.
smart_launch_context = sa.Table(
    "smart_launch_context",
    metadata,
    sa.Column("launch_hash", DIGEST, primary_key=True),
    sa.Column("tenant_id", TENANT, nullable=False),
    sa.Column("patient_id", RID, nullable=False),
    # The app the launch is for; NULL: any registered app.
    sa.Column("client_id", CLIENT_ID, nullable=True),
    sa.Column("created_by", USER_ID, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
    sa.Index(None, "expires_at"),
)

# What a SMART session was granted: the refresh grant keeps client, scope and patient.
smart_session_context = sa.Table(
    "smart_session_context",
    metadata,
    sa.Column("session_id", SESSION_ID, primary_key=True),
    sa.Column("tenant_id", TENANT, nullable=False),
    sa.Column("client_id", CLIENT_ID, nullable=False),
    sa.Column("user_id", USER_ID, nullable=False),
    sa.Column("scope", sa.Text, nullable=False),
    sa.Column("patient_id", RID, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# private_key_jwt assertions seen (RFC 7523 3 item 7, SMART Backend Services): a jti is
# refused while an assertion bearing it could still be valid.
smart_assertion_jti = sa.Table(
    "smart_assertion_jti",
    metadata,
    sa.Column("tenant_id", TENANT, primary_key=True),
    sa.Column("client_id", CLIENT_ID, primary_key=True),
    sa.Column("jti_hash", DIGEST, primary_key=True),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index(None, "expires_at"),
)

SMART_TABLES = (
    smart_authorization_code,
    smart_launch_context,
    smart_session_context,
    smart_assertion_jti,
)
