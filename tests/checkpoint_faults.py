"""Fault injection for checkpoint tests: saves whose background write fails."""

from __future__ import annotations

import time

import orbax.checkpoint as ocp


class FailingWrite:
    """A commit future (what Orbax's background writer waits on) whose write fails."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay

    def result(self, timeout=None):
        time.sleep(self.delay)
        raise OSError(5, "Input/output error")


def fail_background_writes(monkeypatch, delay: float = 0.0) -> None:
    """Makes every later save's background write of the state fail (the call itself succeeds)."""
    real = ocp.StandardCheckpointHandler.async_save

    async def failing(self, *args, **kwargs):
        return list(await real(self, *args, **kwargs) or []) + [FailingWrite(delay)]

    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", failing)
