"""The `pgflow` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import psycopg

from pgflow import Client, PgflowError, ShapeConflictError

EXIT_USAGE = 2
# sysexits EX_CONFIG: bad settings, a flow module that cannot import, a shape
# conflict. The systemd unit lists it in RestartPreventExitStatus=, so a
# broken deploy stops instead of respawning forever.
EXIT_CONFIG = 78

# Options of `pgflow supervise`, each also a PGFLOW_<NAME> environment variable.
SUPERVISE_OPTIONS: dict[str, tuple[type, str]] = {
    "database_url": (str, "Postgres connection string"),
    "flows": (str, "comma-separated flow modules (myapp.flows) or module:attribute"),
    "processes": (int, "executor processes (default: CPU count)"),
    "prefetch": (int, "tasks claimed beyond idle executors (default 8)"),
    "executor_depth": (int, "tasks queued per executor (default 1; more suits tiny tasks)"),
    "max_tasks_per_child": (int, "recycle an executor after this many tasks (0: never)"),
    "max_memory_per_child": (int, "recycle an executor above this peak RSS in MiB (0: never)"),
    "shutdown_timeout": (float, "seconds a drain waits for running tasks (default 30)"),
    "lease_grace": (float, "seconds a lease outlives a task's timeout (default 30)"),
    "heartbeat_interval": (float, "seconds between lease heartbeats (default 5)"),
    "poll_interval": (float, "fallback poll in seconds, for lost notifications (default 10)"),
    "metrics_host": (str, "address for /metrics, /healthz, /readyz (default 127.0.0.1)"),
    "metrics_port": (int, "port for /metrics (default 9464; 0 disables)"),
    "log_level": (str, "DEBUG, INFO, WARNING or ERROR"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pgflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    migrate = commands.add_parser("migrate", help="create or upgrade the pgflow schema")
    migrate.add_argument("--database-url", default=os.environ.get("PGFLOW_DATABASE_URL"))

    demo = commands.add_parser(
        "demo", help="run a batch of the example orders flow through a real supervisor "
        "(embedded Postgres unless a database is given)"
    )
    demo.add_argument("--database-url", default=os.environ.get("PGFLOW_DATABASE_URL"),
                      help="use this database instead of the embedded one")
    demo.add_argument("--runs", type=int, default=20, help="runs to start; exits after they finish")
    demo.add_argument("--processes", type=int, default=2, help="executor processes (default 2)")
    demo.add_argument("--data-dir", type=Path, default=Path(".pgflow/demo"),
                      help="embedded Postgres data and the supervisor log (default .pgflow/demo, "
                      "kept between runs)")
    demo.add_argument("--clean", action="store_true",
                      help="stop the embedded Postgres and remove --data-dir, then exit")

    supervise = commands.add_parser(
        "supervise", help="run the supervisor: claim tasks and run them in forked executors"
    )
    for name, (kind, text) in SUPERVISE_OPTIONS.items():
        supervise.add_argument(f"--{name.replace('_', '-')}", type=kind, help=text)
    supervise.add_argument("--env-file", help="read PGFLOW_* settings from this file too")
    supervise.add_argument("--no-migrate", dest="migrate", action="store_const", const=False,
                           help="do not create or upgrade the schema at start")

    args = parser.parse_args(argv)
    if args.command == "supervise":
        return _supervise(args)
    try:
        if args.command == "migrate":
            return _migrate(args.database_url)
        return _demo(args)
    except PgflowError as exc:
        print(f"pgflow: {exc}", file=sys.stderr)
        return 1


def _supervise(args: argparse.Namespace) -> int:
    import pydantic

    from supervisor.flows import FlowImportError, load_flows
    from supervisor.settings import Settings

    overrides = {
        name: getattr(args, name)
        for name in [*SUPERVISE_OPTIONS, "migrate"]
        if getattr(args, name, None) is not None
    }
    try:
        settings = Settings(_env_file=args.env_file, **overrides)  # type: ignore[call-arg]
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        print(f"pgflow supervise: invalid settings: {problems} "
              "(set them as options or PGFLOW_* environment variables)", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
    )
    try:
        flows = load_flows(settings.flows)
    except FlowImportError as exc:
        print(f"pgflow supervise: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    from supervisor.store import DatabaseUnavailable
    from supervisor.supervisor import Supervisor

    try:
        return Supervisor(settings, flows).run()
    except ShapeConflictError as exc:
        print(f"pgflow supervise: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (DatabaseUnavailable, psycopg.OperationalError) as exc:
        print(f"pgflow supervise: cannot reach the database: {exc}".strip(), file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. the metrics port is taken: worth a restart, not a config error
        print(f"pgflow supervise: {exc}", file=sys.stderr)
        return 1


def _migrate(database_url: str | None) -> int:
    if not database_url:
        print("pgflow migrate: set PGFLOW_DATABASE_URL or pass --database-url", file=sys.stderr)
        return EXIT_USAGE
    with Client(database_url, application_name="pgflow migrate") as client:
        applied = client.migrate()
    print("applied: " + ", ".join(applied) if applied else "schema is up to date")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from supervisor import demo

    if args.clean:
        return demo.clean(args.data_dir)
    if args.runs < 1 or args.processes < 1:
        print("pgflow demo: --runs and --processes must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    return demo.run(runs=args.runs, processes=args.processes, data_dir=args.data_dir,
                    database_url=args.database_url)


if __name__ == "__main__":
    raise SystemExit(main())
