"""Where the CPU goes: utime + stime of processes from /proc/<pid>/stat, and
the whole machine's busy time from /proc/stat. Same machine as Postgres, so the
backends' /proc entries are readable (as root, or as the postgres user)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> tuple[float, float] | None:
    """(own CPU seconds, CPU seconds of its children it has waited for), or
    None if the process is gone or unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # After the ")" closing the command name, fields 3.. of proc(5): utime is
    # the 14th field, stime the 15th, cutime the 16th, cstime the 17th.
    fields = stat[stat.rindex(")") + 2:].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime) / TICK, (cutime + cstime) / TICK


def machine_cpu() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores, all processes)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle, iowait = values[3], values[4]
    # guest time is already counted in user; steal is time we did not get.
    return (sum(values[:8]) - idle - iowait) / TICK


def bench_cpu(backend_pid: int) -> float:
    """CPU seconds of this benchmark process and of its own Postgres backend
    (the one that fills the queue and polls), to leave them out of "the rest
    of the machine"."""
    times = os.times()
    backend = process_cpu(backend_pid)
    return times.user + times.system + (backend[0] if backend else 0.0)


@dataclass
class CpuGroups:
    """Process ids by role ("supervisor", "executors", "postgres backends"...).
    `reaped_into` maps a role to the role credited with the CPU of its children
    that have exited and been waited for (a supervisor's replaced executors)."""

    roles: dict[str, list[int]]
    reaped_into: dict[str, str] = field(default_factory=dict)


Snapshot = dict[str, dict[str, float]]


def snapshot(groups: CpuGroups) -> Snapshot:
    taken: Snapshot = {role: {} for role in groups.roles}
    for role, pids in groups.roles.items():
        for pid in pids:
            read = process_cpu(pid)
            if read is None:
                continue
            taken[role][str(pid)] = read[0]
            if role in groups.reaped_into:
                taken.setdefault(groups.reaped_into[role], {})[f"reaped by {pid}"] = read[1]
    return taken


def spent(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds per role between two snapshots. A process that appeared in
    between counts from zero; one that vanished in between is not counted."""
    return {
        role: sum(value - before.get(role, {}).get(key, 0.0) for key, value in pids.items())
        for role, pids in after.items()
    }
