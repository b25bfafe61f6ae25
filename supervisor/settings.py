"""Supervisor settings: command-line options, PGFLOW_* environment variables
and an optional env file, validated by pydantic-settings.

Precedence: command line > environment > env file > defaults.
"""

from __future__ import annotations

import os
import socket
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PGFLOW_", extra="ignore")

    database_url: str = Field(description="Postgres connection string")
    listen_url: str | None = Field(
        default=None,
        description="connection string for LISTEN/NOTIFY when the database URL goes through a "
        "transaction pooler (default: the database URL)",
    )
    # NoDecode: PGFLOW_FLOWS is "a,b", not JSON.
    flows: Annotated[list[str], NoDecode] = Field(
        description="modules collecting every top-level Flow (myapp.flows), or module:attribute"
    )
    processes: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=512)
    prefetch: int = Field(
        default=256, ge=0, le=5000,
        description="most tasks claimed beyond what idle executors take; the buffer holds about "
        "50 ms of work at the usual pace, so long tasks are barely prefetched",
    )
    executor_depth: int = Field(
        default=8, ge=1, le=1000,
        description="most tasks queued in one executor; only tasks of steps that usually take "
        "under 5 ms queue behind a running one (a longer task always gets an idle executor)",
    )
    max_tasks_per_child: int = Field(default=0, ge=0, description="0: no limit")
    max_memory_per_child: int = Field(default=0, ge=0, description="MiB of peak RSS; 0: no limit")
    shutdown_timeout: float = Field(default=30.0, ge=0)
    lease_grace: float = Field(default=30.0, gt=0)
    heartbeat_interval: float = Field(default=5.0, gt=0)
    poll_interval: float = Field(default=10.0, gt=0, description="fallback poll for lost notifications")
    kill_grace: float = Field(
        default=0.5, ge=0, description="seconds after a task's timeout before its executor is killed"
    )
    complete_batch: int = Field(default=500, ge=1, description="most answers written per statement")
    max_output_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, le=200 * 1024 * 1024,
        description="largest handler output, in bytes of JSON; larger ones fail their attempt",
    )
    startup_timeout: float = Field(
        default=0, ge=0,
        description="seconds to wait for the database at start before exiting (0: keep waiting)",
    )
    migrate: bool = True
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9464, ge=0, le=65535, description="0 disables /metrics")
    queue_stats_interval: float = Field(default=15.0, gt=0)
    log_level: str = "INFO"
    hostname: str = Field(default_factory=socket.gethostname)

    @field_validator("flows", mode="before")
    @classmethod
    def _split_flows(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            return [p.strip() for item in value for p in str(item).split(",") if p.strip()]
        return value

    @field_validator("flows")
    @classmethod
    def _need_flows(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one flow module, e.g. --flows myapp.flows")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("log level must be DEBUG, INFO, WARNING or ERROR")
        return upper
