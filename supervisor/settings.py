"""Supervisor settings: command-line options, PGFLOW_* environment variables
and an optional env file, validated by pydantic-settings.

Precedence: command line > environment > env file > defaults.
"""

from __future__ import annotations

import difflib
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from supervisor import durations

HOUR = 3600.0
DAY = 24 * HOUR


class Settings(BaseSettings):
    # No NaN or Infinity: an infinite lease grace or interval breaks claims and timers.
    model_config = SettingsConfigDict(env_prefix="PGFLOW_", extra="ignore", allow_inf_nan=False)

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
    processes: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=512,
                           description="executor processes (default: the CPU count)")
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
    shutdown_timeout: float = Field(default=30.0, ge=0, le=DAY,
                                    description="seconds a drain (TERM) waits for running tasks")
    lease_grace: float = Field(default=30.0, gt=0, le=DAY,
                               description="seconds a task's lease outlives its timeout")
    heartbeat_interval: float = Field(default=5.0, gt=0, le=HOUR,
                                      description="seconds between heartbeats (lease renewals)")
    poll_interval: float = Field(default=10.0, gt=0, le=HOUR,
                                 description="fallback poll for lost notifications")
    kill_grace: float = Field(
        default=0.5, ge=0, le=HOUR, description="seconds after a task's timeout before its executor is killed"
    )
    complete_batch: int = Field(default=500, ge=1, le=100_000,
                                description="most answers written per statement")
    max_output_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, le=200 * 1024 * 1024,
        description="largest handler output, in bytes of JSON; larger ones fail their attempt",
    )
    startup_timeout: float = Field(
        default=0, ge=0, le=7 * DAY,
        description="seconds to wait for the database at start before exiting (0: keep waiting)",
    )
    retention: float | None = Field(
        default=None,
        description="prune finished runs older than this (30d, 12h, 30m), a small batch at a "
        "time, by one supervisor per tick; off by default (and with 'off')",
    )
    migrate: bool = Field(default=True, description="create or upgrade the schema at start")
    metrics_host: str = Field(default="127.0.0.1", description="address of /metrics, /healthz, /readyz")
    metrics_port: int = Field(default=9464, ge=0, le=65535, description="0 disables /metrics")
    queue_vacuum_interval: float = Field(
        default=10.0, ge=0,
        description="seconds between vacuums of pgflow.queue by this supervisor, done only when "
        "autovacuum is off on the server (0: never)",
    )
    queue_stats_interval: float = Field(
        default=15.0, gt=0, le=HOUR, description="seconds between reads of the queue depth for /metrics")
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: Literal["text", "json"] = Field(
        default="text", description="text, or json: one JSON object per line for log shippers")
    hostname: str = Field(default_factory=socket.gethostname,
                          description="this machine's name in pgflow.workers (default: the host name)")

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

    @field_validator("retention", mode="before")
    @classmethod
    def _retention(cls, value: object) -> object:
        if value is None or isinstance(value, str) and value.strip().lower() in ("", "off"):
            return None
        seconds = durations.parse_seconds(value) if isinstance(value, str) else value
        if isinstance(seconds, int | float) and seconds <= 0:
            raise ValueError("give a positive duration such as 30d (or 'off'): a retention of "
                             "0 would delete every run the moment it finishes")
        return seconds

    @field_validator("hostname")
    @classmethod
    def _printable_hostname(cls, value: str) -> str:
        if not value or len(value) > 255 or not value.isprintable():
            raise ValueError("the host name must be 1 to 255 printable characters")
        return value

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> Settings:
        if self.heartbeat_interval >= self.lease_grace:
            raise PydanticCustomError("heartbeat_within_lease", (
                f"--heartbeat-interval ({self.heartbeat_interval:g} s) must be shorter than "
                f"--lease-grace ({self.lease_grace:g} s): leases would expire between heartbeats "
                "and other supervisors would take tasks this one is running"))
        return self

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("log level must be DEBUG, INFO, WARNING or ERROR")
        return upper


# PGFLOW_TEST_* variables belong to the test suite, not to the supervisor.
OTHER_PREFIX = "PGFLOW_TEST_"


def unknown_variables(names: Iterable[str]) -> list[str]:
    """A warning for each PGFLOW_* name that is no setting, naming the closest one."""
    prefix = "PGFLOW_"
    known = {prefix + name.upper(): name for name in Settings.model_fields}
    warnings = []
    for name in sorted(set(names)):
        upper = name.upper()
        if not upper.startswith(prefix) or upper in known or upper.startswith(OTHER_PREFIX):
            continue
        close = difflib.get_close_matches(upper, list(known), n=1, cutoff=0.7)
        hint = (f"; did you mean {close[0]} (--{known[close[0]].replace('_', '-')})?" if close
                else f"; settings are {', '.join(sorted(known))}")
        warnings.append(f"{name} is not a pgflow setting and is ignored{hint}")
    return warnings


def env_file_names(path: str) -> list[str]:
    """The variable names an env file sets (KEY=value lines; # comments; optional `export`)."""
    names = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key = line.split("=", 1)[0].strip()
        names.append(key.removeprefix("export ").strip())
    return names
