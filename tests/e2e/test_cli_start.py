"""`pgflow start --wait` against a real supervisor."""

from __future__ import annotations

from tests.e2e.test_cli_errors import pgflow


def test_start_wait_follows_the_run_through_a_real_supervisor(dsn, start_supervisor):
    start_supervisor(dsn)
    result = pgflow("start", "e2e_diamond", "--input", '{"n": 1}', "--wait", "--database-url", dsn)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("started run ")
    assert any(line.startswith("completed: a=completed b=completed c=completed d=completed")
               for line in lines), result.stdout
    assert 'output: {"d": 10}' in result.stdout
    failed = pgflow("start", "e2e_fail", "--wait", "--database-url", dsn)
    assert failed.returncode == 1
    assert "error (step always_fails): ValueError: bad input None" in failed.stdout
    assert "always_fails attempt 1 at" in failed.stdout
