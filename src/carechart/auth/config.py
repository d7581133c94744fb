"""The identity service's settings and long-lived parts (hasher, signing keys, throttle).

They live on ``app.state.auth``, built from the application's settings on first use, so
mounting the routers is all an application needs; tests install their own with
:func:`install` (lighter argon2 parameters, a tight throttle, a movable clock).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from starlette.applications import Starlette

from carechart.auth.lockout import InMemoryTokenBucket, LockoutPolicy, Throttle
from carechart.auth.passwords import PasswordHasher
from carechart.auth.principal import Role
from carechart.auth.refresh import SessionPolicy
from carechart.auth.tokens import CLOCK_LEEWAY, SigningKeyStore
from carechart.context import AppContext
from carechart.crypto.keys import load_master_key
from carechart.errors import EncryptionError

DEFAULT_ISSUER = "urn:carechart"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    issuer: str = DEFAULT_ISSUER
    audience: str = DEFAULT_ISSUER + ":api"
    # SECURITY A7 and the brief: short-lived access tokens; the session is checked on each
    # request anyway, so logout does not wait for expiry.
    access_token_lifetime: timedelta = timedelta(minutes=10)
    mfa_ticket_lifetime: timedelta = timedelta(minutes=5)
    session: SessionPolicy = field(default_factory=SessionPolicy)
    lockout: LockoutPolicy = field(default_factory=LockoutPolicy)
    # SECURITY A5: these roles cannot get a full session without a passed TOTP step.
    mfa_required_roles: frozenset[Role] = frozenset({Role.admin})
    totp_issuer: str = "Carechart"

    @classmethod
    def for_base_url(cls, base_url: str | None) -> AuthConfig:
        if not base_url:
            return cls()
        issuer = base_url.rstrip("/")
        return cls(issuer=issuer, audience=issuer)


def default_login_throttle() -> InMemoryTokenBucket:
    # A burst of 10 attempts per IP, then one every 6 seconds (SECURITY A4, F1).
    return InMemoryTokenBucket(capacity=10, rate=1 / 6)


@dataclass(slots=True)
class AuthComponents:
    config: AuthConfig
    hasher: PasswordHasher
    signing_keys: SigningKeyStore
    login_throttle: Throttle = field(default_factory=default_login_throttle)
    clock: Callable[[], datetime] = utc_now


def from_context(ctx: AppContext, config: AuthConfig | None = None) -> AuthComponents:
    config = config or AuthConfig.for_base_url(ctx.settings.base_url)
    settings = ctx.settings
    master = load_master_key(
        settings.master_key, settings.master_key_file or settings.data_dir / "keys" / "master.key"
    )
    if master.key_id != ctx.keyring.master_key_id:
        raise EncryptionError("the signing keys' master key is not the key ring's")
    return AuthComponents(
        config=config,
        hasher=PasswordHasher(),
        signing_keys=SigningKeyStore(
            master, published_for=config.access_token_lifetime + CLOCK_LEEWAY
        ),
    )


_install_lock = threading.Lock()


def install(app: Starlette, components: AuthComponents) -> None:
    app.state.auth = components


def components_of(app: Starlette) -> AuthComponents:
    existing = getattr(app.state, "auth", None)
    if isinstance(existing, AuthComponents):
        return existing
    with _install_lock:
        existing = getattr(app.state, "auth", None)
        if not isinstance(existing, AuthComponents):
            existing = from_context(context_of(app))
            app.state.auth = existing
        return existing


def context_of(app: Starlette) -> AppContext:
    ctx = app.state.ctx
    if not isinstance(ctx, AppContext):
        raise TypeError("app.state.ctx is not an AppContext")
    return ctx
