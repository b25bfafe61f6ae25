"""What bench/vs_pgqueuer.py prints: a line per round as it finishes, then
plain-text tables of the rounds, medians, ratios against the targets, and
where the CPU went."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [_line(headers, widths), "  ".join("-" * w for w in widths)]
    lines += [_line(row, widths) for row in cells]
    return "\n".join(lines)


def _line(cells: Sequence[str], widths: list[int]) -> str:
    """First column left-aligned (labels), the others right-aligned (numbers)."""
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(cells, widths, strict=True)))


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def round_line(case: str, figures: dict) -> str:
    """One line as a round finishes."""
    side = figures["side"] + (f" --processes {figures['processes']}" if case == "cpu-bound" else "")
    head = f"{case:>9} {side:<22} round {figures['round']}:"
    if case == "single":
        head = f"{'chains':>9} {side + ' (single-step)':<22} round {figures['round']}:"
    if case == "latency":
        return (f"{head} p50 {figures['p50_ms']:.2f} ms, p90 {figures['p90_ms']:.2f}, "
                f"p99 {figures['p99_ms']:.2f}, max {figures['max_ms']:.2f} ({figures['samples']} samples)")
    cpu = ", ".join(f"{role} {us:,.0f}" for role, us in figures["cpu_us_per_task"].items())
    rate = (f"{figures['chains_per_second']:,.0f} chains/s ({figures['tasks_per_second']:,.0f} tasks/s)"
            if "chains_per_second" in figures else f"{figures['tasks_per_second']:,.0f} tasks/s")
    return (f"{head} {figures['tasks']:,} tasks in {figures['seconds']:.2f} s = {rate}; "
            f"CPU us/task: {cpu}; rest of the machine {figures['others_busy_percent']:.0f}% busy")


def summary(results: dict) -> str:
    parts = [header(results)]
    if "drain" in results:
        parts.append(_drain(results["drain"]))
    if "chains" in results:
        parts.append(_chains(results["chains"]))
    if "latency" in results:
        parts.append(_latency(results["latency"]))
    if "cpu_bound" in results:
        parts.append(_cpu_bound(results["cpu_bound"]))
    if "drain" in results:
        parts.append(_cpu_split(results["drain"]))
    parts.append(_dead_tuples(results))
    parts.append(results["pg_stat_statements"])
    return "\n\n".join(parts)


def header(results: dict) -> str:
    m, pg, s = results["machine"], results["postgres"], results["settings"]
    return "\n".join([
        f"machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, load average "
        f"{m['load_average_at_start']} at start; Python {m['python']}",
        f"Postgres {pg['server_version']}: autovacuum={pg['autovacuum']}, "
        f"synchronous_commit={pg['synchronous_commit']}, shared_buffers={pg['shared_buffers']}",
        f"ours: pgflow {s['pgflow_commit']}, `pgflow supervise --processes 2` "
        + (f"plus {' '.join(s['supervisor_args'])}" if s["supervisor_args"] else "with default settings"),
        f"theirs: PgQueuer {s['pgqueuer_version']} ({s['pgqueuer_driver']} driver), "
        f"{s['pgqueuer_processes']} worker processes, batch size {s['pgqueuer_batch_size']}",
        f"{s['rounds']} rounds each, alternating. Tables are truncated before each round; "
        + ("autovacuum is off, so each round runs with all the dead tuples it makes (table at the end)"
           if pg["autovacuum"] == "off" else "autovacuum is ON: it may clean up during a round"),
    ])


def _rates(rounds: list[dict], key: str, side: str, **match: object) -> list[float]:
    return [r[key] for r in rounds if r["side"] == side and all(r[k] == v for k, v in match.items())]


def _drain(drain: dict) -> str:
    rows = [[side, *_rates(drain["rounds"], "tasks_per_second", side), median]
            for side, median in drain["median_tasks_per_second"].items()]
    text = f"drain: {drain['jobs']:,} pre-filled single-step no-op jobs, 2 processes each, tasks/s\n"
    text += table(["side", *[f"round {i + 1}" for i in range(len(rows[0]) - 2)], "median"], rows)
    text += _noise([r["others_busy_percent"] for r in drain["rounds"]])
    if "ratio_ours_over_pgqueuer" in drain:
        ratio = drain["ratio_ours_over_pgqueuer"]
        text += f"\nours / PgQueuer = {ratio:.2f} (target >= {drain['target_ratio']}: {_met(ratio >= 1.5)})"
    return text


def _chains(chains: dict) -> str:
    rows = [[f"round {r['round']}", r["paired_single_tasks_per_second"], r["chains_per_second"],
             r["chains_over_single_thirds"]] for r in chains["rounds"]]
    rows.append(["median", None, chains["median_chains_per_second"],
                 chains["median_chains_over_single_thirds"]])
    text = (f"three-step chains (a -> b -> c), {chains['chains']:,} pre-filled, ours, each round "
            f"right after a single-step drain round of ours\n")
    text += table(["", "single tasks/s", "chains/s", "chains/s / (tasks/s / 3)"], rows)
    text += _noise([p for r in chains["rounds"]
                    for p in (r["others_busy_percent"], r["paired_single_others_busy_percent"])])
    ratio = chains["median_chains_over_single_thirds"]
    return text + f"\na chain costs no more than three single tasks (target >= 1): {_met(ratio >= 1)}"


def _latency(latency: dict) -> str:
    rows = []
    for r in latency["rounds"]:
        rows.append([f"{r['side']} round {r['round']}", r["p50_ms"], r["p90_ms"], r["p99_ms"], r["max_ms"]])
    for side, p in latency["pooled"].items():
        rows.append([f"{side} all rounds", p["p50_ms"], p["p90_ms"], p["p99_ms"], p["max_ms"]])
    text = (f"start -> handler start on an idle system, ms ({latency['samples_per_round']} samples "
            f"per round after {latency['warmup_per_round']} warm-up ones)\n")
    text += table(["", "p50", "p90", "p99", "max"], rows)
    ours = latency["pooled"].get("ours")
    if ours:
        met = ours["p50_ms"] <= latency["target_p50_ms"] and ours["p99_ms"] <= latency["target_p99_ms"]
        text += (f"\ntarget for ours: p50 <= {latency['target_p50_ms']} ms and p99 <= "
                 f"{latency['target_p99_ms']} ms: {_met(met)}")
    return text


def _cpu_bound(cpu: dict) -> str:
    rows = [[f"--processes {p}", *_rates(cpu["rounds"], "tasks_per_second", "ours", processes=p),
             cpu["median_tasks_per_second"][f"processes_{p}"]] for p in (2, 1)]
    text = (f"CPU-bound handlers ({cpu['burn_iterations']:,} iterations of pure Python, "
            f"{cpu['burn_ms_idle_core']} ms on an idle core), {cpu['tasks']:,} tasks, ours, tasks/s\n")
    text += table(["", *[f"round {i + 1}" for i in range(len(rows[0]) - 2)], "median"], rows)
    ratio = cpu["ratio_2_over_1"]
    text += f"\n2 processes / 1 = {ratio:.2f} (target >= {cpu['target_ratio']}: {_met(ratio >= 1.8)})"
    busy = ", ".join(f"{r['cores_busy']['executors']:.2f} (--processes {r['processes']}, round {r['round']})"
                     for r in cpu["rounds"])
    return (text + f"\nexecutors kept this many cores busy: {busy}"
            + _noise([r["others_busy_percent"] for r in cpu["rounds"]]))


def _cpu_split(drain: dict) -> str:
    """Median CPU microseconds per task by role over the drain rounds."""
    rows = []
    for side in drain["median_tasks_per_second"]:
        rounds = [r for r in drain["rounds"] if r["side"] == side]
        roles = list(rounds[0]["cpu_us_per_task"])
        for role in roles:
            rows.append([f"{side}: {role}", statistics.median(r["cpu_us_per_task"][role] for r in rounds)])
        rows.append([f"{side}: total", statistics.median(sum(r["cpu_us_per_task"].values()) for r in rounds)])
    return ("where the CPU goes in the drain (median over rounds, CPU microseconds per task, "
            "from /proc/<pid>/stat)\n" + table(["", "us/task"], rows))


def _dead_tuples(results: dict) -> str:
    rows = []
    for case in ("drain", "chains"):
        for r in results.get(case, {}).get("rounds", []):
            if r["round"] == 1:
                for name, t in r["dead_tuples_after"].items():
                    rows.append([f"{case}, {r['side']}: {name}", t["live"], t["dead"], t["source"]])
    return ("tuples at the end of round 1 (no vacuum ran; page pruning removes some dead ones)\n"
            + table(["", "live", "dead", "counted by"], rows))


def _noise(others_busy_percents: list[float], threshold: float = 25.0) -> str:
    """A warning when processes other than the measured side's kept the
    machine busy: on 2 cores that takes CPU the side would have used."""
    worst = max(others_busy_percents)
    if worst < threshold:
        return ""
    return (f"\nnoisy: the rest of the machine (other users, Postgres' background processes) "
            f"was up to {worst:.0f}% busy during these rounds")


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"
