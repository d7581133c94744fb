"""Errors of authentication; rendered by the APIs like every other :class:`CarechartError`."""

from __future__ import annotations

from datetime import UTC, datetime

from carechart.errors import CarechartError, Unprocessable
from carechart.errors import Forbidden as Forbidden  # re-exported: raised by the auth routes


class Unauthorized(CarechartError):
    """No valid credentials. The message stays generic: which check failed is for the audit
    record, not for the caller (SECURITY B10)."""

    status, code, fhir_code = 401, "UNAUTHORIZED", "login"

    def __init__(
        self, reason: str = "unauthenticated", message: str = "authentication failed"
    ) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})
        # Which check failed (expired, audience, refresh-reused ...): for the audit record and
        # metrics, deliberately not in ``details``, which the APIs render.
        self.reason = reason


class AccountLocked(CarechartError):
    """SECURITY A4: 423 with the unlock time."""

    status, code, fhir_code = 423, "ACCOUNT_LOCKED", "lock-error"

    def __init__(self, unlock_at: datetime) -> None:
        at = unlock_at.astimezone(UTC).isoformat()
        super().__init__("the account is temporarily locked", details={"unlock_at": at})
        self.unlock_at = unlock_at


class RateLimited(CarechartError):
    """SECURITY A4/F1: 429 with Retry-After (whole seconds, rounded up)."""

    status, code, fhir_code = 429, "RATE_LIMITED", "throttled"

    def __init__(self, retry_after: float) -> None:
        seconds = max(1, int(-(-retry_after // 1)))
        super().__init__(
            "too many requests",
            details={"retry_after": seconds},
            headers={"Retry-After": str(seconds)},
        )
        self.retry_after = seconds


class PasswordRejected(Unprocessable):
    """SECURITY A2; ``reason`` is one of too_short, too_long, breached, context, repetitive."""

    code = "PASSWORD_REJECTED"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, details={"reason": reason})
        self.reason = reason


class InvalidUsername(Unprocessable):
    code = "INVALID_USERNAME"


class PasswordChangeRequired(Forbidden):
    """The session may only change the account's password (a one-time or reset password)."""

    code = "PASSWORD_CHANGE_REQUIRED"

    def __init__(self) -> None:
        super().__init__("the password must be changed before anything else")


class MfaEnrollmentRequired(Forbidden):
    """The role needs TOTP (SECURITY A5) and the account has not set it up yet."""

    code = "MFA_ENROLLMENT_REQUIRED"

    def __init__(self) -> None:
        super().__init__("multi-factor authentication must be set up before anything else")


class UsernameTaken(CarechartError):
    """SECURITY A1: unique after NFKC + casefold."""

    status, code, fhir_code = 409, "USERNAME_TAKEN", "duplicate"

    def __init__(self) -> None:
        super().__init__("an account with this username already exists")
