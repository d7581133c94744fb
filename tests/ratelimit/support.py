"""Helpers shared by the rate-limit tests."""

from __future__ import annotations


class FakeClock:
    """Seconds, moved by hand: no test sleeps or depends on how fast it runs."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
