"""The operator's configuration: one pydantic-settings class, the only reader of os.environ."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Operator settings, read from ``KUBEPIM_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="KUBEPIM_", frozen=True)

    liveness_host: str = Field(
        default="127.0.0.1", description="Address the liveness endpoint listens on."
    )
    liveness_port: int = Field(
        default=8080, ge=0, le=65535,
        description="Port of the liveness endpoint (/healthz); 0 disables it.",
    )
    resync_seconds: float = Field(
        default=30.0, gt=0,
        description="Interval of the safety-net resync: orphan bindings, timeouts, drift.",
    )
    log_level: str = Field(
        default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$", description="Python log level."
    )
