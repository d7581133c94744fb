"""Request and response shapes of ``/api/v1/smart``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ClientKindName = Literal["public", "confidential", "backend"]
ResourceId = Annotated[str, Field(pattern=r"^[A-Za-z0-9\-.]{1,64}$")]
Territory = Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z0-9_\-.]{1,64}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClientCreate(_Strict):
    """A SMART app (public or confidential) or a backend service to register."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    kind: ClientKindName
    redirect_uris: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=2000)]], Field(max_length=20)
    ] = []
    scope: Annotated[str, Field(min_length=1, max_length=4000)]
    # Public keys (RFC 7517 JWKS): required for backend services, optional for confidential
    # apps (which then authenticate with private_key_jwt instead of a secret).
    jwks: dict[str, Any] | None = None
    territories: Annotated[list[Territory], Field(max_length=100)] = []


class ClientRead(BaseModel):
    client_id: str
    name: str
    kind: ClientKindName
    redirect_uris: list[str]
    scope: str
    territories: list[str]
    active: bool
    created_at: datetime
    token_endpoint_auth_method: Literal["none", "client_secret_basic", "private_key_jwt"]
    jwks: dict[str, Any] | None = None


class ClientCreated(ClientRead):
    """Shown once: only an argon2id hash of the secret is kept."""

    client_secret: str | None = None


class LaunchCreate(_Strict):
    patient_id: ResourceId
    # The app the launch is for; without it any registered app may use it.
    client_id: Annotated[str | None, Field(min_length=1, max_length=128)] = None


class LaunchCreated(BaseModel):
    launch: str
    expires_in: int
