"""Decision workers: processes that check and judge calls with their own copy of the bundle.

Threads would not keep one agent's heavy call off another's: parsing, canonicalising and
handing large arguments to Cedar hold Python's global interpreter lock, so a light decision on
the event loop would still wait for it (measured in docs/adr/0010-fair-decisions.md). Processes
share nothing but what is sent to them. Each worker is started from the measured bundle as the
enclave loaded it (passed to the worker, never re-read from disk, so a host cannot swap the
files after start-up) and the measured audience; it runs only :func:`cmcp_enclave.judging.admit`
and :func:`cmcp_enclave.judging.judge`. Every failure of a worker refuses the request
(``DECISION_WORKER_FAILED``); it never becomes a decision.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import select
import tempfile
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from cmcp_core.bundle import Bundle
from cmcp_core.errors import CmcpError, Code
from cmcp_enclave import judging
from cmcp_enclave.engine import CedarEngine, SessionView
from cmcp_enclave.judging import Call, RequestError, Verdict

_engine: CedarEngine | None = None
_audience = ""
# A tmpfs the container runtime gives every container (the launch policy pins it, writable).
RUNTIME_TMPFS = "/dev/shm"  # noqa: S108 - the runtime's tmpfs, used only when no temp dir is writable


def ensure_temp_dir() -> str:
    """A writable temporary directory for the fork server's socket, ``/dev/shm`` when no other is.

    The enclave's root file system is read-only and its pod has no ``/tmp`` volume (the measured
    launch policy pins every mount), so without this every call decided on the pool failed with
    ``DECISION_WORKER_FAILED`` ("No usable temporary directory") in a real container.
    """
    try:
        return tempfile.gettempdir()
    except FileNotFoundError:
        tempfile.tempdir = RUNTIME_TMPFS
        return RUNTIME_TMPFS


def _load(bundle: Bundle, audience: str, enclave_pid: int) -> None:
    """A worker's start: its own engine for the measured bundle, and a watch on the enclave."""
    global _engine, _audience
    _engine, _audience = CedarEngine(bundle), audience
    threading.Thread(target=_exit_with, args=(enclave_pid,), name="cmcp-enclave-watch", daemon=True).start()


def _exit_with(enclave_pid: int) -> None:
    """End this worker when the enclave process ends, however it ends.

    A pool's workers wait on a queue whose write end they hold themselves, and they hold the
    fork server's liveness pipe: if the enclave is killed (SIGKILL, OOM) nobody would ever tell
    them to stop, and they, the fork server and its resource tracker would outlive it. A pidfd
    becomes readable when that process exits."""
    try:
        watched = os.pidfd_open(enclave_pid)
    except (OSError, AttributeError):  # not Linux 5.3+: poll for the pid instead
        while True:
            time.sleep(1.0)
            try:
                os.kill(enclave_pid, 0)
            except ProcessLookupError:
                os._exit(0)
    select.select([watched], [], [])
    os._exit(0)


def admit_and_judge(engine: CedarEngine, audience: str, fields: dict[str, Any],
                    view: SessionView) -> tuple[Call, Verdict] | tuple[str, str]:
    """The stateless half of a decision; a refusal comes back as ``(code, detail)`` (exceptions
    with their own constructors do not survive the trip between processes)."""
    try:
        call, arguments = judging.admit(engine, **fields)
        return call, judging.judge(engine, audience, call, arguments, view)
    except CmcpError as exc:
        return exc.code.value, exc.detail


def _in_worker(fields: dict[str, Any], view: SessionView) -> tuple[Call, Verdict] | tuple[str, str]:
    assert _engine is not None, "worker started without a bundle"
    return admit_and_judge(_engine, _audience, fields, view)


def _started() -> None:
    """Nothing: submitted once per worker so each is started (and has loaded the bundle)."""


class DecisionWorkers:
    """A pool that admits and judges calls off the event loop.

    ``processes=True`` (the enclave's default) isolates them from the loop's interpreter;
    ``processes=False`` runs them on threads of this process with the same code, for tests that
    need to reach into the engine.
    """

    def __init__(self, engine: CedarEngine, audience: str, count: int, *, processes: bool = True) -> None:
        self.engine, self.audience, self.count, self.processes = engine, audience, count, processes
        self._pool = self._new_pool()

    def _new_pool(self) -> Executor:
        if not self.processes:
            return ThreadPoolExecutor(self.count, thread_name_prefix="cmcp-decide")
        ensure_temp_dir()  # the fork server listens on a socket there
        context = multiprocessing.get_context("forkserver")  # never fork a process running gRPC
        # the fork server imports this module (Cedar, the engine) once; workers share those pages
        context.set_forkserver_preload([__name__])
        return ProcessPoolExecutor(self.count, mp_context=context, initializer=_load,
                                   initargs=(self.engine.bundle, self.audience, os.getpid()))

    async def start(self) -> None:
        """Start every worker now, not on the first heavy call (loading the bundle takes a while)."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._pool, _started) for _ in range(self.count)))

    async def admit_and_judge(self, fields: dict[str, Any], view: SessionView) -> tuple[Call, Verdict]:
        loop = asyncio.get_running_loop()
        try:
            if self.processes:
                outcome = await loop.run_in_executor(self._pool, _in_worker, fields, view)
            else:
                outcome = await loop.run_in_executor(self._pool, admit_and_judge, self.engine,
                                                     self.audience, fields, view)
        except BrokenProcessPool as exc:
            self._pool = self._new_pool()  # the next request gets fresh workers
            raise RequestError(Code.DECISION_WORKER_FAILED, "a decision worker died") from exc
        except Exception as exc:  # anything else the pool raises: refuse, never decide
            raise RequestError(Code.DECISION_WORKER_FAILED, f"decision worker: {exc}") from exc
        if isinstance(outcome[0], str):
            code, detail = outcome
            raise RequestError(Code(code), str(detail))
        return outcome  # type: ignore[return-value]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
