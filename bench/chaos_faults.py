"""Faults injected at random (seeded) while the soak runs, and the log of
what was done when. Each kind is a method `inject_<kind>`; a fault with a
duration (a pause, a Postgres outage, a killed supervisor waiting to be
started again) schedules its own end.

The first faults go through every kind once, in a seeded order, so even a
short soak sees each; after that kinds are drawn by weight.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from chaos_cluster import EmbeddedPostgres, Process, Supervisor

KINDS = {  # kind: weight
    "supervisor_kill": 2,
    "executor_kill": 3,
    "supervisor_stop": 2,
    "postgres_restart": 1,
    "connection_drop": 2,
    "ttin": 1,
    "ttou": 1,
    "hup": 1,
}
MAX_POOL = 4


@dataclass
class Fault:
    kind: str
    at: float  # wall clock, comparable with Postgres timestamps on this machine
    target: str = ""
    ended_at: float | None = None  # when a fault with a duration was undone
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "at": round(self.at, 3), "target": self.target,
                "ended_at": None if self.ended_at is None else round(self.ended_at, 3),
                **self.detail}


class Faults:
    def __init__(self, rng: random.Random, supervisors: list[Supervisor], postgres: EmbeddedPostgres,
                 kinds: list[str], mean_interval: float, pause: tuple[float, float]) -> None:
        self.rng = rng
        self.supervisors = supervisors
        self.postgres = postgres
        self.kinds = kinds
        self.mean_interval = mean_interval
        self.pause = pause  # how long a SIGSTOP lasts: (min, max) seconds
        self.log: list[Fault] = []
        self.pending: list[tuple[float, Callable[[], None]]] = []
        self.next_at = time.monotonic() + 2.0
        self.coverage = rng.sample(kinds, len(kinds))
        self.killed_executors: list[Process] = []
        # Supervisors whose executors must die with them: (fault, executors).
        self.orphan_watch: list[tuple[Fault, list[Process]]] = []
        self._restart: Fault | None = None

    # -- scheduling ------------------------------------------------------------------

    def step(self, now: float) -> None:
        due = [p for p in self.pending if p[0] <= now]
        self.pending = [p for p in self.pending if p[0] > now]
        for _, action in due:
            action()
        if now >= self.next_at:
            self._inject_one()
            self.next_at = now + min(max(self.rng.expovariate(1 / self.mean_interval), 0.3),
                                     4 * self.mean_interval)

    def finish(self) -> None:
        """Undo whatever is still under way (Postgres first, so supervisors find it)."""
        for _, action in sorted(self.pending, key=lambda p: p[1] != self._postgres_up):
            action()
        self.pending.clear()

    def _inject_one(self) -> None:
        candidates = self.coverage or self.rng.choices(
            self.kinds, weights=[KINDS[k] for k in self.kinds], k=len(self.kinds) * 2)
        for kind in candidates:
            fault = getattr(self, f"inject_{kind}")()
            if fault is not None:
                if kind in self.coverage:
                    self.coverage.remove(kind)
                self.log.append(fault)
                return

    def _later(self, delay: float, action: Callable[[], None]) -> None:
        self.pending.append((time.monotonic() + delay, action))

    def _targets(self, *, spare_witness: bool = False, ready: bool = False) -> list[Supervisor]:
        """Running supervisors not paused by us; supervisor 0 is the memory
        witness and is spared kills and re-executions when asked; `ready`:
        only those whose signal handlers are in place (HUP, TTIN, TTOU)."""
        return [s for s in self.supervisors if s.alive() and not s.stopped
                and not (spare_witness and s.index == 0) and (s.ready() or not ready)]

    def _busy_with(self, kind: str) -> bool:
        return any(f.kind == kind and f.ended_at is None for f in self.log)

    # -- the faults --------------------------------------------------------------------

    def inject_supervisor_kill(self) -> Fault | None:
        targets = self._targets(spare_witness=True)
        if not targets:
            return None
        target = self.rng.choice(targets)
        executors = target.children()
        fault = Fault("supervisor_kill", time.time(), target.tag,
                      detail={"pid": target.pid, "executors": len(executors)})
        target.expected_exit = True
        target.send(signal.SIGKILL)
        self.orphan_watch.append((fault, executors))

        def restart() -> None:
            target.proc.wait()  # type: ignore[union-attr]
            target.reap()
            target.start()
            fault.ended_at = time.time()
            fault.detail["new_pid"] = target.pid

        self._later(self.rng.uniform(0.2, 2.0), restart)
        return fault

    def inject_executor_kill(self) -> Fault | None:
        choices = [(s, c) for s in self._targets() for c in s.children()]
        if not choices:
            return None
        target, executor = self.rng.choice(choices)
        try:
            os.kill(executor[0], signal.SIGKILL)
        except ProcessLookupError:
            return None
        self.killed_executors.append(executor)
        return Fault("executor_kill", time.time(), target.tag, detail={"pid": executor[0]})

    def inject_supervisor_stop(self) -> Fault | None:
        targets = self._targets()
        if not targets or any(s.stopped for s in self.supervisors) or len(targets) < 2:
            return None  # someone must stay awake to requeue the paused one's tasks
        target = self.rng.choice(targets)
        seconds = self.rng.uniform(*self.pause)
        fault = Fault("supervisor_stop", time.time(), target.tag,
                      detail={"pid": target.pid, "seconds": round(seconds, 2)})
        target.send(signal.SIGSTOP)
        target.stopped = True

        def resume() -> None:
            if target.alive():
                target.send(signal.SIGCONT)
            target.stopped = False
            fault.ended_at = time.time()

        self._later(seconds, resume)
        return fault

    def inject_postgres_restart(self) -> Fault | None:
        if not self.postgres.up:
            return None
        mode = "immediate" if self.rng.random() < 0.3 else "fast"
        down = self.rng.uniform(0.5, 3.0)
        fault = Fault("postgres_restart", time.time(), mode, detail={"down_s": round(down, 2)})
        self.postgres.stop(mode)
        fault.detail["stopped_after_s"] = round(time.time() - fault.at, 2)
        self._restart = fault
        self._later(down, self._postgres_up)
        return fault

    def _postgres_up(self) -> None:
        for attempt in range(3):  # pg_ctl start gives up after 10 s; a loaded machine may need more
            try:
                self.postgres.start()
                break
            except Exception:  # noqa: BLE001 - subprocess errors of pg_ctl
                if attempt == 2:
                    raise
        if self._restart is not None:
            self._restart.ended_at = time.time()

    def inject_connection_drop(self) -> Fault | None:
        if not self.postgres.up:
            return None
        targets = self._targets()
        if self.rng.random() < 0.25 or not targets:
            name, target = "pgflow executor", "executors"
        else:
            supervisor = self.rng.choice(targets)
            name, target = f"pgflow supervisor {supervisor.tag}", supervisor.tag
        try:
            with psycopg.connect(self.postgres.uri, autocommit=True, connect_timeout=5) as conn:
                dropped = conn.execute(
                    "select count(*) filter (where pg_terminate_backend(pid)) from "
                    "pg_stat_activity where application_name = %s", (name,)).fetchone()
        except psycopg.Error:
            return None
        return Fault("connection_drop", time.time(), target,
                     detail={"backends": int(dropped[0]) if dropped else 0})

    def inject_ttin(self) -> Fault | None:
        return self._scale(signal.SIGTTIN, +1)

    def inject_ttou(self) -> Fault | None:
        return self._scale(signal.SIGTTOU, -1)

    def _scale(self, sig: signal.Signals, delta: int) -> Fault | None:
        targets = [s for s in self._targets(ready=True) if 1 <= s.pool_size + delta <= MAX_POOL]
        if not targets:
            return None
        target = self.rng.choice(targets)
        target.send(sig)
        target.pool_size += delta
        return Fault(sig.name[3:].lower(), time.time(), target.tag,
                     detail={"pool_size": target.pool_size})

    def inject_hup(self) -> Fault | None:
        targets = self._targets(spare_witness=True, ready=True)
        if not targets:
            return None
        target = self.rng.choice(targets)
        target.not_ready()
        target.send(signal.SIGHUP)
        target.pool_size = target.processes  # the re-executed one starts afresh
        return Fault("hup", time.time(), target.tag, detail={"pid": target.pid})
