"""Client: what applications use to migrate, register flows and start, read,
wait for, cancel, retry and prune runs.

A Client holds one connection, opened on first use and reopened on the next
call after it drops. Calls that may be retried after a dropped connection are
all idempotent (start_flow always sends a run id), so a call that fails with
a connection error is retried once on a fresh connection. A Client is not
meant to be shared between threads without a lock of your own; it takes one
anyway so misuse cannot interleave statements.
"""

from __future__ import annotations

import datetime
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import orjson
import psycopg
import psycopg.rows
from psycopg.types.json import Jsonb

from pgflow import db, jsondata, migrations, queries, retention
from pgflow.errors import (
    FlowNotFoundError,
    InvalidInputError,
    PermissionDeniedError,
    RunNotFoundError,
    ShapeConflictError,
)
from pgflow.flow import MAX_SLUG_LENGTH, SLUG_PATTERN, Flow
from pgflow.retention import PruneResult
from pgflow.run import RUN_STATUSES, Run, RunSummary, StepState
from pgflow.shape import describe_differences
from pgflow.tags import check_key, check_tags, encode_tags

__all__ = ["Client", "PruneResult", "Run", "RunSummary", "StepState"]

T = TypeVar("T")

RUNS_CHANNEL = "pgflow_runs"
# How often wait() re-reads the run when no notification came (lost
# notifications, a dropped listener); notifications wake it sooner.
WAIT_RECHECK_SECONDS = 2.0

# The largest run input start_flow accepts, as JSON. A run's input is stored
# once but read again for every root step's claim (and by ctx.flow_input),
# passed whole through a supervisor's memory and an executor's pipe, so it is
# kept well under the 64 MiB an executor may answer with and far under
# jsonb's 255 MiB: large data belongs in object storage or a table, with a
# reference in the input. Client(max_input_bytes=...) changes it.
DEFAULT_MAX_INPUT_BYTES = 16 * 1024 * 1024
# jsonb cannot hold a document over 255 MiB.
MAX_INPUT_BYTES_LIMIT = 255 * 1024 * 1024
# One start_flows call sends its inputs as one jsonb[] parameter, and
# Postgres refuses a value of 1 GiB or more: leave room for its text form.
MAX_BATCH_BYTES = 256 * 1024 * 1024


