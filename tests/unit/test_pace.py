"""supervisor.pace: what the supervisor learns about how long tasks take."""

from __future__ import annotations

from supervisor.pace import SHORT_TASK_SECONDS, Pace


def test_unknown_steps_are_not_short_and_nothing_is_typical_yet():
    pace = Pace()
    assert not pace.is_short("f", "s")
    assert pace.typical is None


def test_a_step_is_short_once_it_usually_takes_under_the_threshold():
    pace = Pace()
    for _ in range(20):
        pace.learn("f", "tiny", 0.0002)
    pace.learn("f", "slow", 2.0)
    assert pace.is_short("f", "tiny") and not pace.is_short("f", "slow")
    assert not pace.is_short("other", "tiny"), "per flow and step"


def test_one_slow_task_does_not_make_a_fast_step_slow_but_a_trend_does():
    pace = Pace()
    for _ in range(20):
        pace.learn("f", "s", 0.001)
    pace.learn("f", "s", 0.02)
    assert pace.is_short("f", "s")
    for _ in range(20):
        pace.learn("f", "s", 0.02)
    assert not pace.is_short("f", "s")
    assert SHORT_TASK_SECONDS < 0.02


def test_the_typical_duration_follows_every_step_with_a_floor():
    pace = Pace()
    pace.learn("f", "a", 0.0)
    assert pace.typical is not None and pace.typical > 0, "never zero: prefetch divides by it"
    for _ in range(50):
        pace.learn("f", "b", 1.0)
    assert 0.9 < pace.typical <= 1.0
