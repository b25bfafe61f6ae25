"""Chaos soak: a mixed load through several `pgflow supervise` processes on one
private embedded Postgres while faults are injected at random, then a check
of the histories against the invariants the engine promises.

    python bench/chaos.py [--seconds 600] [--seed N] [--supervisors 2] [--processes 2]

Load: chains, diamonds and maps of 0-500 elements (bench/chaos_flows.py),
whose handlers raise, crash (os._exit, SIGKILL), overrun their timeout or
fork a grandchild, as a hash of (run id, step, task index, attempt)
decides, so the expected outcome of every run is a pure computation.
Faults (seeded): SIGKILL of a supervisor (restarted), SIGKILL of an
executor, SIGSTOP/SIGCONT of a supervisor past its leases, a Postgres
restart (fast or immediate), pg_terminate_backend of supervisors' or
executors' connections, TTIN/TTOU, HUP. Supervisor 0 watches memory: it is
spared kills and re-executions. After --seconds the faults stop and the
soak waits at most --recovery-seconds for every run to finish, stops the
supervisors, and checks (see docs/design.md, "Chaos soak"). Prints the
figures, writes bench/results/chaos.json (records and logs under
bench/results/chaos/) and exits 1 if an invariant failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import chaos_check  # noqa: E402
import chaos_flows  # noqa: E402
import chaos_report  # noqa: E402
from chaos_cluster import (  # noqa: E402
    EmbeddedPostgres,
    Process,
    Supervisor,
    make_supervisors,
    process_alive,
    processes_with,
)
from chaos_faults import KINDS, Faults  # noqa: E402
from chaos_flows import process_starttime  # noqa: E402
from chaos_history import load_database, load_records  # noqa: E402
from chaos_load import Producer  # noqa: E402

from pgflow import Client  # noqa: E402

RESULTS = HERE / "results"
TICK = 0.05


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600, help="how long faults are injected")
    parser.add_argument("--seed", type=int, default=None, help="default: drawn, and printed")
    parser.add_argument("--supervisors", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2, help="executors per supervisor")
    parser.add_argument("--fault-interval", type=float, default=3.0,
                        help="mean seconds between faults")
    parser.add_argument("--faults", default=",".join(KINDS), help="kinds to inject")
    parser.add_argument("--max-unfinished", type=int, default=12,
                        help="runs kept unfinished at once (bounds the backlog)")
    parser.add_argument("--recovery-seconds", type=float, default=180,
                        help="bound on the time every run needs to finish once faults stop")
    parser.add_argument("--lease-grace", type=float, default=3.0)
    parser.add_argument("--heartbeat-interval", type=float, default=0.5)
    parser.add_argument("--kill-grace", type=float, default=0.5)
    parser.add_argument("--slack", type=float, default=2.0,
                        help="seconds allowed on top of timing bounds (a busy machine)")
    parser.add_argument("--strict", action="store_true",
                        help="fail on known issues too (chaos_check.ORPHANED_*)")
    parser.add_argument("--out", type=Path, default=RESULTS / "chaos.json")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    unknown = set(args.faults.split(",")) - set(KINDS)
    if unknown:
        parser.error(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    if args.supervisors < 2:
        parser.error("--supervisors must be at least 2 (one requeues what another loses)")
    return args


class Soak:
    def __init__(self, args: argparse.Namespace, postgres: EmbeddedPostgres, work: Path) -> None:
        self.args = args
        self.postgres = postgres
        self.tag = f"chaos{os.getpid()}"
        self.records = work / "records"
        self.records.mkdir(parents=True)
        (work / "logs").mkdir()
        self.supervisors = make_supervisors(
            args.supervisors, args.processes, postgres.uri, self.tag, self.records, work / "logs",
            ["--lease-grace", str(args.lease_grace), "--heartbeat-interval",
             str(args.heartbeat_interval), "--kill-grace", str(args.kill_grace),
             "--shutdown-timeout", "5"])
        pause = (chaos_flows.TIMEOUT + args.lease_grace + 1, chaos_flows.TIMEOUT + args.lease_grace + 4)
        self.faults = Faults(random.Random(args.seed), self.supervisors, postgres,
                             args.faults.split(","), args.fault_interval, pause)
        self.producer = Producer(postgres.uri, args.seed, args.max_unfinished)
        self.executors_seen: set[Process] = set()
        self.rss: list[tuple[float, int, int, int]] = []  # (t, supervisor, incarnation, KiB)
        self.load: list[float] = []
        self.unexpected_exits: list[str] = []
        self.orphans: list[str] = []
        self.stop_problems: list[str] = []
        self.timeline: dict[str, float] = {}
        self._next_sample = 0.0
        self._next_rss = 0.0

    # -- the soak ------------------------------------------------------------------------

    def run(self) -> None:
        for supervisor in self.supervisors:
            supervisor.start()
        self._wait_serving(self.supervisors)
        self.timeline["start"] = time.time()
        deadline = time.monotonic() + self.args.seconds
        while time.monotonic() < deadline:
            self._tick(producing=True, faulting=True)
        self.faults.finish()
        self.timeline["faults_end"] = time.time()
        deadline = time.monotonic() + self.args.recovery_seconds
        while not self.producer.finished() and time.monotonic() < deadline:
            self._tick(producing=False, faulting=False)
        self.timeline["recovered"] = time.time()
        self._stop_supervisors()
        self.timeline["stopped"] = time.time()

    def _tick(self, producing: bool, faulting: bool) -> None:
        now = time.monotonic()
        if faulting:
            self.faults.step(now)
        if self.postgres.up:
            self.producer.step(now, producing)
        self._watch_supervisors()
        self._sample(now)
        time.sleep(TICK)

    def _wait_serving(self, supervisors: list[Supervisor], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.postgres.uri, autocommit=True) as conn:
            for supervisor in supervisors:
                while not conn.execute("select 1 from pgflow.workers where hostname = %s and pid = %s",
                                       (supervisor.tag, supervisor.pid)).fetchone():
                    if time.monotonic() > deadline or not supervisor.alive():
                        raise RuntimeError(f"{supervisor.tag} did not start:\n{supervisor.log_tail()}")
                    time.sleep(0.1)

    def _watch_supervisors(self) -> None:
        """A supervisor that exits on its own is a failure: noted, then restarted."""
        for supervisor in self.supervisors:
            if supervisor.expected_exit or supervisor.alive():
                continue
            code = supervisor.reap()
            self.unexpected_exits.append(f"{supervisor.tag} (pid {supervisor.pid}) exited with "
                                         f"{code}:\n{supervisor.log_tail(15)}")
            supervisor.start()

    def _sample(self, now: float) -> None:
        if now < self._next_sample:
            return
        self._next_sample = now + 0.5
        for supervisor in self.supervisors:
            self.executors_seen.update(supervisor.children())
        for fault, executors in list(self.faults.orphan_watch):
            if time.time() - fault.at >= 2.0:
                self.faults.orphan_watch.remove((fault, executors))
                alive = [pid for pid, st in executors if process_alive((pid, st))]
                if alive:
                    self.orphans.append(f"executors {alive} of {fault.target} (pid "
                                        f"{fault.detail['pid']}) alive 2 s after it was killed")
        if now >= self._next_rss:
            self._next_rss = now + 1.0
            self.load.append(os.getloadavg()[0])
            for s in self.supervisors:
                kib = s.rss_kib() if s.alive() and not s.stopped else None
                if kib is not None:
                    self.rss.append((time.time(), s.index, s.incarnation, kib))

    def _stop_supervisors(self) -> None:
        for supervisor in self.supervisors:
            if supervisor.alive():
                supervisor.expected_exit = True
                supervisor.send(signal.SIGTERM)
        for supervisor in self.supervisors:
            if supervisor.proc is None:
                continue
            try:
                code = supervisor.proc.wait(30)
            except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired
                supervisor.proc.kill()
                code = supervisor.proc.wait()
                self.stop_problems.append(f"{supervisor.tag} did not stop within 30 s of TERM")
            supervisor.reap()
            if code != 0:
                self.stop_problems.append(f"{supervisor.tag} exited with {code} after TERM:\n"
                                          f"{supervisor.log_tail(15)}")

    def leftovers(self, known: set[Process]) -> list[tuple[Process, str]]:
        """Processes of the system under test still alive after every supervisor stopped."""
        everyone = self.executors_seen | known
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(process_alive(p) for p in everyone):
            time.sleep(0.1)
        alive = [(p, f"process {p[0]} (seen as an executor or a handler's child) is alive")
                 for p in sorted(everyone) if process_alive(p)]
        seen = {p for p, _ in alive}
        alive += [((pid, process_starttime(pid) or 0), f"process {pid} is alive: {cmdline[:160]}")
                  for pid, cmdline in processes_with(f"--hostname {self.tag}-")
                  if (pid, process_starttime(pid) or 0) not in seen]
        return alive


def prepare(dsn: str) -> None:
    with Client(dsn) as client:
        client.migrate()
        for flow in (chaos_flows.chain, chaos_flows.diamond, chaos_flows.fanout):
            client.register(flow)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = RESULTS / "chaos"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"chaos soak: seed {args.seed}, {args.seconds:g}s of faults, {args.supervisors} "
          f"supervisors x {args.processes} executors, load {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} CPUs; work in {work}", flush=True)
    postgres = EmbeddedPostgres()
    soak = Soak(args, postgres, work)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    leftovers: list[tuple[Process, str]] = []
    try:
        prepare(postgres.uri)
        soak.run()
        records = load_records(soak.records)
        leftovers = soak.leftovers(records.processes | {
            i.grandchild for i in records.invocations if i.grandchild is not None})
        db = load_database(postgres.uri)
    finally:
        for process, _ in leftovers:
            if process_alive(process):  # checked below; nothing of ours outlives the soak
                os.kill(process[0], signal.SIGKILL)
        for supervisor in soak.supervisors:
            if supervisor.alive():
                supervisor.proc.kill()  # type: ignore[union-attr]
        soak.producer.close()
        postgres.close()
    facts = chaos_report.facts(soak, args)
    checks, verdicts = chaos_check.all_checks(db, records, facts)
    checks += chaos_report.process_checks(soak, leftovers, records, facts)
    result = chaos_report.build(args, soak, db, records, checks, verdicts)
    chaos_report.show(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
