"""The circuit breaker's states, on a fake clock."""

from __future__ import annotations

import pytest

from serve_app.circuit import CircuitBreaker, CircuitState


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: FakeClock, threshold: int = 3, reset: float = 2.0) -> CircuitBreaker:
    return CircuitBreaker("stage", failure_threshold=threshold, reset_timeout_s=reset, clock=clock)


def test_opens_after_n_consecutive_failures_and_then_fails_fast() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(2):
        assert b.allow()
        b.record_failure("inference_timeout")
    assert b.state is CircuitState.CLOSED
    assert b.allow()
    b.record_failure("inference_timeout")
    assert b.state is CircuitState.OPEN
    assert [b.allow() for _ in range(100)] == [False] * 100
    assert b.refused == 100
    assert b.last_failure == "inference_timeout"


def test_a_success_resets_the_consecutive_count() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(10):
        b.record_failure("x")
        b.record_failure("x")
        b.record_success()
    assert b.state is CircuitState.CLOSED
    assert b.opened == 0


def test_half_open_after_the_cool_down_lets_exactly_one_probe_through() -> None:
    clock = FakeClock()
    b = breaker(clock, threshold=1, reset=2.0)
    b.record_failure("feature_lookup_failed")
    clock.now += 1.9
    assert not b.allow()
    clock.now += 0.2
    assert b.state is CircuitState.HALF_OPEN
    assert b.allow()  # the probe
    assert not b.allow()  # everyone else still fails fast while it is out
    b.record_success()
    assert b.state is CircuitState.CLOSED
    assert all(b.allow() for _ in range(5))


def test_a_failed_probe_reopens_for_a_full_cool_down() -> None:
    clock = FakeClock()
    b = breaker(clock, threshold=2, reset=2.0)
    b.record_failure("inference_failed")
    b.record_failure("inference_failed")
    clock.now += 2.0
    assert b.allow()
    b.record_failure("inference_timeout")
    assert b.state is CircuitState.OPEN
    assert b.opened == 2
    assert b.last_failure == "inference_timeout"
    clock.now += 1.0
    assert not b.allow()
    clock.now += 1.0
    assert b.allow()


def test_a_probe_whose_outcome_never_comes_is_replaced() -> None:
    clock = FakeClock()
    b = breaker(clock, threshold=1, reset=1.0)
    b.record_failure("x")
    clock.now += 1.0
    assert b.allow()
    clock.now += 0.5
    assert not b.allow()
    clock.now += 0.5
    assert b.allow()  # the first probe was lost (cancelled caller): a new one goes


@pytest.mark.parametrize(("threshold", "reset"), [(0, 1.0), (1, 0.0), (1, -1.0)])
def test_refuses_settings_that_cannot_work(threshold: int, reset: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        CircuitBreaker("s", failure_threshold=threshold, reset_timeout_s=reset)
