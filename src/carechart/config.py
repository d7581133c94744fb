"""Settings from the environment (``CARECHART_*``); the README's configuration table mirrors this."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CARECHART_", extra="ignore")

    data_dir: Path = Field(default=Path("var"), description="Database file, keys and caches.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; unset means SQLite at DATA_DIR/carechart.db."
    )
    master_key: str | None = Field(
        default=None,
        description="Base64 32-byte key-encryption key; unset means DATA_DIR/keys/master.key.",
    )
    master_key_file: Path | None = Field(
        default=None, description="Path of the master key file (created 0600 if missing)."
    )
    default_tenant: str = Field(default="default", description="Tenant of requests that name none.")
    max_body_bytes: int = Field(default=10 * 1024 * 1024, description="Largest request body (413).")
    max_json_depth: int = Field(default=64, description="Deepest JSON nesting accepted (400).")
    max_bundle_entries: int = Field(default=10_000, description="Most entries in one Bundle.")
    default_page_size: int = Field(default=50, description="History/search page size.")
    max_page_size: int = Field(default=1000, description="Largest _count honoured.")
    base_url: str | None = Field(
        default=None, description="Public base URL for fullUrl/Location; unset means from request."
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis URL (redis://host:6379/0) for state shared by app servers (rate "
        "limits); unset means each process counts on its own.",
    )
    rate_limit_per_ip: int = Field(
        default=1200,
        ge=0,
        description="Requests per minute per client IP (IPv6 per /64), also the burst; every "
        "route but /health and /metrics; 0 turns the limit off.",
    )
    rate_limit_per_user: int = Field(
        default=600,
        ge=0,
        description="Requests per minute per authenticated user or OAuth client, also the "
        "burst; 0 turns the limit off.",
    )
    rate_limit_sensitive: int = Field(
        default=60,
        ge=0,
        description="Requests per minute, per IP and per user or client, on each "
        "enumeration-prone route: Patient search, $everything, $export, MFA verify; 0 turns "
        "the limit off.",
    )
    rate_limit_redis_prefix: str = Field(
        default="carechart:rl:",
        min_length=1,
        description="Prefix of the rate-limit keys in Redis (deployments sharing one Redis "
        "need distinct prefixes).",
    )
    trusted_proxies: str = Field(
        default="",
        description="Comma-separated IPs or CIDR networks of reverse proxies whose "
        "X-Forwarded-For is believed; empty means the header is ignored.",
    )

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'carechart.db').resolve()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
