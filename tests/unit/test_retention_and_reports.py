"""Pure pieces of retention and worker reports: durations, the --retention
setting, when a supervisor asks for its retention tick, and what a round
sends for them."""

from __future__ import annotations

import collections

import pytest

from supervisor import durations, retention
from supervisor.answers import PendingAnswers
from supervisor.metrics import Metrics
from supervisor.pgconn import Rows
from supervisor.retention import RetentionChore
from supervisor.rounds import Rounds
from supervisor.settings import Settings
from supervisor.tasks import HeldTask


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("15m", 900), ("2h", 7200), ("7d", 604800), ("1w", 604800), (" 1.5h ", 5400)])
def test_durations(text, seconds):
    assert durations.parse_seconds(text) == seconds


@pytest.mark.parametrize("seconds, text", [
    (2592000, "30d"), (1209600, "2w"), (5400, "90m"), (300, "5m"), (90, "90s"), (0.5, "0.5s")])
def test_durations_are_written_back_in_their_shortest_form(seconds, text):
    assert durations.format_seconds(seconds) == text
    assert durations.parse_seconds(text) == seconds


@pytest.mark.parametrize("text", ["7", "7 days", "-1d", "d", ""])
def test_bad_durations_name_the_accepted_forms(text):
    with pytest.raises(ValueError, match="is not a duration like 30s, 15m, 2h, 7d or 1w"):
        durations.parse_seconds(text)


def settings(**values) -> Settings:
    return Settings(database_url="postgresql://x/y", flows="app", **values)


def test_retention_is_off_by_default_and_takes_durations(monkeypatch):
    monkeypatch.delenv("PGFLOW_RETENTION", raising=False)
    assert settings().retention is None
    assert settings(retention="off").retention is None
    assert settings(retention="30d").retention == 30 * 86400
    monkeypatch.setenv("PGFLOW_RETENTION", "12h")
    assert settings().retention == 12 * 3600
    with pytest.raises(ValueError, match="would delete every run the moment it finishes"):
        settings(retention="0s")
    with pytest.raises(ValueError, match="not a duration"):
        settings(retention="a month")


def test_ticks_are_a_sixtieth_of_the_retention_between_1_and_60_seconds():
    assert RetentionChore(30 * 86400).tick == 60
    assert RetentionChore(600).tick == 10
    assert RetentionChore(5).tick == 1


def test_a_full_batch_asks_again_soon_otherwise_at_the_next_tick():
    chore = RetentionChore(30 * 86400, batch_runs=200)
    assert chore.first_at(100.0) == 100.0 + retention.FIRST_DELAY
    assert chore.next_at(100.0, 1_000_000.0, 200) == 100.0 + retention.BACKLOG_PAUSE
    # Wall clock 20 s into a 60 s tick: the next starts in 40 s (plus < 1 s of jitter).
    for pruned in (0, 199, None):
        when = chore.next_at(100.0, 60 * 1000 + 20.0, pruned)
        assert 140.0 <= when <= 141.0


def make_rounds(**values) -> tuple[Rounds, Metrics]:
    metrics = Metrics()
    buffer: collections.deque = collections.deque()
    return Rounds(settings(**values), ["app"], metrics, buffer, lambda: []), metrics


def sql_of(transactions) -> list[str]:
    return [s.sql.decode() for tx in transactions for s in tx.statements]


def test_a_round_prunes_only_when_retention_is_on_and_due(monkeypatch):
    monkeypatch.delenv("PGFLOW_RETENTION", raising=False)
    answers = PendingAnswers(Metrics(), 100)
    rounds, _ = make_rounds()
    assert rounds.next_retention is None
    rounds.retention_due = True
    assert not any("retention_tick" in s for s in sql_of(rounds.next_round(answers, 0, rounds._buffer)))

    rounds, _ = make_rounds(retention="7d")
    assert rounds.next_retention is not None
    rounds.next_retention = None
    assert not any("retention_tick" in s for s in sql_of(rounds.next_round(answers, 0, rounds._buffer)))
    rounds.retention_due = True
    assert rounds.has_work(answers, 0)
    (tick,) = [s for tx in rounds.next_round(answers, 0, rounds._buffer) for s in tx.statements
               if b"retention_tick" in s.sql]
    assert tick.params[1:] == ("604800.0", "200", "60.0")
    assert not rounds.retention_due
    # A full batch asks again soon; the loop reads next_retention for its timer.

    tick.on_result(Rows(("ran", "runs", "tasks"), [(b"t", b"200", b"800")]))
    assert rounds.next_retention is not None


def test_the_heartbeat_round_carries_the_workers_report():
    rounds, metrics = make_rounds()
    metrics.set_executors(idle=1, busy=3)
    metrics.set_in_flight(running=3, buffered=7)
    for outcome in ("success", "success", "error", "timeout"):
        metrics.task_finished("app", "step", outcome, 0.1)  # type: ignore[arg-type]
    rounds.heartbeat_due = True
    transactions = rounds.next_round(PendingAnswers(metrics, 100), 0, rounds._buffer)
    (report,) = [s for tx in transactions for s in tx.statements if b"report_worker" in s.sql]
    assert report.params == (str(rounds.worker_id), "4", "3", "7", "2", "2")
    report_tx = next(tx for tx in transactions if report in tx.statements)
    assert report_tx.statements == [report], "its failure must not undo the heartbeat"
    assert any(b"pgflow.heartbeat" in s.sql for tx in transactions for s in tx.statements)


def test_dropping_a_cancelled_runs_buffered_tasks_gives_them_back():
    rounds, _ = make_rounds()
    mine = [HeldTask(i, 100 + i, run, "app", "step", 0, 1, 1000, 0.0, b"", 0.0)
            for i, run in enumerate(["r1", "r2", "r1"])]
    rounds._buffer.extend(mine)
    rounds.drop_runs({"r1"})
    assert list(rounds._buffer) == [mine[1]]
    assert rounds.releases == [mine[0], mine[2]], "fenced releases: no-ops unless retried"
