"""The `pgflow` command."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence

from pgflow import Client, PgflowError

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pgflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    migrate = commands.add_parser("migrate", help="create or upgrade the pgflow schema")
    migrate.add_argument("--database-url", default=os.environ.get("PGFLOW_DATABASE_URL"))

    demo = commands.add_parser(
        "demo", help="run the example flow once (embedded Postgres unless a database is given)"
    )
    demo.add_argument("--database-url", default=os.environ.get("PGFLOW_DATABASE_URL"))

    args = parser.parse_args(argv)
    try:
        if args.command == "migrate":
            return _migrate(args.database_url)
        return _demo(args.database_url)
    except PgflowError as exc:
        print(f"pgflow: {exc}", file=sys.stderr)
        return 1


def _migrate(database_url: str | None) -> int:
    if not database_url:
        print("pgflow migrate: set PGFLOW_DATABASE_URL or pass --database-url", file=sys.stderr)
        return EXIT_USAGE
    with Client(database_url, application_name="pgflow migrate") as client:
        applied = client.migrate()
    print("applied: " + ", ".join(applied) if applied else "schema is up to date")
    return 0


@contextlib.contextmanager
def _database(database_url: str | None) -> Iterator[str]:
    if database_url:
        yield database_url
        return
    try:
        import pgserver
    except ImportError:
        raise PgflowError(
            "no database given and no embedded Postgres available: set PGFLOW_DATABASE_URL, "
            "or install the dev extra (pip install -e '.[dev]') for pgserver"
        ) from None
    with tempfile.TemporaryDirectory(prefix="pgflow-demo-") as data_dir:
        print(f"starting an embedded Postgres in {data_dir} ...")
        server = pgserver.get_server(data_dir, cleanup_mode="stop")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


def _demo(database_url: str | None) -> int:
    from executor import drain
    from pgflow.examples.wordcount import flow

    text = "the quick brown fox\njumps over\nthe lazy dog"
    with _database(database_url) as dsn, Client(dsn, application_name="pgflow demo") as client:
        client.migrate()
        print(f"flow {flow.slug!r}: {client.register(flow)}")
        run_id = client.start_flow(flow, text)
        _show(client, run_id, "after start_flow")
        ran = drain(client, flow)
        print(f"\nran {ran} tasks in this process")
        _show(client, run_id, "after drain")
    return 0


def _show(client: Client, run_id: object, when: str) -> None:
    run = client.get_run(run_id)  # type: ignore[arg-type]
    print(f"\nrun {run.run_id} {when}: {run.status}")
    for slug, step in run.steps.items():
        tasks = f"{step.task_count} task(s)" if step.task_count is not None else "waiting"
        print(f"  {slug:<8} {step.status:<10} {tasks}")
    if run.output is not None:
        print(f"output: {run.output}")


if __name__ == "__main__":
    raise SystemExit(main())
