"""Pure pieces of the command line: password masking, misspelled variables,
and `supervise` options generated from the settings model."""

from __future__ import annotations

import re

import pytest

from supervisor.cli import build_parser
from supervisor.redact import mask_password
from supervisor.settings import Settings, env_file_names, unknown_variables


@pytest.mark.parametrize("text, masked", [
    ("postgresql://app:pw@db:5432/app", "postgresql://app:***@db:5432/app"),
    ("re-executing pgflow supervise --database-url postgres://u:p%40ss@h/d --flows x",
     "re-executing pgflow supervise --database-url postgres://u:***@h/d --flows x"),
    ("host=db user=app password=pw dbname=app", "host=db user=app password=*** dbname=app"),
    ("host=db password='p w' dbname=app", "host=db password=*** dbname=app"),
    ("postgresql://db/app?user=app&password=pw&sslmode=require",
     "postgresql://db/app?user=app&password=***&sslmode=require"),
    ("postgresql://app@db/app", "postgresql://app@db/app"),
])
def test_passwords_are_masked(text, masked):
    assert mask_password(text) == masked


def test_misspelled_variables_name_the_closest_setting():
    warnings = unknown_variables(["PGFLOW_PROCESES", "PGFLOW_PROCESSES", "PGFLOW_TEST_DATABASE_URL",
                                  "PATH", "PGFLOW_ZZZ"])
    assert warnings[0] == ("PGFLOW_PROCESES is not a pgflow setting and is ignored; did you mean "
                           "PGFLOW_PROCESSES (--processes)?")
    assert warnings[1].startswith("PGFLOW_ZZZ is not a pgflow setting and is ignored; settings are ")
    assert len(warnings) == 2


def test_env_file_names(tmp_path):
    path = tmp_path / "env"
    path.write_text("# comment\nPGFLOW_FLOWS=a,b\n\nexport PGFLOW_PREFETCH=8\nnot a line\n")
    assert env_file_names(str(path)) == ["PGFLOW_FLOWS", "PGFLOW_PREFETCH"]


def _supervise_actions():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return {a.dest: a for a in sub.choices["supervise"]._actions}


def test_every_setting_is_a_supervise_option_with_its_default_and_description():
    actions = _supervise_actions()
    for name, field in Settings.model_fields.items():
        assert name in actions, f"--{name.replace('_', '-')} is missing"
        assert field.description and field.description in actions[name].help
        assert f"PGFLOW_{name.upper()}" in actions[name].help
    assert f"(default: {Settings.model_fields['prefetch'].default})" in actions["prefetch"].help
    assert actions["prefetch"].type is int and actions["kill_grace"].type is float
    assert actions["log_format"].choices == ["text", "json"]


def test_supervise_options_become_settings():
    args = build_parser().parse_args(["supervise", "--database-url", "postgresql://x/y", "--flows",
                                      "a,b", "--no-migrate", "--prefetch", "3",
                                      "--log-format", "json"])
    from supervisor.commands.supervise import load_settings

    settings = load_settings(args)
    assert (settings.flows, settings.migrate, settings.prefetch, settings.log_format) == (
        ["a", "b"], False, 3, "json")


@pytest.mark.parametrize("options, problem", [
    (["--lease-grace", "inf"], "--lease-grace / PGFLOW_LEASE_GRACE: Input should be a finite number"),
    (["--poll-interval", "nan"], "--poll-interval / PGFLOW_POLL_INTERVAL: Input should be a finite"),
    (["--shutdown-timeout", "1e9"], "--shutdown-timeout / PGFLOW_SHUTDOWN_TIMEOUT: Input should be "
                                    "less than or equal to 86400"),
    (["--heartbeat-interval", "7200"], "--heartbeat-interval / PGFLOW_HEARTBEAT_INTERVAL"),
    (["--complete-batch", "10000000"], "--complete-batch / PGFLOW_COMPLETE_BATCH"),
    (["--processes", "0"], "--processes / PGFLOW_PROCESSES: Input should be greater than or equal"),
    (["--metrics-port", "70000"], "--metrics-port / PGFLOW_METRICS_PORT"),
    (["--hostname", "evil\nhost"], "--hostname / PGFLOW_HOSTNAME: Value error, the host name must be"),
    (["--lease-grace", "4", "--heartbeat-interval", "5"],
     "--heartbeat-interval (5 s) must be shorter than --lease-grace (4 s)"),
])
def test_settings_out_of_range_are_refused_naming_the_option(options, problem):
    from supervisor.commands.supervise import load_settings
    from supervisor.preflight import EXIT_CONFIG, Problem

    args = build_parser().parse_args(["supervise", "--database-url", "postgresql://x/y",
                                      "--flows", "a", *options])
    with pytest.raises(Problem) as refused:
        load_settings(args)
    assert refused.value.exit_code == EXIT_CONFIG
    assert problem in str(refused.value)


def _shown_default(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_the_env_example_and_the_deploy_table_show_every_setting_with_its_default():
    """They drifted once (prefetch 64 and a flush delay long after both changed)."""
    from pathlib import Path

    from pydantic_core import PydanticUndefined

    root = Path(__file__).resolve().parents[2]
    example = (root / "deploy" / "supervisor.env.example").read_text()
    table = (root / "deploy" / "README.md").read_text()
    for name, field in Settings.model_fields.items():
        variable = f"PGFLOW_{name.upper()}"
        assert f"{variable}=" in example, f"{variable} is missing from supervisor.env.example"
        assert f"| `{variable}` |" in table, f"{variable} is missing from deploy/README.md"
        if field.default is PydanticUndefined or field.default is None:
            continue
        shown = _shown_default(field.default)
        commented = re.search(rf"^#{variable}=(.*)$", example, re.M)
        if commented:
            assert commented[1] == shown, f"{variable}: the example says {commented[1]}, the code {shown}"
        row = re.search(rf"^\| `{variable}` \| ([^|]+) \|", table, re.M)
        assert row and row[1].split()[0] == shown, f"{variable}: deploy/README.md says {row and row[1]}"
