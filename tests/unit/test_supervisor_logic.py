"""Pure supervisor logic: backoff, respawn policy, settings, flow loading."""

from __future__ import annotations

import sys
import textwrap

import pytest

from supervisor.backoff import Backoff, RespawnPolicy
from supervisor.flows import FlowImportError, load_flows
from supervisor.settings import Settings


def test_backoff_doubles_up_to_its_cap_and_resets():
    backoff = Backoff(0.2, 1.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next_delay() == 0.2


def test_respawn_backs_off_only_for_processes_that_die_young_on_their_own():
    policy = RespawnPolicy(healthy_after=5.0, base=0.1, cap=10.0)
    assert policy.delay_after_exit(lifetime=0.1, crashed=False) == 0.0, "we killed it"
    assert policy.delay_after_exit(lifetime=60.0, crashed=True) == 0.0, "it lived long"
    assert [policy.delay_after_exit(0.1, True) for _ in range(4)] == [0.1, 0.2, 0.4, 0.8]
    assert policy.crash_streak == 4
    assert policy.delay_after_exit(lifetime=6.0, crashed=True) == 0.0
    assert policy.crash_streak == 0


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("PGFLOW_DATABASE_URL", "postgresql://x/y")
    monkeypatch.setenv("PGFLOW_FLOWS", "app.flows, other.mod:flow")
    monkeypatch.setenv("PGFLOW_PROCESSES", "3")
    settings = Settings()
    assert settings.flows == ["app.flows", "other.mod:flow"]
    assert settings.processes == 3
    assert Settings(processes=5).processes == 5, "options win over the environment"


def test_settings_read_an_env_file(tmp_path, monkeypatch):
    for name in ("PGFLOW_DATABASE_URL", "PGFLOW_FLOWS", "PGFLOW_PROCESSES"):
        monkeypatch.delenv(name, raising=False)
    env_file = tmp_path / "supervisor.env"
    env_file.write_text("PGFLOW_DATABASE_URL=postgresql://a/b\nPGFLOW_FLOWS=x.y\nPGFLOW_PREFETCH=7\n")
    settings = Settings(_env_file=env_file)
    assert (settings.database_url, settings.flows, settings.prefetch) == (
        "postgresql://a/b", ["x.y"], 7)


def test_bad_settings_are_refused(monkeypatch):
    monkeypatch.delenv("PGFLOW_FLOWS", raising=False)
    with pytest.raises(ValueError, match="processes"):
        Settings(database_url="postgresql://x/y", flows="a", processes=0)
    with pytest.raises(ValueError, match="at least one flow module"):
        Settings(database_url="postgresql://x/y", flows="")


@pytest.fixture
def flow_modules(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, source: str) -> None:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        sys.modules.pop(name, None)

    return write


def test_a_module_contributes_every_top_level_flow(flow_modules):
    flow_modules("two_flows", """
        from pgflow import Flow
        first = Flow("first")
        first.step(slug="s")(lambda i, c: i)
        second = Flow("second")
        second.step(slug="s")(lambda i, c: i)
    """)
    assert sorted(load_flows(["two_flows"])) == ["first", "second"]
    assert list(load_flows(["two_flows:second"])) == ["second"]


def test_flow_loading_errors_name_the_module_and_what_to_do(flow_modules):
    flow_modules("broken_flows", "import does_not_exist\n")
    flow_modules("no_flows", "x = 1\n")
    with pytest.raises(FlowImportError, match=r"flow module 'broken_flows' raised while being "
                       r"imported, at .*broken_flows\.py:1: ModuleNotFoundError: .*does_not_exist"):
        load_flows(["broken_flows"])
    with pytest.raises(FlowImportError, match="cannot import flow module 'not_there'.*PYTHONPATH"):
        load_flows(["not_there"])
    with pytest.raises(FlowImportError, match="defines no Flow"):
        load_flows(["no_flows"])
    with pytest.raises(FlowImportError, match="not a pgflow Flow"):
        load_flows(["no_flows:x"])
    with pytest.raises(FlowImportError, match="has no attribute 'y'; its top-level Flows: none"):
        load_flows(["no_flows:y"])


def test_an_invalid_flow_stops_the_load(flow_modules):
    flow_modules("cyclic_flows", """
        from pgflow import Flow
        flow = Flow("cyclic")
        flow.step(slug="a", depends_on=["b"])(lambda d, c: d)
        flow.step(slug="b", depends_on=["a"])(lambda d, c: d)
    """)
    with pytest.raises(FlowImportError, match="cycle"):
        load_flows(["cyclic_flows"])


def test_every_connection_detects_a_silent_network_in_about_half_a_minute():
    from psycopg.conninfo import conninfo_to_dict

    from pgflow.db import conninfo

    params = conninfo_to_dict(conninfo("postgresql://u@db/app", "pgflow supervisor"))
    assert params["keepalives"] == "1" and int(params["keepalives_idle"]) <= 30
    assert int(params["tcp_user_timeout"]) <= 60_000
    assert params["application_name"] == "pgflow supervisor"
    mine = conninfo_to_dict(conninfo("postgresql://u@db/app?keepalives_idle=99&application_name=x", "y"))
    assert (mine["keepalives_idle"], mine["application_name"]) == ("99", "x"), "the URL wins"
