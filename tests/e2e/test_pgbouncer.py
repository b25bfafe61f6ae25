"""Through a real PgBouncer (tests/pgbouncer.py), in session and in
transaction mode: the same flows as the direct tests, the Client, the
supervisor's per-transaction settings, and the errors a pooler causes.

Each route runs the same scenario: the supervisor's database URL, where it
listens, and the Client's connection differ. PgBouncer runs with its default
settings where they matter (no ignore_startup_parameters, no prepared
statement support: 1.18 has none). Tests that need PgBouncer are skipped
where it is not installed; the direct ones run everywhere.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from pgflow import Client, Flow, PgflowError, migrations
from supervisor.pgconn import PgConn, Rows, Statement, StatementError, Transaction
from tests.e2e.conftest import query
from tests.pgbouncer import BINARY, MISSING, PgBouncer, example_config
from tests.pgconn_driver import drive


def need_pgbouncer() -> None:
    if BINARY is None:
        pytest.skip(MISSING)

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "pgbouncer" / "pgbouncer.ini"

# For tests that start runs without a supervisor.
unserved = Flow("pooler_unserved")


@unserved.step()
def nothing(input, ctx):
    return input


def registered(dsn: str) -> str:
    with Client(dsn) as client:
        client.register(unserved)
    return unserved.slug


@pytest.fixture(scope="module")
def session_bouncer(pg_server: str) -> Iterator[PgBouncer]:
    need_pgbouncer()
    with PgBouncer(pg_server, "session") as bouncer:
        yield bouncer


@pytest.fixture(scope="module")
def transaction_bouncer(pg_server: str) -> Iterator[PgBouncer]:
    need_pgbouncer()
    # Fewer server connections than clients: sessions are shared for real.
    with PgBouncer(pg_server, "transaction", pool_size=4) as bouncer:
        yield bouncer


@pytest.fixture
def one_server_bouncer(pg_server: str) -> Iterator[PgBouncer]:
    """Transaction pooling over a single server session: whatever one client
    leaves in a session, the next one finds."""
    need_pgbouncer()
    with PgBouncer(pg_server, "transaction", pool_size=1) as bouncer:
        yield bouncer


@dataclass
class Route:
    """How the supervisor and the Client reach the test database."""

    name: str
    url: str  # the supervisor's --database-url
    args: list[str]  # more `pgflow supervise` options
    client: Callable[[], Client]
    notified: bool  # whether notifications wake the supervisor
    extra: dict[str, str] = field(default_factory=dict)


ROUTES = ["direct", "session", "transaction+listen-direct", "transaction+listen-session",
          "transaction-polling"]


@pytest.fixture(params=ROUTES)
def route(request: pytest.FixtureRequest, dsn: str) -> Route:
    name = request.param
    if name == "direct":
        return Route(name, dsn, [], lambda: Client(dsn), notified=True)
    if name == "session":
        url = request.getfixturevalue("session_bouncer").url_for(dsn)
        return Route(name, url, ["--pooler", "session"],
                     lambda: Client(url, pooler="session"), notified=True)
    url = request.getfixturevalue("transaction_bouncer").url_for(dsn)
    pooled = ["--pooler", "transaction"]
    if name == "transaction+listen-direct":
        return Route(name, url, [*pooled, "--listen-url", dsn],
                     lambda: Client(url, pooler="transaction", listen_dsn=dsn), notified=True)
    if name == "transaction+listen-session":
        listen = request.getfixturevalue("session_bouncer").url_for(dsn)
        return Route(name, url, [*pooled, "--listen-url", listen],
                     lambda: Client(url, pooler="transaction", listen_dsn=listen), notified=True)
    assert name == "transaction-polling"
    return Route(name, url, pooled, lambda: Client(url, pooler="transaction"), notified=False)


def idle_latencies(client: Client, samples: int = 3) -> list[float]:
    """start_flow -> completed, on the database clock, each after the
    supervisor had nothing to do for a while."""
    latencies = []
    for i in range(samples):
        time.sleep(0.4 + 0.15 * i)
        run = client.wait(client.start_flow("e2e_noop", i), timeout=15)
        assert run.status == "completed"
        assert run.completed_at is not None
        latencies.append((run.completed_at - run.started_at).total_seconds())
    return latencies


def test_the_direct_flows_complete_through_each_route(route: Route, start_supervisor, dsn):
    # With notifications, the fallback poll is too slow to explain a quick start.
    poll = ["--poll-interval", "30"] if route.notified else []
    supervisor = start_supervisor(route.url, *route.args, *poll, processes=2)
    with route.client() as client:
        diamonds = [client.start_flow("e2e_diamond", {"n": i}) for i in range(60)]
        chain = client.start_flow("e2e_chain", 1)
        squares = client.start_flow("e2e_map", [1, 2, 3])
        crash = client.start_flow("e2e_crash", {"how": "exit"})
        failing = client.start_flow("e2e_fail", "x")
        overrun = client.start_flow("e2e_sleepy", {"seconds": 60})
        small = [client.start_flow("e2e_flow_input", {"tag": f"s{i}", "pad": "x" * 10})
                 for i in range(6)]
        # Too large for the claim to carry: executors read it themselves.
        large = [client.start_flow("e2e_flow_input", {"tag": f"l{i}", "pad": "x" * 5000})
                 for i in range(6)]
        big = client.start_flow("e2e_big", {"blob": "x" * 10_000_000})

        runs = [client.wait(run_id, timeout=60) for run_id in diamonds]
        assert [r.output for r in runs] == [{"d": 5 * (i + 1)} for i in range(60)]
        assert client.wait(chain, 30).output == {"third": 4}
        assert client.wait(squares, 30).output == {"square": [1, 4, 9]}
        assert client.wait(crash, 30).output == {"crash_once": "recovered on attempt 2"}
        failed = client.wait(failing, 30)
        assert (failed.status, failed.error) == ("failed", "ValueError: bad input 'x'")
        assert failed.steps["always_fails"].attempts == 2
        timed_out = client.wait(overrun, 30)
        assert (timed_out.status, timed_out.error) == ("failed", "Task timed out after 1000ms")
        for run_ids, pad in ((small, 10), (large, 5000)):
            for i, run_id in enumerate(run_ids):
                run = client.wait(run_id, 30)
                tag = ("s" if pad == 10 else "l") + str(i)
                assert run.status == "completed", run.error
                assert run.output == {"recall": {"tag": tag, "length": pad},
                                      "each": [[0, tag], [1, tag], [2, tag]]}
        run = client.wait(big, 60)
        assert run.status == "completed", run.error
        assert run.output["grow"]["received"] == 10_000_000

        latencies = idle_latencies(client)
    bound = 1.0  # notified: about 10 ms; polling: at most 0.5 s plus a round trip
    assert max(latencies) < bound, f"{route.name}: start -> completed took {latencies}"
    log = supervisor.log()
    assert "did not arrive on the listening connection" not in log
    assert log.count("not listening for notifications") == (0 if route.notified else 1)
    assert "Traceback" not in log


def test_the_deploy_example_config_serves_supervisor_and_client(pg_server, dsn,
                                                                start_supervisor):
    need_pgbouncer()
    settings, databases = example_config(EXAMPLE, str(conninfo_to_dict(dsn)["dbname"]))
    assert set(databases) == {"app", "app_listen"}
    assert settings["ignore_startup_parameters"] == "", "nothing is dropped silently"
    with PgBouncer(pg_server, settings=settings, databases=databases) as bouncer:
        work, listen = bouncer.url("app"), bouncer.url("app_listen")
        supervisor = start_supervisor(work, "--pooler", "transaction", "--listen-url", listen,
                                      "--poll-interval", "30")
        with Client(work, pooler="transaction", listen_dsn=listen) as client:
            runs = [client.start_flow("e2e_diamond", {"n": i}) for i in range(30)]
            assert [client.wait(r, 30).output for r in runs] == [{"d": 5 * (i + 1)}
                                                                 for i in range(30)]
            latencies = idle_latencies(client)
        supervisor.stop()
    assert max(latencies) < 1.0, f"notified through app_listen: {latencies}"


def test_executors_need_no_connection_for_a_small_flow_input(dsn, start_supervisor):
    supervisor = start_supervisor(dsn, processes=2)

    def executor_connections() -> int:
        return query(dsn, "select count(*) from pg_stat_activity where datname = current_database()"
                          " and application_name = 'pgflow executor'")[0][0]

    with Client(dsn) as client:
        small = [client.start_flow("e2e_flow_input", {"tag": "s", "pad": "x" * 100})
                 for _ in range(10)]
        assert {client.wait(r, 30).status for r in small} == {"completed"}
        assert executor_connections() == 0, "the claim carried the flow input"
        large = client.start_flow("e2e_flow_input", {"tag": "l", "pad": "x" * 5000})
        assert client.wait(large, 30).output["recall"] == {"tag": "l", "length": 5000}
        assert executor_connections() >= 1, "a large flow input is read by the executor"
    assert len(supervisor.children()) == 2


def test_a_transaction_pooler_nobody_mentioned_is_noticed_and_polled(
        transaction_bouncer, dsn, start_supervisor):
    url = transaction_bouncer.url_for(dsn)
    supervisor = start_supervisor(url, processes=1)  # no --pooler, no --listen-url
    supervisor.wait_for_log("did not arrive on the listening connection", timeout=15)
    with Client(url, pooler="transaction") as client:
        latencies = idle_latencies(client)
    assert max(latencies) < 1.0, latencies
    log = supervisor.log()
    assert log.count("did not arrive on the listening connection") == 1, log
    assert "Point --listen-url at Postgres itself or at a session pooler" in log


@pytest.mark.parametrize("which", ["database", "listen"])
def test_a_pooler_refusing_a_startup_parameter_is_named(session_bouncer, dsn, start_supervisor,
                                                        which):
    url = session_bouncer.url_for(dsn)
    with_options = f"{url} options='-c statement_timeout=5s'"
    args = ["--listen-url", with_options] if which == "listen" else []
    supervisor = start_supervisor(with_options if which == "database" else url, *args,
                                  wait=False)
    assert supervisor.wait(30) == 78
    log = supervisor.log()
    setting = "PGFLOW_LISTEN_URL" if which == "listen" else "PGFLOW_DATABASE_URL"
    assert f"{setting} / --" in log
    assert "unsupported startup parameter: options" in log
    assert "ignore_startup_parameters" in log
    assert "check that Postgres is running" not in log


def test_per_transaction_settings_apply_and_do_not_outlive_their_transaction(
        one_server_bouncer, dsn):
    defaults = query(dsn, "select current_setting('statement_timeout'), "
                          "current_setting('lock_timeout')")[0]
    conn = PgConn(one_server_bouncer.url_for(dsn), pipeline=True, prepare=False)
    results: list[Rows | StatementError | Exception] = []
    show = b"select pg_backend_pid(), current_setting('statement_timeout'), " \
           b"current_setting('lock_timeout')"
    try:
        drive(conn, [
            Transaction([Statement(show, (), results.append),
                         Statement(b"select pg_sleep(2)", (), results.append)],
                        {"statement_timeout": "200ms", "lock_timeout": "100ms"}),
            Transaction([Statement(show, (), results.append)]),
        ])
    finally:
        conn.close()
    inside, slept, after = results
    assert isinstance(inside, Rows) and isinstance(after, Rows)
    assert inside.values[0][1:] == (b"200ms", b"100ms")
    assert isinstance(slept, StatementError) and slept.sqlstate == "57014"  # query_canceled
    assert after.values[0][0] == inside.values[0][0], "the same server session"
    assert tuple(v.decode() for v in after.values[0][1:] if v) == defaults


def test_the_client_keeps_nothing_across_transactions(one_server_bouncer, dsn):
    url = one_server_bouncer.url_for(dsn)
    with Client(dsn) as direct:
        run_id = direct.start_flow(registered(dsn), 1)
    with Client(url, pooler="transaction") as first, Client(url, pooler="transaction") as second:
        for _ in range(8):  # psycopg would prepare statements run 5 times
            assert first.get_run(run_id).status == "started"
            assert second.get_run(run_id).status == "started"
    # Not told: the error says what it is.
    with Client(url) as first, Client(url) as second, \
            pytest.raises(PgflowError, match='pooler="transaction"'):
        for _ in range(8):
            first.get_run(run_id)
            second.get_run(run_id)


def test_wait_polls_through_a_transaction_pooler_without_a_listen_url(transaction_bouncer, dsn):
    url = transaction_bouncer.url_for(dsn)
    with Client(url, pooler="transaction") as client, Client(dsn) as other:
        run_id = client.start_flow(registered(dsn), 7)
        threading.Timer(0.3, lambda: other.cancel_run(run_id)).start()
        started = time.monotonic()
        run = client.wait(run_id, timeout=10)
        waited = time.monotonic() - started
    assert run.status == "cancelled"
    assert 0.25 < waited < 0.3 + 0.5 + 0.2, "noticed within one poll (at most 0.5 s)"


def test_migrations_through_a_transaction_pooler(transaction_bouncer, empty_dsn):
    url = transaction_bouncer.url_for(empty_dsn)
    applied: list[list[str]] = []

    def migrate() -> None:
        with Client(url, pooler="transaction") as client:
            applied.append(client.migrate())

    threads = [threading.Thread(target=migrate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(len(names) for names in applied) == [0, 0, len(migrations.available())]