class Client:
    def __init__(self, dsn: str, *, application_name: str = "pgflow client",
                 max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES) -> None:
        if isinstance(max_input_bytes, bool) or not isinstance(max_input_bytes, int) \
                or not 1 <= max_input_bytes <= MAX_INPUT_BYTES_LIMIT:
            raise ValueError(f"Client(): max_input_bytes must be an int from 1 to "
                             f"{MAX_INPUT_BYTES_LIMIT:,} (jsonb's limit), got {max_input_bytes!r}")
        self.dsn = dsn
        self.application_name = application_name
        self.max_input_bytes = max_input_bytes
        self._conn: psycopg.Connection | None = None
        self._lock = threading.RLock()

    # -- connection -----------------------------------------------------------

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def connection(self) -> psycopg.Connection:
        """The live connection, (re)opened if needed."""
        with self._lock:
            conn = self._conn
            if conn is None or not db.is_live(conn):
                db.close_quietly(conn)
                conn = self._conn = db.connect(self.dsn, self.application_name)
            return conn

    def _call(self, operation: Callable[[psycopg.Connection], T]) -> T:
        with self._lock:
            for attempt in (1, 2):
                conn = self.connection()
                try:
                    return operation(conn)
                except psycopg.OperationalError:
                    if attempt == 2 or not (conn.closed or conn.broken):
                        raise
                except psycopg.errors.InsufficientPrivilege as exc:
                    raise _permission_denied(conn, exc) from None
                except psycopg.Error as exc:
                    translated = db.engine_error(exc)
                    if translated is not None:
                        raise translated from None
                    raise
            raise AssertionError("unreachable")

    # -- schema and flows -------------------------------------------------------

    def migrate(self, *, roles: bool = False) -> list[str]:
        """Create or upgrade the pgflow schema; return the migrations applied.
        roles=True also creates the roles pgflow_app and pgflow_worker (see
        deploy/README.md, "Least privilege")."""
        return self._call(lambda conn: migrations.migrate(conn, roles=roles))

    def register(self, flow: Flow, *, replace: bool = False) -> str:
        """Store a flow's shape and options.

        Returns "created", "verified" (already registered as is), "updated"
        (options changed in place) or "replaced" (replace=True and the shape
        changed: unfinished runs of the old shape are cancelled). A changed
        shape without replace=True raises ShapeConflictError and writes nothing.
        """
        shape = flow.shape()
        if not replace:
            self._refuse_changed_shape(flow.slug, shape)
        return self._call(
            lambda conn: conn.execute(
                "select pgflow.register_flow(%s, %s, %s, %s)",
                (flow.slug, Jsonb(shape), Jsonb(flow.options()), replace),
            ).fetchone()[0]  # type: ignore[index]
        )

    def _refuse_changed_shape(self, flow_slug: str, shape: dict[str, Any]) -> None:
        row = self._call(
            lambda conn: conn.execute(
                "select shape from pgflow.flows where flow_slug = %s", (flow_slug,)
            ).fetchone()
        )
        if row is None or row[0] == shape:
            return
        differences = "; ".join(describe_differences(row[0], shape)) or (
            "the registered shape was written in another form, by another version of pgflow")
        raise ShapeConflictError(
            f"Flow {flow_slug!r} is already registered with a different shape ({differences}). "
            "Give the new version another slug, or register it with replace=True, which "
            "cancels the unfinished runs of the old shape."
        )

    # -- runs ---------------------------------------------------------------

    def start_flow(
        self,
        flow: str | Flow,
        input: Any = None,
        run_id: uuid.UUID | str | None = None,
        *,
        key: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> uuid.UUID:
        """Start a run and return its id.

        `run_id` makes the call idempotent: the same id twice starts one run.
        `key` deduplicates by meaning: while a run of this flow started with
        the same key is unfinished, its id is returned and nothing starts (a
        finished key may start a new run). `tags` ({"tenant": "acme"}) are
        stored on the run and can filter `list_runs`.
        """
        flow_slug = _flow_slug(flow)
        run_uuid = _as_uuid(run_id, f"Flow {flow_slug!r}") if run_id is not None else uuid.uuid4()
        payload = self._encode_input(flow_slug, input)
        checked_key = check_key(flow_slug, key)
        checked_tags = encode_tags(check_tags(f"Flow {flow_slug!r}", tags))
        row = self._call(
            lambda conn: conn.execute(
                "select run_id from pgflow.start_flow(%s, %s::jsonb, %s, %s, %s::jsonb)",
                (flow_slug, payload, run_uuid, checked_key, checked_tags),
            ).fetchone()
        )
        assert row is not None
        return row[0]  # type: ignore[no-any-return]

    def start_flows(
        self,
        flow: str | Flow,
        inputs: Sequence[Any],
        run_ids: Sequence[uuid.UUID | str | None] | None = None,
        *,
        keys: Sequence[str | None] | None = None,
        tags: Mapping[str, str] | Sequence[Mapping[str, str] | None] | None = None,
    ) -> list[uuid.UUID]:
        """Start one run per input in one transaction; return their ids in
        order. Nothing is started if any input is refused. `run_ids` and
        `keys` (parallel to `inputs`, None for "none") work as in
        `start_flow`; `tags` is one mapping for every run, or one per input."""
        flow_slug = _flow_slug(flow)
        if isinstance(inputs, str | bytes) or not isinstance(inputs, Sequence):
            raise InvalidInputError(
                f"Flow {flow_slug!r}: start_flows takes a list of run inputs, got "
                f"{type(inputs).__name__}; use start_flow for one run")
        payloads = [self._encode_input(flow_slug, value, f" #{i + 1}")
                    for i, value in enumerate(inputs)]
        total = sum(len(p) for p in payloads)
        if total > MAX_BATCH_BYTES:
            raise InvalidInputError(
                f"Flow {flow_slug!r}: {len(payloads)} run inputs are {total:,} bytes of JSON in "
                f"all, over the {MAX_BATCH_BYTES:,} one start_flows call can send; start them "
                "in smaller batches")
        if run_ids is None:
            ids: list[uuid.UUID | None] = [uuid.uuid4() for _ in payloads]
        else:
            _check_parallel(flow_slug, "run ids", payloads, run_ids)
            ids = [None if r is None else _as_uuid(r, f"Flow {flow_slug!r}") for r in run_ids]
        # A retried call after a dropped connection must not start new runs.
        ids = [r if r is not None else uuid.uuid4() for r in ids]
        checked_keys = None
        if keys is not None:
            _check_parallel(flow_slug, "keys", payloads, keys)
            checked_keys = [check_key(flow_slug, k, f" #{i + 1}") for i, k in enumerate(keys)]
        per_run = _tags_per_run(flow_slug, tags, len(payloads))
        rows = self._call(
            lambda conn: conn.execute(
                "select run_id from pgflow.start_flows(%s, %s::jsonb[], %s::uuid[], %s::text[], "
                "%s::jsonb[])",
                (flow_slug, payloads, ids, checked_keys, per_run),
            ).fetchall()
        )
        return [row[0] for row in rows]

    def _encode_input(self, flow_slug: str, value: Any, which: str = "") -> str:
        """The run input as JSON text, or InvalidInputError saying what to change."""
        try:
            data = jsondata.encode(value)
        except jsondata.NotJsonError as exc:
            raise InvalidInputError(
                f"Flow {flow_slug!r}: the run input{which} is not JSON: {exc}. "
                "Nothing was started."
            ) from None
        if len(data) > self.max_input_bytes:
            raise InvalidInputError(
                f"Flow {flow_slug!r}: the run input{which} is {len(data):,} bytes of JSON, over "
                f"the limit of {self.max_input_bytes:,} (Client(max_input_bytes=...)). Nothing "
                "was started; store large data elsewhere (object storage, a table) and pass a "
                "reference to it."
            )
        return data.decode()

    def get_run(self, run_id: uuid.UUID | str) -> Run:
        run_uuid = _as_uuid(run_id, "get_run")

        def read(conn: psycopg.Connection) -> Run:
            with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
                run = cur.execute(queries.load("get_run"), {"run_id": run_uuid}).fetchone()
                if run is None:
                    raise RunNotFoundError(f"Run {run_uuid} does not exist")
                steps = cur.execute(
                    queries.load("get_step_states"), {"run_id": run_uuid}
                ).fetchall()
            return Run(**run, steps={s["step_slug"]: StepState(**s) for s in steps})

        try:
            return self._call(read)
        except orjson.JSONDecodeError as exc:
            # Only SQL can store such JSON (start_flow from another language).
            raise InvalidInputError(
                f"Run {run_uuid} holds JSON that Python cannot decode ({exc}): nesting past "
                "1024 levels or a number beyond a float, written through SQL. Read it with SQL: "
                f"select status, error from pgflow.runs where run_id = '{run_uuid}'"
            ) from None

    def list_runs(
        self,
        flow: str | None = None,
        status: str | None = None,
        since: datetime.datetime | datetime.timedelta | None = None,
        limit: int = 100,
        tags: Mapping[str, str] | None = None,
    ) -> list[RunSummary]:
        """Runs, newest first: of one flow, in one status (started, completed,
        failed, cancelled), started at or after `since` (a datetime, or a
        timedelta meaning that long ago), carrying every tag in `tags`, at
        most `limit` of them."""
        if status is not None and status not in RUN_STATUSES:
            raise InvalidInputError(f"list_runs(): status must be one of {', '.join(RUN_STATUSES)}, "
                             f"got {status!r}")
        if flow is not None and (not isinstance(flow, str) or len(flow) > MAX_SLUG_LENGTH
                                 or not SLUG_PATTERN.match(flow)):
            raise InvalidInputError(f"list_runs(): flow must be a flow slug ({SLUG_PATTERN.pattern}), "
                             f"got {_preview(flow) if isinstance(flow, str) else flow!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidInputError(f"list_runs(): limit must be a positive int, got {limit!r}")
        if isinstance(since, datetime.timedelta):
            since = datetime.datetime.now(datetime.UTC) - since
        elif since is not None and since.tzinfo is None:
            since = since.astimezone()  # naive means local time
        params = {"flow": flow, "status": status, "since": since, "limit": limit,
                  "tags": encode_tags(check_tags("list_runs()", tags))}

        def read(conn: psycopg.Connection) -> list[RunSummary]:
            with conn.cursor(row_factory=psycopg.rows.class_row(RunSummary)) as cur:
                return cur.execute(queries.load("list_runs"), params).fetchall()

        return self._call(read)

    def wait(self, run_id: uuid.UUID | str, timeout: float = 60.0) -> Run:
        """Block until the run is completed, failed or cancelled and return it.

        Woken by the engine's NOTIFY on run completion; re-reads the run every
        few seconds in case a notification was lost. Raises TimeoutError after
        `timeout` seconds (0: check once). A negative or non-finite timeout is a ValueError.
        """
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
                or not math.isfinite(timeout) or timeout < 0:
            raise ValueError(f"wait(): timeout must be a finite number of seconds >= 0, "
                             f"got {timeout!r}")
        run_uuid = _as_uuid(run_id, "wait")
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                remaining = deadline - time.monotonic()
                try:
                    return self._wait_listening(run_uuid, timeout, deadline)
                except psycopg.OperationalError:
                    if remaining <= 0 or not (self._conn is None or self._conn.broken):
                        raise
                    # The server went away (restart, failover): retry on a new connection.
                    time.sleep(min(0.5, max(remaining, 0)))

    def _wait_listening(self, run_uuid: uuid.UUID, timeout: float, deadline: float) -> Run:
        conn = self.connection()
        conn.execute(f"listen {RUNS_CHANNEL}")
        try:
            while True:
                run = self.get_run(run_uuid)
                if run.finished:
                    return run
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"Run {run_uuid} of flow {run.flow_slug!r} is still {run.status} "
                        f"after {timeout:g}s"
                    )
                _wait_for_mention(conn, str(run_uuid), min(remaining, WAIT_RECHECK_SECONDS))
        finally:
            if not (conn.closed or conn.broken):
                conn.execute(f"unlisten {RUNS_CHANNEL}")

    def cancel_run(self, run_id: uuid.UUID | str) -> Run:
        """Cancel a run: queued tasks are cancelled; running ones are cancelled
        too, their supervisors kill the executors running them (NOTIFY
        pgflow_cancel), and an answer that still comes is ignored. A finished
        run stays as it is."""
        run_uuid = _as_uuid(run_id, "cancel_run")
        self._call(lambda conn: conn.execute("select pgflow.cancel_run(%s)", (run_uuid,)))
        return self.get_run(run_uuid)

    def retry_run(self, run_id: uuid.UUID | str) -> Run:
        """Resume a failed or cancelled run in place, under the same id.

        Completed steps keep their outputs; the tasks that failed or were
        cancelled are queued again with fresh attempts (earlier attempts'
        errors stay in the step's `errors`); the run is `started` again.
        Raises RunNotFoundError for an unknown run, InvalidInputError for a
        run that is still started or completed, or whose flow was replaced
        by a new shape since it started.
        """
        run_uuid = _as_uuid(run_id, "retry_run")
        # Not retried on a dropped connection: a retry that committed before
        # the connection dropped would be refused the second time (the run is
        # started again), which would hide that it worked.
        with self._lock:
            try:
                self.connection().execute("select pgflow.retry_run(%s)", (run_uuid,))
            except psycopg.Error as exc:
                translated = db.engine_error(exc)
                if translated is not None:
                    raise translated from None
                raise
        return self.get_run(run_uuid)

    def prune(
        self,
        older_than: datetime.timedelta | datetime.datetime,
        dry_run: bool = False,
        batch_size: int = retention.DEFAULT_BATCH_SIZE,
    ) -> PruneResult:
        """Delete finished runs (completed, failed, cancelled) that finished
        more than `older_than` ago (a timedelta; or a datetime: before then),
        with their step states and tasks, in batches of `batch_size` runs,
        each its own short transaction. With dry_run=True, only count them.
        Runs still started are never touched."""
        retention.check_older_than(older_than)
        retention.check_batch_size(batch_size)
        started = time.perf_counter()

        def cutoff_of(conn: psycopg.Connection) -> datetime.datetime:
            if isinstance(older_than, datetime.datetime):
                moment = older_than if older_than.tzinfo else older_than.astimezone()
                row = conn.execute("select %s::timestamptz", (moment,)).fetchone()
            else:
                row = conn.execute("select now() - %s::interval", (older_than,)).fetchone()
            assert row is not None
            return row[0]  # type: ignore[no-any-return]

        cutoff = self._call(cutoff_of)
        if dry_run:
            row = self._call(lambda conn: conn.execute(
                "select runs, tasks from pgflow.prunable_runs(%s)", (cutoff,)).fetchone())
            assert row is not None
            return PruneResult(cutoff, int(row[0]), int(row[1]), 0, True,
                               time.perf_counter() - started, 0.0)
        runs = tasks = batches = 0
        longest = 0.0
        while True:
            batch_started = time.perf_counter()
            row = self._call(lambda conn: conn.execute(
                "select runs, tasks from pgflow.prune_runs(%s, %s)", (cutoff, batch_size)
            ).fetchone())
            longest = max(longest, time.perf_counter() - batch_started)
            assert row is not None
            batches += 1
            runs += row[0]
            tasks += row[1]
            if row[0] < batch_size:
                break
        return PruneResult(cutoff, runs, tasks, batches, False, time.perf_counter() - started,
                           longest)


def _wait_for_mention(conn: psycopg.Connection, run_id: str, seconds: float) -> None:
    """Return when a runs notification names run_id (or names none), or after `seconds`.

    psycopg keeps notifications that arrive during other statements and hands
    them out first, so none is missed between reading the run and waiting here.
    """
    for notify in conn.notifies(timeout=seconds):
        if not notify.payload or run_id in notify.payload:
            return


def _permission_denied(conn: psycopg.Connection,
                       exc: psycopg.errors.InsufficientPrivilege) -> PermissionDeniedError:
    reason = exc.diag.message_primary or str(exc)
    return PermissionDeniedError(
        f"{reason} (database role {conn.info.user!r}). pgflow_app may start, read, wait for and "
        "cancel runs; pgflow_worker (supervisors) may claim and answer tasks and register "
        "flows; migrations need the schema's owner. See deploy/README.md, \"Least privilege\"")


def _flow_slug(flow: str | Flow) -> str:
    """The slug of `flow`; a slug no flow can have is a FlowNotFoundError here,
    before it reaches the database (where it would be one too)."""
    if isinstance(flow, Flow):
        return flow.slug
    if not isinstance(flow, str):
        raise InvalidInputError(f"A flow is a Flow or its slug (a str), got {type(flow).__name__}")
    if len(flow) > MAX_SLUG_LENGTH or not SLUG_PATTERN.match(flow):
        raise FlowNotFoundError(
            f"Flow {_preview(flow)} is not registered, and cannot be: a flow slug matches "
            f"{SLUG_PATTERN.pattern} and has at most {MAX_SLUG_LENGTH} characters")
    return flow


def _preview(text: str, limit: int = 80) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(text)} characters)"


def _check_parallel(flow_slug: str, what: str, inputs: Sequence[Any],
                    values: Sequence[Any]) -> None:
    if isinstance(values, str | bytes) or len(values) != len(inputs):
        count = "a string" if isinstance(values, str | bytes) else len(values)
        raise InvalidInputError(
            f"Flow {flow_slug!r}: {len(inputs)} inputs but {count} {what}; "
            f"give a list with one per input (None where there is none)"
        )


def _tags_per_run(flow_slug: str, tags: Any, count: int) -> list[str | None] | None:
    """start_flows' tags: one mapping for every run, or a sequence with one per run."""
    if tags is None:
        return None
    if isinstance(tags, Mapping):
        encoded = encode_tags(check_tags(f"Flow {flow_slug!r}", tags))
        return [encoded] * count
    _check_parallel(flow_slug, "tags", [None] * count, tags)
    return [encode_tags(check_tags(f"Flow {flow_slug!r}, run input #{i + 1}", t))
            for i, t in enumerate(tags)]


def _as_uuid(value: uuid.UUID | str, where: str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        shown = _preview(value) if isinstance(value, str) else repr(value)
        raise InvalidInputError(f"{where}: run id {shown} is not a UUID") from None
