"""Request and response shapes of ``/api/v1/auth``.

Password fields are bounded far above the 128-character policy (SECURITY A2) only so that a
megabyte body is refused before anything hashes it; the policy itself answers 422 with a reason.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from carechart.auth.principal import Role

Secret = Annotated[str, Field(min_length=1, max_length=4096)]
Email = Annotated[str, Field(min_length=3, max_length=254)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginRequest(_Strict):
    email: Email
    password: Secret


class MfaVerifyRequest(_Strict):
    """With ``mfa_ticket``: the second step of a sign-in. Without, and with a bearer token:
    confirms an enrolment or lifts the current session to MFA-passed."""

    code: Annotated[str, Field(min_length=1, max_length=16)]
    mfa_ticket: Annotated[str | None, Field(max_length=4096)] = None


class RefreshRequest(_Strict):
    refresh_token: Secret


class ChangePasswordRequest(_Strict):
    current_password: Secret
    new_password: Secret


class UserCreate(_Strict):
    email: Email
    password: Secret
    full_name: Annotated[str, Field(min_length=1, max_length=200)]
    role: Role
    patient_id: Annotated[str | None, Field(max_length=64, pattern=r"^[A-Za-z0-9\-.]{1,64}$")] = (
        None
    )
    practitioner_id: Annotated[
        str | None, Field(max_length=64, pattern=r"^[A-Za-z0-9\-.]{1,64}$")
    ] = None
    territories: Annotated[
        list[Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z0-9_\-.]{1,64}$")]],
        Field(max_length=100),
    ] = []
    must_change_password: bool = False


class UserRead(BaseModel):
    id: str
    email: str
    full_name: str
    role: Role
    patient_id: str | None
    practitioner_id: str | None
    territories: list[str]
    active: bool
    must_change_password: bool
    created_at: datetime


class MeRead(UserRead):
    mfa_enrolled: bool
    session_mfa_passed: bool
    scopes: list[str]


class TokenResponse(BaseModel):
    """RFC 6749 5.1 names; ``refresh_token`` is absent from an MFA step-up's answer."""

    status: Literal["authenticated"] = "authenticated"
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - RFC 6750 token type
    expires_in: int
    scope: str
    refresh_token: str | None = None
    refresh_expires_at: datetime | None = None
    must_change_password: bool = False
    mfa_enrollment_required: bool = False


class MfaRequiredResponse(BaseModel):
    status: Literal["mfa_required"] = "mfa_required"
    mfa_ticket: str
    expires_in: int


class MfaEnrollResponse(BaseModel):
    """Shown once: the seed is stored sealed and cannot be read back."""

    provisioning_uri: str


class PasswordChangedResponse(BaseModel):
    status: Literal["password_changed"] = "password_changed"
