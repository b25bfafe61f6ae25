"""`pgflow demo`: a batch of runs of the example `orders` flow
(pgflow/examples/orders.py) through the real supervisor, with live progress
and a summary.

The database is PGFLOW_DATABASE_URL when given, else an embedded Postgres
whose data directory (DATA_DIR, kept between runs) also holds the
supervisor's log. `pgflow demo --clean` (`make clean-demo`) removes it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

from pgflow import Client
from pgflow.examples import orders
from supervisor.demo import batch, display
from supervisor.demo.process import SupervisorProcess, free_port

DATA_DIR = Path(".pgflow/demo")
FLOW_MODULE = "pgflow.examples.orders"
POLL_SECONDS = 0.2
EXIT_INTERRUPTED = 130


@contextlib.contextmanager
def _database(database_url: str | None, data_dir: Path, console: Console) -> Iterator[str]:
    if database_url:
        yield database_url
        return
    from supervisor.embedded import embedded_postgres

    fresh = not (data_dir / "postgres").exists()
    console.print(f"{'initializing' if fresh else 'starting'} the embedded Postgres in "
                  f"{data_dir}/postgres (kept between runs; `make clean-demo` removes it)",
                  highlight=False)
    with embedded_postgres(data_dir / "postgres") as url:
        yield url


def run(*, runs: int, processes: int, data_dir: Path = DATA_DIR, database_url: str | None = None,
        console: Console | None = None) -> int:
    """Run the demo; 0 when every run completed, 1 otherwise, 130 on Ctrl-C."""
    console = console or Console(soft_wrap=True)  # long lines are not cut into several
    # `kill PID` stops the demo like Ctrl-C does: supervisor and Postgres included.
    signal.signal(signal.SIGTERM, _interrupt)
    data_dir.mkdir(parents=True, exist_ok=True)
    interrupted = False
    try:
        with _database(database_url, data_dir, console) as dsn, \
                Client(dsn, application_name="pgflow demo") as client:
            client.migrate()
            client.register(orders.flow)
            supervisor = SupervisorProcess(dsn, FLOW_MODULE, processes, free_port(),
                                           data_dir / "supervisor.log")
            run_ids: list[uuid.UUID] = []
            metrics = ""
            try:
                console.print(f"starting: pgflow supervise --flows {FLOW_MODULE} --processes "
                              f"{processes} (log: {supervisor.log_path})", highlight=False)
                supervisor.start()
                supervisor.wait_ready()
                console.print(f"starting {runs} runs of flow 'orders': validate -> price (map) "
                              "-> charge (fails once for 1 order in 4) -> ship (times out once "
                              "for 1 in 5) + receipt\n", highlight=False)
                run_ids = _start_runs(client, runs)
                _watch(client, run_ids, console)
                metrics = supervisor.scrape()
            except KeyboardInterrupt:
                interrupted = True
                # A second Ctrl-C (or TERM) must not cut the clean-up short.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                console.print("\ninterrupted: stopping the supervisor and Postgres", highlight=False)
            finally:
                code = supervisor.stop(fast=interrupted)
            if run_ids:
                display.summary(console, batch.timings(client, run_ids), len(run_ids), metrics)
            console.print(display.metrics_line(supervisor.metrics_url, metrics), highlight=False)
            if code not in (0, None):
                console.print(f"the supervisor exited with {code}; see {supervisor.log_path}")
            _where_next(console, run_ids, database_url, dsn)
            completed = batch.progress(client, run_ids).runs.get("completed", 0) if run_ids else 0
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if interrupted:
        return EXIT_INTERRUPTED
    return 0 if completed == runs else 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _shown_url(database_url: str | None, dsn: str) -> str:
    from supervisor.redact import mask_password

    return mask_password(database_url or dsn)


def _where_next(console: Console, run_ids: list[uuid.UUID],
                database_url: str | None, dsn: str) -> None:
    retried = run_ids[0] if run_ids else None  # order 1: its payment fails once
    if database_url:
        example = f" (a run with a retried step: pgflow run {retried})" if retried else ""
        console.print(f"inspect the runs: pgflow runs --flow orders{example}; database "
                      f"{_shown_url(database_url, dsn)}", highlight=False)
    else:
        console.print("the embedded Postgres is stopped again; to inspect runs afterwards with "
                      "`pgflow runs` and `pgflow run RUN_ID`, run the demo against a server of "
                      "yours: PGFLOW_DATABASE_URL=postgresql://... make demo", highlight=False)


def _start_runs(client: Client, runs: int) -> list[uuid.UUID]:
    return [client.start_flow(orders.flow, orders.make_order(order_no))
            for order_no in range(1, runs + 1)]


def _watch(client: Client, run_ids: list[uuid.UUID], console: Console) -> None:
    with display.ProgressView(console) as view:
        while True:
            progress = batch.progress(client, run_ids)
            view.update(progress, force=progress.done)
            if progress.done:
                return
            time.sleep(POLL_SECONDS)


def clean(data_dir: Path = DATA_DIR, console: Console | None = None) -> int:
    """Stop an embedded Postgres left running in data_dir, then remove data_dir."""
    console = console or Console()
    pid_file = data_dir / "postgres" / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGINT)  # Postgres' fast shutdown
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            os.kill(pid, 0)  # raises once it is gone
            time.sleep(0.1)
    if data_dir.exists():
        shutil.rmtree(data_dir)
        console.print(f"removed {data_dir}", highlight=False)
    else:
        console.print(f"nothing to remove at {data_dir}", highlight=False)
    return 0
