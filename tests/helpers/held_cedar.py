"""Hold Cedar for one tool until the test releases it: a deterministic "heavy" call.

Tests of fairness assert what finished first, never how long anything took; a weakened
scheduler that blocks the loop is let go after ``SAFETY_SECONDS`` so its test ends (and fails).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from cmcp_enclave.engine import CedarEngine

HELD_TOOL = "ehr.read_patient_record"
BIG_ARGUMENTS = {"patient_id": "p-1", "note": "x" * 8192}  # above the inline bound: decided on the pool
SAFETY_SECONDS = 2.0


class HeldCedar:
    """Holds evaluation of ``HELD_TOOL`` until released (from any thread)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()

    def release_soon(self) -> None:
        threading.Timer(SAFETY_SECONDS, self.released.set).start()


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldCedar]:
    gate = HeldCedar()
    real = CedarEngine.evaluate

    def evaluate(self: CedarEngine, method: str, principal: str, tool: str, *rest: Any) -> Any:
        if tool == HELD_TOOL:
            gate.entered.set()
            gate.released.wait(10)
        return real(self, method, principal, tool, *rest)

    monkeypatch.setattr(CedarEngine, "evaluate", evaluate)
    yield gate
    gate.released.set()
