"""HL7 v2 interface settings (``CARECHART_HL7_*``).

These fields belong in :class:`carechart.config.Settings`; they are read here on their own
until they are added there.
"""

from __future__ import annotations

import ipaddress

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from carechart.integrations.hl7v2.parser import DEFAULT_MAX_BYTES

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Hl7Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CARECHART_", extra="ignore")

    hl7_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="TCP port of the MLLP listener that `carechart serve` starts; unset "
        "means none.",
    )
    hl7_host: str = Field(default="127.0.0.1", description="Interface the MLLP listener binds.")
    hl7_max_bytes: int = Field(
        default=DEFAULT_MAX_BYTES,
        ge=1024,
        description="Largest HL7 message (MLLP frame or POST /api/v1/hl7 body; 413 over HTTP).",
    )
    hl7_tenant: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_\-.]{1,64}$",
        description="Territory the MLLP listener stores into; unset means the default tenant.",
    )
    hl7_allowed_networks: str = Field(
        default="127.0.0.0/8,::1/128",
        description="Comma-separated networks whose peers may connect to the MLLP listener "
        "(MLLP has no authentication of its own); others are disconnected unanswered.",
    )
    hl7_idle_timeout: float = Field(
        default=300.0, gt=0, description="Seconds an idle MLLP connection is kept open."
    )

    def networks(self) -> list[Network]:
        return [
            ipaddress.ip_network(part.strip(), strict=False)
            for part in self.hl7_allowed_networks.split(",")
            if part.strip()
        ]


def peer_allowed(peer: str | None, networks: list[Network]) -> bool:
    """Whether an MLLP peer address is inside one of ``networks``."""
    if peer is None:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)
