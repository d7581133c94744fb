"""Event delivery settings (``CARECHART_NATS_*``), and the publisher they select.

These fields belong in :class:`carechart.config.Settings`; they are read here on their own
until they are added there.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from carechart.integrations.events.outbox import InProcessBus, Publisher


class EventSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CARECHART_", extra="ignore")

    nats_url: str | None = Field(
        default=None,
        description="NATS server with JetStream (nats://host:4222) that receives events; "
        "unset means events are delivered to subscribers in the same process.",
    )
    nats_stream: str = Field(
        default="CARECHART",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="JetStream stream of the events (created with subjects "
        "'<prefix>.>' if missing).",
    )
    nats_subject_prefix: str = Field(
        default="carechart",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="First token of event subjects: <prefix>.<tenant>.<topic>.",
    )


def build_publisher(settings: EventSettings, bus: InProcessBus | None = None) -> Publisher:
    """JetStream when a NATS URL is configured, else the in-process bus."""
    if settings.nats_url:
        from carechart.integrations.events.jetstream import JetStreamPublisher

        return JetStreamPublisher(
            settings.nats_url,
            stream=settings.nats_stream,
            subject_prefix=settings.nats_subject_prefix,
        )
    return bus or InProcessBus()
