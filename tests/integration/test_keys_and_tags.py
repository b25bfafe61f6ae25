"""Run keys (dedup while a run is unfinished) and tags (stored, listed, filtered)."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest

from executor import drain
from pgflow import Client, InvalidInputError
from tests.integration.helpers import count, single_flow


def test_a_key_returns_the_unfinished_run_and_a_finished_key_starts_anew(client, conn):
    flow = single_flow()
    client.register(flow)
    first = client.start_flow(flow, {"order": 42}, key="order-42")
    assert client.start_flow(flow, {"order": 42, "again": True}, key="order-42") == first
    assert client.start_flow(flow, {}, key="order-43") != first
    assert count(conn, "select count(*) from pgflow.runs") == 2
    drain(client, flow)
    second = client.start_flow(flow, {"order": 42}, key="order-42")
    assert second != first
    assert client.get_run(second).key == "order-42"
    assert count(conn, "select count(*) from pgflow.run_keys") == 1


def test_keys_are_per_flow_and_any_finish_gives_them_back(client):
    client.register(single_flow("one"))
    client.register(single_flow("two"))
    one = client.start_flow("one", {}, key="k")
    assert client.start_flow("two", {}, key="k") != one
    client.cancel_run(one)
    assert client.start_flow("one", {}, key="k") != one


def test_start_flows_dedups_keys_within_the_batch_and_against_running_runs(client, conn):
    client.register(single_flow())
    running = client.start_flow("single", 0, key="a")
    ids = client.start_flows("single", [1, 2, 3, 4], keys=["a", "b", "b", None])
    assert ids[0] == running
    assert ids[1] == ids[2] != running
    assert len(set(ids)) == 3
    assert count(conn, "select count(*) from pgflow.runs") == 3
    assert client.get_run(ids[1]).input == 2


def test_a_key_wins_over_a_new_run_id_and_an_existing_run_id_wins_over_a_key(client):
    client.register(single_flow())
    running = client.start_flow("single", 0, key="a")
    assert client.start_flow("single", 1, run_id=uuid.uuid4(), key="a") == running
    assert client.start_flow("single", 2, run_id=running, key="other") == running


def test_two_concurrent_starts_with_one_key_start_one_run(client, dsn, conn):
    client.register(single_flow())
    barrier = threading.Barrier(2)
    ids: list[uuid.UUID] = []

    def start() -> None:
        with Client(dsn) as own:
            own.connection()
            barrier.wait()
            ids.append(own.start_flow("single", {}, key="race"))

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(ids) == 2 and ids[0] == ids[1]
    assert count(conn, "select count(*) from pgflow.runs") == 1


def test_tags_are_stored_shown_and_filter_list_runs(client):
    client.register(single_flow())
    acme = client.start_flow("single", 1, tags={"tenant": "acme", "env": "prod"})
    other = client.start_flow("single", 2, tags={"tenant": "globex"})
    plain = client.start_flow("single", 3)
    assert client.get_run(acme).tags == {"tenant": "acme", "env": "prod"}
    assert client.get_run(plain).tags == {}
    assert [r.run_id for r in client.list_runs(tags={"tenant": "acme"})] == [acme]
    assert [r.run_id for r in client.list_runs(tags={"tenant": "acme", "env": "dev"})] == []
    assert {r.run_id for r in client.list_runs()} == {acme, other, plain}
    assert client.list_runs(tags={"tenant": "globex"})[0].tags == {"tenant": "globex"}


def test_start_flows_takes_one_tags_mapping_for_all_or_one_per_input(client):
    client.register(single_flow())
    same = client.start_flows("single", [1, 2], tags={"batch": "7"})
    each = client.start_flows("single", [3, 4], tags=[{"n": "3"}, None])
    assert [client.get_run(r).tags for r in same + each] == [
        {"batch": "7"}, {"batch": "7"}, {"n": "3"}, {}]


@pytest.mark.parametrize("kwargs, problem", [
    ({"key": ""}, "the key must be a string of 1 to 512 characters"),
    ({"key": "x" * 513}, "the key must be a string of 1 to 512 characters"),
    ({"tags": {"n": 1}}, "tags must be a mapping of strings to strings"),
    ({"tags": ["tenant"]}, "tags must be a mapping of strings to strings"),
])
def test_bad_keys_and_tags_are_refused_naming_the_flow(client, conn, kwargs, problem):
    client.register(single_flow())
    with pytest.raises(InvalidInputError, match=rf"Flow 'single': {problem}"):
        client.start_flow("single", {}, **kwargs)
    assert count(conn, "select count(*) from pgflow.runs") == 0


def test_any_language_can_start_with_a_key_and_tags(client, conn):
    client.register(single_flow())
    sql = ("select run_id, key, tags from pgflow.start_flow('single', '{}'::jsonb, "
           "key => 'k1', tags => '{\"tenant\": \"acme\"}'::jsonb)")
    first = conn.execute(sql).fetchone()
    assert first[1:] == ("k1", {"tenant": "acme"})
    assert conn.execute(sql).fetchone()[0] == first[0]
    with pytest.raises(psycopg.Error, match="must be a JSON object of strings") as refused:
        conn.execute("select pgflow.start_flow('single', '{}'::jsonb, tags => '{\"n\": 1}')")
    assert refused.value.sqlstate == "PF002"


def test_tag_filters_use_the_index(client, conn):
    client.register(single_flow())
    client.start_flows("single", list(range(3000)), tags=[{"i": str(i)} for i in range(3000)])
    conn.execute("analyze pgflow.runs")
    plan = "\n".join(row[0] for row in conn.execute(
        "explain select run_id from pgflow.runs where tags @> '{\"i\": \"7\"}' "
        "order by started_at desc limit 100"))
    assert "runs_by_tags" in plan, plan


def test_a_retried_run_takes_its_key_again_unless_another_run_holds_it(client, conn):
    from pgflow import InvalidInputError
    from tests.integration.helpers import HandWorker, single_flow

    client.register(single_flow(max_attempts=1))
    first = client.start_flow("single", 1, key="order-42")
    worker = HandWorker(conn, ["single"])
    worker.fail(worker.claim_one(), "boom")
    assert client.get_run(first).status == "failed"
    second = client.start_flow("single", 2, key="order-42")
    assert second != first, "a finished key may start a new run"
    with pytest.raises(InvalidInputError, match=f"its key 'order-42' is held by run {second}"):
        client.retry_run(first)
    worker.complete(worker.claim_one(), "done")
    assert client.retry_run(first).status == "started"
    assert client.start_flow("single", 3, key="order-42") == first, "the retried run holds it"
