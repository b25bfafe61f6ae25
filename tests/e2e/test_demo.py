"""`pgflow demo` as a user runs it: the real command, supervisor and Postgres."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from tests.e2e.conftest import PGFLOW, pid_alive


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PGFLOW_")}


def _processes_mentioning(text: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,stat,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines()[1:] if text in line and " Z" not in line]


def test_demo_runs_a_batch_and_summarizes_it(dsn, tmp_path):
    result = subprocess.run(
        [str(PGFLOW), "demo", "--runs", "6", "--database-url", dsn, "--data-dir",
         str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=120, env=_env())
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    # Not a terminal: plain progress lines, then the summary.
    assert re.search(r"^\[\s*\d+\.\ds\] \d+/6 runs completed \| validate ", out, re.M), out
    assert "6 runs: 6 completed" in out
    for step in ("validate", "price", "charge", "ship", "receipt"):
        assert re.search(rf"^ {step}\s+\d+", out, re.M), f"{step} missing from the summary:\n{out}"
    # Orders 1 and 5 fail once at the payment gateway, order 2 times out once at the courier.
    assert "charge: 2 failed attempt(s) retried, e.g. PaymentGatewayError" in out
    assert "ship: 1 failed attempt(s) retried, e.g. Task timed out after 500ms" in out
    assert re.search(r"/metrics was served at http://127\.0\.0\.1:\d+/metrics .*1 timed out", out)
    assert (tmp_path / "demo" / "supervisor.log").exists()


def test_embedded_demo_keeps_its_data_stops_on_ctrl_c_and_cleans_up(tmp_path):
    data_dir = tmp_path / "demo"
    command = [str(PGFLOW), "demo", "--data-dir", str(data_dir)]
    first = subprocess.run([*command, "--runs", "2"], capture_output=True, text=True,
                           timeout=120, env=_env())
    assert first.returncode == 0, first.stdout + first.stderr
    assert "initializing the embedded Postgres" in first.stdout
    assert (data_dir / "postgres" / "PG_VERSION").exists(), "the data directory is kept"
    assert not _processes_mentioning(str(data_dir)), "Postgres stops when the demo ends"

    # Ctrl-C in a terminal signals the whole foreground process group. (SIGINT back to
    # its default: a shell without job control starts background commands ignoring it.)
    demo = subprocess.Popen([*command, "--runs", "3000"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env(),
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert demo.stdout is not None
    try:
        _interrupt_and_check(demo, data_dir)
    finally:
        if demo.poll() is None:  # a failed check must not leave the demo running
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
            subprocess.run([*command, "--clean"], capture_output=True, env=_env())  # stops Postgres

    clean = subprocess.run([*command, "--clean"], capture_output=True, text=True, timeout=60,
                           env=_env())
    assert clean.returncode == 0 and not data_dir.exists(), clean.stdout + clean.stderr


def _interrupt_and_check(demo: subprocess.Popen[str], data_dir: Path) -> None:
    assert demo.stdout is not None
    lines = []
    for line in demo.stdout:
        lines.append(line)
        if "runs completed" in line:
            break
    supervisor_pids = [int(p) for p in subprocess.run(
        ["pgrep", "-f", "-s", str(demo.pid), "supervisor.cli supervise"],
        capture_output=True, text=True).stdout.split()]
    assert supervisor_pids, "the demo runs a real supervisor process"
    os.killpg(demo.pid, signal.SIGINT)
    rest = demo.stdout.read()
    assert demo.wait(30) == 130, "".join(lines) + rest
    assert "starting the embedded Postgres" in "".join(lines), "second run reuses the data"
    assert "interrupted: stopping the supervisor and Postgres" in rest
    time.sleep(0.3)
    assert not any(pid_alive(pid) for pid in supervisor_pids)
    assert not _processes_mentioning(str(data_dir)), "no process is left behind"


def test_make_clean_demo_removes_the_data_directory(tmp_path):
    data_dir = tmp_path / "demo"
    (data_dir / "postgres").mkdir(parents=True)
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(["make", "-s", "-C", str(root), "clean-demo", f"DEMO_DIR={data_dir}",
                             f"VENV={PGFLOW.parent.parent}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not data_dir.exists()
