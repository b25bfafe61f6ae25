"""supervisor.claim_size: how deep the prefetch buffer is and how many tasks a round claims."""

from __future__ import annotations

import pytest

from supervisor.claim_size import PREFETCH_WINDOW, claim_size, prefetch


def test_before_the_first_answer_the_buffer_holds_one_task_per_executor() -> None:
    assert prefetch(limit=256, executors=4, typical_task_s=None) == 4
    assert prefetch(limit=2, executors=4, typical_task_s=None) == 2, "never past the setting"


@pytest.mark.parametrize(("typical_s", "expected"), [
    (0.0001, 256),  # tiny tasks: as deep as the setting allows
    (0.001, 100),  # 2 executors x 50 ms / 1 ms
    (0.02, 5),
    (1.0, 2),  # long tasks: one per executor, so an idle supervisor elsewhere gets the rest
])
def test_the_buffer_holds_about_a_window_of_work(typical_s: float, expected: int) -> None:
    assert PREFETCH_WINDOW == 0.05
    assert prefetch(limit=256, executors=2, typical_task_s=typical_s) == expected


def test_a_claim_fills_idle_executors_and_the_buffer() -> None:
    assert claim_size(capacity=2, buffered=0, prefetch=4) == 6
    assert claim_size(capacity=2, buffered=1, prefetch=4) == 5


def test_no_claim_while_the_buffer_is_over_half_full_and_covers_idle_executors() -> None:
    assert claim_size(capacity=2, buffered=3, prefetch=4) == 0
    assert claim_size(capacity=2, buffered=2, prefetch=4) == 4, "down to half: top it up"
    assert claim_size(capacity=6, buffered=5, prefetch=8) == 9, "idle executors would wait"


def test_prefetch_0_claims_only_for_idle_executors() -> None:
    assert claim_size(capacity=0, buffered=0, prefetch=0) == 0
    assert claim_size(capacity=1, buffered=0, prefetch=0) == 1
