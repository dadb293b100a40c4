"""SIGTERM and SIGINT stop every component, also as a container's PID 1.

The kernel delivers no signal to a PID namespace's init for which it has not installed a handler
(only SIGKILL and SIGSTOP get through). In a container the console script *is* that init: one that
leaves SIGTERM at its default ignores the kubelet's stop, runs on until the grace period ends, and
SIGKILL takes it with nothing closed or flushed. So each console script installs these handlers
first thing, before its start-up checks: a stop that arrives then ends the process at once (exit 0).
The serving loop (asyncio in the enclave, uvicorn in the gateway and guard, Kopf in the operator)
then puts its own graceful stop in their place; uvicorn restores these when it is done and raises
the signal again, which ends the process with 0 instead of 143.
"""

from __future__ import annotations

import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# How long a graceful stop may take: below Kubernetes' default terminationGracePeriodSeconds (30),
# so the component finishes its own shutdown before the kubelet's SIGKILL.
GRACE_SECONDS = 20


def _exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def exit_on_stop_signals() -> None:
    """Handle SIGTERM and SIGINT by exiting with 0 (the serving loop later installs its own)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _exit)
