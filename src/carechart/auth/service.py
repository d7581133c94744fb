"""The rules of signing in, sessions and accounts (SECURITY A1-A7, C1).

One :class:`IdentityService` per unit of work: it takes the connection, the key ring, the tenant
and the moment explicitly, and never commits. Every authentication event writes an audit record
in the same transaction. Refusals that must leave a trace (a counted failure, a lock, a revoked
token family, the audit record itself) are *returned* as an :class:`Outcome`, not raised: the
endpoint commits the unit of work and only then raises the error, which an exception raised
in here would have rolled back.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar, cast

from sqlalchemy.engine import Connection

from carechart.audit.chain import AuditRecord, append
from carechart.auth import accounts, clients, lockout, refresh, totp
from carechart.auth.accounts import UserAccount
from carechart.auth.config import AuthComponents
from carechart.auth.errors import (
    AccountLocked,
    Forbidden,
    InvalidUsername,
    PasswordRejected,
    Unauthorized,
    UsernameTaken,
)
from carechart.auth.passwords import canonical_username, check_password
from carechart.auth.principal import (
    CHANGE_PASSWORD_SCOPE,
    CLINICIAN_ROLES,
    FULL_PATIENT_SCOPE,
    FULL_USER_SCOPE,
    MFA_ENROLL_SCOPE,
    Principal,
    Role,
)
from carechart.auth.principal import ClientInfo as ClientInfo  # re-exported
from carechart.auth.tokens import (
    CLOCK_LEEWAY,
    issue_access_token,
    verify_access_token,
    verify_jws,
)
from carechart.crypto.keys import KeyRing
from carechart.errors import CarechartError, Unprocessable

MFA_TICKET_TYPE = "mfa-ticket+jwt"
USER_ACCOUNT = "UserAccount"  # resource_type of audit records about accounts

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """A result, or the refusal to raise once the unit of work has committed."""

    value: T | None = None
    refusal: CarechartError | None = None

    def result(self) -> T:
        if self.refusal is not None:
            raise self.refusal
        return cast(T, self.value)


@dataclass(frozen=True, slots=True)
class TokenGrant:
    access_token: str
    expires_in: int
    scope: str
    session_id: str
    refresh_token: str | None = None
    refresh_expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ClientGrant:
    access_token: str
    expires_in: int
    scope: str


@dataclass(frozen=True, slots=True)
class MfaChallenge:
    """Password accepted; the TOTP step is still owed (SECURITY A5)."""

    ticket: str
    expires_in: int


@dataclass(frozen=True, slots=True)
class NewAccount:
    email: str
    full_name: str
    role: Role
    password: str
    patient_id: str | None = None
    territories: tuple[str, ...] = ()
    must_change_password: bool = False
    practitioner_id: str | None = None


def _refused(error: CarechartError) -> Outcome[Any]:
    return Outcome(None, error)


def _session_of(principal: Principal) -> str:
    """The login session of a user principal; clients have none, and the session routes are
    not theirs."""
    if principal.session_id is None:
        raise Unauthorized("no-session")
    return principal.session_id


def _context_words(email: str, full_name: str) -> list[str]:
    return [email, email.partition("@")[0], full_name, *full_name.split()]


def validate_email(email: str) -> str:
    """The canonical username of an e-mail address; :class:`InvalidUsername` when it is not
    one (local part, one ``@``, a domain)."""
    canonical = canonical_username(email)
    local, at, domain = canonical.rpartition("@")
    if not at or not local or not domain or " " in canonical:
        raise InvalidUsername("the username must be an e-mail address")
    return canonical


class IdentityService:
    def __init__(
        self,
        conn: Connection,
        keyring: KeyRing,
        parts: AuthComponents,
        *,
        tenant: str,
        now: datetime,
    ) -> None:
        self.conn = conn
        self.keyring = keyring
        self.parts = parts
        self.config = parts.config
        self.tenant = tenant
        self.now = now

    # --- audit ---------------------------------------------------------------------------

    def _audit(
        self,
        action: str,
        outcome: str,
        client: ClientInfo,
        *,
        user: UserAccount | None = None,
        user_id: str | None = None,
        resource_id: str | None = None,
        patient_id: str | None = None,
    ) -> None:
        append(
            self.conn,
            self.keyring,
            tenant=self.tenant,
            now=self.now,
            record=AuditRecord(
                action=action,
                outcome=outcome,
                user_id=user.id if user is not None else user_id,
                client_id=client.client_id,
                role=user.role.value if user is not None else None,
                patient_id=patient_id,
                resource_type=USER_ACCOUNT if resource_id is not None else None,
                resource_id=resource_id,
                source_ip=client.source_ip,
                user_agent=client.user_agent,
                correlation_id=client.correlation_id,
            ),
        )

    # --- helpers ---------------------------------------------------------------------------

    def _lockout_key(self, canonical: str) -> str:
        # The blind index, not the username: login_lockout holds no clear name either.
        return accounts.username_index(self.keyring, self.tenant, canonical)

    def _user(self, user_id: str | None) -> UserAccount | None:
        if user_id is None:
            return None
        return accounts.by_id(self.conn, self.keyring, tenant=self.tenant, user_id=user_id)

    def _scope(self, user: UserAccount, mfa_passed: bool) -> str:
        if user.must_change_password:
            return CHANGE_PASSWORD_SCOPE
        if user.role in self.config.mfa_required_roles and not mfa_passed:
            return MFA_ENROLL_SCOPE
        return FULL_PATIENT_SCOPE if user.role is Role.patient else FULL_USER_SCOPE

    def _access_token(self, user: UserAccount, session_id: str, scope: str) -> str:
        key = self.parts.signing_keys.active(self.conn, self.now)
        return issue_access_token(
            key,
            issuer=self.config.issuer,
            audience=self.config.audience,
            subject=user.id,
            tenant=self.tenant,
            now=self.now,
            lifetime=self.config.access_token_lifetime,
            session_id=session_id,
            scope=scope,
        )

    def _grant(self, user: UserAccount, issued: refresh.IssuedRefresh) -> TokenGrant:
        scope = self._scope(user, issued.mfa_passed)
        return TokenGrant(
            access_token=self._access_token(user, issued.session_id, scope),
            expires_in=int(self.config.access_token_lifetime.total_seconds()),
            scope=scope,
            session_id=issued.session_id,
            refresh_token=issued.refresh_token,
            refresh_expires_at=issued.absolute_expiry,
        )

    def _open_session(
        self, user: UserAccount, lockout_key: str, client: ClientInfo, *, mfa_passed: bool
    ) -> TokenGrant:
        issued = refresh.start_session(
            self.conn,
            tenant=self.tenant,
            user_id=user.id,
            now=self.now,
            client_id=client.client_id,
            mfa_passed=mfa_passed,
            policy=self.config.session,
        )
        # Only a completed sign-in resets the count: a password alone must not buy an attacker
        # fresh guesses at the second factor.
        lockout.record_success(self.conn, tenant=self.tenant, account=lockout_key)
        self._audit("login", "success", client, user=user)
        return self._grant(user, issued)

    def _failed(
        self, action: str, lockout_key: str, user: UserAccount | None, client: ClientInfo
    ) -> Outcome[Any]:
        """Count a failure (A4), audit it, and the refusal: 401, or 423 if it locked."""
        unlock_at = lockout.record_failure(
            self.conn,
            tenant=self.tenant,
            account=lockout_key,
            now=self.now,
            policy=self.config.lockout,
        )
        self._audit(action, "failure", client, user=user)
        if unlock_at is not None:
            self._audit("lockout", "success", client, user=user)
            return _refused(AccountLocked(unlock_at))
        return _refused(Unauthorized(f"{action}-failed"))

    def _locked(
        self, action: str, lockout_key: str, user: UserAccount | None, client: ClientInfo
    ) -> Outcome[Any] | None:
        until = lockout.locked_until(
            self.conn, tenant=self.tenant, account=lockout_key, now=self.now
        )
        if until is None:
            return None
        self._audit(action, "denied", client, user=user)
        return _refused(AccountLocked(until))

    # --- sign in -------------------------------------------------------------------------

    def login(
        self, email: str, password: str, client: ClientInfo
    ) -> Outcome[TokenGrant | MfaChallenge]:
        hasher = self.parts.hasher
        try:
            canonical = canonical_username(email)
        except InvalidUsername:
            hasher.verify_unknown_user(password)
            self._audit("login", "failure", client)
            return _refused(Unauthorized("login-failed"))
        key = self._lockout_key(canonical)
        user = accounts.by_username(
            self.conn, self.keyring, tenant=self.tenant, canonical_username=canonical
        )
        locked = self._locked("login", key, user, client)
        if locked is not None:
            return locked
        if user is None or user.password_hash is None:
            hasher.verify_unknown_user(password)
            return self._failed("login", key, user, client)
        if not hasher.verify(user.password_hash, password) or not user.active:
            return self._failed("login", key, user, client)
        if hasher.needs_rehash(user.password_hash):
            accounts.replace_password_hash(
                self.conn, tenant=self.tenant, user_id=user.id, new_hash=hasher.hash(password)
            )
        if totp.is_confirmed(self.conn, tenant=self.tenant, user_id=user.id):
            self._audit("mfa-challenge", "success", client, user=user)
            return Outcome(self._mfa_ticket(user))
        return Outcome(self._open_session(user, key, client, mfa_passed=False))

    def _mfa_ticket(self, user: UserAccount) -> MfaChallenge:
        lifetime = self.config.mfa_ticket_lifetime
        issued = int(self.now.timestamp())
        key = self.parts.signing_keys.active(self.conn, self.now)
        ticket = key.sign(
            {
                "iss": self.config.issuer,
                "aud": self.config.issuer,
                "sub": user.id,
                "tenant": self.tenant,
                "iat": issued,
                "exp": issued + int(lifetime.total_seconds()),
                "jti": secrets.token_urlsafe(16),
            },
            typ=MFA_TICKET_TYPE,
        )
        return MfaChallenge(ticket=ticket, expires_in=int(lifetime.total_seconds()))

    def _ticket_subject(self, ticket: str) -> str | None:
        keys = self.parts.signing_keys.verification_keys(self.conn, self.now)
        try:
            claims = verify_jws(ticket, keys, typ=MFA_TICKET_TYPE)
        except Unauthorized:
            return None
        expires = claims.get("exp")
        if (
            claims.get("iss") != self.config.issuer
            or claims.get("aud") != self.config.issuer
            or claims.get("tenant") != self.tenant
            or isinstance(expires, bool)
            or not isinstance(expires, int)
            or self.now.timestamp() >= expires + CLOCK_LEEWAY.total_seconds()
        ):
            return None
        subject = claims.get("sub")
        return subject if isinstance(subject, str) else None

    def complete_mfa(self, ticket: str, code: str, client: ClientInfo) -> Outcome[TokenGrant]:
        """Second step of a sign-in that owes TOTP: the ticket from :meth:`login` and a code."""
        subject = self._ticket_subject(ticket)
        user = None if subject is None else self._user(subject)
        if user is None or not user.active:
            self._audit("mfa", "failure", client, user_id=subject)
            return _refused(Unauthorized("mfa-ticket"))
        key = self._lockout_key(canonical_username(user.email))
        locked = self._locked("mfa", key, user, client)
        if locked is not None:
            return locked
        if not totp.verify(
            self.conn, self.keyring, tenant=self.tenant, user_id=user.id, code=code, now=self.now
        ):
            return self._failed("mfa", key, user, client)
        return Outcome(self._open_session(user, key, client, mfa_passed=True))

    def step_up(self, principal: Principal, code: str, client: ClientInfo) -> Outcome[TokenGrant]:
        """TOTP within a session: confirms an enrolment, or lifts a session to MFA-passed.
        Answers a new access token for the same session."""
        user = self._user(principal.user_id)
        if user is None:
            return _refused(Unauthorized("account"))
        key = self._lockout_key(canonical_username(user.email))
        locked = self._locked("mfa", key, user, client)
        if locked is not None:
            return locked
        if not totp.verify(
            self.conn, self.keyring, tenant=self.tenant, user_id=user.id, code=code, now=self.now
        ):
            return self._failed("mfa", key, user, client)
        session_id = _session_of(principal)
        refresh.mark_mfa_passed(self.conn, tenant=self.tenant, session_id=session_id)
        lockout.record_success(self.conn, tenant=self.tenant, account=key)
        self._audit("mfa", "success", client, user=user)
        scope = self._scope(user, mfa_passed=True)
        return Outcome(
            TokenGrant(
                access_token=self._access_token(user, session_id, scope),
                expires_in=int(self.config.access_token_lifetime.total_seconds()),
                scope=scope,
                session_id=session_id,
            )
        )

    def enroll_mfa(self, principal: Principal, client: ClientInfo) -> Outcome[str]:
        """A new TOTP seed; its provisioning URI is answered this once and never again. Until a
        first code confirms it (:meth:`step_up`), it may be enrolled afresh."""
        user = self._user(principal.user_id)
        if user is None:
            return _refused(Unauthorized("account"))
        if totp.is_confirmed(self.conn, tenant=self.tenant, user_id=user.id):
            # A working second factor is never swapped from a session: the new seed would sit
            # unconfirmed, and sign-in would fall back to the password alone until it is.
            # Replacing one is an administrator's reset.
            self._audit("mfa-enroll", "denied", client, user=user)
            return _refused(Forbidden("a second factor is already set up"))
        secret = totp.enroll(
            self.conn, self.keyring, tenant=self.tenant, user_id=user.id, now=self.now
        )
        self._audit("mfa-enroll", "success", client, user=user)
        return Outcome(
            totp.provisioning_uri(secret, account=user.email, issuer=self.config.totp_issuer)
        )

    # --- sessions ------------------------------------------------------------------------

    def refresh(self, presented: str, client: ClientInfo) -> Outcome[TokenGrant]:
        result = refresh.rotate_refresh_token(
            self.conn,
            tenant=self.tenant,
            presented=presented,
            now=self.now,
            policy=self.config.session,
        )
        if result.issued is None:
            owner = refresh.owner_of_token(self.conn, tenant=self.tenant, presented=presented)
            action = "token-reuse" if result.refusal == "reused" else "token"
            self._audit(action, "failure", client, user_id=owner)
            return _refused(Unauthorized(f"refresh-{result.refusal}"))
        user = self._user(result.issued.user_id)
        if user is None or not user.active:
            refresh.logout(
                self.conn, tenant=self.tenant, session_id=result.issued.session_id, now=self.now
            )
            self._audit("token", "failure", client, user_id=result.issued.user_id)
            return _refused(Unauthorized("account-inactive"))
        self._audit("token", "success", client, user=user)
        return Outcome(self._grant(user, result.issued))

    def logout(self, principal: Principal, client: ClientInfo) -> None:
        refresh.logout(
            self.conn, tenant=self.tenant, session_id=_session_of(principal), now=self.now
        )
        self._audit("logout", "success", client, user_id=principal.user_id)

    def authenticate(self, token: str) -> Outcome[Principal]:
        """The principal behind a bearer access token (A6, A7); refusals may have revoked a
        lapsed session, so they are returned for the caller to commit first."""
        keys = self.parts.signing_keys.verification_keys(self.conn, self.now)
        try:
            claims = verify_access_token(
                token,
                keys=keys,
                issuer=self.config.issuer,
                audience=self.config.audience,
                now=self.now,
            )
        except Unauthorized as refusal:
            return _refused(refusal)
        session_id = claims.get("sid")
        client_id = claims.get("client_id")
        scope = claims.get("scope")
        scopes = frozenset(scope.split()) if isinstance(scope, str) else frozenset()
        if claims["tenant"] != self.tenant:
            return _refused(Unauthorized("tenant"))
        if session_id is None and isinstance(client_id, str) and claims["sub"] == client_id:
            return self._client_principal(client_id, scopes)
        if not isinstance(session_id, str):
            return _refused(Unauthorized("session"))
        lapsed = refresh.check_session(
            self.conn,
            tenant=self.tenant,
            session_id=session_id,
            now=self.now,
            policy=self.config.session,
        )
        if lapsed is not None:
            return _refused(Unauthorized(f"session-{lapsed}"))
        user = self._user(str(claims["sub"]))
        if user is None or not user.active:
            return _refused(Unauthorized("account-inactive"))
        # A patient user's context is always their own record; a SMART launch names the
        # patient for everyone else.
        launch_patient = claims.get("patient")
        if user.role is Role.patient:
            patient_id = user.patient_id
        else:
            patient_id = launch_patient if isinstance(launch_patient, str) else None
        return Outcome(
            Principal(
                user_id=user.id,
                tenant=self.tenant,
                role=user.role,
                patient_id=patient_id,
                territories=user.territories,
                scopes=scopes,
                session_id=session_id,
                mfa_passed=refresh.session_passed_mfa(
                    self.conn, tenant=self.tenant, session_id=session_id
                ),
                practitioner_id=user.practitioner_id,
                client_id=client_id if isinstance(client_id, str) else None,
            )
        )

    def client_token(
        self, client: clients.OAuthClient, requested: frozenset[str], info: ClientInfo
    ) -> ClientGrant:
        """An access token for a backend service acting for itself (SMART Backend Services,
        client_credentials): no session and no refresh token; the scope is what was asked
        within what the registration allows (B7), and only ``system/`` scopes."""
        if not client.active or client.kind != "backend":
            raise Unauthorized("client")
        granted = sorted(s for s in requested & client.scope if s.startswith("system/"))
        if not granted:
            raise Forbidden("none of the requested scopes is granted to this client")
        scope = " ".join(granted)
        key = self.parts.signing_keys.active(self.conn, self.now)
        token = issue_access_token(
            key,
            issuer=self.config.issuer,
            audience=self.config.audience,
            subject=client.client_id,
            tenant=self.tenant,
            now=self.now,
            lifetime=self.config.access_token_lifetime,
            scope=scope,
            extra={"client_id": client.client_id},
        )
        self._audit("token", "success", info)
        return ClientGrant(
            access_token=token,
            expires_in=int(self.config.access_token_lifetime.total_seconds()),
            scope=scope,
        )

    def _client_principal(self, client_id: str, scopes: frozenset[str]) -> Outcome[Principal]:
        """A backend service acting for itself (SMART Backend Services): no user, no session;
        the client must still be registered and active, so revoking it takes effect at once."""
        client = clients.by_id(self.conn, tenant=self.tenant, client_id=client_id)
        if client is None or not client.active or client.kind != "backend":
            return _refused(Unauthorized("client-inactive"))
        return Outcome(
            Principal(
                user_id=None,
                tenant=self.tenant,
                role=Role.system,
                patient_id=None,
                territories=client.territories,
                scopes=scopes & client.scope,
                session_id=None,
                mfa_passed=False,
                client_id=client.client_id,
            )
        )

    # --- accounts ------------------------------------------------------------------------

    def me(self, principal: Principal) -> tuple[UserAccount, bool]:
        """The caller's account and whether it has a confirmed second factor."""
        user = self._user(principal.user_id)
        if user is None:
            raise Unauthorized("account")
        return user, totp.is_confirmed(self.conn, tenant=self.tenant, user_id=user.id)

    def create_account(
        self, new: NewAccount, *, actor: str | None, client: ClientInfo
    ) -> UserAccount:
        """Check and store a new account (A1, A2); raises the 409/422 refusals."""
        canonical = validate_email(new.email)
        if (new.role is Role.patient) != (new.patient_id is not None):
            raise Unprocessable("patient_id is required for, and only for, the patient role")
        if new.practitioner_id is not None and new.role not in CLINICIAN_ROLES:
            raise Unprocessable("practitioner_id is for clinicians (physician, nurse) only")
        if accounts.username_in_use(
            self.conn, self.keyring, tenant=self.tenant, canonical_username=canonical
        ):
            raise UsernameTaken()
        check_password(new.password, context_words=_context_words(new.email, new.full_name))
        user = accounts.create(
            self.conn,
            self.keyring,
            tenant=self.tenant,
            canonical_username=canonical,
            email=new.email.strip(),
            full_name=new.full_name.strip(),
            role=new.role,
            password_hash=self.parts.hasher.hash(new.password),
            must_change_password=new.must_change_password,
            patient_id=new.patient_id,
            territories=new.territories,
            now=self.now,
            practitioner_id=new.practitioner_id,
        )
        self._audit(
            "create",
            "success",
            client,
            user_id=actor,
            resource_id=user.id,
            patient_id=user.patient_id,
        )
        return user

    def register(
        self, principal: Principal, new: NewAccount, client: ClientInfo
    ) -> Outcome[UserAccount]:
        """Admin-only account creation. An admin session must have passed MFA (A5)."""
        if principal.role is not Role.admin or not principal.mfa_passed:
            self._audit("create", "denied", client, user_id=principal.user_id)
            return _refused(Forbidden("only an administrator may create accounts"))
        return Outcome(self.create_account(new, actor=principal.user_id, client=client))

    def change_password(
        self, principal: Principal, current: str, new: str, client: ClientInfo
    ) -> Outcome[None]:
        """Replace the password and end every session of the account (A6): sign in again."""
        user = self._user(principal.user_id)
        if user is None or user.password_hash is None:
            return _refused(Unauthorized("account"))
        key = self._lockout_key(canonical_username(user.email))
        locked = self._locked("password-change", key, user, client)
        if locked is not None:
            return locked
        if not self.parts.hasher.verify(user.password_hash, current):
            return self._failed("password-change", key, user, client)
        normalized = check_password(new, context_words=_context_words(user.email, user.full_name))
        if self.parts.hasher.verify(user.password_hash, normalized):
            raise PasswordRejected("reused", "the new password must differ from the current one")
        accounts.set_password(
            self.conn,
            tenant=self.tenant,
            user_id=user.id,
            password_hash=self.parts.hasher.hash(normalized),
            must_change_password=False,
            now=self.now,
        )
        refresh.revoke_user_sessions(
            self.conn, tenant=self.tenant, user_id=user.id, now=self.now, reason="password-change"
        )
        lockout.record_success(self.conn, tenant=self.tenant, account=key)
        self._audit("password-change", "success", client, user=user)
        return Outcome(None)
