"""The PgQueuer worker of bench/vs_pgqueuer.py, one per process (the
benchmark starts two):

    python bench/vs_pgqueuer_worker.py --batch-size 100

does what `pgq run vs_pgqueuer_worker:create --batch-size 100` does (uvloop,
PgQueuer's logger at INFO, `pgqueuer.run` on the factory) without the `pgq`
command line, whose --log-level parsing fails with current typer releases
in PgQueuer 1.6. Configured by environment variables:

    VS_PGQ_CONNINFO   libpq connection string (with the application_name
                      by which the benchmark finds this worker's backend)
    VS_PGQ_DRIVER     asyncpg (PgQueuer's own benchmark default) or psycopg
    VS_PGQ_READY_DIR  where to touch <pid>.ready once the worker LISTENs
    VS_PGQ_STAMPS     file the `stamp` entrypoint appends "<payload> <time>" to

Entrypoints: `noop` does nothing; `stamp` records when it started (latency).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import uvloop
from pgqueuer import PgQueuer, run
from pgqueuer.core import logconfig
from pgqueuer.db import AsyncpgDriver, PsycopgDriver
from pgqueuer.models import Job
from psycopg.conninfo import conninfo_to_dict


def _announcing(driver_class: type) -> type:
    """The driver, touching the ready file once the queue manager LISTENs:
    from then on an enqueue reaches this worker at once."""

    class Announcing(driver_class):  # type: ignore[misc, valid-type]
        async def add_listener(self, *args: object, **kwargs: object) -> object:
            result = await super().add_listener(*args, **kwargs)
            Path(os.environ["VS_PGQ_READY_DIR"], f"{os.getpid()}.ready").touch()
            return result

    return Announcing


async def _driver(conninfo: str, kind: str) -> AsyncpgDriver | PsycopgDriver:
    if kind == "psycopg":
        import psycopg

        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        return _announcing(PsycopgDriver)(conn)
    import asyncpg

    params = conninfo_to_dict(conninfo)
    conn = await asyncpg.connect(
        host=params.get("host"), port=int(params.get("port") or 5432), user=params.get("user"),
        password=params.get("password"), database=params.get("dbname"),
        server_settings={"application_name": str(params.get("application_name", "pgqueuer"))},
    )
    return _announcing(AsyncpgDriver)(conn)


@asynccontextmanager
async def create() -> AsyncIterator[PgQueuer]:
    driver = await _driver(os.environ["VS_PGQ_CONNINFO"], os.environ.get("VS_PGQ_DRIVER", "asyncpg"))
    pgq = PgQueuer(driver)
    stamps = open(os.environ["VS_PGQ_STAMPS"], "a", buffering=1)  # noqa: SIM115 - closed below

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        return None

    @pgq.entrypoint("stamp")
    async def stamp(job: Job) -> None:
        started = time.time()
        stamps.write(f"{(job.payload or b'').decode()} {started}\n")

    try:
        yield pgq
    finally:
        stamps.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="a PgQueuer worker for bench/vs_pgqueuer.py")
    parser.add_argument("--batch-size", type=int, default=10)
    args = parser.parse_args()
    logconfig.setup_fancy_logger(logconfig.LogLevel.INFO)
    uvloop.run(run(create, batch_size=args.batch_size))


if __name__ == "__main__":
    main()
